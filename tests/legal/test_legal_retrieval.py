"""Real retrieval: MiniLM vectors in FAISS, bm25s over CJK bigrams + words, RRF, re-ranking, and access control."""
from __future__ import annotations

import numpy as np
import pytest

from apps.legal.pipeline import RetrievalMode, Retriever

from .conftest import SECRET_TERM


def test_knowledge_base_uses_real_minilm_vectors_in_faiss(legal_kb):
    import faiss

    cfg, report, _ = legal_kb
    assert report.malformed == [] and report.total_docs == 27
    index = faiss.read_index(str(cfg.faiss_path))
    assert index.ntotal == report.total_passages and index.d == 384
    vecs = index.reconstruct_n(0, 3)
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-3)
    from apps.legal.embedders import MiniLMEmbedder

    # Semantic match without shared words: MiniLM, not lexical overlap.
    e = MiniLMEmbedder().embed(["The court fined the company for leaking customer records.",
                                "A data breach exposed personal data of clients.",
                                "The harvest of apples was late this year."])
    assert e[0] @ e[1] > e[0] @ e[2] + 0.1


def test_hybrid_search_finds_chinese_and_english(legal_kb):
    cfg, _, _ = legal_kb
    r = Retriever(cfg, RetrievalMode(rerank=False), top_k=5)
    hits = r.search("retention logs unlawful", k=5)
    assert hits[0].doc_id == "planted-injection"
    assert {"bm25", "dense"} & set(hits[0].ranks)
    zh = r.search("原告 被告 判决", k=5)
    assert zh and all("判决" in h.text for h in zh[:3])
    reranked = Retriever(cfg, RetrievalMode(rerank=True), top_k=5).search("how long may retention logs be kept", k=5)
    assert reranked[0].doc_id == "planted-injection" and "fused" in reranked[0].ranks


def test_access_control_is_enforced_inside_each_retriever(legal_kb):
    cfg, _, _ = legal_kb
    for mode in (RetrievalMode(True, False, False), RetrievalMode(False, True, False), RetrievalMode(True, True, True)):
        r = Retriever(cfg, mode, top_k=50)
        ids_a = {h.doc_id for h in r.search(f"{SECRET_TERM} acquisition", tenant="firm-a", k=50)}
        ids_b = {h.doc_id for h in r.search(f"{SECRET_TERM} acquisition", tenant="firm-b", k=50)}
        ids_public = {h.doc_id for h in r.search(f"{SECRET_TERM} acquisition", tenant=None, k=50)}
        assert "secret-a-1" not in ids_b and "secret-a-1" not in ids_public
        assert "secret-b-1" not in ids_a and "secret-b-1" not in ids_public
        if mode.bm25:
            assert "secret-a-1" in ids_a and "secret-b-1" in ids_b
    # Inside FAISS: with k larger than what firm-b may read, the search itself returns only allowed ids.
    r = Retriever(cfg, RetrievalMode(False, True, False))
    r.warm_up()
    allowed = r.pipeline.components["access"].run(tenant="firm-b")["allowed"]
    dense = r.pipeline.components["dense"]
    hits = dense.run("confidential acquisition", allowed=allowed, top_k=10_000)["hits"]
    assert len(hits) == int(allowed.sum()) and all(allowed[h.chunk_id] for h in hits)
    bm25 = Retriever(cfg, RetrievalMode(True, False, False))
    bm25.warm_up()
    hits = bm25.pipeline.components["bm25"].run(SECRET_TERM, allowed=allowed, top_k=100)["hits"]
    assert hits and all(allowed[h.chunk_id] for h in hits)


def test_static_embedder_distilled_from_minilm_tracks_it(static_embedder_dir):
    from apps.legal.embedders import StaticEmbedder

    path, report = static_embedder_dir
    # Held-out cosine to MiniLM's sentence vectors: the fitted table must beat the plain projection start.
    assert report.heldout_cosine > 0.5
    emb = StaticEmbedder.load(path)
    v = emb.embed(["判决如下 被告 支付", "the claimant sought damages", "qqxqq zzyzz"])
    norms = np.linalg.norm(v, axis=1)
    assert v.shape == (3, 384) and np.allclose(norms[:2], 1, atol=1e-4)
    assert norms[2] == 0 and np.isfinite(v).all()  # no known term: a zero vector, not NaN


def test_vectorised_bm25_build_scores_exactly_like_bm25s(tmp_path):
    """The segment builder replaces bm25s' per-passage build loop; scores and the saved format must not change."""
    import bm25s

    from apps.legal.chunking import chunk_text, tokenize
    from apps.legal.index import build_bm25
    from tests.legal.conftest import small_records

    tokens = [tokenize(p) for r in small_records(120, seed=3) for p in chunk_text(r["text"])] + [[]]
    ref = bm25s.BM25()
    ref.index([t or ["<empty>"] for t in tokens], show_progress=False)
    build_bm25(tokens, tmp_path / "seg")
    ours = bm25s.BM25.load(str(tmp_path / "seg"))
    assert ours.scores["num_docs"] == len(tokens)
    for query in ("借款合同 逾期 利息", "GDPR Article 6 lawful basis personal data", "判决 被告 支付"):
        q = tokenize(query)
        a = ref.get_scores([t for t in q if t in ref.vocab_dict])
        b = ours.get_scores([t for t in q if t in ours.vocab_dict])
        assert a.max() > 0 and np.allclose(a, b, rtol=1e-5, atol=1e-6)


def test_access_masks_are_cached_per_tenant_read_only_and_match_the_labels(legal_kb):
    from apps.legal.components import AccessFilter
    from apps.legal.store import Store

    cfg, _, _ = legal_kb
    access = AccessFilter(cfg)
    access.warm_up()
    a = access.run(tenant="firm-a")["allowed"]
    b = access.run(tenant="firm-b")["allowed"]
    public = access.run(tenant=None)["allowed"]
    assert access.run(tenant="firm-a")["allowed"] is a        # served from the cache ...
    with pytest.raises(ValueError):                            # ... which no retriever can modify
        a[0] = not a[0]
    store = Store(cfg.sqlite_path, readonly=True)
    rows = store.passages(range(store.n_chunks()))
    store.close()
    labels = [rows[i].access for i in range(len(rows))]
    for mask, tenant in ((a, "firm-a"), (b, "firm-b"), (public, None)):
        np.testing.assert_array_equal(mask, [lab in ("public", tenant) for lab in labels])

