"""Concurrency: requests provably share batches (and get the same answers as alone); adapters are
hot-added, reloaded and removed while requests are in flight; a disconnecting client frees its row."""
from __future__ import annotations

import concurrent.futures
import json
import time

import httpx

from tests.fixtures import make_lora_adapter
from tests.serving.conftest import auth, metric_samples

PROMPTS = ["The transaction was flagged", "CT shows a nodule", "Bearing vibration", "According to Article 577",
           "该交易因金额", "胸部CT示", "轴承振动有效值", "根据《民法典》"]
MODELS = ["deepseek-tiny", "finance", "medical", "manufacturing", "legal", "finance", "deepseek-tiny", "legal"]


def _complete(root, key, model, prompt, max_tokens=12):
    response = httpx.post(f"{root}/v1/completions", headers=auth(key), timeout=120, json={
        "model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0})
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["text"]


def _decode_batches_over_one(root) -> float:
    samples = metric_samples(root)
    count = samples.get(("dsv_serve_batch_size_count", (("phase", "decode"),)), 0.0)
    ones = samples.get(("dsv_serve_batch_size_bucket", (("le", "1.0"), ("phase", "decode"))), 0.0)
    return count - ones


def test_concurrent_mixed_adapter_requests_share_batches_and_match_solo_answers(model_server):
    root, key = model_server.root_url, model_server.api_keys["admin"]
    solo = [_complete(root, key, m, p) for m, p in zip(MODELS, PROMPTS)]  # one at a time
    before = _decode_batches_over_one(root)
    with concurrent.futures.ThreadPoolExecutor(len(PROMPTS)) as pool:
        together = list(pool.map(lambda mp: _complete(root, key, *mp), zip(MODELS, PROMPTS)))
    assert _decode_batches_over_one(root) > before  # decode steps ran with more than one row
    assert together == solo  # left padding, cache merging and per-row LoRA change nothing


def _stream_lines(client, root, key, model, max_tokens=80):
    # ignore_eos: the stream surely outlives what the test does meanwhile (an untrained model may stop).
    return client.stream("POST", f"{root}/v1/chat/completions", headers=auth(key), json={
        "model": model, "messages": [{"role": "user", "content": "Summarise the judgment."}],
        "max_tokens": max_tokens, "temperature": 0, "stream": True, "ignore_eos": True})


def _has_text(line: str) -> bool:
    return line.startswith("data: {") and any(
        choice.get("delta", {}).get("content") for choice in json.loads(line[6:])["choices"])


def _finish_reason(lines) -> str | None:
    reason = None
    for line in lines:
        if line.startswith("data: {"):
            payload = json.loads(line[6:])
            assert "error" not in payload, payload
            for choice in payload["choices"]:
                reason = choice.get("finish_reason") or reason
    return reason


def test_adapters_hot_add_reload_remove_with_requests_in_flight(model_server, tmp_path, tiny_model_dir):
    root, admin = model_server.root_url, auth(model_server.api_keys["admin"])
    legal_key = model_server.api_keys["legal"]
    new_dir = tmp_path / "legal-v2"
    make_lora_adapter(tiny_model_dir, new_dir, seed=99)
    with httpx.Client(timeout=120) as client:
        added = client.post(f"{root}/admin/adapters", headers=admin, json={"name": "legal-v2", "path": str(new_dir)})
        assert added.status_code == 200, added.text
        assert "legal-v2" in [m["id"] for m in client.get(f"{root}/v1/models", headers=auth(legal_key)).json()["data"]]

        with _stream_lines(client, root, legal_key, "legal-v2") as on_new, \
                _stream_lines(client, root, legal_key, "legal") as on_old:
            new_lines, old_lines = on_new.iter_lines(), on_old.iter_lines()
            next(new_lines)  # accepted: queued or already decoding
            while not _has_text(next(old_lines)):
                pass  # decoding for sure
            assert client.delete(f"{root}/admin/adapters/legal-v2", headers=admin).status_code == 200
            assert client.post(f"{root}/admin/adapters/legal/reload", headers=admin).status_code == 200
            assert _finish_reason(new_lines) in ("length", "stop")  # in-flight requests finish normally
            assert _finish_reason(old_lines) in ("length", "stop")

        gone = client.post(f"{root}/v1/chat/completions", headers=auth(legal_key), json={
            "model": "legal-v2", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2})
        assert gone.status_code == 404
        assert _complete(root, legal_key, "legal", "after reload", max_tokens=4) is not None
        status = client.get(f"{root}/admin/adapters", headers=admin).json()
        assert "legal-v2" not in status["available"]
    samples = metric_samples(root)
    assert samples[("dsv_model_load_seconds_count", (("model", "adapter:legal-v2"),))] >= 1


def test_client_disconnect_frees_its_row(model_server):
    root, key = model_server.root_url, model_server.api_keys["finance"]
    with httpx.Client(timeout=60) as client:
        with _stream_lines(client, root, key, "finance", max_tokens=900) as response:
            lines = response.iter_lines()
            next(lines), next(lines)  # generation started; now hang up
    deadline = time.monotonic() + 20
    while metric_samples(root)[("dsv_serve_requests_running", ())] > 0:
        assert time.monotonic() < deadline, "the abandoned stream still holds a batch row"
        time.sleep(0.1)
