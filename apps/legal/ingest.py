"""Incremental, crash-safe ingest: corpus file -> SQLite (truth) -> FAISS + BM25 segments (derived).

Crash safety, step by step:
1. Judgments are stored in batches; each batch's docs, passages and the source-file checkpoint (last
   line read) commit in ONE SQLite transaction. A re-run skips lines up to the checkpoint and ignores
   ids already stored, so every judgment ends up stored exactly once.
2. Passage ids are dense, so FAISS (``ntotal``) and BM25 (``covered``) each record progress in one
   number, saved atomically with the index itself (temp + rename) at each checkpoint.
3. On start, passages past those numbers (committed but not yet indexed when the process died) are
   re-embedded from SQLite / given BM25 segments before new input is read.

Throughput: parsing, chunking and static embedding run in ``cfg.ingest_workers`` processes
(``apps.legal.prepare``); BM25 segments are built by one more process that reads the committed passages
back from SQLite (``index.build_segment_from_store``); the parent only does the ordered work (SQLite
transaction, FAISS add/save, adopting finished segments in id order).
"""
from __future__ import annotations

import itertools
import logging
import os
import time
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from apps.legal.chunking import TOKENIZER, chunk_text
from apps.legal.config import LegalConfig
from apps.legal.data import ValidationReport, iter_raw, parse_record
from apps.legal.index import (
    BM25Segments,
    DenseIndex,
    IndexPlan,
    build_segment_from_store,
)
from apps.legal.prepare import (
    PreparedBatch,
    exit_with_parent,
    init_worker,
    prepare_batch,
    prepare_in_worker,
)
from apps.legal.store import Store

log = logging.getLogger(__name__)


@dataclass
class IngestReport:
    source: str
    added_docs: int = 0
    skipped_duplicates: int = 0
    added_passages: int = 0
    recovered_passages: int = 0      # committed before a crash, indexed on this run
    malformed: list[tuple[int, str]] = field(default_factory=list)
    total_docs: int = 0
    total_passages: int = 0
    index: str = ""
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def docs_per_second(self) -> float:
        return self.added_docs / self.seconds if self.seconds else 0.0


def load_embedder(cfg: LegalConfig, store: Store | None = None, sample_texts: list[str] | None = None):
    """The knowledge base's first-stage embedder; the static one is distilled on first use."""
    from apps.legal.embedders import MiniLMEmbedder, StaticEmbedder, distill_static

    if cfg.embedder == "minilm":
        return MiniLMEmbedder()
    if (cfg.static_dir / "table.npy").exists():
        return StaticEmbedder.load(cfg.static_dir)
    if not sample_texts:
        raise RuntimeError(f"no static embedder under {cfg.static_dir}; ingest a corpus first")
    from apps.legal.statutes import load_statutes

    statutes = [s.text for s in load_statutes()]
    embedder, report = distill_static(sample_texts + statutes[::3], n_targets=cfg.distill_targets)
    embedder.save(cfg.static_dir)
    if store is not None:
        store.set_meta("distill", report.__dict__)
    return embedder


class Ingestor:
    def __init__(self, cfg: LegalConfig, progress: bool = True, build_indexes: bool = True):
        from shared.io import InputError

        self.cfg = cfg
        # False: store judgments and passages only; the indexes are built afterwards, e.g. on Ray
        # workers (apps.legal.distributed.build_indexes_distributed).
        self.build_indexes = build_indexes
        self.progress = progress
        cfg.kb_dir.mkdir(parents=True, exist_ok=True)
        self.store = Store(cfg.sqlite_path)
        kb_embedder = self.store.get_meta("embedder")
        if kb_embedder and kb_embedder != cfg.embedder:
            raise InputError(f"{cfg.kb_dir}: knowledge base was built with the '{kb_embedder}' embedder, "
                             f"not '{cfg.embedder}'")
        check_tokenizer(self.store, cfg.kb_dir)
        self.store.set_meta("tokenizer", TOKENIZER)
        self.dense = DenseIndex(cfg.faiss_path, writer=True)
        self.bm25 = BM25Segments(cfg.bm25_dir)
        self.embedder = None
        self.timings: dict[str, float] = {"store": 0.0, "faiss": 0.0, "wait_prepare": 0.0, "wait_bm25": 0.0,
                                          "prepare_cpu": 0.0, "bm25_build_cpu": 0.0, "recover": 0.0}
        # Passages committed to SQLite but not yet in FAISS (ids >= pending_from), and their vectors.
        self.pending_from = self.dense.ntotal
        self.pending_vectors: list[np.ndarray] = []
        # Passages [bm25.covered, bm25_scheduled) are being built into segments by self._bm25_jobs.
        self.bm25_scheduled = self.bm25.covered
        self._bm25_jobs: deque[Future] = deque()
        self._bm25_pool: ProcessPoolExecutor | None = None

    # --- dense index -----------------------------------------------------------------------------------
    def _add_vectors(self, vectors: np.ndarray) -> None:
        self.pending_vectors.append(vectors)

    def _flush_dense(self, final: bool) -> None:
        """Checkpoint: add pending vectors to FAISS (training the IVF quantiser first) and save it."""
        if not self.pending_vectors:
            return
        vectors = np.concatenate(self.pending_vectors)
        t = time.perf_counter()
        if not self.dense.is_trained:
            expected = self.cfg.expected_passages or self._expected
            plan = IndexPlan.parse(self.cfg.index_factory) if self.cfg.index_factory else IndexPlan.for_size(expected)
            if plan.factory != "Flat" and len(vectors) < min(plan.train_size, expected) and not final:
                return  # keep buffering until there is enough to train the IVF quantiser
            if plan.factory != "Flat" and len(vectors) < 39 * plan.nlist:
                plan = IndexPlan("Flat")  # the corpus turned out too small for IVF
            self.dense.create(plan, vectors[: plan.train_size] if plan.train_size else None)
            self.store.set_meta("index_factory", plan.factory)
        self.dense.add(self.pending_from, vectors)
        self.dense.save()
        self.pending_from += len(vectors)
        self.pending_vectors = []
        self.timings["faiss"] += time.perf_counter() - t

    # --- BM25 segments -----------------------------------------------------------------------------------
    def _schedule_bm25(self, committed: int, final: bool) -> None:
        """Hand committed passages to the segment builder in checkpoint-sized, contiguous pieces."""
        size = self.cfg.checkpoint_passages
        while committed - self.bm25_scheduled >= size or (final and committed > self.bm25_scheduled):
            lo, hi = self.bm25_scheduled, min(committed, self.bm25_scheduled + size)
            args = (str(self.cfg.sqlite_path), str(self.cfg.bm25_dir), lo, hi)
            if self._bm25_pool is None:  # in-process: a finished future, adopted right away
                fut: Future = Future()
                fut.set_result(build_segment_from_store(*args))
            else:
                fut = self._bm25_pool.submit(build_segment_from_store, *args)
            self._bm25_jobs.append(fut)
            self.bm25_scheduled = hi
        self._adopt_bm25(wait=False)

    def _adopt_bm25(self, wait: bool) -> None:
        """Rename finished segments into place, strictly in id order."""
        t = time.perf_counter()
        while self._bm25_jobs and (wait or self._bm25_jobs[0].done()):
            lo, hi, tmp, cpu = self._bm25_jobs.popleft().result()
            self.bm25.adopt_segment(lo, hi, tmp)
            self.timings["bm25_build_cpu"] += cpu
        self.timings["wait_bm25"] += time.perf_counter() - t

    def _recover(self, report: IngestReport) -> None:
        """Index passages that a killed run committed but never indexed."""
        end = self.store.n_chunks()
        t = time.perf_counter()
        if self.pending_from < end:
            log.info("recovering %d passages committed before an interrupted run", end - self.pending_from)
            report.recovered_passages = end - self.pending_from
            batch: list[str] = []
            for _, text in self.store.iter_chunk_texts(self.pending_from, end):
                batch.append(text)
                if len(batch) == 10_000:
                    self._add_vectors(self.embedder.embed(batch)); batch = []
            if batch:
                self._add_vectors(self.embedder.embed(batch))
            self._flush_dense(final=False)
        self._schedule_bm25(end, final=False)  # full segments now; the rest joins the next new input
        self.timings["recover"] += time.perf_counter() - t

    # --- main loop -----------------------------------------------------------------------------------
    def ingest(self, path: str | Path, max_docs: int | None = None) -> IngestReport:
        from tqdm import tqdm

        t0 = time.perf_counter()
        path = Path(path)
        source = str(path.resolve())
        report = IngestReport(source=str(path))
        validation = ValidationReport(str(path))
        raw = iter_raw(path, self.store.source_line(source) + 1)
        # Read ahead (parsed here only to size the index and distil the embedder; the workers parse
        # these records again, the one place a malformed record is reported).
        first = list(itertools.islice(raw, max(2 * self.cfg.batch_docs, 2_000)))
        first_docs = []
        for _, rec in first:
            try:
                doc = parse_record(rec)
            except ValueError:
                continue
            first_docs.append((doc, chunk_text(doc.text, self.cfg.chunk_chars)))
        self._expected = self._estimate_passages(path, first_docs)
        if self.embedder is None:
            sample = [p for _, ps in first_docs for p in ps][: self.cfg.distill_sample]
            self.embedder = load_embedder(self.cfg, self.store, sample)
            self.store.set_meta("embedder", self.cfg.embedder)
        # Worker processes pay off from two batches on (starting one costs ~1 s of imports).
        n_workers = self.cfg.ingest_workers if len(first) >= 2 * self.cfg.batch_docs else 0
        bar = tqdm(unit="doc", desc="ingest", disable=not self.progress, mininterval=10)
        items = itertools.chain(first, raw)
        if max_docs is not None:
            items = itertools.islice(items, max_docs)
        batches = iter(lambda: list(itertools.islice(items, self.cfg.batch_docs)), [])
        pool = None
        try:
            if self.build_indexes and n_workers:
                self._bm25_pool = ProcessPoolExecutor(1, mp_context=_spawn(), initializer=exit_with_parent,
                                                      initargs=(os.getpid(),))
            if self.build_indexes:
                self._recover(report)
            if n_workers:
                static = str(self.cfg.static_dir) if self.cfg.embedder == "static" and self.build_indexes else None
                pool = ProcessPoolExecutor(n_workers, mp_context=_spawn(), initializer=init_worker,
                                           initargs=(os.getpid(), static))
                prepared = self._parallel(pool, batches, 2 * n_workers + 1)
            else:
                embedder = self.embedder if self.build_indexes and self.cfg.embedder == "static" else None
                prepared = (prepare_batch(b, self.cfg.chunk_chars, embedder) for b in batches)
            for batch in prepared:
                validation.errors.extend(batch.errors)
                self.timings["prepare_cpu"] += batch.cpu_seconds
                self._commit(batch, source, report)
                bar.update(len(batch.rows) + len(batch.errors))
            if self.build_indexes:
                self._flush_dense(final=True)
                self._schedule_bm25(self.store.n_chunks(), final=True)
                self._adopt_bm25(wait=True)
        finally:
            bar.close()
            for p in (pool, self._bm25_pool):
                if p is not None:
                    p.shutdown(wait=True, cancel_futures=True)
            self._bm25_pool = None
        report.malformed = validation.errors
        report.total_docs = self.store.n_docs()
        report.total_passages = self.store.n_chunks()
        report.index = self.store.get_meta("index_factory", "")
        report.seconds = time.perf_counter() - t0
        report.timings = {k: round(v, 2) for k, v in self.timings.items()}
        return report

    def _parallel(self, pool: ProcessPoolExecutor, batches, window: int):
        """Prepared batches in input order, at most ``window`` in flight (bounded memory)."""
        inflight: deque[Future] = deque()
        for b in batches:
            inflight.append(pool.submit(prepare_in_worker, b, self.cfg.chunk_chars))
            if len(inflight) >= window:
                yield self._result(inflight.popleft())
        while inflight:
            yield self._result(inflight.popleft())

    def _result(self, fut: Future) -> PreparedBatch:
        t = time.perf_counter()
        out = fut.result()
        self.timings["wait_prepare"] += time.perf_counter() - t
        return out

    def _commit(self, batch: PreparedBatch, source: str, report: IngestReport) -> None:
        """Store one prepared batch (ONE transaction, with the source checkpoint), then index it."""
        if not batch.rows and not batch.errors:
            return
        t = time.perf_counter()
        seen = self.store.existing_ids([d.id for _, d, _ in batch.rows])
        fresh, taken, keep = [], set(), []
        pos = 0
        for _, doc, passages in batch.rows:
            n = len(passages)
            if doc.id in seen or doc.id in taken:
                report.skipped_duplicates += 1
            else:
                taken.add(doc.id)
                fresh.append((doc, passages))
                keep.extend(range(pos, pos + n))
            pos += n
        last_line = max([ln for ln, _, _ in batch.rows] + [ln for ln, _ in batch.errors])
        self.store.add_batch(fresh, source, last_line)
        self.timings["store"] += time.perf_counter() - t
        n_new = len(keep)
        report.added_docs += len(fresh)
        report.added_passages += n_new
        if not self.build_indexes:
            return
        if n_new:
            if batch.vectors is not None:
                vectors = batch.vectors if n_new == pos else batch.vectors[keep]
            else:  # embedder that runs in the parent (MiniLM)
                vectors = self.embedder.embed([p for _, ps in fresh for p in ps])
            self._add_vectors(vectors)
        committed = self.pending_from + sum(len(v) for v in self.pending_vectors)
        checkpoint = committed - self.bm25_scheduled >= self.cfg.checkpoint_passages
        self._schedule_bm25(committed, final=False)  # first: the segment builds while FAISS trains/saves
        if checkpoint:
            self._flush_dense(final=False)

    def _estimate_passages(self, path: Path, first_docs) -> int:
        """Expected passages in the whole knowledge base, from the file size and the first records."""
        have = self.store.n_chunks()
        if not first_docs:
            return have
        per_doc = sum(len(ps) for _, ps in first_docs) / len(first_docs)
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            n_docs = pq.ParquetFile(path).metadata.num_rows
        else:
            sample_bytes = sum(len(d.text.encode()) + 300 for d, _ in first_docs) / len(first_docs)
            n_docs = os.path.getsize(path) / sample_bytes
        return int(have + n_docs * per_doc)

    def close(self) -> None:
        self.store.close()


def _spawn():
    """Fresh worker processes (not fork): the parent holds FAISS/OpenMP and SQLite state."""
    import multiprocessing

    return multiprocessing.get_context("spawn")


def check_tokenizer(store: Store, kb_dir: Path) -> None:
    """A knowledge base's BM25 terms and static vocabulary come from one tokenizer; refuse another."""
    from shared.io import InputError

    built = store.get_meta("tokenizer")
    if built is None and store.n_chunks() > 0:
        built = "jieba (before tokenizer versions were recorded)"
    if built is not None and built != TOKENIZER:
        raise InputError(f"{kb_dir}: knowledge base was tokenised with {built!r}, this version uses "
                         f"{TOKENIZER!r}; delete {kb_dir} and ingest again")


def ingest(cfg: LegalConfig, path: str | Path, progress: bool = True, max_docs: int | None = None,
           build_indexes: bool = True) -> IngestReport:
    ing = Ingestor(cfg, progress=progress, build_indexes=build_indexes)
    try:
        return ing.ingest(path, max_docs=max_docs)
    finally:
        ing.close()
