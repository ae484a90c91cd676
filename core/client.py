"""The one way the apps reach a language model: an OpenAI-compatible server (``dsv serve`` or vLLM).

Chat goes through the official ``openai`` client, so pointing an app at vLLM on a GPU cluster is only a
different base URL (``DSV_SERVER_URL``). Scoring uses our ``POST /v1/score`` (exact sequence
log-probabilities of each label, no generation); a server without it (vLLM answers 404) is scored
through ``/v1/completions`` with ``max_tokens=1`` and ``logprobs``, matching each label's first token.

Every failure to reach the server (refused connection, timeout, overload, 5xx) becomes
``ModelUnavailable`` so that apps can switch to their clearly-labelled fallback in one ``except``.
Two things keep that fallback fast when the server is down: connecting has its own short timeout
(a dead host must not cost the 60 s read timeout meant for long generations), and after a failure the
client stays "open" for ``cooldown_s`` seconds, answering ``ModelUnavailable`` at once instead of
paying the connect/retry cost again on every record of a stream (a circuit breaker).
"""
from __future__ import annotations

import math
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator

import httpx

#: How many top tokens the vLLM fallback asks for (vLLM's default ``max_logprobs`` is 20).
_FALLBACK_TOP_LOGPROBS = 20


class ModelUnavailable(RuntimeError):
    """The model server cannot be reached or cannot answer now (down, timing out, overloaded)."""


class ModelRequestError(RuntimeError):
    """The server answered but refused the request (bad input, unknown model, forbidden adapter)."""

    def __init__(self, status_code: int, message: str):
        super().__init__(f"{status_code}: {message}")
        self.status_code = status_code


def api_base_url(url: str) -> str:
    """The OpenAI API root of a server URL: ``http://host:8000`` -> ``http://host:8000/v1``.

    Both our server and vLLM serve the API under ``/v1``; a URL without a path (the usual slip when
    setting ``DSV_SERVER_URL``) would otherwise answer every call with 404. A URL with a path is kept
    as given (a proxy may mount the API elsewhere)."""
    from urllib.parse import urlsplit

    url = url.rstrip("/")
    return url + "/v1" if urlsplit(url).path == "" else url


class ModelClient:
    """A small, thread-safe client for the OpenAI-compatible model server."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 60.0, max_retries: int = 2,
                 connect_timeout: float = 3.0, cooldown_s: float = 10.0):
        import openai

        self.base_url = api_base_url(base_url)
        self.api_key = api_key
        self.timeout = timeout
        self.cooldown_s = cooldown_s
        self._down_until = 0.0  # monotonic time before which calls fail fast (0: closed breaker)
        self._down_reason = ""
        self._lock = threading.Lock()
        limits = httpx.Timeout(timeout, connect=min(connect_timeout, timeout))
        # The openai client insists on a key; servers without auth (vLLM default) ignore it. Its own
        # Timeout class: openai 3.6x moved from httpx to httpx2 and refuses an httpx.Timeout.
        self._openai = openai.OpenAI(base_url=self.base_url, api_key=api_key or "EMPTY",
                                     timeout=openai.Timeout(timeout, connect=min(connect_timeout, timeout)),
                                     max_retries=max_retries)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(timeout=limits, headers=headers)

    @classmethod
    def from_settings(cls, settings) -> "ModelClient":
        return cls(settings.server_url, settings.api_key)

    # -- OpenAI API -------------------------------------------------------------------------------

    def chat(self, model: str, messages: list[dict], *, max_tokens: int = 256, temperature: float = 0.0,
             seed: int | None = None, stop: list[str] | None = None,
             quote_sources: list[str] | None = None) -> str:
        """Send a chat completion and return the assistant's text. ``quote_sources`` (dsv's extension):
        whatever the model quotes is copied verbatim from one of these texts."""
        extra = {"quote_sources": quote_sources} if quote_sources else None
        with self._guarded(), self._translate_errors():
            response = self._openai.chat.completions.create(
                model=model, messages=messages, max_tokens=max_tokens, temperature=temperature,
                seed=seed, stop=stop, extra_body=extra,
            )
        return response.choices[0].message.content or ""

    def models(self) -> list[str]:
        """Model ids the server offers: the base and every adapter."""
        with self._guarded(), self._translate_errors():
            return [m.id for m in self._openai.models.list()]

    def available(self, timeout: float = 2.0) -> bool:
        """True when the server answers ``/health`` within ``timeout`` seconds."""
        try:
            healthy = self._http.get(f"{self._root_url}/health", timeout=timeout).status_code == 200
        except httpx.HTTPError:
            return False
        if healthy:
            self.reset()
        return healthy

    def reset(self) -> None:
        """Close the breaker: the next call goes to the server even inside the cool-down."""
        with self._lock:
            self._down_until, self._down_reason = 0.0, ""

    # -- scoring ----------------------------------------------------------------------------------

    def score(self, model: str, prompt: str | None, labels: list[str],
              messages: list[dict] | None = None) -> dict[str, float]:
        """Probability of each label as the continuation of ``prompt`` - or of the assistant's reply to
        chat ``messages`` (the server applies its chat template) - normalised over ``labels``."""
        if not labels:
            raise ValueError("labels: at least one label is required")
        if (prompt is None) == (messages is None):
            raise ValueError("score: give exactly one of prompt or messages")
        body = {"model": model, "labels": labels, **({"prompt": prompt} if messages is None else {"messages": messages})}
        with self._guarded():
            response = self._post(f"{self.base_url}/score", body)
            if response.status_code in (404, 405) and _is_missing_route(response):
                if messages is not None:
                    raise ModelRequestError(response.status_code, f"{self.base_url}: no /score route, and chat scoring needs it")
                return self._score_by_completion(model, prompt, labels)
            self._raise_for_status(response)
            return {item["label"]: float(item["probability"]) for item in response.json()["data"]}

    def _score_by_completion(self, model: str, prompt: str, labels: list[str]) -> dict[str, float]:
        """Fallback for servers without /v1/score (vLLM): next-token logprobs over label first tokens.

        An approximation: only each label's first token is scored, and a label whose first token is
        outside the server's top-N counts as (almost) impossible.
        """
        response = self._post(f"{self.base_url}/completions", {
            "model": model, "prompt": prompt, "max_tokens": 1, "temperature": 0.0,
            "logprobs": _FALLBACK_TOP_LOGPROBS,
        })
        self._raise_for_status(response)
        top: dict[str, float] = (response.json()["choices"][0].get("logprobs") or {}).get("top_logprobs", [{}])[0]
        logprobs = {label: _first_token_logprob(label, top) for label in labels}
        return _normalise(logprobs)

    # -- admin ----------------------------------------------------------------------------------------

    def reload_adapter(self, name: str) -> None:
        """Make a running ``dsv serve`` re-read adapter ``name`` from disk (needs an admin key)."""
        with self._guarded():
            self._raise_for_status(self._post(f"{self._root_url}/admin/adapters/{name}/reload", {}))

    # -- plumbing ---------------------------------------------------------------------------------

    @contextmanager
    def _guarded(self) -> Iterator[None]:
        """Fail fast while the breaker is open; open it for ``cooldown_s`` on ModelUnavailable."""
        now = time.monotonic()
        with self._lock:
            if now < self._down_until:
                raise ModelUnavailable(f"model server at {self.base_url} marked unavailable for another "
                                       f"{self._down_until - now:.1f} s after: {self._down_reason}")
        try:
            yield
        except ModelUnavailable as exc:
            if self.cooldown_s > 0:
                with self._lock:
                    self._down_until, self._down_reason = time.monotonic() + self.cooldown_s, str(exc)[:200]
            raise
        else:
            if self._down_until:
                self.reset()

    @property
    def _root_url(self) -> str:
        return self.base_url[: -len("/v1")] if self.base_url.endswith("/v1") else self.base_url

    def _post(self, url: str, payload: dict[str, Any]) -> httpx.Response:
        try:
            return self._http.post(url, json=payload)
        except httpx.HTTPError as exc:
            raise ModelUnavailable(f"model server at {self.base_url} unreachable: {exc}") from exc

    def _raise_for_status(self, response: httpx.Response) -> None:
        if response.status_code < 400:
            return
        message = _error_message(response)
        if response.status_code == 429 or response.status_code >= 500:
            raise ModelUnavailable(f"model server busy or failing ({response.status_code}): {message}")
        raise ModelRequestError(response.status_code, message)

    def _translate_errors(self):
        return _OpenAIErrors(self.base_url)

    def close(self) -> None:
        self._http.close()
        self._openai.close()


class _OpenAIErrors:
    """Turn the openai package's connection/overload errors into ModelUnavailable."""

    def __init__(self, base_url: str):
        self.base_url = base_url

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        import openai

        if exc is None:
            return False
        if isinstance(exc, (openai.APIConnectionError, openai.APITimeoutError)):
            raise ModelUnavailable(f"model server at {self.base_url} unreachable: {exc}") from exc
        if isinstance(exc, openai.APIStatusError):
            if exc.status_code == 429 or exc.status_code >= 500:
                raise ModelUnavailable(f"model server busy or failing ({exc.status_code}): {exc.message}") from exc
            raise ModelRequestError(exc.status_code, exc.message) from exc
        return False


def _is_missing_route(response: httpx.Response) -> bool:
    """A 404/405 for the route itself, not an 'unknown model' answer from a server that has the route."""
    try:
        body = response.json()
    except ValueError:
        return True
    if not isinstance(body, dict):
        return True
    error = body.get("error")
    code = error.get("code") if isinstance(error, dict) else None
    return code not in ("model_not_found", "adapter_not_found")


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            return str(error.get("message"))
        return str(body.get("message") or body.get("detail") or body)
    return str(body)


def _first_token_logprob(label: str, top: dict[str, float]) -> float:
    """Logprob of the longest top token that starts ``label`` (with or without a leading space)."""
    best, best_len = -math.inf, 0
    for token, logprob in top.items():
        stripped = token.lstrip(" Ġ▁")
        if stripped and label.startswith(stripped) and len(stripped) > best_len:
            best, best_len = logprob, len(stripped)
    return best


def _normalise(logprobs: dict[str, float]) -> dict[str, float]:
    finite = [v for v in logprobs.values() if v != -math.inf]
    if not finite:  # none of the labels was in the top-N: no information, say so evenly
        return {label: 1.0 / len(logprobs) for label in logprobs}
    peak = max(finite)
    weights = {label: math.exp(v - peak) if v != -math.inf else 0.0 for label, v in logprobs.items()}
    total = sum(weights.values())
    return {label: w / total for label, w in weights.items()}
