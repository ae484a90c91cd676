"""Can a model copy from its context? Loss on a repeated run of random tokens against its first occurrence.

An answer that must quote its evidence or name the article a passage applies has to copy tokens from the
prompt. A model with induction-style copying predicts the second occurrence of a random run almost
perfectly; one without it is as lost on the repeat as on the first occurrence. The first occurrence is the
baseline in the same run, so the figure is a ratio (repeat loss / first loss: ~1 = no copying, near 0 =
copies) and the next-token accuracy on the repeat. Two kinds of run: uniformly random token ids (only
copying predicts them) and spans of domain text from a corpus the build never saw (``--text-spans``; the
first occurrence's loss is then also the model's language-model loss on unseen text).

    python bench/model_copy.py [--model var/models/deepseek-tiny] [--adapter var/adapters/legal]
                               [--span-lengths 24 100 200]

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


def repeat_figures(model, runs, bos: int) -> dict:
    """Loss and next-token accuracy on each run's first occurrence and on its immediate repeat
    (``[BOS, run, run]``); ``runs`` is a ``[n, length]`` tensor of token ids."""
    import torch

    n, run_length = runs.shape
    x = torch.cat([torch.full((n, 1), bos), runs, runs], dim=1)
    with torch.no_grad():
        logits = model(input_ids=x).logits[:, :-1]
    target = x[:, 1:]
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1),
                                             reduction="none").view(n, -1)
    right = (logits.argmax(-1) == target).float()
    # Position 0 predicts the run's first token from BOS; the repeat's first token has no cue either
    # (any token may follow the run), so both halves leave their first prediction out.
    first, repeat = slice(1, run_length), slice(run_length + 1, 2 * run_length)
    loss_first, loss_repeat = loss[:, first].mean().item(), loss[:, repeat].mean().item()
    return {"run_length": run_length, "runs": n, "loss_first": round(loss_first, 3),
            "loss_repeat": round(loss_repeat, 3), "ratio_repeat_over_first": round(loss_repeat / loss_first, 3),
            "next_token_right_on_first": round(right[:, first].mean().item(), 3),
            "next_token_right_on_repeat": round(right[:, repeat].mean().item(), 3)}


def copy_figures(model, vocab_size: int, bos: int, run_length: int, runs: int, seed: int) -> dict:
    """Runs of uniformly random token ids: nothing but copying predicts the repeat (the hard case: rare
    tokens too)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    # Token ids from 100 up: clear of the special and byte tokens at the start of a BPE vocabulary.
    return repeat_figures(model, torch.randint(100, vocab_size, (runs, run_length), generator=generator), bos)


def unseen_text_stream(tokenizer, seed: int) -> list[int]:
    """Token ids of domain text the model never trained on (a corpus of another seed than the build's 0),
    without the BOS / EOS that frame each document."""
    from core.model.build import tokenize_corpus
    from core.model.corpus import CorpusSpec, generate_corpus

    corpus = generate_corpus(CorpusSpec(seed=seed + 1000, cases_per_domain=10, prc_statute_articles=40,
                                        eu_statute_articles=10))
    return [t for ids in tokenize_corpus(corpus, tokenizer) for t in ids[1:-1]]


def frequent_token_figures(model, stream: list[int], special_ids, top: int, bos: int, run_length: int, runs: int,
                           seed: int) -> dict:
    """Random runs of the ``top`` most frequent tokens of ``stream``: the symbols a copy warm-up trains on
    (``dsv model build --preset copying``: 64), between whole-vocabulary runs and text."""
    import torch

    from core.model.pretrain import frequent_tokens

    alphabet = frequent_tokens(torch.tensor(stream), top, special_ids)
    pick = torch.randint(0, len(alphabet), (runs, run_length), generator=torch.Generator().manual_seed(seed))
    return {"alphabet": len(alphabet), **repeat_figures(model, alphabet[pick], bos)}


def text_span_figures(model, tokenizer, stream: list[int], run_length: int, runs: int, seed: int) -> dict:
    """Spans of ``stream`` (domain text the model never trained on). The first occurrence's loss is the
    model's language-model loss on such text; the repeat shows whether it copies text it has just read,
    which is what a prompt asks of it."""
    import random

    import torch

    rng = random.Random(seed)
    starts = [rng.randrange(0, len(stream) - run_length) for _ in range(runs)]
    spans = torch.tensor([stream[s: s + run_length] for s in starts])
    return repeat_figures(model, spans, tokenizer.bos_token_id)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=REPO / "var" / "models" / "deepseek-tiny", help="checkpoint directory")
    ap.add_argument("--adapter", type=Path, default=None, help="a LoRA adapter directory to apply first")
    ap.add_argument("--run-lengths", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--runs", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--text-spans", type=int, default=32, help="spans of unseen domain text to repeat (0: none)")
    ap.add_argument("--span-lengths", type=int, nargs="+", default=[24], metavar="N",
                    help="tokens per text span; the repeat copies from N tokens back, so long spans show how far "
                         "back copying reaches (a legal prompt's passages sit 100-500 tokens before the answer)")
    ap.add_argument("--frequent", type=int, nargs="*", default=[64, 512], metavar="N",
                    help="also random runs of 16 over the N most frequent tokens of that text (none: skip)")
    args = ap.parse_args(argv)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    if not (args.model / "config.json").exists():
        ap.error(f"--model {args.model}: no config.json (build it with `dsv model ensure`)")
    model = AutoModelForCausalLM.from_pretrained(str(args.model))
    longest = 2 * max(args.span_lengths) + 1
    if args.text_spans and longest > model.config.max_position_embeddings:
        ap.error(f"--span-lengths {max(args.span_lengths)}: a span and its repeat need {longest} positions, the model "
                 f"has {model.config.max_position_embeddings}")
    if args.adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(args.adapter))
    model.eval()
    config = model.config
    bos = config.bos_token_id if config.bos_token_id is not None else 0
    figures = [copy_figures(model, config.vocab_size, bos, n, args.runs, args.seed) for n in args.run_lengths]
    spans, frequent = [], []
    if args.text_spans or args.frequent:
        tokenizer = AutoTokenizer.from_pretrained(str(args.model))
        stream = unseen_text_stream(tokenizer, args.seed)
        if args.text_spans:
            spans = [text_span_figures(model, tokenizer, stream, n, args.text_spans, args.seed)
                     for n in args.span_lengths]
        frequent = [frequent_token_figures(model, stream, tokenizer.all_special_ids, top, bos, 16, args.runs, args.seed)
                    for top in args.frequent]
    print(json.dumps({"model": str(args.model), "adapter": str(args.adapter) if args.adapter else None,
                      "random_token_runs": figures, "frequent_token_runs": frequent, "text_spans": spans},
                     indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
