"""`dsv finance service`: the whole app on embedded defaults, until Ctrl-C or SIGTERM.

Prepares what is missing (a fast-tier model trained on synthetic data), starts the embedded broker
unless KAFKA_BOOTSTRAP is set, then runs the live producer, the scorer and the adjudicator as threads
sharing one stop event. On a signal each finishes its current batch (outputs flushed, offsets
committed), then the broker child process is stopped.
"""
from __future__ import annotations

import logging
import threading

log = logging.getLogger(__name__)


def run_service(settings, rate: float = 200, client: str = "confluent", metrics_port: int | None = 9108) -> int:
    from apps.finance.cli import ensure_model, sink_path
    from apps.finance.llm import AdjudicatorConfig, Calibration, run_adjudicator, saved_calibration
    from apps.finance.service import ScorerConfig, install_stop_signals, produce_live, run_scorer
    from apps.finance.stream import kafka_bootstrap

    stop = threading.Event()
    install_stop_signals(stop)
    model = ensure_model(settings, n=100_000)
    sink = sink_path(settings)
    with kafka_bootstrap(settings) as bootstrap:
        jobs = {
            "producer": lambda: produce_live(bootstrap, rate, stop, client, sink_path=sink),
            "scorer": lambda: run_scorer(ScorerConfig(bootstrap, model, client=client, sink_path=sink,
                                                      metrics_port=metrics_port, instance_id="scorer-0"), stop),
            "adjudicator": lambda: run_adjudicator(AdjudicatorConfig(
                bootstrap, settings.server_url, settings.api_key, client=client, sink_path=sink,
                calibration=saved_calibration(settings.app_dir("finance"), "finance") or Calibration(),
                metrics_port=(metrics_port + 1) if metrics_port else None), stop),
        }
        failures: list[str] = []

        def guarded(name, job):
            try:
                job()
            except Exception:
                log.exception("%s failed; stopping the service", name)
                failures.append(name)
                stop.set()

        threads = [threading.Thread(target=guarded, args=(n, j), name=f"finance-{n}") for n, j in jobs.items()]
        for t in threads:
            t.start()
        log.info("finance service up: broker %s, %s tx/s, dashboard data in %s (Ctrl-C stops)", bootstrap, rate, sink)
        while not stop.wait(0.5):
            pass
        for t in threads:
            t.join(60)
    log.info("finance service stopped")
    return 1 if failures else 0
