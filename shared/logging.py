"""One logging set-up for every CLI command and service (rich on a terminal, plain otherwise)."""
from __future__ import annotations

import logging
import os
import sys


def setup_logging(level: str | None = None) -> None:
    level = (level or os.environ.get("DSV_LOG_LEVEL", "INFO")).upper()
    root = logging.getLogger()
    if root.handlers:  # already configured (pytest, a parent command)
        root.setLevel(level)
        return
    if sys.stderr.isatty():
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(rich_tracebacks=False, show_path=False)
        fmt = "%(message)s"
    else:
        handler = logging.StreamHandler(sys.stderr)
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    handler.setFormatter(logging.Formatter(fmt))
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("httpx", "urllib3", "kafka", "filelock", "mlflow", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
