"""The copy-block warm-up (``core.model.copying``) and the build that runs it (``dsv model build --preset
copying`` / ``--copy-warmup-steps``): a real toy DeepseekV3 model, real training steps, a real toy build."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from core.model.copying import CopyWarmupConfig, LatentLR, MLPGate, alphabet_copy_loss, copy_warmup
from core.model.pretrain import copy_blocks
from shared.io import InputError
from shared.settings import Settings

ALPHABET = torch.arange(100, 164)


def toy_model(seed: int = 0):
    """The build's test-preset model, with a 300-token vocabulary and a latent of 64 rows (= its hidden size)."""
    from transformers import DeepseekV3ForCausalLM

    from core.model.build import PRESETS
    from core.model.tiny import tiny_config

    torch.manual_seed(seed)
    return DeepseekV3ForCausalLM(tiny_config(**{**PRESETS["test"].model_overrides, "vocab_size": 300,
                                                "kv_lora_rank": 64}))


def test_alphabet_loss_is_the_full_models_loss_with_the_softmax_over_the_alphabet():
    model = toy_model().eval()
    blocks, mask = copy_blocks(3, 96, ALPHABET, 1, torch.Generator().manual_seed(0), with_mask=True)
    with torch.no_grad():
        loss, right = alphabet_copy_loss(model, blocks, mask, ALPHABET)
        logits = model(input_ids=blocks).logits[:, :-1][mask[:, 1:]][:, ALPHABET]
    target = blocks[:, 1:][mask[:, 1:]] - 100  # the alphabet is 100..163, so index = id - 100
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(logits, target))
    assert right == pytest.approx((logits.argmax(-1) == target).float().mean().item())


def test_warmup_holds_the_latent_and_trains_attention_only_while_the_mlps_are_off():
    model = toy_model()
    init = {name: p.detach().clone() for name, p in model.named_parameters()}
    config = CopyWarmupConfig(steps=5, mlp_off_steps=100, batch_size=2, eval_every=2)
    logged: list[tuple[int, dict]] = []
    result = copy_warmup(model, ALPHABET, 1, config, progress=False, on_log=lambda s, m: logged.append((s, m)))

    assert [p["step"] for p in result.curve] == [2, 4, 5] and [s for s, _ in logged] == [2, 4, 5]
    assert all(p["mlp_scale"] == 0.0 and 0 < p["copy_loss"] < 10 for p in result.curve)
    params = dict(model.named_parameters())
    for name, before in init.items():
        moved = not torch.equal(params[name], before)
        if ".mlp." in name:
            assert not moved, f"{name} trained while the MLPs were off"
        elif name.endswith("kv_a_proj_with_mqa.weight"):  # latent rows held, the RoPE key rows beside them train
            assert torch.equal(params[name][:64], before[:64]) and not torch.equal(params[name][64:], before[64:])
    assert not torch.equal(params["model.layers.0.self_attn.q_a_proj.weight"], init["model.layers.0.self_attn.q_a_proj.weight"])
    # Hooks are gone afterwards: the model's MLPs count again and its optimizer-free use is unchanged.
    assert not model.training and not any(m._forward_hooks for m in model.modules() if type(m).__name__.endswith("MLP")
                                           or type(m).__name__.endswith("MoE"))


def test_warmup_brings_the_mlps_in_and_stops_once_copying_is_right_enough():
    model = toy_model()
    mlp_before = model.model.layers[0].mlp.gate_proj.weight.detach().clone()
    # Ramp done by step 2; a bar of 0 is met at the first evaluation after it.
    config = CopyWarmupConfig(steps=50, mlp_off_steps=1, mlp_ramp=1, batch_size=2, eval_every=3, stop_at_right=0.0)
    result = copy_warmup(model, ALPHABET, 1, config, progress=False)
    assert result.steps == 3 and [p["step"] for p in result.curve] == [3] and result.final["mlp_scale"] == 1.0
    assert not torch.equal(model.model.layers[0].mlp.gate_proj.weight, mlp_before)
    with pytest.raises(ValueError, match="seq_len"):
        copy_warmup(model, ALPHABET, 1, replace(config, seq_len=64), progress=False)


def test_warmup_doubles_the_alphabet_each_time_it_is_copied_up_to_widen_to():
    # The output rows of tokens never in the alphabet get no gradient (and Adam without weight decay leaves
    # them still), so which rows moved shows which symbols the blocks drew.
    symbols = torch.arange(100, 300)                     # most frequent first
    config = CopyWarmupConfig(steps=20, mlp_off_steps=0, mlp_ramp=1, batch_size=2, eval_every=2, stop_at_right=0.0)
    moved = {}
    for widen_to in (0, 160):
        model = toy_model()
        before = model.lm_head.weight.detach().clone()
        result = copy_warmup(model, symbols, 1, replace(config, widen_to=widen_to), progress=False)
        moved[widen_to] = {int(t) for t in (model.lm_head.weight != before).any(dim=1).nonzero()}
        if widen_to:
            # A bar of 0 is met at every evaluation: 64 -> 128 at step 2, -> 160 (not 256) at step 4, stop at 6.
            assert result.widened == [(2, 128), (4, 160)] and result.steps == 6
            assert [p["alphabet"] for p in result.curve] == [64, 128, 160]
        else:
            assert result.widened == [] and result.steps == 2
    assert moved[0] == set(range(100, 164))
    assert len(moved[160]) > 128 and moved[160] <= set(range(100, 260))  # the last 32 joined, none beyond
    with pytest.raises(ValueError, match="widen_to 64"):
        copy_warmup(toy_model(), symbols, 1, replace(config, widen_to=64), progress=False)


def test_mlp_gate_and_latent_lr_leave_no_hooks_behind_when_closed():
    model = toy_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gate, latent = MLPGate(model, off_steps=3, ramp=2), LatentLR(model, optimizer, 0.0)
    gate.close()
    latent.close()
    assert not any(layer.mlp._forward_hooks for layer in model.model.layers)
    assert not optimizer._optimizer_step_pre_hooks and not optimizer._optimizer_step_post_hooks


def test_build_runs_the_warmup_first_and_records_it(tmp_path):
    from core.model.build import PRESETS, build_model
    from core.registry import Registry

    settings = Settings(home=tmp_path, mlflow_uri=None)
    registry = Registry.from_settings(settings)
    messages: list[str] = []
    result = build_model(settings, preset="test", steps=4, out=tmp_path / "warm", progress=False, registry=registry,
                         report=messages.append, copy_warmup_steps=6)
    assert result.copy_warmup.steps == 6 and [p["step"] for p in result.copy_warmup.curve] == [6]
    assert any(m.startswith("copy warm-up: up to 6 steps") for m in messages)
    info = json.loads((result.path / "build_info.json").read_text())
    assert info["copy_warmup"]["steps"] == 6 and 0 < info["copy_warmup"]["copy_loss"] < 10
    assert info["copy_warmup"]["widened"] == [] and info["copy_warmup"]["alphabet"] == 64
    params = registry.run_params(result.run_id)
    assert params["copy_warmup.steps"] == "6" and params["copy_warmup.latent_lr"] == "0.0"

    plain = build_model(settings, preset="test", steps=4, out=tmp_path / "plain", progress=False, registry=registry)
    assert plain.copy_warmup is None and json.loads((plain.path / "build_info.json").read_text())["copy_warmup"] is None
    with pytest.raises(InputError, match="--copy-warmup-steps"):
        build_model(settings, preset="test", steps=4, out=tmp_path / "bad", progress=False, registry=registry,
                    copy_warmup_steps=-1)
    # The copying preset: the latent as wide as the hidden state, a widening warm-up, pre-training at 1e-3 with
    # copy blocks.
    copying = PRESETS["copying"]
    assert copying.model_overrides["kv_lora_rank"] == 256 and copying.copy_warmup.latent_lr == 0.0
    assert copying.copy_warmup.widen_to > copying.copy_warmup.alphabet
    assert copying.pretrain.copy_alphabet == copying.copy_warmup.widen_to  # or the rarer symbols are forgotten
    assert copying.pretrain.lr == 1e-3 and copying.pretrain.copy_share > 0
    # Blocks as long as a legal prompt (420-560 tokens), with repeats reaching across them: heads pre-trained on
    # 256-token blocks do not copy from further back.
    assert copying.pretrain.seq_len >= 512 and copying.pretrain.copy_log_gaps
    assert copying.pretrain.copy_max_gap >= copying.pretrain.seq_len - 2 * 24 - 1


def test_pretraining_can_hold_the_latent_too():
    from core.model.pretrain import PretrainConfig, pretrain

    model = toy_model()
    weight = model.model.layers[1].self_attn.kv_a_proj_with_mqa.weight
    before = weight.detach().clone()
    blocks = torch.randint(100, 300, (8, 32), generator=torch.Generator().manual_seed(0))
    pretrain(model, blocks, PretrainConfig(steps=2, batch_size=2, seq_len=32, warmup_steps=1, latent_lr=0.0),
             progress=False)
    assert torch.equal(weight[:64], before[:64]) and not torch.equal(weight[64:], before[64:])
    pretrain(model, blocks, PretrainConfig(steps=1, batch_size=2, seq_len=32, warmup_steps=1), progress=False)
    assert not torch.equal(weight[:64], before[:64])  # the default trains it like the rest
