"""Small helpers for the per-app ``cli`` modules so that every command group looks the same."""
from __future__ import annotations

import argparse


def add_group(subparsers, name: str, help: str) -> argparse._SubParsersAction:
    """Add ``dsv <name>`` with its own sub-commands; ``dsv <name>`` alone prints its help."""
    parser = subparsers.add_parser(name, help=help, description=help)
    parser.set_defaults(_parser=parser, func=None)
    return parser.add_subparsers(dest=f"{name}_command", metavar="COMMAND")


def add_command(group, name: str, func, help: str) -> argparse.ArgumentParser:
    """Add a leaf command whose handler is ``func(args, settings)``."""
    parser = group.add_parser(name, help=help, description=help,
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.set_defaults(func=func, _parser=parser)
    return parser
