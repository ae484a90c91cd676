"""A small local process supervisor: the no-Docker stack behind ``dsv run`` / ``make run``.

It does locally what Kubernetes does for the pods (recovery level 1, "pod restart"):

* every child runs in its own session / process group, so stopping a child also stops whatever it
  spawned (Streamlit's script runner, a broker's helpers) and a Ctrl-C in the terminal reaches only
  the supervisor, which then shuts the children down in reverse start order;
* a child that exits on its own is restarted after an exponential backoff, reset once the child has
  stayed up for ``stable_after`` seconds (the same shape as a kubelet's CrashLoopBackOff);
* a child can gate the next ones on readiness (the broker must answer before the apps start);
* the state of every child (pid, restarts, state) is written to ``status.json`` after each change,
  so operators and tests can see what runs without parsing logs.

Standard library only: the supervisor must keep working when everything it supervises is broken.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TextIO

from shared.io import write_text_atomic

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RestartPolicy:
    """When to restart a child that exited without being asked to."""

    initial_backoff: float = 1.0
    max_backoff: float = 30.0
    factor: float = 2.0
    stable_after: float = 30.0
    """A child that ran this long is considered healthy again: its next crash restarts after
    ``initial_backoff``, not after the grown delay."""
    max_restarts: int | None = None
    """Give up on a child after this many consecutive quick crashes (None: never give up)."""


@dataclass(frozen=True)
class ChildSpec:
    """One supervised process."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    """Added to (and overriding) the supervisor's own environment."""
    cwd: Path | None = None
    url: str | None = None
    """Printed when the stack is up (the address an operator opens)."""
    ready: Callable[[], bool] | None = None
    """If set, later children start only once this returns True (polled)."""
    ready_timeout: float = 60.0


class StartupError(RuntimeError):
    """A gating child died or did not become ready in time; the stack was stopped."""


@dataclass
class _Child:
    spec: ChildSpec
    log_path: Path
    process: subprocess.Popen | None = None
    started_at: float = 0.0
    restarts: int = 0
    consecutive_crashes: int = 0
    restart_due: float | None = None
    last_exit: int | None = None
    gave_up: bool = False

    @property
    def state(self) -> str:
        if self.gave_up:
            return "failed"
        if self.process is not None and self.process.poll() is None:
            return "running"
        if self.restart_due is not None:
            return "restarting"
        return "stopped"


class Supervisor:
    """Start, watch, restart and stop a list of child processes.

    ``run()`` blocks until ``request_stop()`` (called from a signal handler, another thread or a
    test); ``install_signal_handlers()`` wires SIGINT/SIGTERM to it.
    """

    def __init__(self, specs: list[ChildSpec], state_dir: Path, policy: RestartPolicy = RestartPolicy(),
                 stop_grace: float = 10.0, out: TextIO | None = None, poll_interval: float = 0.2):
        names = [spec.name for spec in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"child names must be unique: {names}")
        self.state_dir = Path(state_dir)
        self.log_dir = self.state_dir / "logs"
        self.status_path = self.state_dir / "status.json"
        self.policy = policy
        self.stop_grace = stop_grace
        self.poll_interval = poll_interval
        self._out = out
        self._stop = threading.Event()
        self.children = [_Child(spec, self.log_dir / f"{spec.name}.log") for spec in specs]

    # -- public API ---------------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        """SIGINT (Ctrl-C) and SIGTERM (docker stop, systemd, kill) both mean: stop cleanly."""
        def handler(signum, _frame):
            self._say(f"received {signal.Signals(signum).name}: stopping all services")
            self.request_stop()
        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)

    def request_stop(self) -> None:
        self._stop.set()

    def start(self) -> None:
        """Start every child in order, waiting on each readiness gate. Raises ``StartupError``."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for child in self.children:
            if self._stop.is_set():
                return
            try:
                self._spawn(child)
            except OSError as exc:  # missing executable, bad cwd: no point starting the rest
                raise StartupError(f"{child.spec.name}: cannot start {child.spec.argv[0]}: {exc}") from exc
            if child.spec.ready is not None:
                self._wait_ready(child)
        self._write_status()

    def run(self, on_started: Callable[[], None] | None = None) -> int:
        """Start, then supervise until asked to stop; always stops the children. Returns 0, or 1
        when start-up failed. ``on_started`` runs once every child has been started."""
        try:
            try:
                self.start()
            except StartupError as exc:
                self._say(f"error: {exc}")
                return 1
            if on_started is not None and not self._stop.is_set():
                on_started()
            while not self._stop.wait(self.poll_interval):
                self.poll_once()
            return 0
        finally:
            self.stop()

    def poll_once(self, now: float | None = None) -> None:
        """Notice exits, schedule restarts with backoff and perform the ones that are due."""
        now = time.monotonic() if now is None else now
        changed = False
        for child in self.children:
            if child.gave_up or self._stop.is_set():
                continue
            process = child.process
            if process is not None and process.poll() is None:
                if child.consecutive_crashes and now - child.started_at >= self.policy.stable_after:
                    child.consecutive_crashes = 0  # it recovered: the next crash restarts quickly
                continue
            if child.restart_due is None:  # it just exited
                child.last_exit = process.returncode if process is not None else None
                self._kill_group(child, signal.SIGKILL)  # leftovers of the dead child's group
                quick_crash = now - child.started_at < self.policy.stable_after
                child.consecutive_crashes = child.consecutive_crashes + 1 if quick_crash else 1
                limit = self.policy.max_restarts
                if limit is not None and child.consecutive_crashes > limit:
                    child.gave_up = True
                    self._say(f"{child.spec.name} exited with code {child.last_exit} "
                              f"{child.consecutive_crashes} times in a row; giving up (log: {child.log_path})")
                else:
                    delay = self._backoff(child.consecutive_crashes)
                    child.restart_due = now + delay
                    self._say(f"{child.spec.name} exited with code {child.last_exit}; restarting in "
                              f"{delay:.1f}s (log: {child.log_path}){self._log_tail(child)}")
                changed = True
            elif now >= child.restart_due:
                child.restarts += 1
                try:
                    self._spawn(child)
                except OSError as exc:  # e.g. the binary vanished: try again after the next backoff
                    child.consecutive_crashes += 1
                    child.restart_due = now + self._backoff(child.consecutive_crashes)
                    self._say(f"{child.spec.name}: cannot start {child.spec.argv[0]}: {exc}")
                changed = True
        if changed:
            self._write_status()

    def stop(self) -> None:
        """SIGTERM every process group (newest first), wait ``stop_grace``, then SIGKILL the rest."""
        self._stop.set()
        running = [c for c in reversed(self.children) if c.process is not None]
        for child in running:
            child.restart_due = None
            self._kill_group(child, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_grace
        for child in running:
            try:
                child.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._say(f"{child.spec.name} did not stop within {self.stop_grace:.0f}s; killing it")
        for child in running:
            # Also reaps grandchildren that outlived their parent in the same group.
            self._kill_group(child, signal.SIGKILL)
            if child.process.poll() is None:
                child.process.wait()
        if self.log_dir.exists():
            self._write_status()

    def status(self) -> list[dict]:
        return [{"name": c.spec.name, "state": c.state, "pid": c.process.pid if c.process else None,
                 "restarts": c.restarts, "last_exit": c.last_exit, "url": c.spec.url,
                 "log": str(c.log_path)} for c in self.children]

    # -- internals ----------------------------------------------------------------------------

    def _backoff(self, crashes: int) -> float:
        p = self.policy
        return min(p.max_backoff, p.initial_backoff * p.factor ** max(0, crashes - 1))

    def _spawn(self, child: _Child) -> None:
        spec = child.spec
        env = {**os.environ, **spec.env}
        with open(child.log_path, "ab") as logf:
            logf.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} start: {' '.join(spec.argv)}\n".encode())
            logf.flush()
            child.process = subprocess.Popen(
                spec.argv, env=env, cwd=spec.cwd, stdout=logf, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True)
        child.started_at = time.monotonic()
        child.restart_due = None
        log.info("started %s (pid %d)", spec.name, child.process.pid)

    def _wait_ready(self, child: _Child) -> None:
        deadline = time.monotonic() + child.spec.ready_timeout
        while not self._stop.is_set():
            if child.process.poll() is not None:
                raise StartupError(f"{child.spec.name} exited with code {child.process.returncode} "
                                   f"before it was ready (log: {child.log_path}){self._log_tail(child)}")
            try:
                if child.spec.ready():
                    return
            except Exception:  # a readiness probe failing is just "not ready yet"
                pass
            if time.monotonic() > deadline:
                raise StartupError(f"{child.spec.name} was not ready within "
                                   f"{child.spec.ready_timeout:.0f}s (log: {child.log_path})")
            time.sleep(0.1)

    @staticmethod
    def _kill_group(child: _Child, sig: int) -> None:
        if child.process is None:
            return
        try:
            os.killpg(child.process.pid, sig)  # pgid == pid thanks to start_new_session
        except (ProcessLookupError, PermissionError):
            pass  # the whole group is already gone

    @staticmethod
    def _log_tail(child: _Child, lines: int = 3) -> str:
        try:
            tail = child.log_path.read_text(errors="replace").rstrip().splitlines()[-lines:]
        except OSError:
            return ""
        return "".join(f"\n    | {line}" for line in tail)

    def _write_status(self) -> None:
        write_text_atomic(self.status_path, json.dumps(self.status(), indent=2))

    def _say(self, message: str) -> None:
        if self._out is not None:
            print(message, file=self._out, flush=True)
        else:
            log.info(message)
