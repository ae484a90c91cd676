"""OpenAI-compatible request / response models (the subset the project uses, same field names).

Unknown request fields are ignored (as OpenAI and vLLM do) so that newer clients keep working; the
fields we do read are validated strictly, and a violation becomes a 422 naming the field.
"""
from __future__ import annotations

import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Request):
    include_usage: bool = False


class SamplingFields(_Request):
    model: str = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(default=1, ge=1, le=1, description="only one choice per request is supported")
    stream: bool = False
    ignore_eos: bool = False
    """vLLM's extension: keep generating past end-of-sequence (fixed-length benchmarks)."""
    logit_bias: dict[int, float] | None = Field(default=None, max_length=300)
    """OpenAI's: token id -> a bias from -100 to 100 added to its logit before sampling."""
    quote_sources: list[str] | None = Field(default=None, max_length=32)
    """dsv's extension: text the model writes between quotation marks (“…”, "…", 《…》) is copied
    verbatim from one of these texts (copy-constrained decoding, ``core.serving.quotes``)."""
    stream_options: StreamOptions | None = None

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value):
        if value is None:
            return []
        values = [value] if isinstance(value, str) else value
        if len(values) > 4 or any(not s for s in values):
            raise ValueError("stop: at most 4 non-empty strings")
        return values

    @field_validator("logit_bias")
    @classmethod
    def _bias_range(cls, value):
        for token, bias in (value or {}).items():
            if not -100 <= bias <= 100:
                raise ValueError(f"logit_bias: the bias of token {token} must be from -100 to 100, not {bias}")
        return value

    @field_validator("quote_sources")
    @classmethod
    def _sources_bounded(cls, value):
        # The first token of a quote may start at any position of any source, and the engine thread pays for
        # each (about 7 ms for the tiny model's three 140-character windows, 17 ms at this limit).
        if value is not None and sum(len(s) for s in value) > 20_000:
            raise ValueError("quote_sources: at most 20,000 characters in all")
        return value

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class ChatMessage(_Request):
    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[dict] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        # OpenAI content parts: keep the text ones (no images here).
        return "".join(part.get("text", "") for part in self.content if part.get("type") == "text")


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)


class CompletionRequest(SamplingFields):
    prompt: str = Field(min_length=1)
    echo: bool = False


class ScoreRequest(_Request):
    """Label probabilities for a classification-style prompt (our extension; vLLM has no equivalent)."""

    model: str = Field(min_length=1)
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    labels: list[str] = Field(min_length=1, max_length=64)

    @field_validator("labels")
    @classmethod
    def _labels_distinct(cls, value):
        if any(not label for label in value):
            raise ValueError("labels: empty label")
        if len(set(value)) != len(value):
            raise ValueError("labels: duplicates")
        return value


class DegradeRequest(_Request):
    enabled: bool
    max_tokens_cap: int | None = Field(default=None, ge=1)
    max_wait_ms: float | None = Field(default=None, ge=0)


class AdapterRequest(_Request):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]*$")
    path: str | None = None


# -- responses ------------------------------------------------------------------------------------

class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "dsv"
    root: str | None = None
    parent: str | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: str | None
    logprobs: None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    usage: Usage


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: str | None
    logprobs: None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class LabelScore(BaseModel):
    label: str
    probability: float
    logprob: float
    """Sum of the label's token log-probabilities given the prompt (before normalising over labels)."""
    tokens: int


class ScoreResponse(BaseModel):
    id: str
    object: Literal["score"] = "score"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    data: list[LabelScore]
    usage: Usage


def error_body(message: str, type_: str, param: str | None = None, code: str | int | None = None) -> dict:
    """OpenAI's error JSON shape."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class ServingError(Exception):
    """An error the API answers in OpenAI's shape (raised by the serving layer and the auth check)."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)
