"""Raw HTTP: tenants (401/403), bad input (422/404/400/413) in OpenAI's error shape, none disturbing others."""
from __future__ import annotations

import concurrent.futures

import httpx

from tests.serving.conftest import auth

CHAT = "/v1/chat/completions"


def _chat(model="deepseek-tiny", **extra):
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **extra}


def _error(response, status):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def test_tenants(http, model_server):
    keys = model_server.api_keys
    assert _error(http.post(CHAT, json=_chat()), 401)["code"] == "missing_api_key"
    assert _error(http.post(CHAT, json=_chat(), headers=auth("sk-wrong")), 401)["code"] == "invalid_api_key"
    forbidden = _error(http.post(CHAT, json=_chat("legal"), headers=auth(keys["finance"])), 403)
    assert forbidden["param"] == "model" and "legal" in forbidden["message"]
    assert http.post(CHAT, json=_chat("legal"), headers=auth(keys["legal"])).status_code == 200
    assert http.post(CHAT, json=_chat("legal"), headers=auth(keys["admin"])).status_code == 200
    assert http.post(CHAT, json=_chat(), headers=auth(keys["medical"])).status_code == 200  # base: everyone
    assert _error(http.post("/v1/score", json={"model": "medical", "prompt": "x", "labels": ["a", "b"]},
                            headers=auth(keys["finance"])), 403)
    assert _error(http.get("/admin/adapters", headers=auth(keys["finance"])), 403)["code"] == "admin_only"
    assert http.get("/admin/adapters", headers=auth(keys["admin"])).status_code == 200


def test_bad_input_is_named_and_disturbs_nobody(http, model_server):
    key = auth(model_server.api_keys["finance"])
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        # A long, healthy request runs while the bad ones arrive.
        healthy = pool.submit(httpx.post, f"{model_server.root_url}{CHAT}", json=_chat(max_tokens=64),
                              headers=key, timeout=60)

        error = _error(http.post(CHAT, json=_chat(max_tokens="many"), headers=key), 422)
        assert error["param"] == "max_tokens"
        error = _error(http.post(CHAT, json={"model": "finance", "messages": [{"role": "robot", "content": "x"}]},
                                 headers=key), 422)
        assert error["param"] == "messages.0.role"
        assert _error(http.post(CHAT, content=b'{"model": "fin', headers={**key, "Content-Type": "application/json"}),
                      422)["param"] == "body"
        assert _error(http.post(CHAT, json={"messages": []}, headers=key), 422)["param"] in ("model", "messages")

        assert _error(http.post(CHAT, json=_chat("no-such-adapter"), headers=key), 404)["code"] == "model_not_found"

        error = _error(http.post(CHAT, json=_chat(max_tokens=5000), headers=key), 400)
        assert error["code"] == "context_length_exceeded" and "1024" in error["message"] and "5000" in error["message"]
        long_prompt = {"model": "deepseek-tiny", "prompt": "word " * 3000}
        assert _error(http.post("/v1/completions", json=long_prompt, headers=key), 400)["param"] == "prompt"

        huge = {"model": "deepseek-tiny", "prompt": "x" * (2 << 20)}
        assert _error(http.post("/v1/completions", json=huge, headers=key), 413)["code"] == "request_too_large"

        assert healthy.result().status_code == 200
    assert http.post(CHAT, json=_chat(), headers=key).status_code == 200


def test_health_ready_metrics(http):
    assert http.get("/health").json() == {"status": "ok"}
    assert http.get("/ready").json()["status"] == "ready"
    text = http.get("/metrics").text
    for name in ("dsv_serve_request_latency_seconds", "dsv_serve_time_to_first_token_seconds",
                 "dsv_serve_generated_tokens_total", "dsv_serve_requests_running", "dsv_serve_requests_waiting",
                 "dsv_serve_batch_size", "dsv_model_load_seconds", "dsv_serve_errors_total"):
        assert name in text, name
