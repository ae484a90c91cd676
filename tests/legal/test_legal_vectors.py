"""The dense index's exact re-scoring stage and the crash safety of its float16 vector file (real FAISS)."""
from __future__ import annotations

import numpy as np
import pytest

from apps.legal.index import DenseIndex, IndexPlan
from apps.legal.vectors import exact_top_k

DIM = 384


def _clustered(n: int, seed: int = 0) -> np.ndarray:
    """Unit vectors in tight clusters: many near-ties, as on the templated corpus."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, DIM)).astype(np.float32)
    x = centres[rng.integers(0, 20, n)] + 0.05 * rng.normal(size=(n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _brute_force(index: DenseIndex, queries: np.ndarray, k: int) -> np.ndarray:
    vectors = index.vectors.view(index.ntotal)
    every = np.broadcast_to(np.arange(index.ntotal), (len(queries), index.ntotal))
    return exact_top_k(queries, every, vectors, k)[1]


def _build(path, vectors: np.ndarray, factory: str = "IVF8,SQ4", saves: int = 3) -> DenseIndex:
    index = DenseIndex(path, writer=True)
    index.create(IndexPlan.parse(factory), vectors)
    for part in np.array_split(np.arange(len(vectors)), saves):
        index.add(int(part[0]), vectors[part])
        index.save()
    return index


def test_rescoring_probing_every_list_returns_exact_search(tmp_path):
    x = _clustered(3000)
    queries = _clustered(30, seed=1)
    index = _build(tmp_path / "dense.faiss", x)
    reader = DenseIndex(tmp_path / "dense.faiss")
    assert reader.vectors.rows == reader.ntotal == len(x)
    exact = _brute_force(reader, queries, 10)
    _, codes_only = reader.search(queries, 10, nprobe=8, rescore=0)
    _, rescored = reader.search(queries, 10, nprobe=8, rescore=20)
    # 4-bit codes reorder the near-ties; re-scoring 200 candidates from the float16 rows does not.
    assert (codes_only != exact).any()
    np.testing.assert_array_equal(rescored, exact)
    # The stored rows are the added vectors (float16), row i = passage id i.
    np.testing.assert_allclose(np.asarray(reader.vectors.view(len(x)), np.float32), x, atol=1e-3)
    index.vectors.close()


def test_rescoring_keeps_the_access_mask(tmp_path):
    x = _clustered(2000)
    index = _build(tmp_path / "dense.faiss", x, saves=1)
    allowed = np.zeros(len(x), dtype=bool)
    allowed[::9] = True
    _, ids = index.search(_clustered(5, seed=2), 20, allowed=allowed, nprobe=8, rescore=4)
    assert (ids >= 0).all() and allowed[ids].all()


def test_writer_cuts_vectors_appended_after_the_last_save(tmp_path):
    """A crash after appending rows but before the FAISS save: the writer re-opens at the saved count
    (ingest then re-derives those passages from SQLite)."""
    x = _clustered(1200)
    index = _build(tmp_path / "dense.faiss", x[:1000], saves=2)
    index.add(1000, x[1000:])                               # appended ...
    index.vectors.sync()
    with open(index.vectors.path, "ab") as fh:              # ... plus half a row from a killed write
        fh.write(b"\0" * 100)
    index.vectors.close()                                   # ... and no save: the process dies here
    reopened = DenseIndex(tmp_path / "dense.faiss", writer=True)
    assert reopened.ntotal == 1000 and reopened.vectors.rows == 1000
    assert reopened.vectors.path.stat().st_size == 1000 * DIM * 2
    reopened.add(1000, x[1000:])
    reopened.save()
    final = DenseIndex(tmp_path / "dense.faiss")
    assert final.ntotal == final.vectors.rows == 1200
    np.testing.assert_allclose(np.asarray(final.vectors.view(1200), np.float32), x, atol=1e-3)


def test_vector_file_shorter_than_the_index_is_refused_by_readers_and_repaired_by_the_writer(tmp_path):
    x = _clustered(1000)
    index = _build(tmp_path / "dense.faiss", x, saves=1)
    index.vectors.truncate(700)                             # damaged: fewer rows than the index counts
    with pytest.raises(RuntimeError, match="dsv legal ingest"):
        DenseIndex(tmp_path / "dense.faiss")
    repaired = DenseIndex(tmp_path / "dense.faiss", writer=True)
    assert repaired.ntotal == 700                           # the index's tail is dropped, to be re-derived
    _, ids = repaired.search(x[:50], 10, nprobe=8, rescore=4)
    assert ids.max() < 700


def test_readers_cannot_add_and_appends_must_continue_the_id_sequence(tmp_path):
    x = _clustered(800)
    index = _build(tmp_path / "dense.faiss", x[:600], saves=1)
    with pytest.raises(RuntimeError, match="refusing to add from id 700"):
        index.add(700, x[600:])
    with pytest.raises(RuntimeError, match="read-only"):
        DenseIndex(tmp_path / "dense.faiss").add(600, x[600:])


def test_flat_plans_keep_no_vector_copy_and_large_plans_do():
    assert not IndexPlan.for_size(50_000).rescored
    plan = IndexPlan.for_size(3_200_000)
    assert plan.rescored and plan.factory.startswith("IVF")
