"""The alert webhook receiver: Alertmanager payloads in, the real model server's degrade mode out."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

from shared.broker import free_port
from shared.webhook import DegradeController, DegradeTarget, make_server


def alert(status: str, fingerprint: str, alertname: str = "GPUTemperatureHigh", action: str | None = "degrade",
          **labels) -> dict:
    labels = {"alertname": alertname, **({"action": action} if action else {}), **labels}
    return {"status": status, "labels": labels, "annotations": {}, "fingerprint": fingerprint,
            "startsAt": "2026-01-01T00:00:00Z", "endsAt": "0001-01-01T00:00:00Z"}


def payload(*alerts: dict) -> dict:
    # The shape Alertmanager's webhook_config posts (version 4).
    status = "firing" if any(a["status"] == "firing" for a in alerts) else "resolved"
    return {"version": "4", "groupKey": "{}:{alertname=\"GPUTemperatureHigh\"}", "status": status,
            "receiver": "dsv-degrade", "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {},
            "externalURL": "http://alertmanager:9093", "truncatedAlerts": 0, "alerts": list(alerts)}


@pytest.fixture()
def webhook(model_server):
    """`dsv webhook`'s HTTP server on a free loopback port, pointed at the real model server."""
    controller = DegradeController(DegradeTarget(model_server.base_url, model_server.api_keys["admin"]))
    server = make_server(controller, "127.0.0.1", free_port())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    # Leave the shared server as we found it.
    httpx.post(f"{model_server.root_url}/admin/degrade", json={"enabled": False},
               headers={"Authorization": f"Bearer {model_server.api_keys['admin']}"})


def degrade_state(model_server) -> dict:
    response = httpx.get(f"{model_server.root_url}/admin/degrade",
                         headers={"Authorization": f"Bearer {model_server.api_keys['admin']}"})
    response.raise_for_status()
    return response.json()


def degraded_gauge(model_server) -> float:
    text = httpx.get(f"{model_server.root_url}/metrics").text
    return next(float(line.split()[-1]) for line in text.splitlines() if line.startswith("dsv_serve_degraded "))


def test_gpu_alert_turns_degrade_mode_on_until_every_alert_resolves(webhook, model_server):
    assert degrade_state(model_server)["enabled"] is False

    r = httpx.post(f"{webhook}/alerts", json=payload(alert("firing", "gpu0", gpu="0"), alert("firing", "gpu1", gpu="1")))
    assert r.status_code == 200 and r.json()["degrade"] is True
    assert degrade_state(model_server)["enabled"] is True
    assert degraded_gauge(model_server) == 1.0

    # One GPU cools down: the other still firing keeps the server degraded.
    r = httpx.post(f"{webhook}/alerts", json=payload(alert("resolved", "gpu0", gpu="0")))
    assert r.json()["degrade"] is True and degrade_state(model_server)["enabled"] is True

    r = httpx.post(f"{webhook}/alerts", json=payload(alert("resolved", "gpu1", gpu="1")))
    assert r.json()["degrade"] is False
    assert degrade_state(model_server)["enabled"] is False
    assert degraded_gauge(model_server) == 0.0


def test_alerts_without_degrade_action_are_ignored(webhook, model_server):
    r = httpx.post(f"{webhook}/alerts", json=payload(alert("firing", "lag", alertname="FraudConsumerLagHigh", action=None)))
    assert r.status_code == 200 and r.json()["changed"] is False
    assert degrade_state(model_server)["enabled"] is False
    assert httpx.get(f"{webhook}/health").json() == {"status": "ok", "degrade": False}


@pytest.mark.parametrize("body, field", [
    ("not json", "bad payload"),
    ('{"alerts": "nope"}', "'alerts' must be a list"),
    ('{"alerts": [{"status": "burning", "labels": {}}]}', "alerts[0].status"),
])
def test_bad_payloads_are_400_naming_the_field(webhook, body, field):
    r = httpx.post(f"{webhook}/alerts", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and field in r.json()["error"]


def test_wrong_admin_key_or_unreachable_server_is_502_so_alertmanager_retries(model_server):
    for target in (DegradeTarget(model_server.base_url, "sk-wrong"),            # 401 from the server
                   DegradeTarget(f"http://127.0.0.1:{free_port()}", "sk-any", timeout=1.0)):  # nothing listening
        server = make_server(DegradeController(target), "127.0.0.1", 0)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            r = httpx.post(f"http://127.0.0.1:{server.server_address[1]}/alerts",
                           json=payload(alert("firing", "gpu0")))
            assert r.status_code == 502
        finally:
            server.shutdown()
            server.server_close()
    assert degrade_state(model_server)["enabled"] is False


def test_dsv_webhook_command_serves_and_stops_on_sigterm(repo):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "DSV_ADMIN_KEY"}
    proc = subprocess.Popen([sys.executable, "-m", "core.cli", "webhook", "--port", str(port),
                             "--server-url", "http://127.0.0.1:1/v1"], cwd=repo, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert "-> http://127.0.0.1:1/admin/degrade" in proc.stdout.readline()
        deadline = time.monotonic() + 20
        while True:
            try:
                assert httpx.get(f"http://127.0.0.1:{port}/health").json()["status"] == "ok"
                break
            except httpx.ConnectError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
    assert proc.returncode == 0


def test_degrade_url_accepts_openai_base_url():
    assert DegradeTarget("http://model-server:8000/v1").degrade_url == "http://model-server:8000/admin/degrade"
    assert DegradeTarget("http://model-server:8000/").degrade_url == "http://model-server:8000/admin/degrade"
