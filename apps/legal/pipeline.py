"""A small Haystack-style pipeline and the legal retrieval pipeline built from ``components``.

``Pipeline.add_component(name, component)`` + ``connect("a.out", "b.in")``; ``run({name: {...inputs}})``
executes components in insertion order, feeding each one the outputs it is connected to. (Haystack itself
is not installed here; this keeps its component contract so the components port over unchanged.)
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from apps.legal.components import (
    AccessFilter,
    BM25Retriever,
    DenseRetriever,
    MiniLMReranker,
    PassageFetcher,
    ReciprocalRankFusion,
)
from apps.legal.config import LegalConfig


class Pipeline:
    def __init__(self):
        self.components: dict[str, object] = {}
        self.edges: list[tuple[str, str, str, str]] = []  # (src, output, dst, input)
        self._warm = False

    def add_component(self, name: str, component) -> None:
        if name in self.components:
            raise ValueError(f"component {name!r} already added")
        self.components[name] = component

    def connect(self, source: str, target: str) -> None:
        src, out = source.split(".")
        dst, inp = target.split(".")
        for n in (src, dst):
            if n not in self.components:
                raise ValueError(f"unknown component {n!r}")
        if list(self.components).index(src) >= list(self.components).index(dst):
            raise ValueError(f"{source} -> {target}: components run in insertion order")
        self.edges.append((src, out, dst, inp))

    def warm_up(self) -> None:
        if not self._warm:
            for comp in self.components.values():
                comp.warm_up()
            self._warm = True

    def run(self, inputs: dict[str, dict]) -> dict[str, dict]:
        self.warm_up()
        outputs: dict[str, dict] = {}
        self.timings: dict[str, float] = {}
        for name, comp in self.components.items():
            kwargs = dict(inputs.get(name, {}))
            for src, out, dst, inp in self.edges:
                if dst == name:
                    kwargs[inp] = outputs[src][out]
            t = time.perf_counter()
            outputs[name] = comp.run(**kwargs)
            self.timings[name] = time.perf_counter() - t
        return outputs


@dataclass(frozen=True)
class RetrievalMode:
    bm25: bool = True
    dense: bool = True
    rerank: bool = True


def build_retrieval_pipeline(cfg: LegalConfig, mode: RetrievalMode = RetrievalMode(), top_k: int = 10) -> Pipeline:
    """access -> (bm25, dense) -> rrf -> fetch -> rerank."""
    p = Pipeline()
    p.add_component("access", AccessFilter(cfg))
    if mode.bm25:
        p.add_component("bm25", BM25Retriever(cfg))
    if mode.dense:
        p.add_component("dense", DenseRetriever(cfg))
    p.add_component("fuse", ReciprocalRankFusion(k=cfg.rrf_k, top_k=max(top_k, cfg.rerank_top)))
    p.add_component("fetch", PassageFetcher(cfg))
    if mode.rerank and cfg.rerank_top > 0:
        p.add_component("rerank", MiniLMReranker(top_k=top_k, max_candidates=cfg.rerank_top))
    for name in ("bm25", "dense"):
        if name in p.components:
            p.connect("access.allowed", f"{name}.allowed")
            p.connect(f"{name}.hits", f"fuse.{name}")
    p.connect("fuse.hits", "fetch.hits")
    if "rerank" in p.components:
        p.connect("fetch.hits", "rerank.hits")
    return p


class Retriever:
    """search(query, tenant, k) over a built pipeline; the one object the CLI, service and bench use."""

    def __init__(self, cfg: LegalConfig, mode: RetrievalMode = RetrievalMode(), top_k: int = 10):
        self.cfg = cfg
        self.top_k = top_k
        self.pipeline = build_retrieval_pipeline(cfg, mode, top_k)

    def warm_up(self) -> None:
        self.pipeline.warm_up()

    def search(self, query: str, tenant: str | None = None, k: int | None = None) -> list:
        k = k or self.top_k
        inputs: dict[str, dict] = {"access": {"tenant": tenant}}
        for name in ("bm25", "dense"):
            if name in self.pipeline.components:
                inputs[name] = {"query": query, "top_k": max(k, self.cfg.candidates)}
        if "rerank" in self.pipeline.components:
            inputs["rerank"] = {"query": query, "top_k": k}
        out = self.pipeline.run(inputs)
        last = "rerank" if "rerank" in out else "fetch"
        return out[last]["hits"][:k]
