"""Prometheus metrics shared across layers (names are the contract the ops dashboards use)."""
from __future__ import annotations

from prometheus_client import Histogram

# Buckets reach past the ops alert threshold (P99 load time above 1.2 s).
MODEL_LOAD_SECONDS = Histogram(
    "dsv_model_load_seconds", "Time to load a base model or adapter from disk",
    ["model"], buckets=(0.05, 0.1, 0.25, 0.5, 0.8, 1.2, 2, 5, 10, 30, 120),
)
