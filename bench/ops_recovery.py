"""Recovery level 1 on this machine: how long the supervisor takes to bring a killed service back.

Measures, for the embedded Kafka broker under `shared.supervisor.Supervisor`:
  * cold start: spawn -> broker answers a metadata request (the baseline);
  * recovery: SIGKILL -> restarted by the supervisor -> answers again (includes the 1 s backoff);
  * clean stop of the supervised stack (SIGTERM to every group -> all exited).
Prints JSON with medians over --rounds and the ratio recovery / cold start.

    OMP_NUM_THREADS=1 .venv/bin/python bench/ops_recovery.py --rounds 5
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared.broker import EmbeddedBroker, free_port, wait_for_kafka  # noqa: E402
from shared.supervisor import ChildSpec, RestartPolicy, Supervisor  # noqa: E402


def answers(bootstrap: str) -> bool:
    try:
        wait_for_kafka(bootstrap, timeout=0.5)
        return True
    except TimeoutError:
        return False


def one_round(tmp: Path, policy: RestartPolicy) -> dict[str, float]:
    port = free_port()
    bootstrap = f"127.0.0.1:{port}"
    spec = ChildSpec("kafka", EmbeddedBroker(tmp / "kafka", port=port).command(), ready=lambda: answers(bootstrap))
    sup = Supervisor([spec], tmp / "state", policy=policy, stop_grace=10)
    t0 = time.perf_counter()
    sup.start()
    cold = time.perf_counter() - t0

    os.kill(sup.children[0].process.pid, signal.SIGKILL)
    t0 = time.perf_counter()
    while True:
        sup.poll_once()
        child = sup.children[0]
        if child.restarts == 1 and child.state == "running" and answers(bootstrap):
            break
        time.sleep(0.05)
    recovery = time.perf_counter() - t0

    t0 = time.perf_counter()
    sup.stop()
    stop = time.perf_counter() - t0
    return {"cold_start_s": cold, "recovery_s": recovery, "stop_s": stop}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--backoff", type=float, default=1.0, help="initial restart backoff (dsv run uses 1 s)")
    args = parser.parse_args()
    policy = RestartPolicy(initial_backoff=args.backoff)
    rounds = []
    for i in range(args.rounds):
        with tempfile.TemporaryDirectory() as tmp:
            rounds.append(one_round(Path(tmp), policy))
    med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    print(json.dumps({
        "benchmark": "ops_recovery", "rounds": args.rounds, "backoff_s": args.backoff,
        "median": {k: round(v, 3) for k, v in med.items()},
        "recovery_over_cold_start": round(med["recovery_s"] / med["cold_start_s"], 2),
        "recovery_minus_backoff_s": round(med["recovery_s"] - args.backoff, 3),
        "load_average": os.getloadavg()[0],
    }, indent=2))


if __name__ == "__main__":
    main()
