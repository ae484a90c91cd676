"""`dsv manufacturing service`: the long-running demo on embedded defaults.

On first start it prepares, under DSV_HOME/manufacturing/: a SYNTHETIC fleet to play back
(``fleet.parquet`` + ``fleet.labels.csv``, a different seed from training) and a trained health model
(``model/``). Then it replays the fleet through the scheduler at a demo pace (one 15-minute cycle of
data every few seconds), storing history in ``history.sqlite`` for the dashboard. SIGTERM / Ctrl-C
finish the current cycle and stop; a restart resumes the replay where it stopped.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServiceConfig:
    devices: int = 200
    days: float = 7.0
    seed: int = 1000
    """Seed of the played-back fleet (training uses seed 0: the demo fleet is unseen)."""
    interval_s: float = 5.0
    train_steps: int = 400


def ensure_demo_assets(settings, cfg: ServiceConfig) -> tuple[Path, Path]:
    from .cli import train_default
    from .data import write_table
    from .simulate import SimConfig, labels_path_for, simulate_fleet

    app = settings.app_dir("manufacturing")
    data = app / "fleet.parquet"
    if not data.exists():
        log.info("simulating a SYNTHETIC demo fleet of %d devices x %.0f days", cfg.devices, cfg.days)
        fleet = simulate_fleet(SimConfig(devices=cfg.devices, days=cfg.days, seed=cfg.seed))
        write_table(fleet.labels, labels_path_for(str(data)))
        write_table(fleet.to_frame(), data)
    model_dir = app / "model"
    if not (model_dir / "meta.json").exists():
        log.info("no trained model under %s: training one (about a minute or two)", model_dir)
        train_default(settings, steps=cfg.train_steps, model_dir=model_dir)
    return data, model_dir


def run_service(settings, cfg: ServiceConfig, stop: threading.Event | None = None) -> int:
    from .pipeline import HealthModel
    from .scheduler import FileSource, HistoryStore, Scheduler, SchedulerConfig

    stop = stop or threading.Event()
    data, model_dir = ensure_demo_assets(settings, cfg)
    model = HealthModel.load(model_dir)
    store = HistoryStore(settings.app_dir("manufacturing") / "history.sqlite")
    scheduler = Scheduler(model, FileSource(data, model.cfg), store,
                          SchedulerConfig(interval_s=cfg.interval_s, replay=True))
    log.info("manufacturing service: replaying %s every %.1fs (history %s)", data, cfg.interval_s, store.path)
    try:
        n = scheduler.run(stop)
    finally:
        store.close()
    log.info("manufacturing service stopped cleanly after %d cycles", n)
    return 0
