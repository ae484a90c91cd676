"""The per-record half of ingest, which needs no shared state: parse, validate, chunk and embed a batch.

Ingest runs it in worker processes (``ProcessPoolExecutor``, ``spawn``) so it uses every core, while the
parent keeps everything that must happen in order: duplicate checks, the SQLite transaction, FAISS and
the BM25 segment schedule. A worker returns vectors, never term lists (pickling ~200 strings per
judgment back to the parent would cost more than tokenising again). With ``workers=0`` the same
function runs in-process.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from apps.legal.chunking import chunk_text
from apps.legal.data import Judgment, parse_record


@dataclass
class PreparedBatch:
    rows: list[tuple[int, Judgment, list[str]]]   # (line, judgment, passages) of the valid records
    errors: list[tuple[int, str]]                  # (line, reason) of the malformed ones
    vectors: np.ndarray | None                     # one row per passage of ``rows``, in order (None: embed later)
    cpu_seconds: float = 0.0


def prepare_batch(items: list[tuple[int, str | dict]], chunk_chars: int, embedder=None) -> PreparedBatch:
    t = time.process_time()
    rows, errors = [], []
    for line_no, raw in items:
        try:
            doc = parse_record(raw)
        except ValueError as exc:
            errors.append((line_no, str(exc)))
            continue
        rows.append((line_no, doc, chunk_text(doc.text, chunk_chars)))
    vectors = None
    if embedder is not None:
        vectors = embedder.embed([p for _, _, ps in rows for p in ps])
    return PreparedBatch(rows, errors, vectors, time.process_time() - t)


# --- worker-process side ------------------------------------------------------------------------------
_EMBEDDER = None


def exit_with_parent(parent: int) -> None:
    """A SIGKILLed ingest cannot shut its pool down, and a pool worker blocked on its task queue would
    wait forever: watch the parent and leave when it is gone (re-parented). ``parent`` is passed in,
    not read here: a parent killed while this worker was still starting would otherwise be missed."""
    import os
    import threading
    import time

    def watch():
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


def init_worker(parent: int, static_dir: str | None) -> None:
    """Pool initializer: load the static embedder once per worker (None: the parent embeds, e.g. MiniLM)."""
    import os

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    exit_with_parent(parent)
    global _EMBEDDER
    if static_dir:
        from apps.legal.embedders import StaticEmbedder

        _EMBEDDER = StaticEmbedder.load(static_dir)


def prepare_in_worker(items: list[tuple[int, str | dict]], chunk_chars: int) -> PreparedBatch:
    return prepare_batch(items, chunk_chars, _EMBEDDER)
