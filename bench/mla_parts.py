"""Which part of multi-head latent attention (MLA) holds induction back? Build the attention from its parts.

bench/induction.py found that deepseek-tiny with its MLPs cut does not learn to copy where a Llama of the same
widths does (docs/benchmarks/model.md, "Copying, session 18"). Swapping whole modules put the obstacle inside
MLA: the DeepSeek-V3 model with Llama's attention copies, the Llama with transformers' ``DeepseekV3Attention``
does not. ``PartsAttention`` goes between the two one part at a time; with every part set as deepseek-tiny has
it, it computes exactly what ``DeepseekV3Attention`` computes (tested, weight for weight), and with none it is
plain multi-head attention with RoPE on every key dimension.

    python bench/mla_parts.py --archs llama --set intermediate_size=4 --steps 2500 --eval-every 250 \\
        --part d_nope=32 --part d_rope=16 --part d_v=32 --part shared_rope_key=true \\
        --part kv_rank=32 --part latent_for=v

Every ``bench/induction.py`` flag applies (``--archs`` picks the model around the attention: llama or
deepseek-tiny); ``--part KEY=VALUE`` sets a field of ``Parts``.
"""
from __future__ import annotations

import argparse
import math
import sys
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
from torch import nn
from transformers.models.llama.modeling_llama import rotate_half

sys.path.insert(0, str(Path(__file__).resolve().parent))
import induction  # noqa: E402  (a sibling script: bench/ is not a package; it puts the repo on sys.path)
from core.model.tiny import TinyPreset  # noqa: E402


@dataclass(frozen=True)
class Parts:
    """How the attention builds queries, keys and values. The defaults are plain multi-head attention."""

    heads: int = 4
    d_nope: int = 0                 # key/query dims without position (MLA: qk_nope_head_dim)
    d_rope: int = 64                # key/query dims under RoPE (MLA: qk_rope_head_dim)
    d_v: int = 64                   # value dims per head
    shared_rope_key: bool = False   # one RoPE key for all heads, straight from the hidden state (MLA's k_pe)
    q_rank: int | None = None       # queries through a rank-r latent (MLA: q_lora_rank)
    kv_rank: int | None = None      # content keys and/or values through a rank-r latent (MLA: kv_lora_rank)
    latent_for: str = "kv"          # what comes out of that latent: "kv" (both, as in MLA), "k" or "v"
    latent_norm: bool = True        # RMSNorm on the latents (MLA has it)
    freeze_down: bool = False       # the latents' down-projections keep their random init
    rope_theta: float = 10000.0

    def __post_init__(self):
        if self.latent_for not in ("kv", "k", "v"):
            raise ValueError(f"latent_for={self.latent_for!r}: expected kv, k or v")
        if self.d_rope % 2:
            raise ValueError(f"d_rope={self.d_rope}: RoPE rotates pairs of dims, so it must be even")


_PRESET = TinyPreset()
DEEPSEEK_TINY_MLA = Parts(heads=_PRESET.num_attention_heads, d_nope=_PRESET.qk_nope_head_dim,
                          d_rope=_PRESET.qk_rope_head_dim, d_v=_PRESET.v_head_dim, shared_rope_key=True,
                          q_rank=_PRESET.q_lora_rank, kv_rank=_PRESET.kv_lora_rank, rope_theta=_PRESET.rope_theta)


class PartsAttention(nn.Module):
    """Causal self-attention assembled from ``Parts``; a drop-in ``self_attn`` for Llama and DeepSeek-V3 layers
    in training (no KV cache; positions count from 0, as the bench's blocks do)."""

    def __init__(self, hidden: int, parts: Parts):
        super().__init__()
        self.parts, heads = parts, parts.heads
        self.q = self._projection(hidden, heads * (parts.d_nope + parts.d_rope), parts.q_rank)
        latent = parts.kv_rank
        if parts.latent_for == "kv":  # MLA: one latent for the content keys and the values of every head
            self.kv = self._projection(hidden, heads * (parts.d_nope + parts.d_v), latent)
        else:
            self.k_nope = self._projection(hidden, heads * parts.d_nope, latent if parts.latent_for == "k" else None)
            self.v = self._projection(hidden, heads * parts.d_v, latent if parts.latent_for == "v" else None)
        self.k_rope = nn.Linear(hidden, parts.d_rope * (1 if parts.shared_rope_key else heads), bias=False)
        self.o = nn.Linear(heads * parts.d_v, hidden, bias=False)
        inv_freq = 1.0 / (parts.rope_theta ** (torch.arange(0, parts.d_rope, 2).float() / parts.d_rope))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        for module in self.modules():  # transformers' init for the modules it built: N(0, 0.02)
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
        if parts.freeze_down:
            for module in self.modules():
                if isinstance(module, nn.Sequential):
                    module[0].weight.requires_grad_(False)

    def _projection(self, hidden: int, out: int, rank: int | None) -> nn.Module:
        if not rank:
            return nn.Linear(hidden, out, bias=False)
        norm = nn.RMSNorm(rank, eps=1e-6) if self.parts.latent_norm else nn.Identity()
        return nn.Sequential(nn.Linear(hidden, rank, bias=False), norm, nn.Linear(rank, out, bias=False))

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        p, (batch, length, _) = self.parts, hidden_states.shape

        def by_head(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, length, p.heads, -1).transpose(1, 2)

        q_nope, q_rope = by_head(self.q(hidden_states)).split([p.d_nope, p.d_rope], -1)
        if p.latent_for == "kv":
            k_nope, v = by_head(self.kv(hidden_states)).split([p.d_nope, p.d_v], -1)
        else:
            k_nope, v = by_head(self.k_nope(hidden_states)), by_head(self.v(hidden_states))
        k_rope = self.k_rope(hidden_states).view(batch, length, -1, p.d_rope).transpose(1, 2)
        angles = torch.arange(length, device=hidden_states.device).float()[:, None] * self.inv_freq
        angles = torch.cat((angles, angles), -1)
        cos, sin = angles.cos(), angles.sin()
        q_rope = q_rope * cos + rotate_half(q_rope) * sin
        k_rope = (k_rope * cos + rotate_half(k_rope) * sin).expand(batch, p.heads, length, p.d_rope)
        out = nn.functional.scaled_dot_product_attention(
            torch.cat((q_nope, q_rope), -1), torch.cat((k_nope, k_rope), -1), v, is_causal=True,
            scale=1 / math.sqrt(p.d_nope + p.d_rope))
        return self.o(out.transpose(1, 2).reshape(batch, length, -1)), None


def with_parts(model, parts: Parts):
    """``model`` (a Llama or DeepSeek-V3 causal LM) with every layer's attention replaced by ``PartsAttention``."""
    if not hasattr(model, "model"):
        raise ValueError(f"{type(model).__name__}: only Llama and DeepSeek-V3 layers take PartsAttention")
    model.config.use_cache = False
    for layer in model.model.layers:
        layer.self_attn = PartsAttention(model.config.hidden_size, parts)
    return model


def part_override(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` for ``--part``, VALUE typed by the ``Parts`` field (``none`` for no latent)."""
    key, sep, value = text.partition("=")
    types = {f.name: f.type for f in fields(Parts)}
    if not sep or key not in types:
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE with KEY one of {', '.join(types)}")
    kind = types[key]
    try:
        if value.lower() == "none" and "None" in kind:
            return key, None
        if kind == "bool":
            if value.lower() not in ("true", "false"):
                raise ValueError(value)
            return key, value.lower() == "true"
        return key, {"str": str, "float": float}.get(kind, int)(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: {value!r} is not a {kind}") from None


def main(argv: list[str] | None = None) -> int:
    ap = induction.parser()
    ap.description = __doc__.splitlines()[0]
    ap.set_defaults(archs=["llama"])
    ap.add_argument("--part", type=part_override, action="append", default=[], metavar="KEY=VALUE",
                    help="a field of Parts (repeatable; latent_for is kv, k or v): "
                         + ", ".join(f.name for f in fields(Parts)))
    args = ap.parse_args(argv)
    try:
        parts = replace(Parts(), **dict(args.part))
    except ValueError as error:
        ap.error(f"--part: {error}")
    if "gpt2" in args.archs:
        ap.error("--archs gpt2: PartsAttention replaces Llama and DeepSeek-V3 attention only")

    def build_model(arch, vocab, layers, overrides):
        return with_parts(induction.build(arch, vocab, layers, overrides), parts)

    return induction.run(ap, args, build_model, record={"parts": asdict(parts)})


if __name__ == "__main__":
    raise SystemExit(main())
