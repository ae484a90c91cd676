"""Crash-safe incremental ingest: a real `dsv legal ingest` subprocess is SIGKILLed mid-way and re-run."""
from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np

from apps.legal.generate import GeneratorConfig, write_corpus


def _counts(db):
    with sqlite3.connect(db) as conn:
        docs = conn.execute("SELECT COUNT(*) FROM docs").fetchone()[0]
        distinct = conn.execute("SELECT COUNT(DISTINCT doc_id) FROM chunks").fetchone()[0]
        chunks = conn.execute("SELECT COUNT(*), COALESCE(MAX(chunk_id) + 1, 0) FROM chunks").fetchone()
        per_doc_ok = conn.execute(
            "SELECT COUNT(*) FROM docs d WHERE d.n_chunks != (SELECT COUNT(*) FROM chunks c WHERE c.doc_id = d.id)"
        ).fetchone()[0] == 0
    return docs, distinct, chunks, per_doc_ok


def test_ingest_killed_midway_then_rerun_stores_every_document_once(tmp_path, static_embedder_dir):
    from apps.legal.config import LegalConfig
    from apps.legal.index import BM25Segments, DenseIndex
    from apps.legal.ingest import ingest

    # Big enough that ingest runs for seconds after the kill point (1,500 took 0.4 s from 700 to the end
    # on an idle machine, and the poll below missed that window once).
    n = 5000
    corpus = tmp_path / "corpus.jsonl"
    write_corpus(GeneratorConfig(n=n, seed=11), corpus, progress=False)
    kb = tmp_path / "kb"
    kb.mkdir()
    shutil.copytree(static_embedder_dir[0], kb / "static")
    cmd = [sys.executable, "-m", "core.cli", "legal", "ingest", str(corpus), "--kb", str(kb), "--quiet",
           "--batch-docs", "50", "--checkpoint-passages", "300", "--index-factory", "IVF16,SQ8", "--procs", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ})
    db = kb / "kb.sqlite"
    killed_at = None
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if db.exists():
            try:  # only the cheap count here: the full _counts scan would slow each poll down
                with sqlite3.connect(db) as conn:
                    docs = conn.execute("SELECT COUNT(*) FROM docs").fetchone()[0]
            except sqlite3.OperationalError:
                docs = 0
            if docs >= 700:  # past the IVF training (800 passages) and a checkpoint, far from the end
                proc.send_signal(signal.SIGKILL)
                killed_at = docs
                break
        time.sleep(0.01)
    proc.wait(timeout=30)
    assert killed_at is not None and killed_at < n, "ingest finished before it could be killed"
    assert proc.returncode == -signal.SIGKILL

    # Re-run in-process to completion, then again (a no-op): every judgment exactly once.
    cfg = LegalConfig(kb_dir=kb, batch_docs=50, checkpoint_passages=300, index_factory="IVF16,SQ8")
    report = ingest(cfg, corpus, progress=False)
    assert report.added_docs == n - report.total_docs + report.added_docs  # consistent bookkeeping
    again = ingest(cfg, corpus, progress=False)
    assert again.added_docs == 0
    docs, distinct, (n_chunks, max_id), per_doc_ok = _counts(db)
    assert docs == n and distinct == n and per_doc_ok
    assert n_chunks == max_id  # passage ids dense: no gaps, no duplicates
    assert DenseIndex(cfg.faiss_path).ntotal == n_chunks
    assert BM25Segments(cfg.bm25_dir).covered == n_chunks
    # The float16 vectors kept for exact re-scoring survived the kill too: one row per passage, in id
    # order (none lost, none doubled), equal to the passages' embeddings.
    from apps.legal.embedders import StaticEmbedder
    from apps.legal.store import Store

    dense = DenseIndex(cfg.faiss_path)
    assert dense.vectors.rows == n_chunks
    store = Store(db, readonly=True)
    texts = [t for _, t in store.iter_chunk_texts(0, n_chunks)]
    store.close()
    expected = StaticEmbedder.load(kb / "static").embed(texts)
    np.testing.assert_allclose(np.asarray(dense.vectors.view(n_chunks), np.float32), expected, atol=2e-3)

    # Appending new judgments later is incremental: only they are added.
    more = tmp_path / "more.jsonl"
    write_corpus(GeneratorConfig(n=50, seed=12), more, progress=False)
    inc = ingest(cfg, more, progress=False)
    assert inc.added_docs == 50 and inc.total_docs == n + 50
    # A duplicate id in a later file is skipped, not stored twice.
    dup = tmp_path / "dup.jsonl"
    with open(corpus) as src, open(dup, "w") as dst:
        dst.write(src.readline())
    assert ingest(cfg, dup, progress=False).skipped_duplicates == 1
    # The IVF index (trained after buffering enough vectors) filters by access inside the search.
    import faiss

    index = DenseIndex(cfg.faiss_path)
    assert isinstance(faiss.downcast_index(index.index), faiss.IndexIVFScalarQuantizer)
    assert index.vectors.rows == index.ntotal == n_chunks + inc.added_passages
    allowed = np.zeros(index.ntotal, dtype=bool)
    allowed[::7] = True
    _, ids = index.search(np.ones((1, 384), np.float32) / np.sqrt(384), 50, allowed=allowed, nprobe=16)
    found = ids[0][ids[0] >= 0]
    assert len(found) == 50 and allowed[found].all()
