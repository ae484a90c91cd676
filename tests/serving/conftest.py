"""Serving-area fixtures: raw HTTP helpers and a second, deliberately small server (int8, tiny queue)."""
from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shared.net import free_port


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


class InProcessServer:
    """``dsv serve`` assembled by ``core.serving.cli.build_server`` and run by uvicorn in a thread.

    Same code path as the subprocess server minus the process start (torch/transformers imports
    are already paid for in the test process), which keeps the area's test budget.
    """

    def __init__(self, root_url, api_keys, server, thread):
        self.root_url = root_url
        self.base_url = f"{root_url}/v1"
        self.api_keys = api_keys
        self._server = server
        self._thread = thread

    def stop(self):
        self._server.should_exit = True
        self._thread.join(timeout=20)


@pytest.fixture(scope="module")
def small_server(tmp_path_factory, tiny_model_dir):
    """int8 weights, one row per batch and a 2-deep queue: makes 429 and degrade mode easy to reach."""
    import argparse
    import threading
    import time

    import uvicorn

    from core.serving import cli
    from shared.settings import load_settings
    from tests.fixtures import SERVER_TENANTS, make_lora_adapters

    tmp = tmp_path_factory.mktemp("small_server")
    make_lora_adapters(tiny_model_dir, {tmp / "adapters" / "finance": 1})
    api_keys = {tenant: f"sk-small-{tenant}" for tenant in SERVER_TENANTS}
    (tmp / "keys").write_text("".join(f"{key}:{tenant}\n" for tenant, key in api_keys.items()))
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    args = parser.parse_args(["serve", "--model", str(tiny_model_dir), "--adapters-dir", str(tmp / "adapters"),
                              "--api-keys-file", str(tmp / "keys"), "--quantize", "int8", "--max-batch", "1",
                              "--queue-size", "2", "--max-wait-ms", "0",
                              "--served-model-name", "deepseek-tiny"])
    app = cli.build_server(args, load_settings())
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "in-process server did not start"
        time.sleep(0.05)
    running = InProcessServer(f"http://127.0.0.1:{port}", api_keys, server, thread)
    yield running
    running.stop()
