"""Copy blocks for pre-training (``core.model.pretrain.copy_blocks`` / ``add_copy_blocks``) and the build
options that use them (``dsv model build --copy-share``): real tensors, a real toy build."""
from __future__ import annotations

import json

import pytest
import torch

from core.model.copying import LatentLR, MLPGate
from core.model.pretrain import PretrainConfig, add_copy_blocks, copy_blocks
from shared.io import InputError
from shared.settings import Settings


def repeated_runs(row: torch.Tensor, min_run: int) -> list[tuple[int, int, int]]:
    """(start, earlier start, length) of every maximal run of >= ``min_run`` tokens that occurred before."""
    tokens, found, pos = row.tolist(), [], 1
    while pos < len(tokens):
        best = (0, -1)
        for earlier in range(1, pos):
            n = 0
            while pos + n < len(tokens) and earlier + n < pos and tokens[earlier + n] == tokens[pos + n]:
                n += 1
            best = max(best, (n, earlier))
        if best[0] >= min_run:
            found.append((pos, best[1], best[0]))
            pos += best[0]
        else:
            pos += 1
    return found


def test_copy_blocks_repeat_runs_of_varying_length_and_offset():
    alphabet = torch.arange(100, 612)
    blocks = copy_blocks(6, 256, alphabet, bos=1, generator=torch.Generator().manual_seed(0))
    again = copy_blocks(6, 256, alphabet, bos=1, generator=torch.Generator().manual_seed(0))
    assert blocks.shape == (6, 256) and torch.equal(blocks, again)  # seeded: the same blocks
    assert (blocks[:, 0] == 1).all() and bool(torch.isin(blocks[:, 1:], alphabet).all())
    runs = [run for row in blocks for run in repeated_runs(row, 6)]
    assert len(runs) >= 6 * 4  # several repeats per 256-token block
    # No fixed offset or length to learn instead of copying.
    assert len({start - earlier for start, earlier, _ in runs}) > 10
    assert len({length for *_, length in runs}) > 8
    with pytest.raises(ValueError, match="too short"):
        copy_blocks(1, 40, alphabet, 1, torch.Generator(), max_run=24, max_gap=20)


def test_add_copy_blocks_mixes_the_share_from_frequent_non_special_tokens():
    corpus = torch.tensor([[1, 5, 5, 5, 7, 7, 9, 2] * 8] * 30)  # ids 1, 2 are BOS / EOS
    config = PretrainConfig(copy_share=0.25, copy_alphabet=2)
    mixed, labels = add_copy_blocks(corpus, config, bos=1, special_ids=[1, 2])
    assert torch.equal(mixed[:30], corpus) and len(mixed) == 40  # 10 of 40 blocks = 0.25
    copies = mixed[30:]
    assert set(copies[:, 1:].unique().tolist()) == {5, 7}  # the two most frequent, specials left out
    # Corpus blocks are scored as they are; in a copy block only the repeated tokens are.
    assert torch.equal(labels[:30], corpus)
    scored = labels[30:] != -100
    assert scored.any() and (~scored).any() and torch.equal(labels[30:][scored], copies[scored])
    same, none = add_copy_blocks(corpus, PretrainConfig(), bos=1)  # off by default
    assert same is corpus and none is None
    with pytest.raises(ValueError, match="copy_share"):
        add_copy_blocks(corpus, PretrainConfig(copy_share=1.0), bos=1)


def load_bench(name: str):
    """A script under bench/ as a module (bench/ is not a package)."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_bench", path)
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # dataclasses look their module up there
    spec.loader.exec_module(bench)
    return bench


def run_model_copy_bench(model_dir, capsys) -> dict:
    bench = load_bench("model_copy")
    capsys.readouterr()
    assert bench.main(["--model", str(model_dir), "--run-lengths", "8", "--runs", "3", "--text-spans", "3",
                       "--span-lengths", "8", "40", "--frequent", "16", "64"]) == 0
    figures = json.loads(capsys.readouterr().out)
    # A span and its repeat must fit the model's positions (the test preset has 256).
    with pytest.raises(SystemExit):
        bench.main(["--model", str(model_dir), "--text-spans", "3", "--span-lengths", "200", "--frequent"])
    assert "need 401 positions" in capsys.readouterr().err
    return figures


def test_build_with_copy_share_trains_on_the_mix_and_records_it(tmp_path, capsys):
    from core.model.build import build_model
    from core.registry import Registry

    settings = Settings(home=tmp_path, mlflow_uri=None)
    registry = Registry.from_settings(settings)
    messages: list[str] = []
    result = build_model(settings, preset="test", steps=8, out=tmp_path / "copy", progress=False,
                         registry=registry, report=messages.append, copy_share=0.3, device="cpu", lr=1e-3)
    assert any("in copy blocks" in m for m in messages)
    info = json.loads((result.path / "build_info.json").read_text())
    assert info["copy_share"] == 0.3 and info["lr"] == 1e-3  # the test preset's own lr is 3e-3
    params = registry.run_params(result.run_id)
    assert params["pretrain.copy_share"] == "0.3" and params["pretrain.lr"] == "0.001"
    # bench/model_copy.py measures such a build: random runs and unseen text spans, first vs repeat.
    figures = run_model_copy_bench(result.path, capsys)
    for part in figures["random_token_runs"] + figures["frequent_token_runs"] + figures["text_spans"]:
        assert part["runs"] == 3 and 0 < part["loss_first"] < 20 and 0 < part["loss_repeat"] < 20
        assert 0.0 <= part["next_token_right_on_repeat"] <= 1.0
    assert [part["run_length"] for part in figures["text_spans"]] == [8, 40]
    # Runs over the most frequent tokens of unseen text (the warm-up's kind of symbols), as many as asked.
    assert [part["alphabet"] for part in figures["frequent_token_runs"]] == [16, 64]
    with pytest.raises(InputError, match="--copy-share"):
        build_model(settings, preset="test", steps=8, out=tmp_path / "bad", progress=False, registry=registry,
                    copy_share=1.5)
    for bad_lr in (0.0, -1e-3, 2.0):
        with pytest.raises(InputError, match="--lr"):
            build_model(settings, preset="test", steps=8, out=tmp_path / "bad", progress=False, registry=registry,
                        lr=bad_lr)
    with pytest.raises(InputError, match="--steps"):
        build_model(settings, preset="test", steps=0, out=tmp_path / "bad", progress=False, registry=registry)
    with pytest.raises(InputError, match="--device"):
        build_model(settings, preset="test", steps=8, out=tmp_path / "bad", progress=False, registry=registry,
                    device="no-such-device")
    if not torch.cuda.is_available():  # CI has no GPU: refused up front, with the reason
        with pytest.raises(InputError, match="no CUDA device"):
            build_model(settings, preset="test", steps=8, out=tmp_path / "bad", progress=False,
                        registry=registry, device="cuda")
    assert not (tmp_path / "bad").exists()


def test_log_gaps_reach_far_back_and_keep_near_repeats_common():
    """Copying reaches only as far back as it was trained to (docs/benchmarks/model.md, session 21: heads
    trained on gaps of <= 20 fail on text repeated 200 tokens later), so long blocks draw long gaps."""
    alphabet = torch.arange(100, 4196)
    generator = lambda: torch.Generator().manual_seed(5)
    near, near_mask = copy_blocks(40, 512, alphabet, 1, generator(), with_mask=True)
    far, far_mask = copy_blocks(40, 512, alphabet, 1, generator(), max_gap=463, log_gaps=True, with_mask=True)
    offsets = lambda blocks: [start - earlier for row in blocks for start, earlier, _ in repeated_runs(row, 6)]
    near_offsets, far_offsets = offsets(near), offsets(far)
    assert max(near_offsets) <= 24 + 20  # run + gap
    assert max(far_offsets) > 300 and sum(o > 100 for o in far_offsets) >= 20
    assert sum(o <= 44 for o in far_offsets) >= 0.3 * len(far_offsets)  # log-uniform: near ones still common
    for row, repeats in zip(far, far_mask):  # the mask still marks repeat tokens only
        expected = torch.zeros_like(repeats)
        for start, _, length in repeated_runs(row, 6):
            expected[start + 1: start + length] = True
        assert bool((repeats <= expected).all())
    # add_copy_blocks clips the gap to what the block holds (two runs of 24 and the gap).
    corpus = torch.randint(100, 612, (30, 128), generator=torch.Generator().manual_seed(1))
    mixed, labels = add_copy_blocks(corpus, PretrainConfig(copy_share=0.5, copy_max_gap=10_000, copy_log_gaps=True),
                                    bos=1)
    assert mixed.shape == (60, 128) and (labels[30:] != -100).any()


def test_copy_mask_marks_exactly_the_predictable_repeat_tokens():
    alphabet = torch.arange(100, 612)
    blocks, mask = copy_blocks(4, 128, alphabet, bos=1, generator=torch.Generator().manual_seed(3), with_mask=True)
    assert torch.equal(blocks, copy_blocks(4, 128, alphabet, bos=1, generator=torch.Generator().manual_seed(3)))
    for row, repeats in zip(blocks, mask):
        expected = torch.zeros_like(repeats)
        for start, _, length in repeated_runs(row, 6):
            expected[start + 1: start + length] = True
        # Every masked token is inside a repeat; a repeat may be longer than its mask when random
        # neighbours happen to match, never shorter.
        assert repeats.any() and bool((repeats <= expected).all())
        assert repeats.sum() >= 0.8 * expected.sum()


def test_induction_bench_trains_the_preset_it_is_given_and_refuses_unknown_fields(capsys):
    bench = load_bench("induction")
    model = bench.build("deepseek-tiny", vocab=512, layers=2, overrides={"kv_lora_rank": 48, "q_lora_rank": None})
    assert model.config.kv_lora_rank == 48 and model.config.q_lora_rank is None
    assert model.model.layers[0].self_attn.kv_a_proj_with_mqa.out_features == 48 + model.config.qk_rope_head_dim

    capsys.readouterr()
    assert bench.main(["--archs", "deepseek-tiny", "--steps", "3", "--eval-every", "3", "--seq-len", "80",
                       "--batch", "2", "--set", "kv_lora_rank=48", "--set", "q_lora_rank=none"]) == 0
    (result,) = json.loads(capsys.readouterr().out)["results"]
    assert result["overrides"] == {"kv_lora_rank": 48, "q_lora_rank": None}
    assert result["final"]["step"] == 3 and 0 < result["final"]["copy_loss"] < 20

    gpt2 = bench.build("gpt2", vocab=512, layers=2, overrides={"n_embd": 64, "n_inner": 1})
    assert gpt2.config.n_embd == 64 and gpt2.transformer.h[0].mlp.c_fc.nf == 1

    # Every arch of the run must know the field: n_embd is GPT-2's, not deepseek-tiny's.
    for bad in (["--set", "no_such_field=1"], ["--set", "kv_lora_rank"], ["--set", "kv_lora_rank=wide"],
                ["--archs", "deepseek-tiny", "gpt2", "--set", "n_embd=128"]):
        with pytest.raises(SystemExit):
            bench.main(bad)
        assert "--set" in capsys.readouterr().err


def test_induction_bench_mlp_gate_trains_attention_only_then_brings_the_mlps_in():
    bench = load_bench("induction")
    alphabet = torch.arange(100, 164)
    blocks, mask = copy_blocks(2, 80, alphabet, 1, torch.Generator().manual_seed(0), with_mask=True)
    for arch in bench.ARCHS:
        model = bench.build(arch, vocab=512, layers=2)
        gate = MLPGate(model, off_steps=10, ramp=4)
        assert gate.scale == 0.0
        mlps = [m for name, m in model.named_modules() if name.endswith(".mlp")]
        assert len(mlps) == 2

        gate.at_step(3)  # attention only: the MLPs neither contribute nor learn
        loss, _ = bench.copy_loss(model, blocks, mask)
        loss.backward()
        assert all(p.grad is None or not p.grad.any() for m in mlps for p in m.parameters())
        assert any(p.grad is not None and p.grad.any() for n, p in model.named_parameters() if "attn" in n)

        model.zero_grad(set_to_none=True)
        gate.at_step(12)  # half way up the ramp
        assert gate.scale == 0.5
        loss, _ = bench.copy_loss(model, blocks, mask)
        loss.backward()
        assert any(p.grad is not None and p.grad.any() for m in mlps for p in m.parameters())
        gate.at_step(100)
        assert gate.scale == 1.0


def test_induction_bench_latent_lr_scales_only_the_mla_latent_rows_and_ends_when_told():
    bench = load_bench("induction")
    alphabet = torch.arange(100, 164)
    blocks, mask = copy_blocks(2, 80, alphabet, 1, torch.Generator().manual_seed(0), with_mask=True)

    def one_step(model, optimizer):
        loss, _ = bench.copy_loss(model, blocks, mask)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    deltas = {}
    for mult in (1.0, 0.5, 0.0):
        torch.manual_seed(0)
        model = bench.build("deepseek-tiny", vocab=512, layers=2, overrides={"kv_lora_rank": 48})
        weight = model.model.layers[1].self_attn.kv_a_proj_with_mqa.weight
        before = weight.detach().clone()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
        latent = LatentLR(model, optimizer, mult, until=2) if mult != 1.0 else None
        one_step(model, optimizer)
        deltas[mult] = weight.detach() - before
        if mult == 0.0:  # kept at init while told, but the RoPE key rows beside it train; then all of it trains
            assert latent.rows[1][1] == 48 and len(latent.rows) == 2
            one_step(model, optimizer)
            assert torch.equal(weight[:48], before[:48]) and not torch.equal(weight[48:], before[48:])
            one_step(model, optimizer)
            assert not torch.equal(weight[:48], before[:48])
    assert deltas[1.0][:48].abs().sum() > 0
    torch.testing.assert_close(deltas[0.5][:48], 0.5 * deltas[1.0][:48])
    torch.testing.assert_close(deltas[0.5][48:], deltas[1.0][48:])

    with pytest.raises(ValueError, match="no MLA latent"):
        LatentLR(bench.build("llama", vocab=512, layers=1), optimizer, 0.0)
    with pytest.raises(SystemExit):
        bench.main(["--archs", "llama", "--latent-lr", "0"])
