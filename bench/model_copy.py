"""Can a model copy from its context? Loss on a repeated run of random tokens against its first occurrence.

An answer that must quote its evidence or name the article a passage applies has to copy tokens from the
prompt. A model with induction-style copying predicts the second occurrence of a random run almost
perfectly; one without it is as lost on the repeat as on the first occurrence. The first occurrence is the
baseline in the same run, so the figure is a ratio (repeat loss / first loss: ~1 = no copying, near 0 =
copies) and the next-token accuracy on the repeat.

    python bench/model_copy.py [--model var/models/deepseek-tiny] [--adapter var/adapters/legal]

Session 15 (docs/benchmarks/legal.md): deepseek-tiny 11.00 / 11.10 on runs of 16 tokens, accuracy 0.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def copy_figures(model, vocab_size: int, bos: int, run_length: int, runs: int, seed: int) -> dict:
    import torch

    generator = torch.Generator().manual_seed(seed)
    # Token ids from 100 up: clear of the special and byte tokens at the start of a BPE vocabulary.
    run = torch.randint(100, vocab_size, (runs, run_length), generator=generator)
    x = torch.cat([torch.full((runs, 1), bos), run, run], dim=1)
    with torch.no_grad():
        logits = model(input_ids=x).logits[:, :-1]
    target = x[:, 1:]
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1),
                                             reduction="none").view(runs, -1)
    right = (logits.argmax(-1) == target).float()
    # Position 0 predicts the run's first token from BOS; the repeat's first token has no cue either
    # (any token may follow the run), so both halves leave their first prediction out.
    first, repeat = slice(1, run_length), slice(run_length + 1, 2 * run_length)
    loss_first, loss_repeat = loss[:, first].mean().item(), loss[:, repeat].mean().item()
    return {"run_length": run_length, "runs": runs, "loss_first": round(loss_first, 3),
            "loss_repeat": round(loss_repeat, 3), "ratio_repeat_over_first": round(loss_repeat / loss_first, 3),
            "next_token_right_on_repeat": round(right[:, repeat].mean().item(), 3)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=REPO / "var" / "models" / "deepseek-tiny", help="checkpoint directory")
    ap.add_argument("--adapter", type=Path, default=None, help="a LoRA adapter directory to apply first")
    ap.add_argument("--run-lengths", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--runs", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    if not (args.model / "config.json").exists():
        ap.error(f"--model {args.model}: no config.json (build it with `dsv model ensure`)")
    model = AutoModelForCausalLM.from_pretrained(str(args.model))
    if args.adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(args.adapter))
    model.eval()
    config = model.config
    bos = config.bos_token_id if config.bos_token_id is not None else 0
    figures = [copy_figures(model, config.vocab_size, bos, n, args.runs, args.seed) for n in args.run_lengths]
    print(json.dumps({"model": str(args.model), "adapter": str(args.adapter) if args.adapter else None,
                      "random_token_runs": figures}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
