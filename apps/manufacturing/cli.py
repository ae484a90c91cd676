"""`dsv manufacturing ...`: simulate a fleet, train the health model, score files, evaluate against
baselines, run the 15-minute scheduler, write maintenance advice, and the long-running service.

Heavy imports (torch, pandas, sklearn) stay inside the handlers so `dsv --help` is instant.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from shared.cli_helpers import add_command, add_group

log = logging.getLogger(__name__)


def _app_dir(settings) -> Path:
    return settings.app_dir("manufacturing")


def _model_dir(args, settings) -> Path:
    return Path(args.model_dir) if getattr(args, "model_dir", None) else _app_dir(settings) / "model"


def cmd_simulate(args, settings) -> int:
    from .data import write_table
    from .simulate import SimConfig, labels_path_for, simulate_fleet

    fleet = simulate_fleet(SimConfig(devices=args.devices, days=args.days, seed=args.seed,
                                     period_s=args.period, fault_fraction=args.fault_fraction))
    frame = fleet.to_frame()
    write_table(frame, args.out)
    labels = labels_path_for(args.out)
    write_table(fleet.labels, labels)
    print(f"wrote {len(frame)} SYNTHETIC records of {args.devices} devices to {args.out}; "
          f"labels ({int((fleet.labels.fault != 'none').sum())} faults) to {labels}")
    return 0


def _normal_windows_from_file(path: str, labels: str | None, cfg):
    import numpy as np
    import pandas as pd

    from .data import read_table
    from .pipeline import normal_windows_from_grid
    from .windows import to_grid

    frame, report = read_table(path, skip_bad=True, sensors=list(cfg.sensors))
    print(report.summary(), file=sys.stderr)
    grid = to_grid(frame, cfg.sensors, cfg.period_s)
    onset = None
    if labels:
        lab = pd.read_csv(labels, dtype={"device_id": str}).set_index("device_id")
        onset = lab["onset_ts"].reindex(grid.device_ids).fillna(-1).to_numpy(np.int64)
    return normal_windows_from_grid(grid.values, grid.ts, cfg, onset)


def train_default(settings, *, devices: int = 150, days: float = 10.0, seed: int = 0, steps: int = 400,
                  model_dir: Path | None = None, input_path: str | None = None, labels: str | None = None):
    """Train (on a simulated fleet unless ``input_path`` is given) and save the health model."""
    from .model import TrainConfig
    from .pipeline import PipelineConfig, normal_windows_from_grid, train_health_model
    from .simulate import SimConfig, simulate_fleet

    cfg = PipelineConfig(train=TrainConfig(steps=steps, seed=seed))
    if input_path:
        windows = _normal_windows_from_file(input_path, labels, cfg)
        source = input_path
    else:
        fleet = simulate_fleet(SimConfig(devices=devices, days=days, seed=seed))
        windows = normal_windows_from_grid(fleet.values, fleet.ts, cfg, fleet.labels["onset_ts"].to_numpy())
        source = f"SYNTHETIC fleet devices={devices} days={days} seed={seed}"
    model = train_health_model(windows, cfg)
    model.info["trained_on"] = source
    out = model.save(model_dir or _app_dir(settings) / "model")
    return model, out


def cmd_train(args, settings) -> int:
    model, out = train_default(settings, devices=args.devices, days=args.days, seed=args.seed,
                               steps=args.steps, model_dir=_model_dir(args, settings),
                               input_path=args.input, labels=args.labels)
    print(json.dumps({"model_dir": str(out), **model.info,
                      "calibration": model.calibration.__dict__}, indent=2))
    return 0


def cmd_score(args, settings) -> int:
    from .data import read_table, write_table
    from .pipeline import HealthModel, score_frame

    model = HealthModel.load(_model_dir(args, settings))
    frame, report = read_table(args.input, skip_bad=args.skip_bad, sensors=list(model.cfg.sensors))
    print(report.summary(), file=sys.stderr)
    for reason in report.bad_rows[:5]:
        print(f"  dropped: {reason}", file=sys.stderr)
    scores = score_frame(model, frame)
    write_table(scores, args.output)
    print(f"wrote {len(scores)} window scores ({int(scores['alert'].sum())} in alert) to {args.output}")
    return 0


def cmd_eval(args, settings) -> int:
    from .evaluation import evaluate_fleet, evaluate_shuttle
    from .pipeline import HealthModel
    from .simulate import SimConfig, simulate_fleet

    model = HealthModel.load(_model_dir(args, settings))
    fleet = simulate_fleet(SimConfig(devices=args.devices, days=args.days, seed=args.seed))
    result = {"fleet": evaluate_fleet(model, fleet, args.target_recall)}
    if args.shuttle:
        result["shuttle"] = evaluate_shuttle(steps=args.shuttle_steps)
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        from shared.io import write_text_atomic

        write_text_atomic(args.output, text)
    return 0


def build_scheduler(args, settings):
    from .pipeline import HealthModel
    from .scheduler import FileSource, HistoryStore, KafkaSource, Scheduler, SchedulerConfig

    model = HealthModel.load(_model_dir(args, settings))
    db = Path(args.db) if args.db else _app_dir(settings) / "history.sqlite"
    if args.source == "kafka":
        bootstrap = args.bootstrap or settings.kafka_bootstrap
        if not bootstrap:
            from shared.io import InputError
            raise InputError("--source kafka needs --bootstrap or KAFKA_BOOTSTRAP (the plant's broker)")
        source = KafkaSource(bootstrap, args.group_id, model.cfg, db.with_name("kafka_buffer.parquet"))
    else:
        source = FileSource(args.source or _app_dir(settings) / "fleet.parquet", model.cfg)
    cfg = SchedulerConfig(interval_s=args.interval, replay=args.replay)
    return Scheduler(model, source, HistoryStore(db), cfg)


def _stop_on_signals():
    import signal
    import threading

    stop = threading.Event()

    def handler(signum, frame):
        log.info("signal %d: finishing the current cycle and stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


def cmd_run(args, settings) -> int:
    scheduler = build_scheduler(args, settings)
    n = scheduler.run(_stop_on_signals(), args.max_cycles)
    print(f"stopped after {n} cycles; history in {scheduler.store.path}")
    return 0


def cmd_service(args, settings) -> int:
    from .service import ServiceConfig, run_service

    return run_service(settings, ServiceConfig(devices=args.devices, days=args.days, interval_s=args.interval,
                                               train_steps=args.steps), _stop_on_signals())


def cmd_advise(args, settings) -> int:
    from .llm import advice_for_device

    db = Path(args.db) if args.db else _app_dir(settings) / "history.sqlite"
    advice = advice_for_device(settings, db, args.device)
    print(advice.text)
    print(f"[source: {advice.source}]", file=sys.stderr)
    return 0


def cmd_advice_data(args, settings) -> int:
    from .llm import build_advice_dataset

    n = build_advice_dataset(args.out, devices=args.devices, seed=args.seed)
    print(f"wrote {n} SYNTHETIC chat records (alert -> advice) to {args.out}")
    return 0


def cmd_advice_check(args, settings) -> int:
    from core.client import ModelClient

    from .llm import check_advice

    client = ModelClient(settings.server_url, settings.api_key, max_retries=0)
    result = check_advice(client, args.data, args.limit)
    print(json.dumps(result, indent=2))
    return 0


def cmd_publish(args, settings) -> int:
    from shared.broker import ensure_topics

    from .data import SENSORS_TOPIC, publish_records, read_table

    bootstrap = args.bootstrap or settings.kafka_bootstrap
    if not bootstrap:
        from shared.io import InputError
        raise InputError("publish needs --bootstrap or KAFKA_BOOTSTRAP")
    frame, report = read_table(args.input, skip_bad=True)
    ensure_topics(bootstrap, {SENSORS_TOPIC: 4})
    n = publish_records(bootstrap, frame, SENSORS_TOPIC)
    print(f"published {n} records to '{SENSORS_TOPIC}' ({report.summary()})")
    return 0


def register(subparsers) -> None:
    g = add_group(subparsers, "manufacturing", "Equipment health scoring from sensor time series "
                  "(contrastive Transformer encoder, 15-minute scoring cycle).")

    p = add_command(g, "simulate", cmd_simulate, "Simulate a SYNTHETIC fleet (regimes, degradation, faults); "
                    "writes wide records (CSV/Parquet by suffix) and a <name>.labels.csv of fault onset/failure.")
    p.add_argument("--devices", type=int, default=100, help="number of machines")
    p.add_argument("--days", type=float, default=7.0, help="days of data per machine")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed = same fleet)")
    p.add_argument("--period", type=int, default=300, help="seconds between samples")
    p.add_argument("--fault-fraction", type=float, default=0.4, help="share of machines that develop a fault")
    p.add_argument("--out", required=True, help="output file (.csv or .parquet)")

    p = add_command(g, "train", cmd_train, "Train the health model (normaliser + contrastive encoder + "
                    "calibration) on normal operation; on a simulated fleet unless --input is given.")
    p.add_argument("--input", help="records (.csv/.parquet/dir) of normal operation; default: simulate")
    p.add_argument("--labels", help="labels file: windows after a device's onset_ts are left out")
    p.add_argument("--devices", type=int, default=150, help="simulated training fleet size")
    p.add_argument("--days", type=float, default=10.0, help="simulated days")
    p.add_argument("--seed", type=int, default=0, help="seed of fleet and training")
    p.add_argument("--steps", type=int, default=400, help="contrastive training steps")
    p.add_argument("--model-dir", help="where to save (default DSV_HOME/manufacturing/model)")

    p = add_command(g, "score", cmd_score, "Score a file: one row per device per window "
                    "(device_id, ts, health 0-100, alert, contributing_sensors).")
    p.add_argument("--input", required=True, help="records (.csv/.parquet/dir)")
    p.add_argument("--output", required=True, help="scores (.csv/.parquet)")
    p.add_argument("--skip-bad", action="store_true",
                   help="drop and count malformed rows instead of stopping at the first one")
    p.add_argument("--model-dir", help="trained model (default DSV_HOME/manufacturing/model)")

    p = add_command(g, "eval", cmd_eval, "Evaluate on a held-out SYNTHETIC fleet vs static thresholds and "
                    "z-scores at equal recall (false alarms/device-day, recall, lead time) + the NASA Shuttle set.")
    p.add_argument("--devices", type=int, default=200, help="machines in the SYNTHETIC fleet")
    p.add_argument("--days", type=float, default=10.0, help="days of data per machine")
    p.add_argument("--seed", type=int, default=101, help="use a seed different from training")
    p.add_argument("--target-recall", type=float, default=None,
                   help="recall every method is tuned to (default: the model's recall at its default threshold)")
    p.add_argument("--shuttle", action=argparse.BooleanOptionalAction, default=True,
                   help="also evaluate on the real NASA Shuttle set shipped with river")
    p.add_argument("--shuttle-steps", type=int, default=200, help="training steps for the Shuttle model")
    p.add_argument("--output", help="also write the JSON here")
    p.add_argument("--model-dir", help="trained model (default DSV_HOME/manufacturing/model)")

    p = add_command(g, "run", cmd_run, "Run the scheduler: score every device's latest window every "
                    "--interval seconds, history + alert state in SQLite (resumes after a restart).")
    p.add_argument("--source", help="records file/dir (default DSV_HOME/manufacturing/fleet.parquet) "
                   "or 'kafka' for the sensors topic")
    p.add_argument("--interval", type=float, default=900.0, help="seconds between cycles")
    p.add_argument("--replay", action="store_true",
                   help="play the file back: each cycle advances a data clock by one window stride")
    p.add_argument("--max-cycles", type=int, default=None, help="stop after N cycles")
    p.add_argument("--db", help="SQLite history (default DSV_HOME/manufacturing/history.sqlite)")
    p.add_argument("--bootstrap", help="Kafka bootstrap (default KAFKA_BOOTSTRAP)")
    p.add_argument("--group-id", default="manufacturing-scheduler", help="Kafka consumer group")
    p.add_argument("--model-dir", help="trained model (default DSV_HOME/manufacturing/model)")

    p = add_command(g, "service", cmd_service, "Long-running demo service: simulate a fleet and train if "
                    "missing under DSV_HOME/manufacturing, then replay it through the scheduler. Ctrl-C stops.")
    p.add_argument("--devices", type=int, default=200, help="machines in the SYNTHETIC fleet")
    p.add_argument("--days", type=float, default=7.0, help="days of data per machine")
    p.add_argument("--interval", type=float, default=5.0, help="seconds between cycles (demo speed)")
    p.add_argument("--steps", type=int, default=400, help="training steps if a model must be trained")

    p = add_command(g, "advise", cmd_advise, "Maintenance advice for a device (manufacturing adapter via the "
                    "model server; a labelled template when the server is unavailable).")
    p.add_argument("--device", required=True, help="device_id")
    p.add_argument("--db", help="SQLite history (default DSV_HOME/manufacturing/history.sqlite)")

    p = add_command(g, "advice-data", cmd_advice_data, "Write SYNTHETIC chat training data (alert context -> "
                    "advice) for the manufacturing LoRA adapter (see apps/manufacturing/finetune.yaml).")
    p.add_argument("--out", required=True, help="JSONL file of chat records")
    p.add_argument("--devices", type=int, default=300, help="simulated machines (80 %% develop a fault)")
    p.add_argument("--seed", type=int, default=7, help="simulation seed (use another one for a validation set)")

    p = add_command(g, "advice-check", cmd_advice_check, "Ask the manufacturing adapter (model server at "
                    "DSV_SERVER_URL) for advice on each prompt of a chat file and report how often its own "
                    "text names every deviating sensor (else the labelled template is used).")
    p.add_argument("--data", required=True, help="chat records from `advice-data` (e.g. the validation set)")
    p.add_argument("--limit", type=int, default=None, help="at most this many records")

    p = add_command(g, "publish", cmd_publish, "Publish records from a file to the Kafka 'sensors' topic.")
    p.add_argument("--input", required=True, help="records (.csv/.parquet/dir)")
    p.add_argument("--bootstrap", help="Kafka bootstrap (default KAFKA_BOOTSTRAP)")
