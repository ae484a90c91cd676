"""Kafka connection for every app: an existing cluster when KAFKA_BOOTSTRAP is set, otherwise an
embedded Kafka-protocol broker (PyPI ``noida-db``) started as a child process with its data under
``DSV_HOME/kafka`` so committed offsets survive restarts.
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from shared.net import free_port, port_open

log = logging.getLogger(__name__)


def wait_for_kafka(bootstrap: str, timeout: float = 30.0) -> None:
    """Block until the broker answers a metadata request (raise ``TimeoutError`` otherwise)."""
    from kafka import KafkaAdminClient

    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
            admin.list_topics()
            admin.close()
            return
        except Exception as exc:  # not up yet
            last = exc
            time.sleep(0.2)
    raise TimeoutError(f"Kafka at {bootstrap} did not answer within {timeout:.0f}s ({last})")


def _noida_binary() -> str:
    exe = shutil.which("noida-db") or str(Path(sys.executable).with_name("noida-db"))
    if not Path(exe).exists():
        raise RuntimeError("noida-db is not installed (pip install noida-db) and KAFKA_BOOTSTRAP is unset")
    return exe


class EmbeddedBroker:
    """A local Kafka-protocol broker process; use as a context manager or call start()/stop()."""

    def __init__(self, data_dir: str | Path, port: int | None = None, log_file: str | Path | None = None):
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.log_file = Path(log_file) if log_file else self.data_dir / "broker.log"
        self.process: subprocess.Popen | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> "EmbeddedBroker":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        logf = open(self.log_file, "ab")
        self.process = subprocess.Popen(
            self.command(),
            stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            # `noida-db` is a Python wrapper that starts the real server as its child: give them a
            # process group of their own so stop()/kill() reach the server, not just the wrapper.
            start_new_session=True,
        )
        logf.close()
        try:
            wait_for_kafka(self.bootstrap, timeout)
        except TimeoutError:
            self.stop()
            raise
        log.info("embedded Kafka broker on %s (data in %s)", self.bootstrap, self.data_dir)
        return self

    def _signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.process.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the broker's process group (it flushes its data), SIGKILL what is left after ``timeout``."""
        if self.process:
            self._signal_group(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
            self._wait_port_closed(timeout)
            self._signal_group(signal.SIGKILL)
            self.process.wait()
        self.process = None

    def kill(self) -> None:
        """SIGKILL the whole broker process group, for crash tests."""
        if self.process:
            self._signal_group(signal.SIGKILL)
            self.process.wait()
            self._wait_port_closed(5.0)
            self.process = None

    def _wait_port_closed(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and port_open(self.bootstrap, timeout=0.2):
            time.sleep(0.05)

    def command(self) -> list[str]:
        """The broker's command line (for supervisors that run it themselves)."""
        return [_noida_binary(), "start", "--data-dir", str(self.data_dir), "--only", "kafka",
                "--kafka-port", str(self.port)]

    def __enter__(self) -> "EmbeddedBroker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def ensure_topics(bootstrap: str, topics: dict[str, int], replication: int = 1) -> None:
    """Create any missing topic with the given partition count (existing ones are left alone)."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        existing = set(admin.list_topics())
        new = [NewTopic(name, num_partitions=n, replication_factor=replication)
               for name, n in topics.items() if name not in existing]
        if new:
            admin.create_topics(new)
    finally:
        admin.close()
