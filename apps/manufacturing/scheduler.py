"""The scoring scheduler: every ``interval`` seconds, score the latest window of every device in one
batch, apply alert hysteresis per device, and store the cycle in SQLite.

State that must survive a restart lives in the SQLite file and is written in ONE transaction per
cycle: the scores, the per-device hysteresis state, the per-device profiles (``profiles.py``: each
machine's own normal, learnt cycle by cycle from its first day) and the replay clock. A crash mid-cycle therefore
leaves the previous cycle intact, and a restarted scheduler carries on from it (same streaks, next
cycle id). With Kafka as the source, the consumer's offsets are committed only after that
transaction (and after the record buffer is saved), so a crash re-reads, never loses, records;
re-read records are de-duplicated on (device_id, ts).
"""
from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .data import KafkaSensorReader, ReadReport, read_table, validate_frame
from .pipeline import HealthModel
from .profiles import ProfileState
from .scoring import HysteresisState, apply_hysteresis, contributing_sensors
from .windows import MIN_OBSERVED, latest_windows, observed_fraction, to_grid

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS cycles (
    cycle_id INTEGER PRIMARY KEY, started_at REAL, data_until INTEGER, n_devices INTEGER,
    n_scored INTEGER, n_alerts INTEGER, seconds REAL, report TEXT);
CREATE TABLE IF NOT EXISTS scores (
    cycle_id INTEGER, device_id TEXT, ts INTEGER, health REAL, alert INTEGER,
    contributing_sensors TEXT, PRIMARY KEY (device_id, ts));
CREATE INDEX IF NOT EXISTS scores_cycle ON scores (cycle_id);
CREATE TABLE IF NOT EXISTS device_state (
    device_id TEXT PRIMARY KEY, low_streak INTEGER, high_streak INTEGER, in_alert INTEGER, last_ts INTEGER);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS device_profile (
    device_id TEXT PRIMARY KEY, taken INTEGER, sums BLOB, counts BLOB);
"""


class HistoryStore:
    """SQLite history of every cycle plus the state a restart needs."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(self.path)
        self.conn.execute("PRAGMA journal_mode=WAL")  # the dashboard reads while we write
        self.conn.executescript(SCHEMA)

    def close(self) -> None:
        self.conn.close()

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def last_cycle_id(self) -> int:
        return self.conn.execute("SELECT COALESCE(MAX(cycle_id), 0) FROM cycles").fetchone()[0]

    def load_state(self, device_ids: np.ndarray) -> tuple[HysteresisState, np.ndarray]:
        """Hysteresis state and last scored window end per device (fresh for unknown devices)."""
        rows = pd.read_sql_query("SELECT * FROM device_state", self.conn).set_index("device_id")
        rows = rows.reindex(pd.Index(device_ids, name="device_id"))
        # np.array copies: pandas hands out read-only views and the scheduler updates these in place.
        st = HysteresisState(np.array(rows["low_streak"].fillna(0), dtype=np.int64),
                             np.array(rows["high_streak"].fillna(0), dtype=np.int64),
                             np.array(rows["in_alert"].fillna(0), dtype=bool))
        return st, np.array(rows["last_ts"].fillna(-1), dtype=np.int64)

    def load_profiles(self, device_ids: np.ndarray, n_regimes: int, n_sensors: int) -> ProfileState:
        """Each device's running profile (fresh for a device not seen before)."""
        prof = ProfileState.fresh(len(device_ids), n_regimes, n_sensors)
        pos = {d: i for i, d in enumerate(device_ids)}
        shape = (n_regimes, n_sensors)
        for dev, taken, sums, counts in self.conn.execute("SELECT * FROM device_profile"):
            i = pos.get(dev)
            if i is not None:
                prof.taken[i] = taken
                prof.sums[i] = np.frombuffer(sums, np.float32).reshape(shape)
                prof.counts[i] = np.frombuffer(counts, np.float32).reshape(shape)
        return prof

    def save_cycle(self, cycle: dict, scores: pd.DataFrame, state: pd.DataFrame, meta: dict,
                   profiles: list[tuple] = ()) -> None:
        with self.conn:  # one transaction: all of the cycle or none of it
            self.conn.execute(
                "INSERT INTO cycles VALUES (:cycle_id, :started_at, :data_until, :n_devices, :n_scored,"
                " :n_alerts, :seconds, :report)", cycle)
            self.conn.executemany(
                "INSERT OR REPLACE INTO scores VALUES (?, ?, ?, ?, ?, ?)",
                scores[["cycle_id", "device_id", "ts", "health", "alert", "contributing_sensors"]]
                .itertuples(index=False, name=None))
            self.conn.executemany(
                "INSERT OR REPLACE INTO device_state VALUES (?, ?, ?, ?, ?)",
                state[["device_id", "low_streak", "high_streak", "in_alert", "last_ts"]]
                .itertuples(index=False, name=None))
            self.conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", list(meta.items()))
            self.conn.executemany("INSERT OR REPLACE INTO device_profile VALUES (?, ?, ?, ?)", profiles)


# ------------------------------------------------------------------------------------ sources
class FileSource:
    """Records from a CSV / Parquet file or directory (re-read when it changes).

    ``latest(until)`` gives each device's most recent window ending at or before ``until``."""

    def __init__(self, path: str | Path, model_cfg, skip_bad: bool = True):
        self.path, self.cfg, self.skip_bad = Path(path), model_cfg, skip_bad
        self._mtime = None
        self.grid = None
        self.report: ReadReport | None = None

    def _refresh(self) -> None:
        mtime = max((p.stat().st_mtime for p in ([self.path] if self.path.is_file()
                                                 else self.path.iterdir())), default=0)
        if self.grid is None or mtime != self._mtime:
            frame, self.report = read_table(self.path, skip_bad=self.skip_bad, sensors=list(self.cfg.sensors))
            self.grid = to_grid(frame, self.cfg.sensors, self.cfg.period_s)
            self._mtime = mtime
            log.info("%s", self.report.summary())

    def time_range(self) -> tuple[int, int]:
        self._refresh()
        return int(self.grid.ts[0]), int(self.grid.ts[-1])

    def latest(self, until: float | None = None):
        self._refresh()
        g = self.grid
        stop = len(g.ts) if until is None else int(np.searchsorted(g.ts, until, side="right"))
        # Look back at most four windows: a device silent for longer than that has no current window.
        start = max(0, stop - 4 * self.cfg.window)
        win, last = latest_windows(g.values[:, start:stop], self.cfg.window)
        end_ts = np.where(last >= 0, g.ts[np.clip(start + last, 0, len(g.ts) - 1)], -1)
        return g.device_ids, win, end_ts

    def after_cycle(self) -> None:
        pass


class KafkaSource:
    """Records from the ``sensors`` topic, buffered per device (the last few windows' worth). The
    buffer is saved beside the history DB and the offsets committed after each stored cycle."""

    def __init__(self, bootstrap: str, group_id: str, model_cfg, buffer_path: str | Path,
                 poll_seconds: float = 2.0):
        self.cfg = model_cfg
        self.reader = KafkaSensorReader(bootstrap, group_id, sensors=list(model_cfg.sensors))
        self.buffer_path = Path(buffer_path)
        self.poll_seconds = poll_seconds
        self.keep_s = 4 * model_cfg.window * model_cfg.period_s
        self.buffer = (pd.read_parquet(self.buffer_path) if self.buffer_path.exists()
                       else pd.DataFrame(columns=["device_id", "ts", *model_cfg.sensors]))
        self.report = ReadReport(source="kafka:sensors")

    def latest(self, until: float | None = None):
        new, self.report = self.reader.poll(self.poll_seconds)
        if self.report.n_bad_rows:
            log.warning("kafka: %d malformed records dropped, e.g. %s", self.report.n_bad_rows,
                        self.report.bad_rows[:3])
        frame = pd.concat([self.buffer, new], ignore_index=True) if len(new) else self.buffer
        if len(frame) == 0:
            empty = np.empty((0, self.cfg.window, len(self.cfg.sensors)), np.float32)
            return np.array([], dtype=str), empty, np.array([], dtype=np.int64)
        frame, _ = validate_frame(frame, "kafka buffer", "kafka", skip_bad=True, sensors=list(self.cfg.sensors))
        newest = frame.groupby("device_id")["ts"].transform("max")
        self.buffer = frame[frame["ts"] >= newest - self.keep_s].reset_index(drop=True)
        grid = to_grid(self.buffer, self.cfg.sensors, self.cfg.period_s)
        win, last = latest_windows(grid.values, self.cfg.window)
        end_ts = np.where(last >= 0, grid.ts[np.clip(last, 0, None)], -1)
        return grid.device_ids, win, end_ts

    def after_cycle(self) -> None:
        from shared.io import atomic_path

        with atomic_path(self.buffer_path) as tmp:
            self.buffer.to_parquet(tmp, index=False)
        self.reader.commit()

    def close(self) -> None:
        self.reader.close()


# ------------------------------------------------------------------------------------ scheduler
@dataclass(frozen=True)
class SchedulerConfig:
    interval_s: float = 900.0
    """Seconds between cycles (15 minutes)."""
    replay: bool = False
    """Advance a data clock by ``interval_s`` per cycle through the file instead of using wall-clock
    'now' (demo and tests: a simulated week plays back in minutes)."""
    replay_step_s: float | None = None
    """Data seconds per replayed cycle (default: the model's window stride, i.e. 15 minutes)."""


class Scheduler:
    def __init__(self, model: HealthModel, source, store: HistoryStore, cfg: SchedulerConfig):
        self.model, self.source, self.store, self.cfg = model, source, store, cfg

    def _until(self) -> float | None:
        if not self.cfg.replay:
            return time.time()
        clock = self.store.get_meta("replay_clock")
        if clock is not None:
            return float(clock) + self._replay_step()
        first, _ = self.source.time_range()
        return first + (self.model.cfg.window - 1) * self.model.cfg.period_s

    def _replay_step(self) -> float:
        return self.cfg.replay_step_s or self.model.cfg.stride * self.model.cfg.period_s

    def run_cycle(self) -> dict:
        """Score every device once and store the cycle; returns the cycle summary."""
        started = time.time()
        t0 = time.perf_counter()
        until = self._until()
        device_ids, windows, end_ts = self.source.latest(until)
        state, last_ts = self.store.load_state(device_ids)
        # Only windows newer than what this device was last scored on move its hysteresis.
        fresh = (end_ts > last_ts) & (end_ts >= 0) & (observed_fraction(windows) >= MIN_OBSERVED)
        idx = np.flatnonzero(fresh)
        cycle_id = self.store.last_cycle_id() + 1
        scores = pd.DataFrame(columns=["cycle_id", "device_id", "ts", "health", "alert", "contributing_sensors"])
        n_alerts = int(state.in_alert.sum())
        profile_rows: list[tuple] = []
        if len(idx):
            profiles = None
            if self.model.uses_profiles:
                profiles, profile_rows = self._update_profiles(device_ids[idx], windows[idx], end_ts[idx],
                                                               last_ts[idx])
            res = self.model.score_windows(windows[idx], profiles)
            low = (res["health"] < self.model.cfg.alert_below)[:, None]
            sub = HysteresisState(state.low_streak[idx], state.high_streak[idx], state.in_alert[idx])
            alerts, new = apply_hysteresis(low, self.model.cfg.enter_after, self.model.cfg.leave_after, sub)
            state.low_streak[idx], state.high_streak[idx], state.in_alert[idx] = (
                new.low_streak, new.high_streak, new.in_alert)
            last_ts[idx] = end_ts[idx]
            n_alerts = int(state.in_alert.sum())
            scores = pd.DataFrame({
                "cycle_id": cycle_id, "device_id": device_ids[idx], "ts": end_ts[idx].astype(np.int64),
                "health": np.round(res["health"].astype(float), 2), "alert": alerts[:, 0].astype(int),
                "contributing_sensors": contributing_sensors(res["z_device"], self.model.cfg.sensors)})
        state_df = pd.DataFrame({"device_id": device_ids[idx], "low_streak": state.low_streak[idx],
                                 "high_streak": state.high_streak[idx],
                                 "in_alert": state.in_alert[idx].astype(int), "last_ts": last_ts[idx]})
        report = getattr(self.source, "report", None)
        cycle = {"cycle_id": cycle_id, "started_at": started, "data_until": int(until or 0),
                 "n_devices": len(device_ids), "n_scored": len(idx), "n_alerts": n_alerts,
                 "seconds": round(time.perf_counter() - t0, 3),
                 "report": json.dumps(report.to_dict() if report else {})}
        meta = {"replay_clock": str(until)} if self.cfg.replay else {}
        self.store.save_cycle(cycle, scores, state_df, meta, profile_rows)
        self.source.after_cycle()
        log.info("cycle %d: %d devices, %d scored, %d in alert, %.2fs", cycle_id, cycle["n_devices"],
                 cycle["n_scored"], n_alerts, cycle["seconds"])
        return cycle

    def _update_profiles(self, device_ids, windows, end_ts, last_ts) -> tuple[np.ndarray, list[tuple]]:
        """Feed each device's steps not seen in an earlier cycle into its profile (while it is still
        commissioning); returns the profiles to score with and the rows to store for changed ones."""
        norm, cfg = self.model.normalizer, self.model.cfg
        prof = self.store.load_profiles(device_ids, norm.n_regimes, len(cfg.sensors))
        regimes = norm.regimes(windows)
        z = norm.transform(windows, regimes=regimes)
        step_ts = end_ts[:, None] - (cfg.window - 1 - np.arange(cfg.window))[None, :] * cfg.period_s
        changed = prof.update(z, regimes, ~np.isnan(windows), step_ts > last_ts[:, None], cfg.profile)
        rows = [(str(device_ids[i]), int(prof.taken[i]), prof.sums[i].tobytes(), prof.counts[i].tobytes())
                for i in np.flatnonzero(changed)]
        return prof.profiles(cfg.profile), rows

    def run(self, stop: threading.Event | None = None, max_cycles: int | None = None) -> int:
        """Cycle until ``stop`` is set (SIGTERM / Ctrl-C handlers set it) or ``max_cycles`` ran."""
        stop = stop or threading.Event()
        done = 0
        while not stop.is_set() and (max_cycles is None or done < max_cycles):
            began = time.monotonic()
            self.run_cycle()
            done += 1
            if max_cycles is not None and done >= max_cycles:
                break
            stop.wait(max(0.0, self.cfg.interval_s - (time.monotonic() - began)))
        return done
