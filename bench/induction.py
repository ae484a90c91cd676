"""How long until a fresh model learns to copy? deepseek-tiny against baselines of the same width.

Every model trains on nothing but copy blocks (``core.model.pretrain.copy_blocks``: random tokens in which
runs of random length reappear after a random gap). Only the repeats are predictable, and only by copying,
so the loss on them (``copy_loss``) sits at the uniform ln(alphabet) until induction forms, then drops
towards 0. The baselines train in the same run: a GPT-2 (plain multi-head attention, learned positions)
and a Llama (RoPE, RMSNorm and SwiGLU like deepseek-tiny, but plain attention instead of MLA and a dense
MLP instead of MoE). If all stay on the plateau, the budget is too short, not the DeepSeek code at fault.

    python bench/induction.py [--archs deepseek-tiny gpt2 llama] [--steps 4000] [--lr 1e-3 3e-3]
                              [--set KEY=VALUE ...] [--mlp-off-steps 3000] [--latent-lr 0 --latent-lr-until 3000]
                              [--device cuda]

What has been learnt with it (docs/benchmarks/model.md, "Copying"): the learning rate decides whether
copying forms at all (at 3e-3 deepseek-tiny stays at the uniform loss; at 1e-3 it reaches a lower plateau,
~0.8 of it, still without copying); the MLP layers hold it back (a GPT-2 whose MLPs are cut to one unit,
``--set n_inner=1``, copies within 7,000 steps; with its MLPs it does not in 10,000); and so does
deepseek-tiny's attention (with MLPs cut, a Llama of its widths copies within 2,000 steps, deepseek-tiny
does not in 6,000). Session 19 located that in MLA's key/value latent, through which the values pass
(bench/mla_parts.py): kept at its random init (``--latent-lr 0``) with ``kv_lora_rank=256``, deepseek-tiny
copies too. ``--set`` changes config fields of the models trained (ablations); ``--mlp-off-steps`` trains
attention-only first, then brings the MLPs in; ``--latent-lr`` slows or holds the latent. Both come from
``core/model/copying.py``, whose warm-up runs them in the product: ``dsv model build --preset copying``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from core.model.copying import LatentLR, MLPGate  # noqa: E402  (the warm-up `dsv model build --preset copying` runs)


GPT2_BASELINE = {"n_embd": 256, "n_head": 4, "n_positions": 1024, "bos_token_id": 1, "eos_token_id": 2}
# A Llama of deepseek-tiny's widths: RoPE, RMSNorm and SwiGLU like deepseek-tiny, but plain multi-head
# attention instead of MLA and a dense MLP instead of MoE - it tells the two apart from the rest.
LLAMA_BASELINE = {"hidden_size": 256, "intermediate_size": 512, "num_attention_heads": 4, "num_key_value_heads": 4,
                  "max_position_embeddings": 1024, "bos_token_id": 1, "eos_token_id": 2}
ARCHS = ("deepseek-tiny", "gpt2", "llama")


def config_fields(arch: str) -> set[str]:
    """What ``--set`` may change: deepseek-tiny's preset fields, or any field of the baseline's config."""
    from dataclasses import fields

    from transformers import GPT2Config, LlamaConfig

    from core.model.tiny import TinyPreset

    if arch == "deepseek-tiny":
        return {f.name for f in fields(TinyPreset)}
    return set((GPT2Config if arch == "gpt2" else LlamaConfig)().to_dict())


def build(arch: str, vocab: int, layers: int, overrides: dict | None = None):
    from transformers import DeepseekV3ForCausalLM, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    from core.model.tiny import tiny_config

    if arch == "deepseek-tiny":
        return DeepseekV3ForCausalLM(tiny_config(vocab_size=vocab, num_hidden_layers=layers, **(overrides or {})))
    if arch == "llama":
        return LlamaForCausalLM(LlamaConfig(**{"vocab_size": vocab, "num_hidden_layers": layers, **LLAMA_BASELINE,
                                               **(overrides or {})}))
    return GPT2LMHeadModel(GPT2Config(**{"vocab_size": vocab, "n_layer": layers, **GPT2_BASELINE, **(overrides or {})}))


def copy_loss(model, blocks, mask):
    """Mean loss (a tensor, for backward) and next-token accuracy on the masked (copy-predictable) targets."""
    import torch

    logits = model(input_ids=blocks).logits[:, :-1]
    target, predictable = blocks[:, 1:], mask[:, 1:]
    loss = torch.nn.functional.cross_entropy(logits[predictable], target[predictable])
    right = (logits.argmax(-1)[predictable] == target[predictable]).float().mean()
    return loss, right.item()


def train(arch: str, lr: float, args, build_model=build) -> dict:
    import torch

    from core.model.pretrain import copy_blocks

    torch.manual_seed(args.seed)
    model = build_model(arch, args.vocab, args.layers, args.set).to(args.device)
    gate = MLPGate(model, args.mlp_off_steps, args.mlp_ramp) if args.mlp_off_steps else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    if args.latent_lr != 1.0:
        LatentLR(model, optimizer, args.latent_lr, args.latent_lr_until)
    alphabet = torch.arange(100, 100 + args.alphabet)
    train_gen, eval_gen = torch.Generator().manual_seed(args.seed), torch.Generator().manual_seed(args.seed + 99)
    eval_blocks, eval_mask = (t.to(args.device)
                              for t in copy_blocks(32, args.seq_len, alphabet, 1, eval_gen, with_mask=True))
    curve, start, formed_at = [], time.perf_counter(), None
    for step in range(1, args.steps + 1):
        if gate:
            gate.at_step(step)
        blocks, mask = (t.to(args.device) for t in copy_blocks(args.batch, args.seq_len, alphabet, 1, train_gen,
                                                              with_mask=True))
        loss, _ = copy_loss(model, blocks, mask)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % args.eval_every == 0 or step == args.steps:
            with torch.no_grad():
                held, right = copy_loss(model, eval_blocks, eval_mask)
            curve.append({"step": step, "copy_loss": round(held.item(), 3), "copy_right": round(right, 3),
                          **({"mlp_scale": round(gate.scale, 3)} if gate else {})})
            print(json.dumps({"arch": arch, "lr": lr, **curve[-1], "seconds": round(time.perf_counter() - start)}),
                  file=sys.stderr, flush=True)
            if formed_at is None and right >= 0.5:
                formed_at = step
    return {"arch": arch, "lr": lr, "overrides": args.set, "mlp_off_steps": args.mlp_off_steps,
            "latent_lr": args.latent_lr, "latent_lr_until": args.latent_lr_until,
            "uniform_loss": round(math.log(args.alphabet), 3), "final": curve[-1],
            "copy_right_0.5_at_step": formed_at, "seconds": round(time.perf_counter() - start), "curve": curve}


def config_override(text: str) -> tuple[str, int | float | None]:
    """``KEY=VALUE`` for ``--set``; VALUE an int, a float or ``none`` (KEY is checked against the archs in main)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE")
    if value.lower() == "none":
        return key, None
    try:
        return key, int(value)
    except ValueError:
        try:
            return key, float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: VALUE must be a number or none") from None


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--alphabet", type=int, default=64, help="distinct tokens the blocks draw from")
    ap.add_argument("--vocab", type=int, default=512,
                    help="model vocabulary (deepseek-tiny's is 8,000; the blocks use ids 100-163 of the default "
                         "alphabet, and a smaller output layer only saves time: 0.5 s a step on one core, not 1.3)")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--lr", type=float, nargs="+", default=[1e-3], help="peak learning rate(s), constant")
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--archs", nargs="+", default=["deepseek-tiny", "gpt2"], choices=ARCHS)
    ap.add_argument("--set", type=config_override, action="append", default=[], metavar="KEY=VALUE",
                    help="change a config field of every arch trained in this run (repeatable): a deepseek-tiny "
                         "preset field (kv_lora_rank=128; q_lora_rank=none drops the query compression) or a "
                         "GPT2Config field (n_embd=128, n_inner=1 for almost no MLP)")
    ap.add_argument("--mlp-off-steps", type=int, default=0,
                    help="train the first N steps with every MLP's output scaled to 0 (attention only), then bring "
                         "the MLPs in over --mlp-ramp steps")
    ap.add_argument("--mlp-ramp", type=int, default=500)
    ap.add_argument("--latent-lr", type=float, default=1.0, metavar="M",
                    help="deepseek-tiny only: MLA's key/value latent down-projection trains at lr x M (0 = kept "
                         "at its random init); it is what holds copying back in MLA (docs/benchmarks/model.md, "
                         "session 19)")
    ap.add_argument("--latent-lr-until", type=int, default=None, metavar="STEP",
                    help="from this step on the latent trains like the rest (default: --latent-lr throughout)")
    return ap


def run(ap: argparse.ArgumentParser, args, build_model=build, record: dict | None = None) -> int:
    """Train every arch x lr of ``args`` (parsed by ``ap``, which reports bad ``--set`` keys) and print the JSON.
    ``build_model`` stands in for ``build`` where a caller changes the models, and ``record`` says how in the
    JSON (bench/mla_parts.py)."""
    args.set = dict(args.set)
    if args.latent_lr != 1.0 and set(args.archs) != {"deepseek-tiny"}:
        ap.error("--latent-lr: only deepseek-tiny has an MLA latent; run it with --archs deepseek-tiny")
    for arch in args.archs:
        known = config_fields(arch)
        unknown = sorted(set(args.set) - known)
        if unknown:
            ap.error(f"--set {', '.join(unknown)}: not a field of {arch}'s config (known: {', '.join(sorted(known))})")

    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    results = [train(arch, lr, args, build_model) for arch in args.archs for lr in args.lr]
    for r in results:
        r["copy_loss_over_uniform"] = round(r["final"]["copy_loss"] / r["uniform_loss"], 3)
    print(json.dumps({"steps": args.steps, "batch": args.batch, "seq_len": args.seq_len, "alphabet": args.alphabet,
                      "device": args.device, **(record or {}), "results": results}, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    return run(ap, ap.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
