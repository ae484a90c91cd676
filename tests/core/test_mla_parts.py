"""bench/mla_parts.py: attention assembled from MLA's parts. At both ends it must be the real thing, weight for
weight - transformers' ``DeepseekV3Attention`` with every part set as deepseek-tiny has it, ``LlamaAttention``
with none - or what it says about the parts in between would be about a different model."""
from __future__ import annotations

import json

import pytest
import torch

from tests.core.test_copy_blocks import load_bench

HIDDEN, LENGTH = 256, 24


def rope_inputs(model, length: int = LENGTH):
    hidden = torch.randn(2, length, HIDDEN)
    positions = torch.arange(length)[None].expand(2, length)
    return hidden, model.model.rotary_emb(hidden, positions)


def test_all_parts_as_deepseek_tiny_compute_what_deepseek_v3_attention_computes():
    bench, induction = load_bench("mla_parts"), load_bench("induction")
    torch.manual_seed(0)
    model = induction.build("deepseek-tiny", vocab=512, layers=1, overrides={})
    model.config.rope_interleave = False  # interleaving permutes the RoPE dims of q and k alike; same attention
    mla = model.model.layers[0].self_attn
    parts = bench.PartsAttention(HIDDEN, bench.DEEPSEEK_TINY_MLA)
    latent = model.config.kv_lora_rank
    with torch.no_grad():
        parts.q[0].weight.copy_(mla.q_a_proj.weight)
        parts.q[1].weight.copy_(torch.rand_like(mla.q_a_layernorm.weight))  # not all ones: the norms must line up
        mla.q_a_layernorm.weight.copy_(parts.q[1].weight)
        parts.q[2].weight.copy_(mla.q_b_proj.weight)
        parts.kv[0].weight.copy_(mla.kv_a_proj_with_mqa.weight[:latent])
        parts.k_rope.weight.copy_(mla.kv_a_proj_with_mqa.weight[latent:])
        parts.kv[1].weight.copy_(mla.kv_a_layernorm.weight)
        parts.kv[2].weight.copy_(mla.kv_b_proj.weight)
        parts.o.weight.copy_(mla.o_proj.weight)
        hidden, rope = rope_inputs(model)
        expected, _ = mla(hidden, rope, None)
        got, _ = parts(hidden)
    assert expected.abs().mean() > 1e-3
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


def test_no_parts_is_llama_attention():
    bench, induction = load_bench("mla_parts"), load_bench("induction")
    torch.manual_seed(1)
    model = induction.build("llama", vocab=512, layers=1, overrides={})
    llama = model.model.layers[0].self_attn
    parts = bench.PartsAttention(HIDDEN, bench.Parts())
    with torch.no_grad():
        parts.q.weight.copy_(llama.q_proj.weight)
        parts.k_rope.weight.copy_(llama.k_proj.weight)
        parts.kv.weight.copy_(llama.v_proj.weight)  # no content key dims: the "kv" projection is the values
        parts.o.weight.copy_(llama.o_proj.weight)
        hidden, rope = rope_inputs(model)
        expected, _ = llama(hidden, rope, None)
        got, _ = parts(hidden)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


def test_values_alone_from_a_frozen_latent_train_in_the_bench_and_bad_parts_are_refused(capsys):
    bench = load_bench("mla_parts")
    parts = bench.Parts(d_nope=32, d_rope=16, d_v=32, kv_rank=32, latent_for="v", freeze_down=True)
    attention = bench.PartsAttention(HIDDEN, parts)
    assert attention.v[0].weight.shape == (32, HIDDEN) and not attention.v[0].weight.requires_grad
    assert attention.v[2].weight.requires_grad and isinstance(attention.k_nope, torch.nn.Linear)

    capsys.readouterr()
    assert bench.main(["--steps", "2", "--eval-every", "2", "--seq-len", "80", "--batch", "2",
                       "--set", "intermediate_size=4", "--part", "kv_rank=32", "--part", "latent_for=v",
                       "--part", "d_nope=32", "--part", "d_rope=16", "--part", "d_v=32",
                       "--part", "freeze_down=true"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["parts"]["latent_for"] == "v" and out["parts"]["freeze_down"] is True
    (result,) = out["results"]
    assert result["arch"] == "llama" and 0 < result["final"]["copy_loss"] < 20

    for bad in (["--part", "kv_rank=wide"], ["--part", "no_such_part=1"], ["--part", "latent_for=q"],
                ["--part", "d_rope=15"], ["--part", "latent_norm=maybe"], ["--archs", "gpt2"]):
        with pytest.raises(SystemExit):
            bench.main(bad)
        error = capsys.readouterr().err
        assert ("gpt2" if bad[0] == "--archs" else "--part") in error
