"""The two retrieval indexes over passages: dense vectors in FAISS and BM25 (bm25s) in segments.

Both are derived from the SQLite store and identify a passage by its dense id (0..N-1), so each one's
progress is a single number: ``DenseIndex.ntotal`` and ``BM25Segments.covered``. Both are saved
atomically (temp + rename); after a crash ingest re-derives whatever lies past those numbers.

Access control happens INSIDE the search: FAISS gets an ``IDSelectorBitmap`` of the passages the tenant
may read (so disallowed vectors are never candidates), and bm25s gets the same mask as ``weight_mask``.
"""
from __future__ import annotations

import logging
import math
import os
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.io import atomic_path

FLAT_LIMIT = 100_000  # below this many expected passages exact search is cheap enough
# 2048 lists at 3.2 M passages: probing 64 of them holds 0.9965 of the exact top-10 (bench/legal_ann.py),
# the rest of the loss was the SQ8 codes, which the exact re-score removes; 4096 lists train 4.5x longer
# (180 s vs 40 s) and hold less at the same nprobe.
MAX_NLIST = 2048
TRAIN_PER_LIST = 50   # k-means training points per list (FAISS warns below 39)
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IndexPlan:
    """Which FAISS index to build, chosen from the expected number of passages.

    Every IVF plan also keeps float16 copies of the vectors (``vectors.VectorFile``) so that searches
    re-score their candidates exactly; ``Flat`` is exact already."""
    factory: str
    nlist: int = 0
    train_size: int = 0

    @property
    def rescored(self) -> bool:
        return self.factory != "Flat"

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
        # ~4*sqrt(N) lists (power of two, 256..MAX_NLIST); 39 training points per list is FAISS's minimum.
        nlist = int(2 ** round(math.log2(4 * math.sqrt(expected))))
        nlist = min(MAX_NLIST, max(256, nlist))
        return cls(f"IVF{nlist},SQ8", nlist, min(expected, max(TRAIN_PER_LIST * nlist, 100_000)))


class DenseIndex:
    """A FAISS inner-product index over normalised vectors; ids are passage ids.

    IVF indexes keep ``<name>.f16`` beside the FAISS file and re-score the top ``k * rescore``
    candidates exactly from it (see ``apps.legal.vectors``). Open with ``writer=True`` to add vectors:
    the writer reconciles the two files after a crash; readers never modify anything.
    """

    def __init__(self, path: str | Path, dim: int = 384, writer: bool = False):
        import faiss

        from apps.legal.vectors import VectorFile

        self.faiss = faiss
        self.path = Path(path)
        self.dim = dim
        self.writer = writer
        self.index = faiss.read_index(str(self.path)) if self.path.exists() else None
        self.nprobe = 16
        self.rescore = 4  # candidates per requested hit re-scored exactly (0 = the codes' own ranking)
        self.vectors = VectorFile(self.path.with_suffix(".f16"), dim)
        if writer:
            self._reconcile()
        elif self.vectors.exists() and self.vectors.rows < self.ntotal:
            raise RuntimeError(f"{self.vectors.path} holds {self.vectors.rows} vectors but {self.path} "
                               f"{self.ntotal}; run `dsv legal ingest` on the knowledge base to repair it")

    def _reconcile(self) -> None:
        """Bring the vector file and the FAISS index back to the same passage count after a crash."""
        if not self.vectors.exists():  # Flat, or an IVF index built before vectors were kept: no re-scoring
            return
        rows = self.vectors.rows
        if rows > self.ntotal:  # appended after the last FAISS save: those passages are re-derived
            self.vectors.truncate(self.ntotal)
        elif rows < self.ntotal:  # cannot happen with save()'s ordering, unless the file was damaged
            log.warning("%s holds %d vectors, %s %d: dropping the index's last %d", self.vectors.path, rows,
                        self.path, self.ntotal, self.ntotal - rows)
            self.index.remove_ids(self.faiss.IDSelectorRange(rows, self.ntotal))
            if self.vectors.rows * self.vectors.row_bytes != self.vectors.path.stat().st_size:
                self.vectors.truncate(rows)  # a half-written last row

    @property
    def ntotal(self) -> int:
        return 0 if self.index is None else self.index.ntotal

    @property
    def is_trained(self) -> bool:
        return self.index is not None

    def create(self, plan: IndexPlan, training: np.ndarray | None = None) -> None:
        faiss = self.faiss
        self._require_writer()
        if plan.factory == "Flat":
            self.index = faiss.IndexFlatIP(self.dim)  # ids are positions: passages are added in id order
        else:
            self.index = faiss.index_factory(self.dim, plan.factory, faiss.METRIC_INNER_PRODUCT)
            self.index.train(np.ascontiguousarray(training, dtype=np.float32))
        if plan.rescored:
            self.vectors.create()

    def add(self, first_id: int, vectors: np.ndarray) -> None:
        self._require_writer()
        if first_id != self.ntotal:
            raise RuntimeError(f"dense index holds {self.ntotal} passages, refusing to add from id {first_id}")
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if self.vectors.exists():
            self.vectors.append(first_id, vectors)
        if isinstance(self.index, self.faiss.IndexFlat):
            self.index.add(vectors)
        else:
            self.index.add_with_ids(vectors, np.arange(first_id, first_id + len(vectors), dtype=np.int64))

    def save(self) -> None:
        self._require_writer()
        self.vectors.sync()  # first: the FAISS file must never count more vectors than are on disk
        with atomic_path(self.path) as tmp:
            self.faiss.write_index(self.index, str(tmp))

    def _require_writer(self) -> None:
        if not self.writer:
            raise RuntimeError(f"{self.path} was opened read-only (DenseIndex(..., writer=True) to add)")

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None,
               nprobe: int | None = None, rescore: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids) per query; ``allowed`` is a bool mask over passage ids (None = all).

        With re-scoring (IVF indexes), FAISS returns ``k * rescore`` candidates - already restricted to
        ``allowed`` - and their exact scores from the float16 vectors decide the top k."""
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
        factor = self.rescore if rescore is None else rescore
        if factor and self.vectors.exists():
            from apps.legal.vectors import exact_top_k

            _, cand = self.index.search(queries, k * factor, params=params)
            return exact_top_k(queries, cand, self.vectors.view(self.ntotal), k)
        return self.index.search(queries, k, params=params)

    def prefetch(self) -> None:
        """Map the re-scoring vectors now (and start reading them into the page cache), not on the first
        query."""
        if self.vectors.exists() and self.ntotal:
            self.vectors.view(self.ntotal)

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in (self.path, self.vectors.path) if p.exists())


def build_bm25(token_lists: Iterable[list[str]], out_dir: str | Path):
    """Build a bm25s index over ``token_lists`` and save it to ``out_dir``; returns the model.

    Terms are mapped to ids while streaming into one flat int32 array (no per-passage lists of term
    strings: for 500k passages that would be tens of millions of objects), and the score matrix is
    built by ``VectorisedBM25`` below."""
    from array import array

    from bm25s.tokenization import Tokenized

    vocab: dict[str, int] = {}
    flat, lens = array("i"), array("q")
    add = vocab.setdefault
    for toks in token_lists:
        toks = toks or ["<empty>"]  # an empty passage would break bm25s' vocabulary
        flat.extend([add(t, len(vocab)) for t in toks])
        lens.append(len(toks))
    model = _vectorised_bm25()()
    ids = (np.frombuffer(flat, dtype=np.int32), np.frombuffer(lens, dtype=np.int64))
    model.index(Tokenized(ids=ids, vocab=vocab), show_progress=False)
    model.save(str(out_dir), show_progress=False)
    return model


def _vectorised_bm25():
    import bm25s
    import scipy.sparse as sp

    class VectorisedBM25(bm25s.BM25):
        """bm25s with its documented build hook (``build_index_from_ids``) done as sparse-matrix
        arithmetic: the same Lucene BM25 scores in the same CSC layout (a test checks it against bm25s'
        own build), but no per-passage Python loop - that loop made segment building the ingest's
        bottleneck at millions of passages. Searching, saving and loading are bm25s' own."""

        def build_index_from_ids(self, unique_token_ids, corpus_token_ids, show_progress=True,
                                 leave_progress=False):
            if self.method != "lucene":
                raise ValueError(f"VectorisedBM25 implements the 'lucene' variant, not {self.method!r}")
            flat, lens = corpus_token_ids  # all token ids in one array, tokens per passage
            n_docs, n_vocab = len(lens), len(unique_token_ids)
            indptr = np.zeros(n_docs + 1, dtype=np.int64)
            np.cumsum(lens, out=indptr[1:])
            m = sp.csr_matrix((np.ones(len(flat), np.float32), flat, indptr), shape=(n_docs, n_vocab))
            m.sum_duplicates()  # data = term frequency per (passage, term)
            df = np.bincount(m.indices, minlength=n_vocab)
            idf = np.log1p((n_docs - df + 0.5) / (df + 0.5))
            rel_len = np.repeat(lens / lens.mean(), np.diff(m.indptr))
            tf = m.data
            m.data = (idf[m.indices] * tf / (tf + self.k1 * (1 - self.b + self.b * rel_len))).astype(self.dtype)
            c = m.tocsc()
            self.nonoccurrence_array = None
            return {"data": c.data, "indices": c.indices.astype(self.int_dtype), "indptr": c.indptr,
                    "num_docs": n_docs}

    return VectorisedBM25


def build_segment_from_store(db_path: str, bm25_dir: str, lo: int, hi: int) -> tuple[int, int, str, float]:
    """Tokenise passages [lo, hi) from the SQLite store and build their BM25 segment in a temp dir under
    ``bm25_dir`` (a hidden name, swept on start if a crash leaves it); the caller adopts it in id order.
    Runs in a separate process during ingest (and on Ray workers), off the ingest's critical path."""
    import tempfile
    import time

    from apps.legal.chunking import tokenize
    from apps.legal.store import Store

    t = time.process_time()
    store = Store(db_path, readonly=True)
    try:
        tokens = (tokenize(text) for _, text in store.iter_chunk_texts(lo, hi))
        tmp = tempfile.mkdtemp(prefix=f".seg-{lo:010d}-", dir=bm25_dir)
        build_bm25(tokens, tmp)
    finally:
        store.close()
    return lo, hi, tmp, time.process_time() - t


_SEGMENT = re.compile(r"^seg-(\d{10})-(\d{10})$")


class BM25Segments:
    """BM25 over passages, in immutable segments ``seg-<start>-<end>`` (like Lucene segments).

    bm25s cannot add to a built index, so each ingest checkpoint builds a new segment over the passages
    it added; a query scores every segment with the same bm25s scorer and merges the top-k.
    """

    def __init__(self, directory: str | Path, max_df: float = 0.2):
        self.dir = Path(directory)
        # Query terms found in more than this share of a segment's passages are skipped (unless every
        # term is): they add almost no BM25 weight (IDF ~0.7 at 50 %) but have the longest posting
        # lists, which dominate query time at millions of passages (CJK bigrams such as 法院 are in most).
        self.max_df = max_df
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
        if start != self.covered:
            raise RuntimeError(f"BM25 covers {self.covered} passages, refusing a segment from {start}")
        if not tokens:
            return
        end = start + len(tokens)
        with atomic_path(self._path(start, end), is_dir=True) as tmp:
            model = build_bm25(tokens, tmp)
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
            ids = np.asarray([vocab[t] for t in query_tokens if t in vocab], dtype=np.int64)
            if not len(ids):
                continue
            indptr = model.scores["indptr"]
            df = indptr[ids + 1] - indptr[ids]
            keep = df <= self.max_df * (end - start)
            ids = ids[keep] if keep.any() else ids[df == df.min()]
            mask = None if allowed is None else allowed[start:end].astype(np.float32)
            scores = model.get_scores_from_ids(ids.tolist(), weight_mask=mask)
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
