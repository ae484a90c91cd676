"""The scoring scheduler: one cycle scores every device once, history and alert state go to SQLite,
and a restarted scheduler resumes (next cycle id, next data window, same hysteresis streaks)."""
from __future__ import annotations

import sqlite3

import numpy as np
import pandas as pd

from apps.manufacturing.scheduler import FileSource, HistoryStore, Scheduler, SchedulerConfig
from apps.manufacturing.scoring import apply_hysteresis

N_DEVICES = 8


def _fleet_file(tmp_path, heldout_fleet):
    """N_DEVICES machines that report until the end of the file (failed machines fall silent)."""
    frame = heldout_fleet.to_frame()
    healthy = heldout_fleet.labels.device_id[heldout_fleet.labels.fault == "none"]
    keep = frame.device_id.isin(healthy.iloc[:N_DEVICES])
    path = tmp_path / "fleet.parquet"
    frame[keep].to_parquet(path, index=False)
    return path


def _scheduler(model, data, db, replay=True):
    return Scheduler(model, FileSource(data, model.cfg), HistoryStore(db),
                     SchedulerConfig(interval_s=0.0, replay=replay))


def test_cycles_store_history_and_resume_after_restart(tmp_path, trained_model, heldout_fleet):
    data, db = _fleet_file(tmp_path, heldout_fleet), tmp_path / "history.sqlite"
    first = _scheduler(trained_model, data, db)
    assert first.run(max_cycles=3) == 3
    first.store.close()

    second = _scheduler(trained_model, data, db)           # a restart: new objects, same files
    cycle = second.run_cycle()
    assert cycle["cycle_id"] == 4 and cycle["n_devices"] == N_DEVICES and cycle["n_scored"] == N_DEVICES
    second.store.close()

    with sqlite3.connect(db) as conn:
        cycles = pd.read_sql_query("SELECT * FROM cycles ORDER BY cycle_id", conn)
        scores = pd.read_sql_query("SELECT * FROM scores ORDER BY device_id, ts", conn)
    # The replay clock advanced one 15-minute stride per cycle, across the restart too.
    assert np.all(np.diff(cycles.data_until) == 900)
    assert len(scores) == 4 * N_DEVICES and scores.health.between(0, 100).all()
    # The alerts stored cycle by cycle equal hysteresis over each device's whole sequence at once,
    # so the streaks survived the restart.
    cfg = trained_model.cfg
    for _, dev in scores.groupby("device_id"):
        expected, _ = apply_hysteresis((dev.health.to_numpy() < cfg.alert_below)[None, :],
                                       cfg.enter_after, cfg.leave_after)
        assert dev.alert.astype(bool).tolist() == expected[0].tolist()


def test_a_cycle_without_new_data_rescores_nothing(tmp_path, trained_model, heldout_fleet):
    data, db = _fleet_file(tmp_path, heldout_fleet), tmp_path / "h.sqlite"
    sched = _scheduler(trained_model, data, db, replay=False)   # wall clock: the file is all in the past
    assert sched.run_cycle()["n_scored"] == N_DEVICES
    again = sched.run_cycle()
    assert again["n_scored"] == 0 and again["n_devices"] == N_DEVICES
    sched.store.close()


def test_a_failing_machine_raises_an_alert_before_failure(trained_model, heldout_fleet):
    """Batch scoring of machines that wear out (bearing wear / overheating): health late in the fault
    is below health before onset, and alerts (with hysteresis) start between onset and failure."""
    from apps.manufacturing.pipeline import score_frame

    lab = heldout_fleet.labels
    failing = lab[lab.fault.isin(["bearing_wear", "overheating"])]
    assert len(failing) >= 2
    frame = heldout_fleet.to_frame()
    scores = score_frame(trained_model, frame[frame.device_id.isin(failing.device_id)])
    scores["t"] = (pd.to_datetime(scores.ts) - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
    alerted = []
    for _, row in failing.iterrows():
        dev = scores[scores.device_id == row.device_id]
        before = dev[dev.t < row.onset_ts].health
        late = dev[dev.t > row.failure_ts - 6 * 3600].health
        assert late.median() < before.median(), row.device_id
        alerted.append(bool((dev.alert & (dev.t >= row.onset_ts) & (dev.t < row.failure_ts)).any()))
    # The test model is trained for seconds, not minutes: most (not all) must be caught in time.
    # Full-size recall is measured by `dsv manufacturing eval` / bench/manufacturing.py.
    assert sum(alerted) >= 0.6 * len(alerted), alerted
