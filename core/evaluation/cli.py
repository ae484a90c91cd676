"""`dsv eval` (BLEU-4 / ROUGE-L of an adapter on a validation set) and `dsv promote` (the gate).

Heavy imports stay inside the handlers so that `dsv --help` stays instant.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EVAL_HELP = """Score an adapter (base + LoRA) on a validation JSONL of chat records: the reference is each
record's last assistant turn, the hypothesis the model's greedy answer. Prints BLEU-4 (sacrebleu; 'zh'
tokenisation for Chinese) and ROUGE-L F1 (rouge-score with a jieba tokenizer), and logs an MLflow run
in the 'evaluation' experiment. --adapter is a directory, or a registered adapter name (its challenger,
or --version V)."""

PROMOTE_HELP = """Promote a challenger adapter to champion only if BOTH BLEU-4 and ROUGE-L improve on the
current champion's; otherwise refuse (exit code 1) and print the two comparisons. The first version
(no champion yet) is promoted. Without --data the metrics of each version's end-of-training evaluation
are compared (they must come from the same validation file); with --data both are evaluated now.
After the decision DSV_HOME/adapters/<name>/ holds the champion's files."""


def register(subparsers) -> None:
    ev = subparsers.add_parser("eval", help="BLEU-4 / ROUGE-L of an adapter on a validation set",
                               description=EVAL_HELP, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ev.add_argument("--adapter", default=None, help="adapter directory or registered adapter name (omit: base only)")
    ev.add_argument("--version", type=int, default=None, help="registered version (default: the challenger)")
    ev.add_argument("--data", required=True, help="validation JSONL (chat records)")
    ev.add_argument("--base", default=None, help="base checkpoint (default: the adapter's base_model_name_or_path)")
    ev.add_argument("--max-records", type=int, default=None, help="score only the first N records")
    ev.add_argument("--max-new-tokens", type=int, default=64)
    ev.add_argument("--batch-size", type=int, default=8)
    ev.add_argument("--json", action="store_true", help="print JSON")
    ev.set_defaults(func=_eval, _parser=ev)

    pr = subparsers.add_parser("promote", help="gate: challenger -> champion only if BLEU-4 AND ROUGE-L improve",
                               description=PROMOTE_HELP, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    pr.add_argument("name", help="adapter name (e.g. finance; registry model adapter-finance)")
    pr.add_argument("--version", type=int, default=None, help="version to promote (default: the challenger)")
    pr.add_argument("--data", default=None, help="evaluate challenger and champion on this JSONL now")
    pr.add_argument("--max-records", type=int, default=None)
    pr.add_argument("--max-new-tokens", type=int, default=64)
    pr.add_argument("--json", action="store_true", help="print JSON")
    pr.set_defaults(func=_promote, _parser=pr)


def _resolve_adapter(args, settings):
    """(adapter directory or None, registry info or None)."""
    from core.evaluation.gate import CHALLENGER, registry_name
    from core.registry import Registry
    from shared.io import InputError

    if args.adapter is None:
        return None, None
    if Path(args.adapter).is_dir():
        return Path(args.adapter), None
    registry = Registry.from_settings(settings)
    model = registry_name(args.adapter)
    info = (registry.get_version(model, args.version) if args.version is not None
            else registry.get_alias(model, CHALLENGER))
    if info is None:
        raise InputError(f"--adapter {args.adapter}: not a directory and no registered {model} challenger")
    return info.path, info


def _eval(args, settings) -> int:
    from core.evaluation.metrics import evaluate_adapter
    from core.finetune.recipe import file_sha256
    from core.registry import Registry
    from shared.io import InputError

    adapter_dir, info = _resolve_adapter(args, settings)
    if adapter_dir is None and args.base is None:
        raise InputError("pass --adapter and/or --base")
    scores = evaluate_adapter(adapter_dir, args.data, base=args.base, max_new_tokens=args.max_new_tokens,
                              batch_size=args.batch_size, max_records=args.max_records, progress=not args.json)
    registry = Registry.from_settings(settings)
    params = {"adapter": str(adapter_dir), "base": str(args.base), "data": args.data,
              "data_sha256": file_sha256(args.data), "bleu_tokenize": scores.bleu_tokenize,
              "model": info.name if info else None, "version": info.version if info else None}
    label = f"{info.name}-v{info.version}" if info else Path(adapter_dir or args.base).name
    with registry.start_run("evaluation", label, params) as run:
        run.log_metrics(scores.metrics())
        run.log_dict({"hypotheses": scores.hypotheses, "references": scores.references}, "samples.json")
    out = {"adapter": str(adapter_dir), "bleu4": scores.bleu4, "rougeL": scores.rouge_l, "records": scores.n,
           "bleu_tokenize": scores.bleu_tokenize, "run_id": run.run_id}
    if args.json:
        print(json.dumps(out, ensure_ascii=False))
    else:
        print(f"{label}: BLEU-4 {scores.bleu4:.2f}  ROUGE-L {scores.rouge_l:.4f}  ({scores.n} records, "
              f"BLEU tokenize={scores.bleu_tokenize}; MLflow run {run.run_id})")
    return 0


def _promote(args, settings) -> int:
    from core.evaluation.gate import promote
    from core.registry import Registry

    decision = promote(Registry.from_settings(settings), args.name, version=args.version, data=args.data,
                       adapters_dir=settings.adapters_dir, max_new_tokens=args.max_new_tokens,
                       max_records=args.max_records)
    print(json.dumps(decision.to_json()) if args.json else decision.report())
    if not decision.promoted:
        print("refused: both BLEU-4 and ROUGE-L must improve on the champion", file=sys.stderr)
        return 1
    _tell_running_server(settings, args.name)
    return 0


def _tell_running_server(settings, name: str) -> None:
    """The new champion's files are in place; a running server keeps its loaded copy until told."""
    from core.client import ModelClient, ModelRequestError, ModelUnavailable

    client = ModelClient(settings.server_url, settings.api_key, timeout=10.0, max_retries=0)
    if not client.available():
        print(f"no model server at {settings.server_url}: it will load the champion when it starts")
        return
    try:
        client.reload_adapter(name)
        print(f"model server at {settings.server_url} reloaded adapter {name!r}")
    except (ModelRequestError, ModelUnavailable) as exc:
        print(f"warning: could not reload {name!r} on {settings.server_url} ({exc}); "
              f"call POST /admin/adapters/{name}/reload with an admin key", file=sys.stderr)
