"""Thin FastAPI routers over ``OpenAIServing``; ``build_app`` takes the serving layer (engine inside).

Every error leaves in OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``: validation
errors (422) name the field, oversized bodies are cut off at ``max_body_bytes`` (413) before parsing.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.serving.adapters import AdapterNotFound
from core.serving.auth import Tenant, TenantKeys
from core.serving.metrics import ERRORS
from core.serving.protocol import (AdapterRequest, ChatCompletionRequest, CompletionRequest, DegradeRequest,
                                   ScoreRequest, ServingError, error_body)
from core.serving.serving import DegradeState, OpenAIServing

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 1 << 20  # 1 MiB: far above any prompt the context can hold


class BodySizeLimit:
    """ASGI middleware: 413 for a body over ``limit`` bytes, whether declared or sent chunked."""

    def __init__(self, app, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            if declared.isdigit() and int(declared) > self.limit:
                return await self._reject(scope, receive, send)
            return await self.app(scope, receive, send)  # the server enforces the declared length
        # No length declared (chunked): buffer up to the limit, then replay to the app.
        messages, size = [], 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.limit:
                return await self._reject(scope, receive, send)
            if not message.get("more_body", False):
                break

        async def replay():
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    async def _reject(self, scope, receive, send):
        ERRORS.labels(kind="request_too_large").inc()
        response = JSONResponse(error_body(f"Request body larger than {self.limit} bytes.",
                                           "invalid_request_error", code="request_too_large"), status_code=413)
        await response(scope, receive, send)


def build_app(serving: OpenAIServing, keys: TenantKeys, *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> FastAPI:
    engine = serving.engine

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if not engine.alive:
            engine.start()
        yield
        await asyncio.to_thread(engine.stop)

    app = FastAPI(title="dsv model server", description="OpenAI-compatible serving of deepseek + LoRA adapters",
                  lifespan=lifespan)
    app.add_middleware(BodySizeLimit, limit=max_body_bytes)
    app.state.serving = serving

    def tenant(request: Request) -> Tenant:
        return keys.authenticate(request.headers.get("authorization"))

    def admin(who: Tenant = Depends(tenant)) -> Tenant:
        if not who.is_admin:
            raise ServingError(403, "Admin API key required.", "permission_error", code="admin_only")
        return who

    _install_error_handlers(app)
    app.include_router(_ops_router(serving))
    app.include_router(_openai_router(serving, tenant))
    app.include_router(_admin_router(serving, admin))
    return app


def _ops_router(serving: OpenAIServing) -> APIRouter:
    router = APIRouter()

    @router.get("/health")
    async def health():
        return {"status": "ok"}

    @router.get("/ready")
    async def ready():
        if not serving.engine.alive:
            return JSONResponse(error_body("Engine not running.", "server_error", code="not_ready"), status_code=503)
        return {"status": "ready", "model": serving.config.base_name}

    @router.get("/metrics")
    async def metrics():
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return PlainTextResponse(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return router


def _openai_router(serving: OpenAIServing, tenant) -> APIRouter:
    router = APIRouter(prefix="/v1")

    @router.get("/models")
    async def models(who: Tenant = Depends(tenant)):
        return serving.models(who)

    @router.post("/chat/completions")
    async def chat(body: ChatCompletionRequest, request: Request, who: Tenant = Depends(tenant)):
        return _respond(await serving.chat(body, who, request.is_disconnected))

    @router.post("/completions")
    async def completions(body: CompletionRequest, request: Request, who: Tenant = Depends(tenant)):
        return _respond(await serving.completion(body, who, request.is_disconnected))

    @router.post("/score")
    async def score(body: ScoreRequest, who: Tenant = Depends(tenant)):
        return await serving.score(body, who)

    return router


def _admin_router(serving: OpenAIServing, admin) -> APIRouter:
    router = APIRouter(prefix="/admin", dependencies=[Depends(admin)])
    adapters = serving.adapters

    @router.get("/adapters")
    async def list_adapters():
        return {"available": adapters.names(), "resident": adapters.status()}

    @router.post("/adapters")
    async def add_adapter(body: AdapterRequest):
        """Add or replace adapter ``name`` (``path`` defaults to ``<adapters-dir>/<name>``) and load it."""
        path = Path(body.path) if body.path else (adapters.adapters_dir or Path(".")) / body.name
        try:
            adapters.register(body.name, path)
        except AdapterNotFound as exc:
            raise ServingError(400, str(exc), param="path", code="invalid_adapter") from None
        await _preload(serving, body.name)
        return {"name": body.name, "path": str(path), "status": "loaded"}

    @router.post("/adapters/{name}/reload")
    async def reload_adapter(name: str):
        _known(adapters, name)
        adapters.reload(name)
        await _preload(serving, name)
        return {"name": name, "status": "reloaded"}

    @router.delete("/adapters/{name}")
    async def remove_adapter(name: str):
        _known(adapters, name)
        adapters.remove(name)
        return {"name": name, "status": "removed"}

    @router.get("/degrade")
    async def get_degrade():
        return serving.degrade.as_dict()

    @router.post("/degrade")
    async def set_degrade(body: DegradeRequest):
        current = serving.degrade
        state = DegradeState(
            enabled=body.enabled,
            max_tokens_cap=body.max_tokens_cap if body.max_tokens_cap is not None else current.max_tokens_cap,
            max_wait_ms=body.max_wait_ms if body.max_wait_ms is not None else current.max_wait_ms,
        )
        return serving.set_degrade(state).as_dict()

    return router


def _known(adapters, name: str) -> None:
    try:
        adapters.resolve(name)
    except AdapterNotFound:
        raise ServingError(404, f"No adapter named '{name}'.", "not_found_error", param="name",
                           code="adapter_not_found") from None


async def _preload(serving: OpenAIServing, name: str) -> None:
    """Load on the engine thread (between forward passes) so errors surface to the admin now."""
    adapters = serving.adapters

    def load():
        slot = adapters.acquire(name)
        adapters.release(slot)

    try:
        await asyncio.wrap_future(serving.engine.call(load))
    except Exception as exc:
        raise ServingError(400, f"Adapter '{name}' failed to load: {type(exc).__name__}: {exc}",
                           param="path", code="invalid_adapter") from None


def _respond(result):
    if hasattr(result, "__aiter__"):
        return StreamingResponse(result, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    return result


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServingError)
    async def serving_error(request: Request, exc: ServingError):
        ERRORS.labels(kind=str(exc.code or exc.status)).inc()
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        ERRORS.labels(kind="invalid_request").inc()
        errors = exc.errors()

        def field_of(error) -> str:
            if error.get("type") == "json_invalid":  # loc holds a character offset, not a field
                return "body"
            return ".".join(str(part) for part in error.get("loc", ()) if part != "body") or "body"

        field = field_of(errors[0]) if errors else "body"
        details = "; ".join(f"{field_of(e)}: {e.get('msg')}"
                            + (f" (at character {e['loc'][-1]})" if e.get("type") == "json_invalid" else "")
                            for e in errors[:5])
        return JSONResponse(error_body(f"Invalid request: {details}", "invalid_request_error", param=field,
                                       code="invalid_value"), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        ERRORS.labels(kind=str(exc.status_code)).inc()
        return JSONResponse(error_body(str(exc.detail), "invalid_request_error", code=exc.status_code),
                            status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        ERRORS.labels(kind="internal").inc()
        log.exception("unhandled error on %s", request.url.path)
        return JSONResponse(error_body(f"Internal error: {type(exc).__name__}", "server_error", code="internal"),
                            status_code=500)
