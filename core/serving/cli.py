"""``dsv serve``: the OpenAI-compatible model server (base model + LoRA adapters, dynamic batching)."""
from __future__ import annotations

import argparse
import gc
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="Run the OpenAI-compatible model server (base model + LoRA adapters).",
        description=(
            "Serve the base model and every LoRA adapter under --adapters-dir through the OpenAI API "
            "(/v1/chat/completions, /v1/completions, /v1/models) plus /v1/score (label probabilities), "
            "/health, /ready, /metrics and /admin/* (adapters, degrade mode). Concurrent requests are "
            "batched at token boundaries. API keys: env DSV_API_KEYS='key:tenant,...' and/or "
            "--api-keys-file (lines 'key:tenant'); with none the server is open. See docs/serving.md."),
    )
    parser.add_argument("--model", type=Path, default=None,
                        help="checkpoint directory (default: settings.default_model_dir, DSV_HOME/models/deepseek-tiny)")
    parser.add_argument("--served-model-name", default=None,
                        help="model id clients use for the base (default: the checkpoint directory name)")
    parser.add_argument("--adapters-dir", type=Path, default=None,
                        help="PEFT adapters, one per sub-directory (default: settings.adapters_dir, DSV_HOME/adapters)")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (loopback by default)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-batch", type=int, default=32, help="most sequences decoded together")
    parser.add_argument("--max-wait-ms", type=float, default=10.0,
                        help="how long an idle engine waits for a burst to fill a batch")
    parser.add_argument("--queue-size", type=int, default=256, help="waiting requests before answering 429")
    parser.add_argument("--max-adapters", type=int, default=8, help="LoRA adapters kept in memory (LRU)")
    parser.add_argument("--default-max-tokens", type=int, default=256,
                        help="completion length when a request does not set max_tokens")
    parser.add_argument("--max-body-bytes", type=int, default=1 << 20, help="larger request bodies get 413")
    parser.add_argument("--quantize", choices=["none", "int8"], default="none",
                        help="int8: dynamic int8 Linear weights (LoRA-targeted layers stay float)")
    parser.add_argument("--api-keys-file", type=Path, default=None, help="file of 'key:tenant' lines")
    parser.add_argument("--degrade", action="store_true",
                        help="start in degrade mode (caps max_tokens and batch wait; see /admin/degrade)")
    parser.add_argument("--degrade-max-tokens", type=int, default=32, help="max_tokens cap in degrade mode")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("DSV_TORCH_THREADS", "1")),
                        help="torch intra-op threads (1 avoids OpenMP spinning on shared small machines)")
    parser.set_defaults(func=serve, _parser=parser)


def build_server(args, settings):
    """Load the model and assemble engine -> serving layer -> FastAPI app (also used by bench/)."""
    import torch

    from core.model.loading import load_model
    from core.serving.adapters import AdapterStore
    from core.serving.api import build_app
    from core.serving.auth import TenantKeys
    from core.serving.engine import Engine, EngineConfig
    from core.serving.serving import DegradeState, OpenAIServing, ServingConfig
    from shared.io import InputError

    torch.set_num_threads(max(1, args.threads))
    model_dir = args.model or settings.default_model_dir
    if args.model is None and not Path(model_dir).exists():
        raise InputError(f"{model_dir}: no model to serve yet; build it with `dsv model ensure` "
                         "(or pass --model PATH)")
    adapters_dir = args.adapters_dir or settings.adapters_dir
    keys = TenantKeys.load(args.api_keys_file)
    loaded = load_model(model_dir)
    model = loaded.model
    if args.quantize == "int8":
        from core.serving.quantize import lora_targets, quantize_int8

        model = quantize_int8(model, keep_float=lora_targets(adapters_dir))
    store = AdapterStore(model, adapters_dir, max_loaded=args.max_adapters, quantized=args.quantize == "int8",
                         registry_lookup=_registry_lookup(settings))
    engine = Engine(model, loaded.tokenizer, store, EngineConfig(
        max_batch=args.max_batch, max_wait_s=args.max_wait_ms / 1000.0, queue_size=args.queue_size))
    serving = OpenAIServing(
        engine, ServingConfig(base_name=args.served_model_name or Path(model_dir).name,
                              default_max_tokens=args.default_max_tokens),
        DegradeState(enabled=args.degrade, max_tokens_cap=args.degrade_max_tokens))
    log.info("serving %s (%s) with adapters from %s: %s", serving.config.base_name, args.quantize,
             adapters_dir, ", ".join(store.names()) or "none yet")
    return build_app(serving, keys, max_body_bytes=args.max_body_bytes)


def _registry_lookup(settings):
    """Resolve ``name@version`` / ``name@alias`` through the MLflow registry (opened on first use)."""
    try:
        from core.registry import Registry
    except ImportError:  # registry layer not part of this checkout
        return None
    registry = None

    def lookup(name: str, ref: str) -> Path | None:
        nonlocal registry
        registry = registry or Registry.from_settings(settings)
        info = registry.get_version(name, int(ref)) if ref.isdigit() else registry.get_alias(name, ref)
        return Path(info.path) if info is not None else None

    return lookup


def serve(args, settings) -> int:
    import uvicorn

    app = build_server(args, settings)
    # Move the millions of objects torch/transformers created at start-up out of the garbage
    # collector's view: otherwise every full collection rescans them and the HTTP layer's
    # requests/s drops by half (measured on /health).
    gc.collect()
    gc.freeze()
    # SIGTERM / Ctrl-C: uvicorn stops accepting, lets responses finish, then the lifespan stops the engine.
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False,
                timeout_graceful_shutdown=5)
    return 0
