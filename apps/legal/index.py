"""The two retrieval indexes over passages: dense vectors in FAISS and BM25 (bm25s) in segments.

Both are derived from the SQLite store and identify a passage by its dense id (0..N-1), so each one's
progress is a single number: ``DenseIndex.ntotal`` and ``BM25Segments.covered``. Both are saved
atomically (temp + rename); after a crash ingest re-derives whatever lies past those numbers.

Access control happens INSIDE the search: FAISS gets an ``IDSelectorBitmap`` of the passages the tenant
may read (so disallowed vectors are never candidates), and bm25s gets the same mask as ``weight_mask``.
"""
from __future__ import annotations

import math
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.io import atomic_path

FLAT_LIMIT = 100_000  # below this many expected passages exact search is cheap enough


@dataclass(frozen=True)
class IndexPlan:
    """Which FAISS index to build, chosen from the expected number of passages."""
    factory: str
    nlist: int = 0
    train_size: int = 0

    @classmethod
    def parse(cls, factory: str) -> IndexPlan:
        """An explicit FAISS factory string, e.g. "Flat" or "IVF64,SQ8"."""
        m = re.match(r"^IVF(\d+),", factory)
        if factory == "Flat":
            return cls("Flat")
        if not m:
            raise ValueError(f"unsupported index factory {factory!r} (use Flat or IVF<n>,SQ8/PQ..)")
        nlist = int(m.group(1))
        return cls(factory, nlist, 50 * nlist)

    @classmethod
    def for_size(cls, expected: int) -> IndexPlan:
        if expected < FLAT_LIMIT:
            return cls("Flat")
        # ~4*sqrt(N) lists (power of two, 256..8192); 39 training points per list is FAISS's minimum.
        nlist = int(2 ** round(math.log2(4 * math.sqrt(expected))))
        nlist = min(2048, max(256, nlist))  # IVF2048 trains in ~20 s here (NOTES); 8192 takes minutes
        return cls(f"IVF{nlist},SQ8", nlist, min(expected, max(50 * nlist, 100_000)))


class DenseIndex:
    """A FAISS inner-product index over normalised vectors; ids are passage ids."""

    def __init__(self, path: str | Path, dim: int = 384):
        import faiss

        self.faiss = faiss
        self.path = Path(path)
        self.dim = dim
        self.index = faiss.read_index(str(self.path)) if self.path.exists() else None
        self.nprobe = 16

    @property
    def ntotal(self) -> int:
        return 0 if self.index is None else self.index.ntotal

    @property
    def is_trained(self) -> bool:
        return self.index is not None

    def create(self, plan: IndexPlan, training: np.ndarray | None = None) -> None:
        faiss = self.faiss
        if plan.factory == "Flat":
            self.index = faiss.IndexFlatIP(self.dim)  # ids are positions: passages are added in id order
        else:
            self.index = faiss.index_factory(self.dim, plan.factory, faiss.METRIC_INNER_PRODUCT)
            self.index.train(np.ascontiguousarray(training, dtype=np.float32))

    def add(self, first_id: int, vectors: np.ndarray) -> None:
        if first_id != self.ntotal:
            raise RuntimeError(f"dense index holds {self.ntotal} passages, refusing to add from id {first_id}")
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if isinstance(self.index, self.faiss.IndexFlat):
            self.index.add(vectors)
        else:
            self.index.add_with_ids(vectors, np.arange(first_id, first_id + len(vectors), dtype=np.int64))

    def save(self) -> None:
        with atomic_path(self.path) as tmp:
            self.faiss.write_index(self.index, str(tmp))

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None,
               nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids) per query; ``allowed`` is a bool mask over passage ids (None = all)."""
        faiss = self.faiss
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if self.index is None or self.ntotal == 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        is_ivf = not isinstance(self.index, faiss.IndexFlat)
        params = faiss.SearchParametersIVF() if is_ivf else faiss.SearchParameters()
        if is_ivf:
            params.nprobe = nprobe or self.nprobe
        if allowed is not None:
            bitmap = np.packbits(allowed[: self.ntotal].astype(bool), bitorder="little")
            params.sel = faiss.IDSelectorBitmap(self.ntotal, faiss.swig_ptr(bitmap))
            params._keep_bitmap = bitmap  # the selector points into this array; keep it alive
        scores, ids = self.index.search(queries, k, params=params)
        return scores, ids

    def size_bytes(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0


_SEGMENT = re.compile(r"^seg-(\d{10})-(\d{10})$")


class BM25Segments:
    """BM25 over passages, in immutable segments ``seg-<start>-<end>`` (like Lucene segments).

    bm25s cannot add to a built index, so each ingest checkpoint builds a new segment over the passages
    it added; a query scores every segment with the same bm25s scorer and merges the top-k.
    """

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.segments: list[tuple[int, int, object]] = []
        spans = []
        for p in self.dir.iterdir():
            m = _SEGMENT.match(p.name)
            if m:
                spans.append((int(m.group(1)), int(m.group(2)), p))
            elif p.name.startswith("."):
                shutil.rmtree(p, ignore_errors=True)  # a temp dir left by a crash
        spans.sort()
        covered = 0
        for start, end, p in spans:
            if start != covered:  # overlapping/orphan segment from an interrupted build: rebuilt later
                shutil.rmtree(p, ignore_errors=True)
                continue
            self.segments.append((start, end, None))
            covered = end

    @property
    def covered(self) -> int:
        return self.segments[-1][1] if self.segments else 0

    def _path(self, start: int, end: int) -> Path:
        return self.dir / f"seg-{start:010d}-{end:010d}"

    def add_segment(self, start: int, tokens: list[list[str]]) -> None:
        import bm25s

        if start != self.covered:
            raise RuntimeError(f"BM25 covers {self.covered} passages, refusing a segment from {start}")
        if not tokens:
            return
        end = start + len(tokens)
        model = bm25s.BM25()
        # An empty passage would break bm25s' vocabulary; give it a placeholder term.
        model.index([t if t else ["<empty>"] for t in tokens], show_progress=False)
        with atomic_path(self._path(start, end), is_dir=True) as tmp:
            model.save(str(tmp), show_progress=False)
        self.segments.append((start, end, model))

    def adopt_segment(self, start: int, end: int, built_dir: str | Path) -> None:
        """Move a segment built elsewhere (e.g. by a Ray worker, in a temp dir under this directory)
        into place; the rename is atomic, so a crash leaves either no segment or the whole one."""
        if start != self.covered:
            raise RuntimeError(f"BM25 covers {self.covered} passages, refusing a segment from {start}")
        os.replace(built_dir, self._path(start, end))
        self.segments.append((start, end, None))

    def _model(self, i: int):
        import bm25s

        start, end, model = self.segments[i]
        if model is None:
            model = bm25s.BM25.load(str(self._path(start, end)), mmap=False)
            self.segments[i] = (start, end, model)
        return model

    def warm_up(self) -> None:
        for i in range(len(self.segments)):
            self._model(i)

    def search(self, query_tokens: list[str], k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, passage ids) over all segments, only among ``allowed`` passages."""
        best_s: list[np.ndarray] = []
        best_i: list[np.ndarray] = []
        for i, (start, end, _) in enumerate(self.segments):
            model = self._model(i)
            vocab = model.vocab_dict
            toks = [t for t in query_tokens if t in vocab]
            if not toks:
                continue
            mask = None if allowed is None else allowed[start:end].astype(np.float32)
            scores = model.get_scores(toks, weight_mask=mask)
            kk = min(k, len(scores))
            top = np.argpartition(-scores, kk - 1)[:kk]
            top = top[scores[top] > 0]
            best_s.append(scores[top])
            best_i.append(top + start)
        if not best_s:
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        s, ids = np.concatenate(best_s), np.concatenate(best_i)
        order = np.argsort(-s, kind="stable")[:k]
        return s[order], ids[order].astype(np.int64)

    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.dir.rglob("*") if f.is_file())
