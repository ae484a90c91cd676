"""Fixtures of the operations tests: the repository root and the Debian tools they drive."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def require_tool(name: str, package: str) -> str:
    """Path of a CLI tool; a clear failure (not a skip) when missing: `make test` installs it."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"`{name}` is not installed: apt-get install {package} (make test's system-deps target does it)")
    return path


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def check_command():
    """``check(argv) -> None or why not``: does this container command exist in the project?

    ``dsv ...`` is parsed by the real ``core.cli`` parser (sub-commands and options both checked);
    ``streamlit run SCRIPT ...`` needs SCRIPT in the repository."""
    import contextlib
    import io

    from core.cli import build_parser

    parser = build_parser()

    def check(argv: list[str]) -> str | None:
        if argv[0] == "dsv":
            try:
                with contextlib.redirect_stderr(io.StringIO()) as err:
                    args = parser.parse_args(argv[1:])
            except SystemExit:
                return f"`{' '.join(argv)}`: {err.getvalue().strip().splitlines()[-1]}"
            if getattr(args, "func", None) is None:
                return f"`{' '.join(argv)}` is a command group, not a command"
        elif argv[0] == "streamlit":
            if argv[1] != "run" or not (REPO / argv[2]).exists():
                return f"`{' '.join(argv[:3])}`: {argv[2]} does not exist"
        return None

    return check
