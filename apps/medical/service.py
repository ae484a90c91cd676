"""`dsv medical service`: watch an inbox folder and process every new CT series.

On embedded defaults it works on a fresh machine: if no model exists under ``DSV_HOME/medical/model``
it synthesises a small training set and trains one (a few minutes on 2 cores), and if nothing has been
processed yet it drops one synthetic demo study into the inbox. Files still being copied (modified in
the last ``settle_s`` seconds) wait for the next poll. SIGTERM / Ctrl-C finish the current series and
stop cleanly.
"""
from __future__ import annotations

import json
import logging
import shutil
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServiceConfig:
    app_dir: Path
    poll_s: float = 5.0
    once: bool = False
    settle_s: float = 2.0
    train_cases: int = 6
    train_iterations: int = 150
    train_max_seconds: float = 900.0
    demo_seed: int = 4242
    settings: object | None = None

    @property
    def inbox(self) -> Path:
        return self.app_dir / "inbox"

    @property
    def outputs(self) -> Path:
        return self.app_dir / "outputs"

    @property
    def model_path(self) -> Path:
        return self.app_dir / "model" / "model.pt"

    @classmethod
    def from_settings(cls, settings, **overrides) -> ServiceConfig:
        return cls(app_dir=settings.app_dir("medical"), settings=settings, **overrides)


def ensure_model(cfg: ServiceConfig) -> None:
    if cfg.model_path.exists():
        return
    from .model import ModelConfig, TrainConfig, train
    from .data import generate_cases

    log.info("no model at %s: synthesising %d training cases and training %d iterations",
             cfg.model_path, cfg.train_cases, cfg.train_iterations)
    data = cfg.app_dir / "train"
    if not (data / "manifest.json").exists():
        generate_cases(data, cfg.train_cases, seed=7)
    cfg.model_path.parent.mkdir(parents=True, exist_ok=True)
    # A light network so that a fresh machine is ready in minutes; `dsv medical train` makes better ones.
    light = ModelConfig(spacing_mm=1.0, patch=32, channels=(8, 16, 32, 64), strides=(2, 2, 2))
    train(TrainConfig(data_dir=data, out=cfg.model_path, iterations=cfg.train_iterations,
                      max_seconds=cfg.train_max_seconds, samples_per_case=4, model=light))


def ensure_demo_study(cfg: ServiceConfig) -> None:
    cfg.inbox.mkdir(parents=True, exist_ok=True)
    if any(cfg.inbox.iterdir()) or (cfg.outputs.exists() and any(cfg.outputs.glob("*/findings.json"))):
        return
    from .data import generate_case

    staging = cfg.app_dir / "demo"
    truth = generate_case(staging, "demo-study", cfg.demo_seed)
    shutil.copytree(staging / "demo-study" / "dicom", cfg.inbox / "demo-study")
    log.info("demo study with %d synthetic nodule(s) placed in the inbox", len(truth["nodules"]))


def _settled(folder: Path, settle_s: float) -> bool:
    newest = max((p.stat().st_mtime for p in folder.rglob("*") if p.is_file()), default=0.0)
    return time.time() - newest >= settle_s


def run_service(cfg: ServiceConfig) -> int:
    from .deid import Pseudonymiser
    from .llm import AdapterReporter
    from .pipeline import NodulePipeline, PipelineConfig

    stop = threading.Event()

    def _stop(signum, _frame):
        log.info("signal %d received: stopping after the current series", signum)
        stop.set()

    previous = {s: signal.signal(s, _stop) for s in (signal.SIGTERM, signal.SIGINT)} \
        if threading.current_thread() is threading.main_thread() else {}
    try:
        ensure_model(cfg)
        ensure_demo_study(cfg)
        reporter = AdapterReporter.from_settings(cfg.settings) if cfg.settings is not None else None
        pipeline = NodulePipeline(PipelineConfig(model_path=cfg.model_path, out_dir=cfg.outputs),
                                  Pseudonymiser.for_home(cfg.app_dir), reporter)
        status_path = cfg.app_dir / "service_status.json"
        log.info("watching %s every %.1f s", cfg.inbox, cfg.poll_s)
        while not stop.is_set():
            if _settled(cfg.inbox, cfg.settle_s):
                done = {p.name for p in cfg.outputs.glob("*") if (p / "findings.json").exists()}
                summary = pipeline.run_folder(cfg.inbox, skip_series=done)
                status_path.write_text(json.dumps({"last_poll": time.time(), "processed_now": len(summary["processed"]),
                                                   "series_total": len(done) + len(summary["processed"]),
                                                   "refused": len(summary["refused"])}))
            if cfg.once:
                break
            stop.wait(cfg.poll_s)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log.info("medical service stopped")
    return 0
