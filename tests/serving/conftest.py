"""Serving-area fixtures: raw HTTP helpers and a second, deliberately small server (int8, tiny queue)."""
from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def metric_samples(root_url: str) -> dict[tuple[str, tuple], float]:
    """``{(sample name, sorted labels): value}`` from the server's /metrics."""
    text = httpx.get(f"{root_url}/metrics", timeout=10).text
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


@pytest.fixture
def http(model_server):
    with httpx.Client(base_url=model_server.root_url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def small_server(tmp_path_factory, tiny_model_dir):
    """int8 weights, one row per batch and a 2-deep queue: makes 429 and degrade mode easy to reach."""
    from tests.fixtures import start_model_server, stop_model_server

    server = start_model_server(tmp_path_factory.mktemp("small_server"), tiny_model_dir,
                                adapters=("finance",),
                                extra_args=("--quantize", "int8", "--max-batch", "1", "--queue-size", "2",
                                            "--max-wait-ms", "0"))
    yield server
    stop_model_server(server)
