"""How long until a fresh model learns to copy? deepseek-tiny against a GPT-2 of the same width.

Both train on nothing but copy blocks (``core.model.pretrain.copy_blocks``: random tokens in which runs of
random length reappear after a random gap). Only the repeats are predictable, and only by copying, so
the loss on them (``copy_loss``) sits at the uniform ln(alphabet) until induction forms, then drops towards
0. The GPT-2 (standard multi-head attention, learned positions) is the baseline in the same run: if both
stay on the plateau, the budget is too short for either, not the DeepSeek code at fault.

    python bench/induction.py [--steps 4000] [--alphabet 64] [--lr 1e-3 3e-3] [--device cuda]

The learning rate decides whether copying forms at all (docs/benchmarks/model.md, "Copying, continued"): at
3e-3 (the build's default) deepseek-tiny stays on the plateau for 4,000 steps (session 16); at 1e-3 it
leaves it (0.88 of the uniform loss at 4,000 steps, session 17), and a minimal transformer copies.
``--lr`` takes several values, each trained in the same run for comparison.
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


def build(arch: str, vocab: int, layers: int):
    from transformers import DeepseekV3ForCausalLM, GPT2Config, GPT2LMHeadModel

    from core.model.tiny import tiny_config

    if arch == "deepseek-tiny":
        return DeepseekV3ForCausalLM(tiny_config(vocab_size=vocab, num_hidden_layers=layers))
    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_embd=256, n_layer=layers, n_head=4, n_positions=1024,
                                      bos_token_id=1, eos_token_id=2))


def copy_loss(model, blocks, mask):
    """Mean loss (a tensor, for backward) and next-token accuracy on the masked (copy-predictable) targets."""
    import torch

    logits = model(input_ids=blocks).logits[:, :-1]
    target, predictable = blocks[:, 1:], mask[:, 1:]
    loss = torch.nn.functional.cross_entropy(logits[predictable], target[predictable])
    right = (logits.argmax(-1)[predictable] == target[predictable]).float().mean()
    return loss, right.item()


def train(arch: str, lr: float, args) -> dict:
    import torch

    from core.model.pretrain import copy_blocks

    torch.manual_seed(args.seed)
    model = build(arch, args.vocab, args.layers).to(args.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    alphabet = torch.arange(100, 100 + args.alphabet)
    train_gen, eval_gen = torch.Generator().manual_seed(args.seed), torch.Generator().manual_seed(args.seed + 99)
    eval_blocks, eval_mask = (t.to(args.device) for t in copy_blocks(32, args.seq_len, alphabet, 1, eval_gen, with_mask=True))
    curve, start, formed_at = [], time.perf_counter(), None
    for step in range(1, args.steps + 1):
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
            curve.append({"step": step, "copy_loss": round(held.item(), 3), "copy_right": round(right, 3)})
            print(json.dumps({"arch": arch, "lr": lr, **curve[-1], "seconds": round(time.perf_counter() - start)}),
                  file=sys.stderr, flush=True)
            if formed_at is None and right >= 0.5:
                formed_at = step
    return {"arch": arch, "lr": lr, "uniform_loss": round(math.log(args.alphabet), 3), "final": curve[-1],
            "copy_right_0.5_at_step": formed_at, "seconds": round(time.perf_counter() - start), "curve": curve}


def main(argv: list[str] | None = None) -> int:
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
    ap.add_argument("--archs", nargs="+", default=["deepseek-tiny", "gpt2"], choices=["deepseek-tiny", "gpt2"])
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    results = [train(arch, lr, args) for arch in args.archs for lr in args.lr]
    for r in results:
        r["copy_loss_over_uniform"] = round(r["final"]["copy_loss"] / r["uniform_loss"], 3)
    print(json.dumps({"steps": args.steps, "batch": args.batch, "seq_len": args.seq_len, "alphabet": args.alphabet,
                      "device": args.device, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
