"""`dsv legal ...`: generate a synthetic corpus, ingest it, search, ask, review contracts, run the service.

Heavy libraries (FAISS, bm25s, sentence-transformers, torch) are imported inside the handlers so that
``dsv --help`` stays instant.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from shared.cli_helpers import add_command, add_group


def _config(args, settings, **overrides):
    from apps.legal.config import default_config

    cfg = default_config(settings, **overrides)
    if getattr(args, "kb", None):
        from dataclasses import replace

        cfg = replace(cfg, kb_dir=Path(args.kb))
    return cfg


def _require_kb(cfg):
    from shared.io import InputError

    if not cfg.sqlite_path.exists():
        raise InputError(f"{cfg.kb_dir}: no knowledge base yet; run `dsv legal ingest <corpus.jsonl>` first")


def cmd_generate(args, settings) -> int:
    from apps.legal.generate import GeneratorConfig, write_corpus

    n = write_corpus(GeneratorConfig(n=args.n, seed=args.seed, zh_share=args.zh_share), args.out)
    print(json.dumps({"written": n, "out": str(args.out), "synthetic": True}))
    return 0


def cmd_ingest(args, settings) -> int:
    from apps.legal.ingest import ingest

    cfg = _config(args, settings, embedder=args.embedder, distill_targets=args.distill_targets,
                  batch_docs=args.batch_docs, checkpoint_passages=args.checkpoint_passages,
                  index_factory=args.index_factory, ingest_workers=args.procs)
    report = ingest(cfg, args.path, progress=not args.quiet, build_indexes=args.workers == 0)
    if args.workers:
        from apps.legal.distributed import build_indexes_distributed

        report.timings["ray"] = build_indexes_distributed(cfg, num_workers=args.workers)
    for line, why in report.malformed[:20]:
        print(f"skipped {args.path}:{line}: {why}", file=sys.stderr)
    if len(report.malformed) > 20:
        print(f"... {len(report.malformed) - 20} more malformed records skipped", file=sys.stderr)
    out = {k: v for k, v in report.__dict__.items() if k != "malformed"}
    out["malformed"] = len(report.malformed)
    out["docs_per_second"] = round(report.docs_per_second, 1)
    print(json.dumps(out, ensure_ascii=False))
    return 0


def _retriever(args, settings):
    from apps.legal.pipeline import RetrievalMode, Retriever

    cfg = _config(args, settings)
    _require_kb(cfg)
    mode = RetrievalMode(bm25=args.mode in ("hybrid", "bm25"), dense=args.mode in ("hybrid", "dense"),
                         rerank=args.rerank)
    return Retriever(cfg, mode, top_k=args.k)


def cmd_search(args, settings) -> int:
    hits = _retriever(args, settings).search(args.query, tenant=args.tenant, k=args.k)
    if args.json:
        print(json.dumps([h.to_json() for h in hits], ensure_ascii=False, indent=1))
    else:
        for rank, h in enumerate(hits, 1):
            print(f"{rank:2d}. {h.score:.4f} {h.doc_id} [{h.access}] {h.title}\n    {h.text[:200].replace(chr(10), ' ')}")
    return 0


def make_client(settings):
    """A ModelClient when the server answers /health, else None (the answer is then extractive)."""
    from core.client import ModelClient

    client = ModelClient.from_settings(settings)
    return client if client.available() else None


def cmd_ask(args, settings) -> int:
    from apps.legal.llm import LegalAnswerer

    retriever = _retriever(args, settings)
    hits = retriever.search(args.question, tenant=args.tenant, k=args.k)
    client = make_client(settings)
    answerer = LegalAnswerer(client, model=retriever.cfg.model, copy_quotes=not args.free_quotes)
    result = answerer.answer(args.question, hits)
    if args.json:
        print(json.dumps(result.to_json(), ensure_ascii=False, indent=1))
    else:
        print(result.answer)
        for c in result.citations:
            print(f"  {c['marker']} {c['doc_id']}: {c['passage'][:120].replace(chr(10), ' ')}")
        for f in result.flagged:
            print(f"  flagged: {f['citation']} ({f['reason']})")
    return 0


def cmd_review(args, settings) -> int:
    from apps.legal.review import ContractReviewer

    cfg = _config(args, settings)
    path = Path(args.contract)
    from shared.io import InputError

    if not path.exists():
        raise InputError(f"{path}: file not found")
    if args.no_retrieval:  # the checklist alone: no reference clauses, no precedents
        reviewer = ContractReviewer(None, use_retrieval=False)
    else:
        reviewer = ContractReviewer(cfg if cfg.sqlite_path.exists() else None)
    findings = reviewer.review(path.read_text(encoding="utf-8"), tenant=args.tenant)
    if args.json:
        print(json.dumps([f.to_json() for f in findings], ensure_ascii=False, indent=1))
    else:
        for f in findings:
            mark = "RISK" if f.risky else "ok  "
            print(f"[{mark}] clause {f.index}: {f.clause[:100]}")
            if f.risky:
                print(f"       why: {', '.join(f.reasons)}")
                for s in f.statutes:
                    print(f"       statute: {s}")
                for p in f.precedents:
                    print(f"       precedent: {p['doc_id']} {p['title']}")
                print(f"       suggest: {f.suggestion}")
    return 0


def cmd_service(args, settings) -> int:
    from apps.legal.service import run_service

    return run_service(settings, host=args.host, port=args.port, n_docs=args.n, rerank=args.rerank,
                       api_keys_file=args.api_keys_file)


def cmd_export_training(args, settings) -> int:
    from apps.legal.training import export_training_data

    cfg = _config(args, settings)
    _require_kb(cfg)
    model_dir = None if args.no_fit else Path(args.model or settings.default_model_dir)
    n = export_training_data(cfg, args.out, n=args.n, seed=args.seed, model_dir=model_dir)
    print(json.dumps({"written": n, "out": str(args.out)}))
    return 0


def _search_args(p, k_default=10):
    p.add_argument("-k", type=int, default=k_default, help="passages to return")
    p.add_argument("--tenant", default=None, help="tenant label; sees 'public' plus its own documents")
    p.add_argument("--mode", choices=("hybrid", "bm25", "dense"), default="hybrid", help="retrievers to use")
    p.add_argument("--rerank", action="store_true",
                   help="re-rank the fused top 20 with MiniLM (off by default: slow on CPU, and it lowered "
                        "recall on the synthetic benchmark; see docs/benchmarks/legal.md)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--kb", default=None, help="knowledge-base directory (default DSV_HOME/legal/kb)")


def register(subparsers) -> None:
    group = add_group(subparsers, "legal", "Legal RAG over judgments: ingest, hybrid search, cited answers, contract review.")
    p = add_command(group, "generate", cmd_generate, "Write N synthetic judgments (zh+en) citing real statute articles.")
    p.add_argument("--n", type=int, default=1000, help="number of judgments")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--zh-share", type=float, default=0.5, help="fraction of Chinese judgments")
    p.add_argument("--out", type=Path, default=Path("judgments.jsonl"), help="output .jsonl or .parquet")
    p = add_command(group, "ingest", cmd_ingest, "Add a JSONL/Parquet corpus to the knowledge base (incremental, crash-safe).")
    p.add_argument("path", help="corpus file (.jsonl or .parquet)")
    p.add_argument("--embedder", choices=("static", "minilm"), default="static",
                   help="first-stage dense embedder: distilled static (fast) or MiniLM (slow, small corpora)")
    p.add_argument("--distill-targets", type=int, default=1000, help="MiniLM targets when distilling the static embedder")
    p.add_argument("--batch-docs", type=int, default=2000, help="judgments per SQLite transaction")
    p.add_argument("--checkpoint-passages", type=int, default=250_000,
                   help="passages between FAISS saves / BM25 segments (smaller: less redone after a crash)")
    p.add_argument("--index-factory", default=None,
                   help="FAISS index for a NEW knowledge base, e.g. Flat or IVF1024,SQ8 (default: chosen by size)")
    p.add_argument("--workers", type=int, default=0,
                   help="build the indexes on N local Ray workers (0 = in this process)")
    p.add_argument("--procs", type=int, default=2,
                   help="local processes that parse, chunk and embed during ingest (0 = all in this process)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--kb", default=None, help="knowledge-base directory (default DSV_HOME/legal/kb)")
    p = add_command(group, "search", cmd_search, "Ranked passages for a query (hybrid BM25 + dense, RRF; optional MiniLM re-rank).")
    p.add_argument("query")
    _search_args(p)
    p = add_command(group, "ask", cmd_ask, "Answer a question with verified citations (the `legal` adapter, its quotes "
                    "copied from the passages it is shown; extractive fallback).")
    p.add_argument("question")
    _search_args(p, k_default=5)
    p.add_argument("--free-quotes", action="store_true",
                   help="let the adapter quote without the model server's copy constraint (quote_sources), to see "
                        "what it writes on its own; the verifier is the same")
    p = add_command(group, "review", cmd_review, "Review a contract clause by clause: risky clauses, statutes, precedents, rewording.")
    p.add_argument("contract", help="contract text file")
    p.add_argument("--tenant", default=None, help="tenant label for precedent retrieval")
    p.add_argument("--no-retrieval", action="store_true", help="the checklist of risky wordings only: no reference-clause retrieval (so no statute tests "
                        "on wordings the checklist misses) and no precedents")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--kb", default=None, help="knowledge-base directory (default DSV_HOME/legal/kb)")
    p = add_command(group, "export-training", cmd_export_training,
                    "Write chat fine-tuning records (question + passages -> cited answer) for the `legal` adapter.")
    p.add_argument("--out", type=Path, required=True, help="output JSONL")
    p.add_argument("--n", type=int, default=500, help="number of records")
    p.add_argument("--seed", type=int, default=0, help="question sampling seed (use another for val)")
    p.add_argument("--model", default=None,
                   help="base model whose context window the prompts must fit (default DSV_HOME/models/deepseek-tiny)")
    p.add_argument("--no-fit", action="store_true", help="the largest evidence budget, not fitted to a model's window")
    p.add_argument("--kb", default=None, help="knowledge-base directory (default DSV_HOME/legal/kb)")
    p = add_command(group, "service", cmd_service,
                    "Generate + ingest a demo corpus if missing, then serve search/ask over HTTP until Ctrl-C.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8704)
    p.add_argument("--n", type=int, default=2000, help="demo corpus size when none exists")
    p.add_argument("--rerank", action="store_true", help="re-rank search results with MiniLM (slower)")
    p.add_argument("--api-keys-file", type=Path, default=None,
                   help="'key:tenant' lines; with DSV_API_KEYS they bind each caller to a tenant (none: open)")
