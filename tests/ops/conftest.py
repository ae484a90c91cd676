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
