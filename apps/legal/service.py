"""`dsv legal service`: prepare a demo knowledge base if missing, then serve search / ask / review over HTTP.

Endpoints (FastAPI): ``GET /health``, ``GET /search?q=..&k=10``, ``POST /ask`` ``{"question", "k"}``,
``POST /review`` ``{"text"}``. Answers use the `legal` adapter through the model server when it is up, else
the labelled extractive fallback. Ctrl-C / SIGTERM stop it cleanly (uvicorn). The service writes
``DSV_HOME/legal/service.json`` (URL, corpus size) for the dashboard.

Tenant identity comes from the API key (``Authorization: Bearer <key>``), with the model server's key
registry (``core.serving.auth.TenantKeys``: env ``DSV_API_KEYS="key:firm-a,..."`` and/or
``--api-keys-file``). The optional ``tenant`` request field is only a cross-check: a key for firm A that
names firm B gets 403, never B's documents; only an admin key may act for a named tenant. With no keys
configured the service is open (every caller admin, as the model server), for local demos.
"""
from __future__ import annotations

import json
import logging
import signal
import time
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Request
from pydantic import BaseModel

from apps.legal.config import LegalConfig, default_config
from core.serving.auth import Tenant, TenantKeys
from core.serving.protocol import ServingError
from shared.io import write_text_atomic

log = logging.getLogger(__name__)


class AskRequest(BaseModel):   # module level: FastAPI resolves these annotations by name
    question: str
    k: int = 5
    tenant: str | None = None  # cross-check only; the key decides (see the module docstring)


class ReviewRequest(BaseModel):
    text: str
    tenant: str | None = None


def _caller(request: Request) -> Tenant:
    """The tenant of the request's API key (401 without a valid one, unless no keys are configured)."""
    return request.app.state.keys.authenticate(request.headers.get("authorization"))


Caller = Annotated[Tenant, Depends(_caller)]


def effective_tenant(caller: Tenant, requested: str | None) -> str | None:
    """The access label a request may read with: the key's own tenant; an admin key may name one (or
    none = public documents only). A non-admin key naming another tenant raises 403."""
    if caller.is_admin:
        return requested
    if requested is not None and requested != caller.name:
        raise ServingError(403, f"API key belongs to tenant {caller.name!r}, not {requested!r}.",
                           "permission_error", param="tenant", code="tenant_mismatch")
    return caller.name


def prepare_demo_kb(cfg: LegalConfig, n_docs: int, seed: int = 0) -> dict | None:
    """Generate and ingest a synthetic corpus when the knowledge base is empty (resumes if interrupted)."""
    from apps.legal.chunking import TOKENIZER
    from apps.legal.generate import GeneratorConfig, write_corpus
    from apps.legal.ingest import ingest
    from apps.legal.store import Store

    corpus = cfg.kb_dir.parent / f"demo-corpus-{n_docs}.jsonl"
    if cfg.sqlite_path.exists():
        store = Store(cfg.sqlite_path)
        done = store.n_docs() >= n_docs and store.n_chunks() > 0
        stale = store.n_chunks() > 0 and store.get_meta("tokenizer") != TOKENIZER
        store.close()
        if stale:  # a demo knowledge base from an older tokenizer: regenerable, so rebuild it
            import shutil

            log.warning("%s was built with another tokenizer; rebuilding the demo knowledge base", cfg.kb_dir)
            shutil.rmtree(cfg.kb_dir)
            done = False
        if done and cfg.faiss_path.exists():
            return None
    if not corpus.exists():
        write_corpus(GeneratorConfig(n=n_docs, seed=seed), corpus)
    report = ingest(cfg, corpus)
    return {"docs": report.total_docs, "passages": report.total_passages, "seconds": round(report.seconds, 1)}


def create_app(cfg: LegalConfig, settings, rerank: bool = False, keys=None):
    """``keys``: a ``core.serving.auth.TenantKeys`` (default: loaded from ``DSV_API_KEYS``)."""
    from fastapi.responses import JSONResponse

    from apps.legal.llm import LegalAnswerer
    from apps.legal.pipeline import RetrievalMode, Retriever
    from apps.legal.review import ContractReviewer

    retriever = Retriever(cfg, RetrievalMode(rerank=rerank))
    retriever.warm_up()
    reviewer = ContractReviewer(cfg)
    client_state = {"checked": 0.0, "client": None}

    def client():
        if time.monotonic() - client_state["checked"] > 30:  # re-probe the model server every 30 s
            from apps.legal.cli import make_client

            client_state["client"] = make_client(settings)
            client_state["checked"] = time.monotonic()
        return client_state["client"]

    keys = TenantKeys.load() if keys is None else keys
    app = FastAPI(title="dsv legal", description="Hybrid search, cited answers and contract review over judgments.")
    app.state.keys = keys

    @app.exception_handler(ServingError)
    async def serving_error(_request, exc: ServingError):
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.get("/health")
    def health():
        return {"status": "ok"}

    @app.get("/search")
    def search(q: str, who: Caller, k: int = 10, tenant: str | None = None):
        if not q.strip() or not 1 <= k <= 100:
            raise HTTPException(400, "q must be non-empty and 1 <= k <= 100")
        return [h.to_json() for h in retriever.search(q, tenant=effective_tenant(who, tenant), k=k)]

    @app.post("/ask")
    def ask(req: AskRequest, who: Caller):
        hits = retriever.search(req.question, tenant=effective_tenant(who, req.tenant), k=req.k)
        return LegalAnswerer(client(), model=cfg.model).answer(req.question, hits).to_json()

    @app.post("/review")
    def review(req: ReviewRequest, who: Caller):
        return [f.to_json() for f in reviewer.review(req.text, tenant=effective_tenant(who, req.tenant))]

    return app


def run_service(settings, host: str = "127.0.0.1", port: int = 8704, n_docs: int = 2000, rerank: bool = False,
                api_keys_file: Path | None = None) -> int:
    import uvicorn

    keys = TenantKeys.load(api_keys_file)  # before the slow corpus preparation: a bad keys file fails fast

    cfg = default_config(settings, distill_targets=200)
    prepared = prepare_demo_kb(cfg, n_docs)
    if prepared:
        log.info("prepared demo knowledge base: %s", prepared)
    app = create_app(cfg, settings, rerank=rerank, keys=keys)
    status = Path(settings.app_dir("legal")) / "service.json"
    write_text_atomic(status, json.dumps({"url": f"http://{host}:{port}", "kb_dir": str(cfg.kb_dir),
                                          "started": time.time(), "prepared": prepared}))
    log.info("legal service on http://%s:%d", host, port)
    server = _server_class()(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    # Our own handlers: finish in-flight requests, then return 0 (uvicorn would re-raise the signal).
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: setattr(server, "should_exit", True))
    server.run()
    log.info("legal service stopped")
    return 0


def _server_class():
    import contextlib

    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):  # keep the handlers installed above
            yield

    return Server

