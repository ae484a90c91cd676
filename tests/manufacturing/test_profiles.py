"""Per-device profiles: a machine whose own normal sits at the edge of the fleet is judged against
itself (no alarms for being itself), a real shift on it is still caught, and the scheduler, which
learns the profiles cycle by cycle across a restart, scores exactly like batch scoring."""
from __future__ import annotations

import sqlite3

import numpy as np
import pandas as pd

from apps.manufacturing.pipeline import score_frame
from apps.manufacturing.profiles import ProfileConfig, ProfileState, causal_offsets
from apps.manufacturing.scheduler import FileSource, HistoryStore, Scheduler, SchedulerConfig

PRESSURE = 3


def _healthy_frame(fleet, n):
    healthy = fleet.labels.device_id[fleet.labels.fault == "none"].iloc[:n]
    frame = fleet.to_frame()
    return frame[frame.device_id.isin(healthy)].reset_index(drop=True), list(healthy)


def _seconds(ts: pd.Series) -> np.ndarray:
    return pd.to_datetime(ts).to_numpy().astype("datetime64[s]").astype(np.int64)


def test_an_edge_machine_is_judged_against_itself_and_a_real_shift_is_still_caught(trained_model, heldout_fleet):
    assert trained_model.uses_profiles
    frame, devices = _healthy_frame(heldout_fleet, 4)
    edge, shifted = devices[0], devices[1]
    # Machine `edge` reads 0.7 bar high all the time (about 3 fleet sigma at its regimes): its normal.
    frame.loc[frame.device_id == edge, "pressure"] += 0.7
    # Machine `shifted` is normal for two days, then its pressure steps up by the same amount.
    late = frame.ts >= frame.ts.min() + 2 * 86400
    frame.loc[(frame.device_id == shifted) & late, "pressure"] += 0.7
    scores = score_frame(trained_model, frame)
    t = _seconds(scores.ts)
    after_first_day = t >= t.min() + 86400
    mine = scores[(scores.device_id == edge) & after_first_day]
    assert mine.health.median() > 80 and not mine.alert.any()
    step = scores[(scores.device_id == shifted) & (t >= t.min() + 2 * 86400 + 3 * 3600)]
    assert step.alert.mean() > 0.8
    assert step.contributing_sensors.str.startswith("pressure(+").mean() > 0.8


def test_causal_profiles_equal_the_running_profile():
    rng = np.random.default_rng(0)
    n, t, s, r = 3, 60, 2, 2
    z = rng.normal(size=(n, t, s)).astype(np.float32) + np.array([[0.0], [2.0], [-1.0]], np.float32)[:, :, None]
    regimes = rng.integers(0, r, size=(n, t))
    observed = rng.random((n, t, s)) > 0.1
    cfg = ProfileConfig(steps=20, prior_steps=5.0)
    batch = causal_offsets(z, regimes, observed, np.array([9, 59]), r, cfg)      # (N, 2, 2, R, S)
    running = ProfileState.fresh(n, r, s)
    new = np.ones((n, 10), bool)
    running.update(z[:, :10], regimes[:, :10], observed[:, :10], new, cfg)
    np.testing.assert_allclose(running.profiles(cfg), batch[:, 0], rtol=1e-5)
    running.update(z[:, 10:], regimes[:, 10:], observed[:, 10:], np.ones((n, 50), bool), cfg)
    np.testing.assert_allclose(running.profiles(cfg), batch[:, 1], rtol=1e-5)
    assert (running.taken == 20).all()   # commissioning stops at cfg.steps observed steps
    # The device offset settles near the device's own mean, and the unknown share falls.
    assert abs(batch[1, 1, 0].mean() - 2.0) < 0.5 and batch[:, 1, 1].max() < batch[:, 0, 1].min()


def test_scheduler_learns_profiles_across_a_restart_and_scores_like_batch(tmp_path, trained_model, heldout_fleet):
    frame, _ = _healthy_frame(heldout_fleet, 3)
    frame = frame[frame.ts < frame.ts.min() + 30 * 3600]          # 30 h: past the 24 h commissioning
    data, db = tmp_path / "fleet.parquet", tmp_path / "h.sqlite"
    frame.to_parquet(data, index=False)

    def scheduler():
        return Scheduler(trained_model, FileSource(data, trained_model.cfg), HistoryStore(db),
                         SchedulerConfig(interval_s=0.0, replay=True))

    first = scheduler()
    first.run(max_cycles=60)
    first.store.close()
    second = scheduler()
    second.run(max_cycles=60)
    second.store.close()
    with sqlite3.connect(db) as conn:
        stored = pd.read_sql_query("SELECT device_id, ts, health FROM scores", conn)
        taken = dict(conn.execute("SELECT device_id, taken FROM device_profile").fetchall())
    assert set(taken.values()) == {trained_model.cfg.profile.steps}
    batch = score_frame(trained_model, frame)
    batch["ts"] = _seconds(batch.ts)
    both = stored.merge(batch, on=["device_id", "ts"], suffixes=("_sched", "_batch"))
    assert len(both) == len(stored) > 100
    np.testing.assert_allclose(both.health_sched, both.health_batch, atol=0.11)
