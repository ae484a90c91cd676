"""``core.client.ModelClient`` against the real server (chat, score, models) and against no server."""
from __future__ import annotations

import math
import time

import pytest

from core.client import ModelClient, ModelRequestError, ModelUnavailable
from shared.net import free_port


@pytest.fixture
def client(model_server):
    return ModelClient(model_server.base_url, model_server.api_keys["finance"])


def test_chat_and_models(client):
    assert client.available()
    assert {"deepseek-tiny", "finance"} <= set(client.models())
    text = client.chat("finance", [{"role": "user", "content": "Explain the alert."}], max_tokens=8, seed=1)
    assert isinstance(text, str) and text


def test_score_probabilities_sum_to_one_and_follow_logprobs(client, model_server):
    labels = ["fraud", "legitimate", "needs review"]
    probs = client.score("finance", "Transaction of 9,900 EUR at 03:00 from a new device. Verdict:", labels)
    assert list(probs) == labels
    assert math.isclose(sum(probs.values()), 1.0, rel_tol=1e-6)
    assert all(0.0 < p < 1.0 for p in probs.values())
    import httpx

    raw = httpx.post(f"{model_server.base_url}/score", headers={"Authorization": f"Bearer {client.api_key}"},
                     json={"model": "finance", "messages": [{"role": "user", "content": "Verdict?"}],
                           "labels": labels}).json()
    by_logprob = sorted(raw["data"], key=lambda item: item["logprob"])
    assert by_logprob == sorted(raw["data"], key=lambda item: item["probability"])
    # The base model and an adapter disagree on the numbers (the LoRA is applied in scoring too).
    assert client.score("deepseek-tiny", "Verdict:", labels) != client.score("finance", "Verdict:", labels)



def test_server_url_without_a_path_gets_the_api_root(model_server):
    bare = model_server.base_url[: -len("/v1")]
    assert bare.startswith("http://") and not bare.endswith("/v1")
    client = ModelClient(bare + "/", model_server.api_keys["finance"])
    assert client.base_url == model_server.base_url
    assert "finance" in client.models()
    assert ModelClient("http://proxy:9000/llm/v1").base_url == "http://proxy:9000/llm/v1"

def test_request_errors_are_not_unavailability(client):
    with pytest.raises(ModelRequestError) as info:
        client.chat("legal", [{"role": "user", "content": "x"}], max_tokens=2)
    assert info.value.status_code == 403
    with pytest.raises(ModelRequestError):
        client.score("no-such-model", "x", ["a", "b"])


def test_unreachable_server_is_model_unavailable():
    port = free_port()  # nothing listens there
    dead = ModelClient(f"http://127.0.0.1:{port}/v1", "key", timeout=2.0, max_retries=0)
    start = time.monotonic()
    assert dead.available() is False
    with pytest.raises(ModelUnavailable):
        dead.chat("deepseek-tiny", [{"role": "user", "content": "x"}])
    with pytest.raises(ModelUnavailable):
        dead.score("deepseek-tiny", "x", ["a", "b"])
    assert time.monotonic() - start < 10


class _CountingDeadServer:
    """A real TCP listener that accepts and immediately closes: every request fails at the transport."""

    def __init__(self):
        import socket
        import threading

        self.accepted = 0
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.port = self._sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self._sock.close()


def test_breaker_fails_fast_during_cooldown_and_closes_on_reset():
    dead = _CountingDeadServer()
    try:
        client = ModelClient(f"http://127.0.0.1:{dead.port}/v1", "key", timeout=2.0, max_retries=0,
                             cooldown_s=300.0)
        with pytest.raises(ModelUnavailable):
            client.chat("deepseek-tiny", [{"role": "user", "content": "x"}])
        tried = dead.accepted
        assert tried >= 1
        # Inside the cool-down neither chat nor score touch the network, and the error says why.
        for call in (lambda: client.chat("deepseek-tiny", [{"role": "user", "content": "x"}]),
                     lambda: client.score("deepseek-tiny", "x", ["a", "b"])):
            with pytest.raises(ModelUnavailable, match="marked unavailable"):
                call()
        assert dead.accepted == tried
        client.reset()
        with pytest.raises(ModelUnavailable):
            client.score("deepseek-tiny", "x", ["a", "b"])
        assert dead.accepted > tried
    finally:
        dead.close()


def test_breaker_disabled_with_zero_cooldown():
    dead = _CountingDeadServer()
    try:
        client = ModelClient(f"http://127.0.0.1:{dead.port}/v1", "key", timeout=2.0, max_retries=0, cooldown_s=0)
        for expected in (1, 2):
            with pytest.raises(ModelUnavailable):
                client.score("deepseek-tiny", "x", ["a", "b"])
            assert dead.accepted >= expected
    finally:
        dead.close()


def test_breaker_closes_after_the_server_answers(client):
    client._down_until = time.monotonic() + 300  # as if a failure had just happened
    with pytest.raises(ModelUnavailable):
        client.models()
    assert client.available()  # a successful health probe closes the breaker
    assert "deepseek-tiny" in client.models()
