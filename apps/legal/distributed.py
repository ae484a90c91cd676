"""Scale-out: tokenising, embedding and BM25 segment building on Ray workers.

The SQLite store is the shared input (read-only for workers). Passage ids are split into contiguous
shards; each Ray task tokenises its shard once, embeds it with the static embedder and builds that shard's
BM25 segment in a temp directory next to the live segments. The driver takes results IN ID ORDER: it adds
the vectors to FAISS (saved atomically) and renames each finished segment into place - the same
checkpoint rules as single-process ingest, so a killed run resumes from where the indexes stopped.

Locally ``ray.init(num_cpus=N)`` starts N workers on this machine; with ``address="auto"`` the same code
runs on a Ray cluster that mounts the knowledge-base directory.
"""
from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from apps.legal.config import LegalConfig

log = logging.getLogger(__name__)
REPO_ROOT = Path(__file__).resolve().parents[2]


def _shard_task(db_path: str, static_dir: str, bm25_dir: str, lo: int, hi: int) -> tuple[int, int, np.ndarray, str]:
    """Runs on a Ray worker: (lo, hi, vectors, temp segment dir)."""
    from apps.legal.chunking import tokenize
    from apps.legal.embedders import StaticEmbedder
    from apps.legal.index import build_bm25
    from apps.legal.store import Store

    store = Store(db_path)
    texts = [t for _, t in store.iter_chunk_texts(lo, hi)]
    store.close()
    tokens = [tokenize(t) for t in texts]
    vectors = StaticEmbedder.load(static_dir).embed(texts, tokens)
    tmp = tempfile.mkdtemp(prefix=f".ray-{lo:010d}-", dir=bm25_dir)
    build_bm25(tokens, tmp)
    return lo, hi, vectors, tmp


def build_indexes_distributed(cfg: LegalConfig, num_workers: int = 2, shard_passages: int = 50_000,
                              address: str | None = None) -> dict:
    """Bring FAISS and BM25 up to every passage in the store using Ray tasks; returns timings."""
    import ray

    from apps.legal.index import BM25Segments, DenseIndex, IndexPlan
    from apps.legal.store import Store

    if cfg.embedder != "static":
        raise ValueError("distributed indexing uses the static embedder (MiniLM is the re-ranker)")
    t0 = time.perf_counter()
    store = Store(cfg.sqlite_path)
    end = store.n_chunks()
    dense, bm25 = DenseIndex(cfg.faiss_path, writer=True), BM25Segments(cfg.bm25_dir)
    if dense.ntotal != bm25.covered:
        raise RuntimeError("indexes out of step; run `dsv legal ingest` once single-process to recover them")
    start = dense.ntotal
    if start >= end:
        return {"passages": 0, "seconds": 0.0}
    if not ray.is_initialized():
        ray.init(address=address, num_cpus=None if address else num_workers, include_dashboard=False,
                 log_to_driver=False, ignore_reinit_error=True,
                 runtime_env={"env_vars": {"PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1",
                                           "TOKENIZERS_PARALLELISM": "false"}})
    t_ray = time.perf_counter() - t0
    task = ray.remote(num_cpus=1)(_shard_task)
    shards = [(lo, min(end, lo + shard_passages)) for lo in range(start, end, shard_passages)]
    futures = [task.remote(str(cfg.sqlite_path), str(cfg.static_dir), str(cfg.bm25_dir), lo, hi) for lo, hi in shards]
    plan = IndexPlan.parse(cfg.index_factory) if cfg.index_factory else IndexPlan.for_size(cfg.expected_passages or end)
    buffered: list[np.ndarray] = []
    for fut in futures:  # in id order; Ray runs the tasks concurrently meanwhile
        lo, hi, vectors, seg_dir = ray.get(fut)
        if not dense.is_trained:
            buffered.append(vectors)
            have = sum(len(v) for v in buffered)
            if plan.factory != "Flat" and have < plan.train_size and hi < end:
                bm25.adopt_segment(lo, hi, seg_dir)
                continue
            allv = np.concatenate(buffered)
            if plan.factory != "Flat" and len(allv) < 39 * plan.nlist:
                plan = IndexPlan("Flat")
            dense.create(plan, allv[: plan.train_size] if plan.train_size else None)
            store.set_meta("index_factory", plan.factory)
            dense.add(start, allv)
            buffered = []
        else:
            dense.add(lo, vectors)
        if seg_dir and os.path.isdir(seg_dir) and bm25.covered == lo:
            bm25.adopt_segment(lo, hi, seg_dir)
        dense.save()
    store.close()
    return {"passages": end - start, "shards": len(shards), "workers": num_workers,
            "ray_start_seconds": round(t_ray, 1), "seconds": round(time.perf_counter() - t0, 1)}
