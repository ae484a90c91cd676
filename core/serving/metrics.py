"""Prometheus metrics of the model server (names are what the ops dashboards and alerts read).

Model and adapter load times go to ``shared.metrics.MODEL_LOAD_SECONDS`` (label ``model`` is the base
directory name, or ``adapter:<name>``), shared with the other layers that load models.
"""
from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from shared.metrics import MODEL_LOAD_SECONDS  # noqa: F401  (re-exported: one place to find them)

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120)

REQUEST_LATENCY = Histogram(
    "dsv_serve_request_latency_seconds", "End-to-end latency of model requests (receipt to last byte)",
    ["endpoint"], buckets=_LATENCY_BUCKETS,
)
TIME_TO_FIRST_TOKEN = Histogram(
    "dsv_serve_time_to_first_token_seconds", "Receipt of a generation request to its first token",
    buckets=_LATENCY_BUCKETS,
)
TOKENS_GENERATED = Counter("dsv_serve_generated_tokens_total", "Tokens generated", ["model"])
PROMPT_TOKENS = Counter("dsv_serve_prompt_tokens_total", "Prompt tokens processed", ["model"])
REQUESTS_RUNNING = Gauge("dsv_serve_requests_running", "Sequences in the running batch")
REQUESTS_WAITING = Gauge("dsv_serve_requests_waiting", "Requests queued, not yet admitted to a batch")
BATCH_SIZE = Histogram(
    "dsv_serve_batch_size", "Rows per model forward pass (decode step, prefill or scoring pass)",
    ["phase"], buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
ERRORS = Counter("dsv_serve_errors_total", "Requests answered with an error, by kind", ["kind"])
DEGRADED = Gauge("dsv_serve_degraded", "1 while degrade mode (max_tokens / batch-wait caps) is on")
ADAPTERS_LOADED = Gauge("dsv_serve_adapters_loaded", "LoRA adapters resident in memory")
