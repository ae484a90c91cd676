"""The local supervisor with small real child processes: start, crash + restart with backoff,
clean stop on SIGTERM (also of grandchildren), SIGKILL escalation, readiness gating."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from shared.supervisor import ChildSpec, RestartPolicy, StartupError, Supervisor

PY = sys.executable
# stable_after is long so that a slow start on a loaded machine still counts as a quick crash.
FAST = RestartPolicy(initial_backoff=0.1, max_backoff=0.4, factor=2.0, stable_after=60.0)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is dead for our purpose.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_until(predicate, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def sleeper(name: str, seconds: int = 60, **kw) -> ChildSpec:
    return ChildSpec(name, [PY, "-c", f"import time; time.sleep({seconds})"], **kw)


def test_start_and_stop_all_children(tmp_path):
    sup = Supervisor([sleeper("a"), sleeper("b")], tmp_path, policy=FAST, stop_grace=5)
    sup.start()
    pids = [c.process.pid for c in sup.children]
    assert all(alive(p) for p in pids)
    status = json.loads((tmp_path / "status.json").read_text())
    assert [s["state"] for s in status] == ["running", "running"]
    sup.stop()
    assert not any(alive(p) for p in pids)
    assert [s["state"] for s in json.loads((tmp_path / "status.json").read_text())] == ["stopped", "stopped"]


def test_crashing_child_is_restarted_with_growing_backoff(tmp_path):
    counter = tmp_path / "starts"
    # Crashes immediately on its first three starts, then stays up.
    script = textwrap.dedent(f"""
        import pathlib, sys, time
        p = pathlib.Path({str(counter)!r}); n = int(p.read_text()) if p.exists() else 0
        p.write_text(str(n + 1)); print("start", n + 1, flush=True)
        if n < 3: sys.exit(3)
        time.sleep(60)
    """)
    sup = Supervisor([ChildSpec("flaky", [PY, "-c", script])], tmp_path / "state", policy=FAST, stop_grace=5)
    sup.start()
    child = sup.children[0]
    delays = []
    deadline = time.monotonic() + 15
    while child.restarts < 3 and time.monotonic() < deadline:
        due_before, now = child.restart_due, time.monotonic()
        sup.poll_once(now)
        if child.restart_due is not None and due_before is None:
            delays.append(child.restart_due - now)
        time.sleep(0.02)
    assert child.restarts == 3
    assert child.last_exit == 3
    # Exponential backoff: 0.1, 0.2, 0.4 (then capped at max_backoff).
    assert delays == pytest.approx([0.1, 0.2, 0.4])
    wait_until(lambda: counter.read_text() == "4", what="fourth start")
    sup.poll_once()
    assert child.state == "running" and child.consecutive_crashes == 3
    # Once it has stayed up for stable_after, the backoff starts over for the next crash.
    sup.poll_once(now=child.started_at + FAST.stable_after + 1)
    assert child.consecutive_crashes == 0
    log_text = child.log_path.read_text()
    assert log_text.count("--- ") == 4 and "start 4" in log_text  # one log file, every start appended
    sup.stop()


def test_gives_up_after_max_restarts(tmp_path):
    policy = RestartPolicy(initial_backoff=0.05, max_backoff=0.05, stable_after=60.0, max_restarts=2)
    sup = Supervisor([ChildSpec("broken", [PY, "-c", "raise SystemExit(1)"])], tmp_path, policy=policy)
    sup.start()
    child = sup.children[0]
    wait_until(lambda: (sup.poll_once(), child.gave_up)[1], what="give up")
    assert child.restarts == 2 and child.state == "failed"
    sup.stop()


def test_stop_kills_grandchildren_and_escalates_to_sigkill(tmp_path):
    grandchild_pid_file = tmp_path / "grandchild.pid"
    # A child that ignores SIGTERM and spawns a grandchild (like streamlit's runner or a shell).
    script = textwrap.dedent(f"""
        import signal, subprocess, sys, time, pathlib
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        g = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        pathlib.Path({str(grandchild_pid_file)!r}).write_text(str(g.pid))
        time.sleep(60)
    """)
    sup = Supervisor([ChildSpec("stubborn", [PY, "-c", script])], tmp_path / "s", policy=FAST, stop_grace=0.5)
    sup.start()
    grandchild = int(wait_until(lambda: grandchild_pid_file.exists() and grandchild_pid_file.read_text(),
                                what="grandchild"))
    child_pid = sup.children[0].process.pid
    sup.stop()
    assert not alive(child_pid)
    wait_until(lambda: not alive(grandchild), timeout=3, what="grandchild gone")


def test_readiness_gates_later_children(tmp_path):
    marker = tmp_path / "ready"
    first = ChildSpec("first", [PY, "-c", f"import time, pathlib; time.sleep(0.3); "
                                          f"pathlib.Path({str(marker)!r}).touch(); time.sleep(60)"],
                      ready=marker.exists, ready_timeout=10)
    sup = Supervisor([first, sleeper("second")], tmp_path / "s", policy=FAST)
    sup.start()
    assert marker.exists()
    assert sup.children[1].started_at >= sup.children[0].started_at
    sup.stop()

    dead = ChildSpec("dies", [PY, "-c", "print('boom: port in use'); raise SystemExit(4)"],
                     ready=lambda: False, ready_timeout=10)
    sup = Supervisor([dead, sleeper("never")], tmp_path / "s2", policy=FAST)
    with pytest.raises(StartupError, match="(?s)exited with code 4 before it was ready.*boom: port in use"):
        sup.start()
    assert sup.children[1].process is None  # the gated child never started
    sup.stop()

    missing = ChildSpec("typo", [str(tmp_path / "no-such-binary")])
    sup = Supervisor([missing, sleeper("after")], tmp_path / "s3", policy=FAST)
    with pytest.raises(StartupError, match="typo: cannot start .*no-such-binary"):
        sup.start()
    sup.stop()


def test_sigterm_to_supervisor_process_stops_everything(tmp_path):
    """The real path of `dsv run`: a supervisor process gets SIGTERM and leaves no orphan."""
    script = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from shared.supervisor import ChildSpec, Supervisor
        specs = [ChildSpec(n, [sys.executable, "-c", "import time; time.sleep(60)"]) for n in ("x", "y", "z")]
        sup = Supervisor(specs, Path({str(tmp_path)!r}), stop_grace=5, out=sys.stdout)
        sup.install_signal_handlers()
        sys.exit(sup.run(on_started=lambda: print("UP", flush=True)))
    """)
    proc = subprocess.Popen([PY, "-c", script], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[2])
    assert proc.stdout.readline().strip() == "UP"
    pids = [s["pid"] for s in json.loads((tmp_path / "status.json").read_text())]
    assert len(pids) == 3 and all(alive(p) for p in pids)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=15)
    assert proc.returncode == 0
    assert "received SIGTERM" in out
    assert not any(alive(p) for p in pids)
