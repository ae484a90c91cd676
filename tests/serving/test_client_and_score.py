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
