"""A small server (int8 weights, batch 1, queue 2): 429 + Retry-After when full, degrade mode, adapters on int8."""
from __future__ import annotations

import concurrent.futures

import httpx

from tests.serving.conftest import auth


def _long_request(root, key, max_tokens=40):
    return httpx.post(f"{root}/v1/completions", headers=auth(key), timeout=120, json={
        "model": "deepseek-tiny", "prompt": "The transaction", "max_tokens": max_tokens, "temperature": 0})


def test_full_queue_answers_429_with_retry_after_and_recovers(small_server):
    root, key = small_server.root_url, small_server.api_keys["finance"]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda _: _long_request(root, key), range(8)))
    codes = sorted(r.status_code for r in responses)
    assert 429 in codes and 200 in codes, codes
    rejected = next(r for r in responses if r.status_code == 429)
    assert int(rejected.headers["Retry-After"]) >= 1
    assert rejected.json()["error"]["code"] == "queue_full"
    assert _long_request(root, key, max_tokens=4).status_code == 200  # the server is still fine afterwards


def test_degrade_mode_caps_max_tokens(small_server):
    root, admin = small_server.root_url, auth(small_server.api_keys["admin"])
    assert httpx.post(f"{root}/admin/degrade", headers=auth(small_server.api_keys["finance"]),
                      json={"enabled": True}).status_code == 403
    state = httpx.post(f"{root}/admin/degrade", headers=admin,
                       json={"enabled": True, "max_tokens_cap": 3, "max_wait_ms": 0}).json()
    assert state == {"enabled": True, "max_tokens_cap": 3, "max_wait_ms": 0.0}
    try:
        capped = _long_request(root, small_server.api_keys["finance"]).json()
        assert capped["usage"]["completion_tokens"] <= 3
        assert "dsv_serve_degraded 1.0" in httpx.get(f"{root}/metrics").text
    finally:
        assert httpx.post(f"{root}/admin/degrade", headers=admin, json={"enabled": False}).json()["enabled"] is False
    assert _long_request(root, small_server.api_keys["finance"]).json()["usage"]["completion_tokens"] > 3


def test_int8_server_serves_adapters_and_scores(small_server):
    root, key = small_server.root_url, small_server.api_keys["finance"]
    response = httpx.post(f"{root}/v1/chat/completions", headers=auth(key), timeout=60, json={
        "model": "finance", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "temperature": 0})
    assert response.status_code == 200, response.text
    scored = httpx.post(f"{root}/v1/score", headers=auth(key), timeout=60, json={
        "model": "finance", "prompt": "Fraud?", "labels": ["yes", "no"]}).json()
    assert abs(sum(item["probability"] for item in scored["data"]) - 1.0) < 1e-6
