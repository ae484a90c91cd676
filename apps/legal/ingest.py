"""Incremental, crash-safe ingest: corpus file -> SQLite (truth) -> FAISS + BM25 segments (derived).

Crash safety, step by step:
1. Judgments are stored in batches; each batch's docs, passages and the source-file checkpoint (last
   line read) commit in ONE SQLite transaction. A re-run skips lines up to the checkpoint and ignores
   ids already stored, so every judgment ends up stored exactly once.
2. Passage ids are dense, so FAISS (``ntotal``) and BM25 (``covered``) each record progress in one
   number, saved atomically with the index itself (temp + rename) at each checkpoint.
3. On start, passages past those numbers (committed but not yet indexed when the process died) are
   re-tokenised from SQLite and indexed before new input is read.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from apps.legal.chunking import chunk_text, tokenize
from apps.legal.config import LegalConfig
from apps.legal.data import ValidationReport, iter_corpus
from apps.legal.index import BM25Segments, DenseIndex, IndexPlan
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
        self.cfg = cfg
        # False: store judgments and passages only; the indexes are built afterwards, e.g. on Ray
        # workers (apps.legal.distributed.build_indexes_distributed).
        self.build_indexes = build_indexes
        self.progress = progress
        cfg.kb_dir.mkdir(parents=True, exist_ok=True)
        self.store = Store(cfg.sqlite_path)
        kb_embedder = self.store.get_meta("embedder")
        if kb_embedder and kb_embedder != cfg.embedder:
            from shared.io import InputError

            raise InputError(f"{cfg.kb_dir}: knowledge base was built with the '{kb_embedder}' embedder, "
                             f"not '{cfg.embedder}'")
        self.dense = DenseIndex(cfg.faiss_path)
        self.bm25 = BM25Segments(cfg.bm25_dir)
        self.embedder = None
        self.timings: dict[str, float] = {"parse_store": 0.0, "tokenize": 0.0, "embed": 0.0, "faiss": 0.0, "bm25": 0.0}
        # Passages committed to SQLite but not yet in an index (ids >= pending_from).
        self.pending_from = min(self.dense.ntotal, self.bm25.covered)
        self.pending_tokens: list[list[str]] = []
        self.pending_vectors: list[np.ndarray] = []
        # Optional observer of every embedded batch (first passage id, float vectors); the benchmark
        # keeps exact vectors through it to measure the ANN index's recall against exact search.
        self.vector_sink = None

    # --- indexing ------------------------------------------------------------------------------------
    def _index_passages(self, texts: list[str]) -> None:
        if not self.build_indexes:
            return
        t = time.perf_counter()
        tokens = [tokenize(x) for x in texts]
        self.timings["tokenize"] += time.perf_counter() - t
        t = time.perf_counter()
        vectors = self.embedder.embed(texts, tokens)
        self.timings["embed"] += time.perf_counter() - t
        if self.vector_sink is not None:
            self.vector_sink(self.pending_from + len(self.pending_tokens), vectors)
        self.pending_vectors.append(vectors)
        self.pending_tokens.extend(tokens)

    def _flush(self, final: bool) -> None:
        """Checkpoint: add pending vectors to FAISS and save it; build a BM25 segment."""
        if not self.pending_tokens:
            return
        vectors = np.concatenate(self.pending_vectors) if self.pending_vectors else np.zeros((0, 384), np.float32)
        start = self.pending_from
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
        # Passages below dense.ntotal were already in FAISS (a crash between the two saves).
        skip = self.dense.ntotal - start
        if skip < len(vectors):
            self.dense.add(start + max(skip, 0), vectors[max(skip, 0):])
            self.dense.save()
        self.timings["faiss"] += time.perf_counter() - t
        t = time.perf_counter()
        skip = self.bm25.covered - start
        if skip < len(self.pending_tokens):
            self.bm25.add_segment(start + max(skip, 0), self.pending_tokens[max(skip, 0):])
        self.timings["bm25"] += time.perf_counter() - t
        self.pending_from = start + len(self.pending_tokens)
        self.pending_tokens, self.pending_vectors = [], []

    def _recover(self, report: IngestReport) -> None:
        """Index passages that a killed run committed but never indexed."""
        end = self.store.n_chunks()
        if self.pending_from >= end:
            return
        log.info("recovering %d passages committed before an interrupted run", end - self.pending_from)
        batch: list[str] = []
        for _, text in self.store.iter_chunk_texts(self.pending_from, end):
            batch.append(text)
            if len(batch) == 10_000:
                self._index_passages(batch); batch = []
        if batch:
            self._index_passages(batch)
        report.recovered_passages = end - self.pending_from

    # --- main loop -----------------------------------------------------------------------------------
    def ingest(self, path: str | Path, max_docs: int | None = None) -> IngestReport:
        from tqdm import tqdm

        t0 = time.perf_counter()
        path = Path(path)
        source = str(path.resolve())
        report = IngestReport(source=str(path))
        validation = ValidationReport(str(path))
        start_line = self.store.source_line(source) + 1
        first_batch, rows = self._rows(path, start_line, validation)
        self._expected = self._estimate_passages(path, first_batch)
        if self.embedder is None:
            sample = [p for _, _, ps in first_batch for p in ps][: self.cfg.distill_sample]
            self.embedder = load_embedder(self.cfg, self.store, sample)
            self.store.set_meta("embedder", self.cfg.embedder)
        if self.build_indexes:
            self._recover(report)
        bar = tqdm(unit="doc", desc="ingest", disable=not self.progress)
        since_flush = 0
        batch: list[tuple] = []

        def commit(batch):
            nonlocal since_flush
            t = time.perf_counter()
            ids = [d.id for _, d, _ in batch]
            seen = self.store.existing_ids(ids)
            fresh, taken = [], set()
            for _, doc, passages in batch:
                if doc.id in seen or doc.id in taken:
                    report.skipped_duplicates += 1
                    continue
                taken.add(doc.id)
                fresh.append((doc, passages))
            self.store.add_batch(fresh, source, batch[-1][0])
            self.timings["parse_store"] += time.perf_counter() - t
            texts = [p for _, ps in fresh for p in ps]
            self._index_passages(texts)
            report.added_docs += len(fresh)
            report.added_passages += len(texts)
            since_flush += len(texts)
            bar.update(len(batch))
            if since_flush >= self.cfg.checkpoint_passages:
                self._flush(final=False)
                since_flush = 0 if not self.pending_tokens else since_flush

        t = time.perf_counter()
        for line_no, doc, passages in rows:
            batch.append((line_no, doc, passages))
            if max_docs is not None and report.added_docs + len(batch) >= max_docs:
                break
            if len(batch) >= self.cfg.batch_docs:
                self.timings["parse_store"] += time.perf_counter() - t
                commit(batch); batch = []
                t = time.perf_counter()
        if batch:
            commit(batch)
        self._flush(final=True)
        bar.close()
        report.malformed = validation.errors
        report.total_docs = self.store.n_docs()
        report.total_passages = self.store.n_chunks()
        report.index = self.store.get_meta("index_factory", "")
        report.seconds = time.perf_counter() - t0
        report.timings = {k: round(v, 2) for k, v in self.timings.items()}
        return report

    def _rows(self, path, start_line, validation):
        """(first batch, iterator over ALL rows): the first batch is read ahead to size the index and
        distil the embedder; the iterator replays it and then continues with the same reader (each
        line is parsed - and each malformed one reported - once)."""
        import itertools

        reader = ((line_no, doc, chunk_text(doc.text, self.cfg.chunk_chars))
                  for line_no, doc in iter_corpus(path, validation, start_line=start_line))
        first = list(itertools.islice(reader, max(self.cfg.batch_docs, 2_000)))
        return first, itertools.chain(first, reader)

    def _estimate_passages(self, path: Path, first_batch) -> int:
        """Expected passages in the whole knowledge base, from the file size and the first records."""
        have = self.store.n_chunks()
        if not first_batch:
            return have
        per_doc = sum(len(ps) for _, _, ps in first_batch) / len(first_batch)
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            n_docs = pq.ParquetFile(path).metadata.num_rows
        else:
            sample_bytes = sum(len(d.text.encode()) + 300 for _, d, _ in first_batch) / len(first_batch)
            n_docs = os.path.getsize(path) / sample_bytes
        return int(have + n_docs * per_doc)

    def close(self) -> None:
        self.store.close()


def ingest(cfg: LegalConfig, path: str | Path, progress: bool = True, max_docs: int | None = None,
           build_indexes: bool = True) -> IngestReport:
    ing = Ingestor(cfg, progress=progress, build_indexes=build_indexes)
    try:
        return ing.ingest(path, max_docs=max_docs)
    finally:
        ing.close()
