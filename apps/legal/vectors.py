"""Float16 copies of the passage vectors on disk, for the exact re-scoring stage of the dense search.

An IVF index with 8-bit codes (``IVF..,SQ8``) loses recall twice: probing skips lists that hold true
neighbours, and the codes blur scores that are within ~1e-3 of each other, which on a templated corpus is
where the 10th and 11th neighbours usually lie. ``bench/legal_ann.py`` separates the two at 2 M
judgments. The second loss is removed by re-scoring FAISS's top ``k * rescore`` candidates exactly from
these vectors (the classic IVF + refine recipe, FAISS ``IndexRefine``), kept here as a plain file of
float16 rows - row i is passage id i - instead of inside the FAISS file: the index file stays the size of
its codes, saves stay cheap, and a search touches only its candidates' rows (page cache, not resident
memory), not 2.5 GiB per process.

Crash safety: rows are only ever appended, and ``DenseIndex.save`` syncs this file BEFORE it atomically
replaces the FAISS file. So after any crash the file holds at least the FAISS index's ``ntotal`` rows;
the writer cuts it back to ``ntotal`` on open (rows past it belong to passages that ingest re-derives
from SQLite anyway), and readers only ever look at the first ``ntotal`` rows.
"""
from __future__ import annotations

import mmap
import os
from pathlib import Path

import numpy as np

DTYPE = np.float16


class VectorFile:
    """Append-only float16 matrix, one row per passage id, read back through a memory map."""

    def __init__(self, path: str | Path, dim: int):
        self.path = Path(path)
        self.dim = dim
        self.row_bytes = dim * np.dtype(DTYPE).itemsize
        self._fh = None
        self._map: np.ndarray | None = None

    def exists(self) -> bool:
        return self.path.exists()

    @property
    def rows(self) -> int:
        """Complete rows on disk (a row half-written by a killed process does not count)."""
        return self.path.stat().st_size // self.row_bytes if self.path.exists() else 0

    def create(self) -> None:
        self.close()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "wb"):
            pass

    def truncate(self, rows: int) -> None:
        self.close()
        os.truncate(self.path, rows * self.row_bytes)

    def append(self, first_id: int, vectors: np.ndarray) -> None:
        if self._fh is None:
            self._map = None
            self._fh = open(self.path, "ab")
        have = self._fh.tell() // self.row_bytes
        if first_id != have:
            raise RuntimeError(f"{self.path} holds {have} vectors, refusing to append from id {first_id}")
        self._fh.write(np.ascontiguousarray(vectors, dtype=DTYPE).tobytes())

    def sync(self) -> None:
        """Make every appended row durable (called before the FAISS file that counts them is replaced)."""
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        self._map = None

    def view(self, rows: int) -> np.ndarray:
        """The first ``rows`` rows as a read-only (rows, dim) array over a memory map.

        Two hints to the kernel, because a search reads ~200 scattered rows: MADV_RANDOM, so a row not in
        the page cache costs one 4 KiB read instead of the default 128 KiB read-ahead (cold queries took
        up to 0.7 s at 3.2 M passages without it), and MADV_WILLNEED, which starts reading the whole file
        into the page cache in the background when a reader opens it."""
        if self._map is None or len(self._map) != rows:
            self.sync()
            if not rows:
                self._map = np.zeros((0, self.dim), DTYPE)
            else:
                with open(self.path, "rb") as fh:
                    mm = mmap.mmap(fh.fileno(), rows * self.row_bytes, access=mmap.ACCESS_READ)
                mm.madvise(mmap.MADV_RANDOM)
                mm.madvise(mmap.MADV_WILLNEED)
                self._map = np.frombuffer(mm, dtype=DTYPE).reshape(rows, self.dim)
        return self._map


def exact_top_k(queries: np.ndarray, candidates: np.ndarray, vectors: np.ndarray,
                k: int) -> tuple[np.ndarray, np.ndarray]:
    """Re-rank each query's candidate ids (``-1`` = none) by exact inner product with ``vectors[id]``.

    Returns (scores, ids) of shape (len(queries), k), padded with (-inf, -1) like FAISS. Ties are broken
    by the lower id, and the arithmetic is float32 over the float16 rows - the benchmark's exact
    brute-force reference ranks its own candidates with this same function, so an id that both find gets
    the same score in both (no spurious misses from rounding in a different BLAS kernel)."""
    queries = np.asarray(queries, dtype=np.float32)
    out_s = np.full((len(queries), k), -np.inf, dtype=np.float32)
    out_i = np.full((len(queries), k), -1, dtype=np.int64)
    for qi, (q, cand) in enumerate(zip(queries, candidates)):
        ids = np.unique(cand[cand >= 0])  # sorted: the rows are read in file order
        if not len(ids):
            continue
        scores = np.asarray(vectors[ids], dtype=np.float32) @ q
        order = np.lexsort((ids, -scores))[:k]
        out_s[qi, : len(order)] = scores[order]
        out_i[qi, : len(order)] = ids[order]
    return out_s, out_i
