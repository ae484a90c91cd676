"""Typed configuration of the legal app, built once at the edge (CLI / service / bench) and passed down."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class LegalConfig:
    kb_dir: Path                   # knowledge base: kb.sqlite, dense.faiss, bm25/, static/
    embedder: str = "static"       # first-stage dense embedder: "static" (distilled) or "minilm"
    batch_docs: int = 2_000        # judgments per SQLite transaction
    checkpoint_passages: int = 250_000  # passages between FAISS saves / BM25 segments
    ingest_workers: int = 2        # processes that parse, chunk and embed (0 = all in-process)
    chunk_chars: int = 700
    distill_targets: int = 1_000   # MiniLM sentence embeddings used to distil the static embedder
    distill_sample: int = 20_000   # passages whose terms form the static vocabulary
    expected_passages: int | None = None  # index plan override (default: estimated from the input size)
    index_factory: str | None = None      # explicit FAISS factory ("Flat", "IVF1024,SQ8"); default by size
    nprobe: int = 64               # IVF lists probed (bench/legal_ann.py measures recall per setting)
    rescore: int = 4               # IVF: FAISS returns k*rescore candidates, re-scored exactly (0 = off)
    rrf_k: int = 60
    candidates: int = 50           # per retriever, before fusion
    rerank_top: int = 20           # fused candidates re-scored by MiniLM (0 = no re-ranking)
    model: str = "legal"           # adapter name on the model server

    @property
    def sqlite_path(self) -> Path:
        return self.kb_dir / "kb.sqlite"

    @property
    def faiss_path(self) -> Path:
        return self.kb_dir / "dense.faiss"

    @property
    def bm25_dir(self) -> Path:
        return self.kb_dir / "bm25"

    @property
    def static_dir(self) -> Path:
        return self.kb_dir / "static"


def default_config(settings, **overrides) -> LegalConfig:
    return LegalConfig(kb_dir=Path(settings.app_dir("legal")) / "kb", **overrides)
