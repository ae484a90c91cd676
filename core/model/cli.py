"""`dsv model ...`: build the default model, inspect a checkpoint, list the registry, quick generation.

Heavy imports (torch, transformers, mlflow) stay inside the handlers so `dsv --help` is instant.
"""
from __future__ import annotations

import json
from pathlib import Path

from shared.cli_helpers import add_command, add_group


def register(subparsers) -> None:
    group = add_group(subparsers, "model", "The model layer: build deepseek-tiny, inspect checkpoints, "
                                           "list registered versions, try a prompt.")

    p = add_command(group, "build", cmd_build,
                    "Generate the bilingual domain corpus, train the tokenizer, pre-train deepseek-tiny "
                    "(real DeepseekV3 architecture) and register it in MLflow as the champion. "
                    "About 10 minutes on 2 CPU cores for the default preset.")
    p.add_argument("--seed", type=int, default=0, help="seed for corpus, initialisation and batch order")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the preset's)")
    p.add_argument("--preset", choices=["default", "copying", "test"], default="default",
                   help="'copying' (experimental) runs a copy-block warm-up before pre-training so that the model "
                        "copies from its prompt, within its 512-token blocks (about 80 minutes on 2 CPU cores; the heads "
                        "formed in one seed of two: docs/benchmarks/model.md, 'Copying, sessions 21-22'). A legal "
                        "adapter fine-tuned on it writes grounded answers for about half of the questions (22 of 40 "
                        "with the server's copy-constrained quotes; 1 of 40 on the default build: docs/benchmarks/"
                        "legal.md, 'Session 23'); 'test' builds a "
                        "toy-sized model in seconds through the same code")
    p.add_argument("--out", type=Path, default=None, help="output directory (default: DSV_HOME/models/deepseek-tiny)")
    p.add_argument("--copy-share", type=float, default=None,
                   help="share of training blocks that are synthetic copy blocks (0-1, default 0): teaches "
                        "copying from the prompt, which needs a long build (many --steps; see "
                        "docs/benchmarks/model.md, 'Copying')")
    p.add_argument("--lr", type=float, default=None,
                   help="peak learning rate (default: the preset's, 3e-3). Copying from copy blocks is learnt at "
                        "1e-3 and stalls at 3e-3, so a --copy-share build wants --lr 1e-3 "
                        "(docs/benchmarks/model.md, 'Copying, continued')")
    p.add_argument("--copy-warmup-steps", type=int, default=None, metavar="N",
                   help="steps of the copy-block warm-up before pre-training, at most (default: the preset's, "
                        "6000 for 'copying', none otherwise; 0 = none)")
    p.add_argument("--device", default=None, help="torch device to pre-train on, e.g. cuda (default: cpu)")
    p.add_argument("--force", action="store_true", help="rebuild even if the output directory holds a model")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")

    p = add_command(group, "ensure", cmd_ensure,
                    "Build the default model only if it is missing (what `make run` calls); print what was done.")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")

    p = add_command(group, "info", cmd_info,
                    "Load a checkpoint directory (local files only) and print its architecture, parameter "
                    "count and load time.")
    p.add_argument("path", type=Path, help="Hugging Face checkpoint directory")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = add_command(group, "list", cmd_list, "List registered versions of a model with their aliases, "
                                             "paths and final metrics (MLflow registry).")
    p.add_argument("--name", default="deepseek-tiny", help="registered model name (an adapter name works too)")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = add_command(group, "generate", cmd_generate,
                    "Greedy-generate a reply to PROMPT with the checkpoint at PATH (chat-templated).")
    p.add_argument("path", type=Path, help="Hugging Face checkpoint directory")
    p.add_argument("prompt", help="the user message")
    p.add_argument("--system", default=None, help="optional system message")
    p.add_argument("--max-new-tokens", type=int, default=64)


def cmd_build(args, settings) -> int:
    from core.model.build import build_model
    from core.model.loading import check_checkpoint_dir
    from shared.io import InputError

    out = args.out or settings.default_model_dir
    if not args.force:
        try:
            check_checkpoint_dir(out)
        except InputError:
            pass
        else:
            print(f"{out} already holds a model; use --force to rebuild it")
            return 0
    result = build_model(settings, preset=args.preset, seed=args.seed, steps=args.steps, out=out,
                         progress=not args.no_progress, report=print, copy_share=args.copy_share,
                         device=args.device, lr=args.lr, copy_warmup_steps=args.copy_warmup_steps)
    for sample in result.samples:
        print(f"[{sample['domain']}] {sample['prompt'][:60]}...\n    -> {sample['reply']}")
    print(json.dumps({"path": str(result.path), "version": result.version, "run_id": result.run_id,
                      "initial_loss": round(result.pretrain.initial_loss, 4),
                      "final_loss": round(result.pretrain.final_loss, 4),
                      "tokens_per_second": round(result.pretrain.tokens_per_second, 1),
                      **({"copy_warmup": result.copy_warmup.final, "copy_warmup_steps": result.copy_warmup.steps}
                         if result.copy_warmup else {}),
                      "build_seconds": round(result.seconds, 1)}))
    return 0


def cmd_ensure(args, settings) -> int:
    from core.model.build import ensure_default_model

    ensure_default_model(settings, progress=not args.no_progress)
    return 0


def cmd_info(args, settings) -> int:
    from core.model.loading import load_model

    loaded = load_model(args.path)
    config = loaded.model.config
    info = {
        "path": str(loaded.path),
        "architecture": type(loaded.model).__name__,
        "model_type": config.model_type,
        "parameters": sum(p.numel() for p in loaded.model.parameters()),
        "vocab_size": config.vocab_size,
        "layers": config.num_hidden_layers,
        "hidden_size": config.hidden_size,
        "load_seconds": round(loaded.load_seconds, 3),
    }
    for key in ("n_routed_experts", "n_shared_experts", "num_experts_per_tok", "q_lora_rank", "kv_lora_rank"):
        if getattr(config, key, None) is not None:
            info[key] = getattr(config, key)
    build_info = loaded.path / "build_info.json"
    if build_info.exists():
        built = json.loads(build_info.read_text(encoding="utf-8"))
        info.update({k: built[k] for k in ("preset", "seed", "steps", "final_loss", "mlflow_run_id") if k in built})
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            print(f"{key:>20}: {value}")
    return 0


def cmd_list(args, settings) -> int:
    from core.registry import Registry

    registry = Registry.from_settings(settings)
    versions = registry.versions(args.name)
    if args.json:
        print(json.dumps([{"version": v.version, "aliases": list(v.aliases), "path": str(v.path),
                           "run_id": v.run_id, "tags": v.tags, "metrics": v.metrics} for v in versions], indent=2))
        return 0
    if not versions:
        print(f"no versions of {args.name!r} registered in {registry.tracking_uri}")
        return 0
    for v in versions:
        aliases = ",".join(v.aliases) or "-"
        loss = v.metrics.get("final_loss")
        if loss is None and "build.final_loss" in v.tags:  # registered by `ensure` from build_info.json
            loss = float(v.tags["build.final_loss"])
        loss_text = f"final_loss={loss:.3f}" if loss is not None else ""
        print(f"{args.name} v{v.version:<3} [{aliases}] {v.path} {loss_text}")
    return 0


def cmd_generate(args, settings) -> int:
    import torch

    from core.model.loading import load_model

    loaded = load_model(args.path)
    messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
        {"role": "user", "content": args.prompt}]
    tok = loaded.tokenizer
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                  return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = loaded.model.generate(**ids, max_new_tokens=args.max_new_tokens, do_sample=False,
                                    pad_token_id=tok.pad_token_id)
    print(tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))
    return 0
