"""`dsv finetune` (train a LoRA adapter from a YAML recipe) and `dsv finetune-data` (build its data).

Heavy imports (torch, transformers, peft) happen inside the handlers so that `dsv --help` stays instant.
"""
from __future__ import annotations

import argparse
import json

from shared.cli_helpers import add_command, add_group

FINETUNE_HELP = """Train a PEFT LoRA adapter on JSONL chat records, driven by a YAML config.

The config names its components (peft, optimizer, lr_scheduler) and sections (data, training,
curriculum, evaluation); see core/finetune/configs/lora_tiny.yaml. Any key can be overridden on the
command line as KEY=VALUE (dotted, e.g. training.max_steps=20 peft.r=8 curriculum.0.epochs=1).
The adapter is written in standard PEFT format to DSV_HOME/adapters/<adapter_name>/ and registered
in MLflow as adapter-<adapter_name> (alias challenger). An interrupted run resumes from its last
checkpoint when the same command is re-run. Runs unchanged under
`torchrun --nproc_per_node N -m core.cli finetune ...` (DDP, gloo on CPU).
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser("finetune", help="train a LoRA adapter from a YAML recipe",
                                   description=FINETUNE_HELP,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML recipe (e.g. core/finetune/configs/lora_tiny.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    parser.add_argument("--merge", action="store_true", help="also write base+adapter merged as a full model")
    parser.add_argument("--check", action="store_true", help="validate the config and exit (no training)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(func=_finetune, _parser=parser)

    group = add_group(subparsers, "finetune-data", "build fine-tuning data: mix sources, back-translate, demo set")
    mix = add_command(group, "mix", _mix, "mix named JSONL sources at a ratio (e.g. general=3 domain=5 adversarial=2)")
    mix.add_argument("sources", nargs="+", metavar="NAME=PATH:WEIGHT", help="a source file and its ratio weight")
    mix.add_argument("--out", required=True, help="output JSONL")
    mix.add_argument("--total", type=int, default=None, help="records in the mix (default: max without repeats)")
    mix.add_argument("--seed", type=int, default=0)

    bt = add_command(group, "backtranslate",
                     _backtranslate, "paraphrase user turns by translating to pivot languages and back")
    bt.add_argument("--input", required=True, help="input chat JSONL")
    bt.add_argument("--out", required=True, help="output JSONL (paraphrases only)")
    bt.add_argument("--pivots", default="fr,de,ja", help="comma-separated pivot language codes")
    bt.add_argument("--model", default="deepseek-tiny", help="translator model name on the endpoint")
    bt.add_argument("--base-url", default=None, help="OpenAI-compatible base URL (default: DSV_SERVER_URL)")

    demo = add_command(group, "demo", _demo, "write the SYNTHETIC demo domain set (train.jsonl, val.jsonl)")
    demo.add_argument("--out", default=None, help="directory (default: DSV_HOME/data/demo)")
    demo.add_argument("--train", type=int, default=200, help="training records")
    demo.add_argument("--val", type=int, default=24, help="validation records")
    demo.add_argument("--seed", type=int, default=0)


def _finetune(args, settings) -> int:
    from core.finetune.config import load_config

    overrides = list(args.overrides) + (["merge=true"] if args.merge else [])
    config = load_config(args.config, overrides, home=settings.home)
    if args.check:
        print(f"{args.config}: OK")
        return 0
    import os

    from core.finetune.recipe import run_finetune

    result = run_finetune(config, settings, progress=not args.no_progress)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun only rank 0 reports
        if args.json:
            print(json.dumps(result.to_json(), ensure_ascii=False))
        else:
            losses = [loss for _, loss in result.loss_history]
            print(f"adapter {result.adapter_name}: {result.steps} steps"
                  + (f" (resumed from step {result.resumed_from_step})" if result.resumed_from_step else ""))
            print(f"  trainable parameters: {result.trainable_params:,} of {result.total_params:,} "
                  f"({100 * result.trainable_share:.3f}%)")
            if losses:
                print(f"  loss: {losses[0]:.4f} -> {losses[-1]:.4f}; {result.tokens_per_second:,.0f} tokens/s")
            for stage in result.stages:
                print(f"  stage {stage.name}: {stage.records} records, {stage.steps} steps, "
                      f"eval loss {stage.eval_loss if stage.eval_loss is not None else '-'}")
            if result.eval_metrics:
                print(f"  BLEU-4 {result.eval_metrics['bleu4']:.2f}  ROUGE-L {result.eval_metrics['rougeL']:.4f}")
            print(f"  saved: {result.adapter_dir}"
                  + (f"; registered version {result.registered_version} (challenger)" if result.registered_version else ""))
            if result.merged_dir:
                print(f"  merged model: {result.merged_dir}")
    return 0


def _parse_source(text: str) -> tuple[str, str, float]:
    from shared.io import InputError

    name, sep, rest = text.partition("=")
    path, sep2, weight = rest.rpartition(":")
    try:
        if not (sep and sep2 and name and path):
            raise ValueError
        return name, path, float(weight)
    except ValueError:
        raise InputError(f"source {text!r}: expected NAME=PATH:WEIGHT (e.g. domain=data/d.jsonl:5)") from None


def _mix(args, settings) -> int:
    from core.finetune.data import write_chat_jsonl
    from core.finetune.mixer import mix_files

    parsed = [_parse_source(s) for s in args.sources]
    result = mix_files({n: p for n, p, _ in parsed}, {n: w for n, _, w in parsed}, total=args.total, seed=args.seed)
    write_chat_jsonl(args.out, result.records)
    print(json.dumps({"out": args.out, "counts": result.counts, "available": result.available,
                      "realised_ratio": result.realised_ratio, "repeated": result.repeated}))
    return 0


def _backtranslate(args, settings) -> int:
    from core.client import ModelClient
    from core.finetune.backtranslate import BackTranslator, back_translate
    from core.finetune.data import load_chat_jsonl, write_chat_jsonl

    client = ModelClient(args.base_url or settings.server_url, settings.api_key)
    translator = BackTranslator(client, args.model, tuple(p.strip() for p in args.pivots.split(",") if p.strip()))
    result = back_translate(load_chat_jsonl(args.input), translator, progress=True)
    write_chat_jsonl(args.out, result.records)
    print(json.dumps({"out": args.out, "paraphrases": len(result.records), "per_pivot": result.per_pivot,
                      "dropped_unchanged": result.dropped_unchanged, "dropped_empty": result.dropped_empty}))
    return 0


def _demo(args, settings) -> int:
    from core.finetune.synthetic import write_synthetic_set

    out = args.out or settings.home / "data" / "demo"
    paths = write_synthetic_set(out, args.train, args.val, args.seed)
    print(json.dumps({k: str(v) for k, v in paths.items()}))
    return 0
