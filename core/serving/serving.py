"""The serving layer: everything between an HTTP request and the engine (vLLM's ``serving_*`` role).

Resolves the model name to the base or an adapter, checks the tenant's right to it, builds and
length-checks the prompt, applies degrade-mode caps, submits to the engine and turns the engine's
events into OpenAI responses or SSE chunks. The FastAPI routers in ``api.py`` stay thin.
"""
from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from core.serving.adapters import AdapterNotFound, AdapterStore
from core.serving.auth import Tenant, adapter_owner, may_use
from core.serving.engine import Engine, Event, GenerationRequest, QueueFull, SamplingParams
from core.serving.engine import ScoreRequest as EngineScoreRequest
from core.serving.metrics import DEGRADED, REQUEST_LATENCY
from core.serving.protocol import (AssistantMessage, ChatChoice, ChatMessage, ChatCompletionRequest, ChatCompletionResponse,
                                   CompletionChoice, CompletionRequest, CompletionResponse, LabelScore,
                                   ModelCard, ModelList, SamplingFields, ScoreRequest, ScoreResponse,
                                   ServingError, Usage, new_id)

log = logging.getLogger(__name__)


@dataclass
class DegradeState:
    """Load shedding for the ops "degrade on alert" policy: caps on max_tokens and on batch wait."""

    enabled: bool = False
    max_tokens_cap: int = 32
    max_wait_ms: float = 0.0

    def as_dict(self) -> dict:
        return {"enabled": self.enabled, "max_tokens_cap": self.max_tokens_cap, "max_wait_ms": self.max_wait_ms}


@dataclass(frozen=True)
class ServingConfig:
    base_name: str                      # model id of the base, e.g. "deepseek-tiny"
    default_max_tokens: int = 256
    retry_after_s: int = 1


class OpenAIServing:
    def __init__(self, engine: Engine, config: ServingConfig, degrade: DegradeState | None = None):
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self.adapters: AdapterStore = engine.adapters
        self.config = config
        self.normal_max_wait_s = engine.max_wait_s
        self.degrade = DegradeState()
        self.set_degrade(degrade or DegradeState())

    # -- models and admin ----------------------------------------------------------------------

    def models(self, tenant: Tenant) -> ModelList:
        cards = [ModelCard(id=self.config.base_name, root=self.config.base_name)]
        for name in self.adapters.names():
            if may_use(tenant, name):
                cards.append(ModelCard(id=name, root=name, parent=self.config.base_name, owned_by=adapter_owner(name)))
        return ModelList(data=cards)

    def set_degrade(self, state: DegradeState) -> DegradeState:
        self.degrade = state
        self.engine.max_wait_s = (min(self.normal_max_wait_s, state.max_wait_ms / 1000.0)
                                  if state.enabled else self.normal_max_wait_s)
        DEGRADED.set(1 if state.enabled else 0)
        log.log(logging.WARNING if state.enabled else logging.INFO, "degrade mode %s (%s)",
                "ON" if state.enabled else "off", state.as_dict())
        return state

    def resolve_model(self, name: str, tenant: Tenant) -> str | None:
        """``None`` for the base model, else the adapter name; 404 unknown, 403 another vertical's."""
        if name == self.config.base_name:
            return None
        try:
            self.adapters.resolve(name)
        except AdapterNotFound:
            raise ServingError(404, f"The model '{name}' does not exist (GET /v1/models lists them).",
                               "not_found_error", param="model", code="model_not_found") from None
        if not may_use(tenant, name):
            raise ServingError(403, f"Tenant '{tenant.name}' may not use adapter '{name}' "
                               f"(it belongs to '{adapter_owner(name)}').", "permission_error",
                               param="model", code="model_forbidden")
        return name

    def _adapter_path(self, adapter: str | None):
        """Pin the adapter's files at acceptance, so a removal while queued cannot fail the request."""
        if adapter is None:
            return None
        try:
            return self.adapters.resolve(adapter)
        except AdapterNotFound:
            raise ServingError(404, f"The model '{adapter}' does not exist.", "not_found_error", param="model",
                               code="model_not_found") from None

    # -- generation ------------------------------------------------------------------------------

    async def chat(self, request: ChatCompletionRequest, tenant: Tenant, is_disconnected):
        adapter = self.resolve_model(request.model, tenant)
        prompt_ids = self._chat_ids(request.messages)
        params = self._sampling(request, len(prompt_ids), param="messages")
        response_id = new_id("chatcmpl")
        if request.stream:
            return self._stream(request, prompt_ids, params, adapter, response_id, chat=True)
        text, event = await self._generate(prompt_ids, params, adapter, request.model, is_disconnected, "chat")
        return ChatCompletionResponse(
            id=response_id, model=request.model,
            choices=[ChatChoice(message=AssistantMessage(content=text), finish_reason=event.finish_reason)],
            usage=_usage(event))

    async def completion(self, request: CompletionRequest, tenant: Tenant, is_disconnected):
        adapter = self.resolve_model(request.model, tenant)
        prompt_ids = self.tokenizer(request.prompt).input_ids
        params = self._sampling(request, len(prompt_ids), param="prompt")
        response_id = new_id("cmpl")
        if request.stream:
            return self._stream(request, prompt_ids, params, adapter, response_id, chat=False)
        text, event = await self._generate(prompt_ids, params, adapter, request.model, is_disconnected,
                                           "completions")
        if request.echo:
            text = request.prompt + text
        return CompletionResponse(id=response_id, model=request.model,
                                  choices=[CompletionChoice(text=text, finish_reason=event.finish_reason)],
                                  usage=_usage(event))

    def _chat_ids(self, messages: list[ChatMessage]) -> list[int]:
        # OpenAI's newer "developer" role is the system prompt for our chat template.
        plain = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in messages]
        text = self.tokenizer.apply_chat_template(plain, add_generation_prompt=True, tokenize=False)
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def _sampling(self, request: SamplingFields, prompt_tokens: int, param: str) -> SamplingParams:
        limit = self.engine.context_length
        if prompt_tokens >= limit:
            raise ServingError(400, f"This model's maximum context length is {limit} tokens; the prompt has "
                               f"{prompt_tokens} tokens.", param=param, code="context_length_exceeded")
        wanted = request.requested_max_tokens
        if wanted is not None and prompt_tokens + wanted > limit:
            raise ServingError(400, f"This model's maximum context length is {limit} tokens. However, you "
                               f"requested {prompt_tokens + wanted} tokens ({prompt_tokens} in the prompt, "
                               f"{wanted} for the completion).", param="max_tokens",
                               code="context_length_exceeded")
        vocabulary = len(self.tokenizer)
        unknown = [t for t in request.logit_bias or {} if not 0 <= t < vocabulary]
        if unknown:
            raise ServingError(400, f"logit_bias: token id {unknown[0]} is outside the vocabulary (0-{vocabulary - 1})",
                               param="logit_bias")
        max_tokens = wanted or min(self.config.default_max_tokens, limit - prompt_tokens)
        if self.degrade.enabled:
            max_tokens = min(max_tokens, self.degrade.max_tokens_cap)
        return SamplingParams(max_tokens=max_tokens, temperature=request.temperature, top_p=request.top_p,
                              stop=tuple(request.stop or ()), seed=request.seed,
                              ignore_eos=request.ignore_eos, quote_sources=tuple(request.quote_sources or ()),
                              logit_bias=tuple((request.logit_bias or {}).items()))

    def _submit(self, prompt_ids, params, adapter, model_label) -> tuple[GenerationRequest, asyncio.Queue]:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Event] = asyncio.Queue()
        request = GenerationRequest(prompt_ids=prompt_ids, params=params, adapter=adapter,
                                    sink=lambda event: loop.call_soon_threadsafe(events.put_nowait, event),
                                    model_label=model_label, adapter_path=self._adapter_path(adapter))
        try:
            self.engine.submit(request)
        except QueueFull as exc:
            raise _overloaded(exc, self.config.retry_after_s) from None
        return request, events

    async def _generate(self, prompt_ids, params, adapter, model_label, is_disconnected, endpoint):
        start = time.perf_counter()
        request, events = self._submit(prompt_ids, params, adapter, model_label)
        parts: list[str] = []
        try:
            while True:
                try:
                    event = await asyncio.wait_for(events.get(), timeout=0.5)
                except asyncio.TimeoutError:
                    if await is_disconnected():  # the caller went away: free the batch row
                        request.cancel()
                    continue
                if event.error is not None:
                    raise _engine_error(event.error)
                parts.append(event.delta)
                if event.final:
                    REQUEST_LATENCY.labels(endpoint=endpoint).observe(time.perf_counter() - start)
                    return "".join(parts), event
        except asyncio.CancelledError:
            request.cancel()
            raise

    def _stream(self, request: SamplingFields, prompt_ids, params, adapter, response_id, chat: bool):
        start = time.perf_counter()
        engine_request, events = self._submit(prompt_ids, params, adapter, request.model)
        include_usage = bool(request.stream_options and request.stream_options.include_usage)
        created = int(time.time())
        kind = "chat.completion.chunk" if chat else "text_completion"

        def chunk(delta: str | None, finish: str | None, role: bool = False) -> str:
            if chat:
                body = {"index": 0, "delta": ({"role": "assistant", "content": ""} if role else
                                              ({"content": delta} if delta is not None else {})),
                        "finish_reason": finish, "logprobs": None}
            else:
                body = {"index": 0, "text": delta or "", "finish_reason": finish, "logprobs": None}
            return _sse({"id": response_id, "object": kind, "created": created, "model": request.model,
                         "choices": [body]})

        async def generate() -> AsyncIterator[str]:
            try:
                if chat:
                    yield chunk(None, None, role=True)
                while True:
                    event = await events.get()
                    if event.error is not None:
                        error = _engine_error(event.error)
                        yield _sse(error.body())
                        break
                    if event.delta:
                        yield chunk(event.delta, None)
                    if event.final:
                        yield chunk(None, event.finish_reason)
                        if include_usage:
                            yield _sse({"id": response_id, "object": kind, "created": created,
                                        "model": request.model, "choices": [], "usage": _usage(event).model_dump()})
                        REQUEST_LATENCY.labels(endpoint="chat" if chat else "completions").observe(
                            time.perf_counter() - start)
                        break
                yield "data: [DONE]\n\n"
            finally:
                # Runs on normal end, and when Starlette cancels us because the client disconnected:
                # either way the engine frees the row at its next token boundary.
                engine_request.cancel()

        return generate()

    # -- scoring -------------------------------------------------------------------------------

    async def score(self, request: ScoreRequest, tenant: Tenant) -> ScoreResponse:
        start = time.perf_counter()
        adapter = self.resolve_model(request.model, tenant)
        if (request.prompt is None) == (request.messages is None):
            raise ServingError(422, "Exactly one of 'prompt' or 'messages' is required.", param="prompt",
                               code="invalid_value")
        if request.messages is not None:
            prompt_ids = self._chat_ids(request.messages)
        else:
            prompt_ids = self.tokenizer(request.prompt).input_ids
        if not prompt_ids:
            raise ServingError(422, "The prompt is empty.", param="prompt", code="invalid_value")
        label_ids = [self.tokenizer(label, add_special_tokens=False).input_ids for label in request.labels]
        longest = len(prompt_ids) + max(len(ids) for ids in label_ids)
        if longest > self.engine.context_length:
            raise ServingError(400, f"This model's maximum context length is {self.engine.context_length} "
                               f"tokens; prompt plus the longest label is {longest}.", param="prompt",
                               code="context_length_exceeded")
        loop = asyncio.get_running_loop()
        import concurrent.futures
        future: concurrent.futures.Future = concurrent.futures.Future()
        try:
            self.engine.submit_score(EngineScoreRequest(prompt_ids, label_ids, adapter, future,
                                                        adapter_path=self._adapter_path(adapter)))
        except QueueFull as exc:
            raise _overloaded(exc, self.config.retry_after_s) from None
        try:
            logprobs = await asyncio.wrap_future(future, loop=loop)
        except Exception as exc:
            raise _engine_error(exc) from exc
        peak = max(logprobs)
        weights = [math.exp(lp - peak) for lp in logprobs]
        total = sum(weights)
        data = [LabelScore(label=label, probability=w / total, logprob=lp, tokens=len(ids))
                for label, w, lp, ids in zip(request.labels, weights, logprobs, label_ids)]
        REQUEST_LATENCY.labels(endpoint="score").observe(time.perf_counter() - start)
        prompt_tokens = len(prompt_ids) * len(label_ids) + sum(len(ids) for ids in label_ids)
        return ScoreResponse(id=new_id("score"), model=request.model, data=data,
                             usage=Usage(prompt_tokens=prompt_tokens, completion_tokens=0, total_tokens=prompt_tokens))


def _usage(event: Event) -> Usage:
    return Usage(prompt_tokens=event.prompt_tokens, completion_tokens=event.completion_tokens,
                 total_tokens=event.prompt_tokens + event.completion_tokens)


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def _overloaded(exc: Exception, retry_after_s: int) -> ServingError:
    return ServingError(429, f"Server overloaded: {exc}. Retry after {retry_after_s}s.", "rate_limit_error",
                        code="queue_full", headers={"Retry-After": str(retry_after_s)})


def _engine_error(exc: Exception) -> ServingError:
    if isinstance(exc, ServingError):
        return exc
    if isinstance(exc, AdapterNotFound):
        return ServingError(404, f"Adapter {exc} disappeared.", "not_found_error", param="model",
                            code="adapter_not_found")
    log.error("engine error: %s: %s", type(exc).__name__, exc)
    return ServingError(500, f"Model execution failed: {type(exc).__name__}: {exc}", "server_error",
                        code="engine_error")
