"""`dsv`: one command line for every layer and app.

Each layer or app owns a ``cli`` module exposing ``register(subparsers)``, which adds its sub-command
and points it at a function taking ``(args, settings)``. This file only wires them together, so adding
an app never means editing a central ``if/elif``. Command modules keep heavy imports (torch, MONAI,
FAISS) inside their functions so that ``dsv --help`` stays instant.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from shared.io import InputError
from shared.logging import setup_logging
from shared.settings import load_settings

COMMAND_MODULES = (
    "core.model.cli",        # dsv model ...
    "core.finetune.cli",     # dsv finetune ...
    "core.evaluation.cli",   # dsv eval / dsv promote
    "core.serving.cli",      # dsv serve
    "apps.finance.cli",      # dsv finance ...
    "apps.medical.cli",      # dsv medical ...
    "apps.manufacturing.cli",  # dsv manufacturing ...
    "apps.legal.cli",        # dsv legal ...
    "shared.ops_cli",        # dsv run / dsv release
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dsv",
        description="DeepSeek core (model, fine-tuning, evaluation, serving) and the four vertical apps.",
    )
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO (default), WARNING, ERROR")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                continue  # that layer is not part of this checkout
            raise
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        # `dsv` or `dsv finance` alone: show the help of the deepest parser reached.
        (getattr(args, "_parser", None) or parser).print_help()
        return 2
    setup_logging(args.log_level)
    try:
        result = args.func(args, load_settings())
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
