"""Alertmanager webhook receiver: "degrade on alert" for the model server.

Prometheus fires an alert labelled ``action="degrade"`` (GPU temperature above 85 C for 5 minutes,
see deploy/prometheus/rules/dsv-alerts.yml); Alertmanager posts it here; this receiver calls the
model server's admin endpoint ``POST /admin/degrade`` so that the server sheds load (caps max_tokens
and batch wait) until the alert resolves, when degrade mode is switched off again.

State is the set of degrade alerts currently firing (by Alertmanager fingerprint), so two alerts on
two GPUs keep the server degraded until both resolve. The server call is idempotent (it states the
wanted mode), so Alertmanager's re-sends are harmless; if the server cannot be reached the receiver
answers 502 and Alertmanager retries.
"""
from __future__ import annotations

import json
import logging
import signal
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

log = logging.getLogger(__name__)

DEGRADE_LABEL = ("action", "degrade")


class PayloadError(ValueError):
    """The request body is not an Alertmanager webhook payload."""


@dataclass(frozen=True)
class DegradeTarget:
    """Where the model server's admin API lives and how to authenticate to it."""

    server_url: str
    """Server base URL; a trailing ``/v1`` (the OpenAI base URL the apps use) is accepted."""
    admin_key: str | None = None
    timeout: float = 5.0

    @property
    def degrade_url(self) -> str:
        root = self.server_url.rstrip("/")
        if root.endswith("/v1"):
            root = root[: -len("/v1")]
        return f"{root}/admin/degrade"


def _alert_key(alert: dict) -> str:
    if alert.get("fingerprint"):
        return str(alert["fingerprint"])
    labels = alert.get("labels") or {}
    return json.dumps(labels, sort_keys=True)


class DegradeController:
    """Turns Alertmanager notifications into degrade on/off calls on the model server."""

    def __init__(self, target: DegradeTarget, client: httpx.Client | None = None):
        self.target = target
        self._client = client or httpx.Client(timeout=target.timeout)
        self._lock = threading.Lock()
        self.active: dict[str, str] = {}  # fingerprint -> alertname

    def handle(self, payload: object) -> dict:
        """Apply one webhook payload; returns what was done. Raises ``PayloadError`` on bad input
        and ``httpx.HTTPError`` when the server could not be told."""
        alerts = self._validate(payload)
        with self._lock:
            relevant = False
            for alert in alerts:
                labels = alert.get("labels") or {}
                if labels.get(DEGRADE_LABEL[0]) != DEGRADE_LABEL[1]:
                    continue
                relevant = True
                key = _alert_key(alert)
                if alert.get("status") == "firing":
                    self.active[key] = str(labels.get("alertname", "unnamed"))
                else:
                    self.active.pop(key, None)
            if not relevant:
                return {"degrade": bool(self.active), "changed": False, "reason": "no degrade alerts in payload"}
            enabled = bool(self.active)
            reason = ", ".join(sorted(set(self.active.values()))) or "alerts resolved"
            self._call_server(enabled, reason)
            return {"degrade": enabled, "changed": True, "reason": reason}

    def _call_server(self, enabled: bool, reason: str) -> None:
        headers = {"Authorization": f"Bearer {self.target.admin_key}"} if self.target.admin_key else {}
        response = self._client.post(self.target.degrade_url, json={"enabled": enabled, "reason": reason},
                                     headers=headers)
        response.raise_for_status()
        log.info("degrade mode %s on %s (%s)", "ON" if enabled else "OFF", self.target.degrade_url, reason)

    @staticmethod
    def _validate(payload: object) -> list[dict]:
        if not isinstance(payload, dict):
            raise PayloadError("body must be a JSON object (Alertmanager webhook payload)")
        alerts = payload.get("alerts")
        if not isinstance(alerts, list):
            raise PayloadError("field 'alerts' must be a list")
        for index, alert in enumerate(alerts):
            if not isinstance(alert, dict):
                raise PayloadError(f"alerts[{index}] must be an object")
            if alert.get("status") not in ("firing", "resolved"):
                raise PayloadError(f"alerts[{index}].status must be 'firing' or 'resolved'")
            if not isinstance(alert.get("labels", {}), dict):
                raise PayloadError(f"alerts[{index}].labels must be an object")
        return alerts


def make_server(controller: DegradeController, host: str = "127.0.0.1", port: int = 9095) -> ThreadingHTTPServer:
    """An HTTP server: ``POST /alerts`` (Alertmanager webhook), ``GET /health``."""

    class Handler(BaseHTTPRequestHandler):
        def _reply(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):  # noqa: N802 (http.server naming)
            if self.path == "/health":
                self._reply(200, {"status": "ok", "degrade": bool(controller.active)})
            else:
                self._reply(404, {"error": f"no route {self.path}"})

        def do_POST(self):  # noqa: N802
            if self.path not in ("/alerts", "/"):
                return self._reply(404, {"error": f"no route {self.path}"})
            try:
                length = int(self.headers.get("Content-Length", "0"))
                if length > 1_000_000:
                    return self._reply(413, {"error": "payload over 1 MB"})
                payload = json.loads(self.rfile.read(length) or b"null")
                return self._reply(200, controller.handle(payload))
            except (json.JSONDecodeError, PayloadError) as exc:
                return self._reply(400, {"error": f"bad payload: {exc}"})
            except httpx.HTTPError as exc:  # 5xx makes Alertmanager retry later
                log.warning("could not reach the model server: %s", exc)
                return self._reply(502, {"error": f"model server not reachable: {exc}"})

        def log_message(self, fmt, *args):
            log.debug("webhook: " + fmt, *args)

    return ThreadingHTTPServer((host, port), Handler)


def serve_webhook(host: str, port: int, server_url: str, admin_key: str | None) -> int:
    """Run the receiver until interrupted (the `dsv webhook` command)."""
    controller = DegradeController(DegradeTarget(server_url, admin_key))
    server = make_server(controller, host, port)
    # `docker stop` / kubelet send SIGTERM: leave like on Ctrl-C, closing the socket.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    print(f"alert webhook on http://{host}:{port}/alerts -> {controller.target.degrade_url}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
