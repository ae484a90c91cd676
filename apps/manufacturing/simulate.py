"""Synthetic fleet simulator (vectorised numpy: a 10,000-device day is a second or two).

Each machine runs through operating regimes (speed, load) that switch at random, with thermal lag,
a daily ambient cycle, per-machine manufacturing spread, slow healthy ageing, sensor noise and a
little missing data. A fraction of machines develops one fault whose severity ramps from onset to
failure; after failure the machine stops reporting. Fault kinds:

- ``bearing_wear``: vibration RMS and kurtosis (impulsiveness) rise, temperature creeps up;
- ``imbalance``: vibration rises with the square of speed, current slightly up;
- ``overheating``: temperature runs away, current up;
- ``sensor_drift``: one sensor's reading drifts (the machine is fine, the measurement is not);
- ``sensor_dropout``: one sensor intermittently reads 0 (dead), more and more often.

Everything here is SYNTHETIC; figures computed on it are labelled as such.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.signal import lfilter

from .data import SENSORS

FAULT_KINDS = ("bearing_wear", "imbalance", "overheating", "sensor_drift", "sensor_dropout")
# Operating points (rpm, load fraction) the machines switch between.
REGIMES = np.array([[1200.0, 0.35], [1800.0, 0.65], [3000.0, 0.5], [3000.0, 0.9]], dtype=np.float32)
DEFAULT_START = 1_767_225_600  # 2026-01-01T00:00:00Z, fixed so that a seed reproduces a fleet exactly


@dataclass(frozen=True)
class SimConfig:
    devices: int = 100
    days: float = 7.0
    seed: int = 0
    period_s: int = 300
    """Seconds between samples (5 minutes)."""
    fault_fraction: float = 0.4
    missing_rate: float = 0.003
    """Fraction of individual readings lost in transmission (NaN)."""
    mean_regime_hours: float = 6.0
    start_ts: int = DEFAULT_START


@dataclass
class Fleet:
    """Simulated fleet as dense arrays (device x time x sensor) plus per-device labels."""

    device_ids: np.ndarray        # (N,) str
    ts: np.ndarray                # (T,) int64 epoch seconds
    values: np.ndarray            # (N, T, S) float32, NaN = missing reading or machine down
    alive: np.ndarray             # (N, T) bool, False after failure
    labels: pd.DataFrame          # device_id, fault, fault_sensor, onset_ts, failure_ts
    sensors: tuple[str, ...] = SENSORS
    period_s: int = 300

    def to_frame(self) -> pd.DataFrame:
        """Wide records (the input contract), one row per device per timestamp while alive."""
        dev_idx, t_idx = np.nonzero(self.alive)
        frame = pd.DataFrame({"device_id": self.device_ids[dev_idx], "ts": self.ts[t_idx]})
        vals = self.values[dev_idx, t_idx]
        for j, name in enumerate(self.sensors):
            frame[name] = vals[:, j].astype(np.float64).round(4)
        return frame


def simulate_fleet(cfg: SimConfig) -> Fleet:
    rng = np.random.default_rng(cfg.seed)
    n = cfg.devices
    t = int(round(cfg.days * 86400 / cfg.period_s))
    ts = cfg.start_ts + np.arange(t, dtype=np.int64) * cfg.period_s
    hours = np.arange(t, dtype=np.float32) * cfg.period_s / 3600.0

    # --- operating regimes: switch with a constant hazard, then smooth (machines ramp, not jump)
    p_switch = cfg.period_s / (cfg.mean_regime_hours * 3600.0)
    segment = np.cumsum(rng.random((n, t)) < p_switch, axis=1)
    seg_regime = rng.integers(0, len(REGIMES), size=(n, segment.max() + 1))
    regime = np.take_along_axis(seg_regime, segment, axis=1)
    setpoint = REGIMES[regime]                                        # (N, T, 2)
    alpha = 1.0 - np.exp(-cfg.period_s / 600.0)                       # ~10 minute ramp
    setpoint = _smooth(setpoint, alpha)
    speed, load_set = setpoint[..., 0], setpoint[..., 1]

    def noise(scale):
        return rng.standard_normal((n, t), dtype=np.float32) * np.float32(scale)

    # --- per-machine spread and healthy ageing
    base_vib = rng.lognormal(0.0, 0.15, size=(n, 1)).astype(np.float32)
    temp_off = rng.normal(0.0, 2.5, size=(n, 1)).astype(np.float32)
    press_off = rng.normal(0.0, 0.2, size=(n, 1)).astype(np.float32)
    efficiency = rng.normal(1.0, 0.04, size=(n, 1)).astype(np.float32)
    ageing = (rng.uniform(0.0, 0.08, size=(n, 1)) * hours / max(hours[-1], 1.0)).astype(np.float32)

    rpm = speed * (1 + noise(0.004))
    load = np.clip(load_set + noise(0.03), 0.0, 1.2)
    current = 4.0 + 40.0 * load * (rpm / 1800.0) * efficiency + noise(0.6)
    # Temperature follows load with a ~45 minute thermal lag, plus the daily ambient swing.
    beta = 1.0 - np.exp(-cfg.period_s / 2700.0)
    heat = _smooth(25.0 * load, beta)
    ambient = 3.0 * np.sin(2 * np.pi * (hours - 9.0) / 24.0, dtype=np.float32)
    temperature = 30.0 + heat + ambient + temp_off + noise(0.5)
    pressure = 3.5 + 2.5 * load + press_off + noise(0.08)
    vib_level = base_vib * (0.4 + (rpm / 1800.0) ** 2) * (1 + 0.25 * load) * (1 + ageing)
    vibration_rms = vib_level * (1 + noise(0.05))
    kurtosis = 3.0 + np.abs(noise(0.25))
    # Healthy transients (a knock, a start-up): rare single-sample vibration bursts.
    burst = rng.random((n, t)) < 0.002
    vibration_rms = np.where(burst, vibration_rms * 1.8, vibration_rms)
    kurtosis = np.where(burst, kurtosis + 2.0, kurtosis)

    # --- faults
    faulty = rng.random(n) < cfg.fault_fraction
    kind = np.where(faulty, rng.integers(0, len(FAULT_KINDS), size=n), -1)
    span_h = hours[-1]
    failure_h = rng.uniform(0.45, 1.0, size=n) * span_h
    duration_h = np.minimum(rng.uniform(36.0, 96.0, size=n), failure_h - 0.1 * span_h)
    onset_h = failure_h - np.maximum(duration_h, 6.0)
    lin = np.clip((hours[None, :] - onset_h[:, None]) / (failure_h - onset_h)[:, None], 0.0, 1.0)
    lin = np.where(faulty[:, None], lin, 0.0).astype(np.float32)
    sev = lin ** 2                                               # faults accelerate towards failure
    sensor_of_fault = rng.choice([2, 3, 4], size=n)              # drift/dropout hit temp, pressure or current

    def on(k):
        return (kind == FAULT_KINDS.index(k))[:, None]

    vibration_rms = np.where(on("bearing_wear"), vibration_rms * (1 + 1.5 * sev), vibration_rms)
    impulses = rng.random((n, t)) < 0.3 * sev
    kurtosis = np.where(on("bearing_wear"), kurtosis + 6.0 * sev + 4.0 * impulses, kurtosis)
    temperature = np.where(on("bearing_wear"), temperature + 6.0 * sev, temperature)
    vibration_rms = np.where(on("imbalance"), vibration_rms + base_vib * 1.6 * sev * (rpm / 1800.0) ** 2,
                             vibration_rms)
    current = np.where(on("imbalance"), current * (1 + 0.05 * sev), current)
    temperature = np.where(on("overheating"), temperature + 25.0 * sev, temperature)
    current = np.where(on("overheating"), current * (1 + 0.08 * sev), current)

    values = np.stack([vibration_rms, kurtosis, temperature, pressure, current, rpm, load], axis=-1)
    values = values.astype(np.float32)
    idx = np.arange(n)
    typical = np.array([1.0, 3.0, 50.0, 5.0, 25.0, 2000.0, 0.6], dtype=np.float32)
    drift = on("sensor_drift")[:, 0]
    values[idx[drift], :, sensor_of_fault[drift]] += (0.3 * typical[sensor_of_fault[drift]])[:, None] * lin[drift]
    drop = on("sensor_dropout")[:, 0]
    dead = rng.random((int(drop.sum()), t)) < 0.9 * lin[drop]
    cur = values[idx[drop], :, sensor_of_fault[drop]]
    values[idx[drop], :, sensor_of_fault[drop]] = np.where(dead, 0.0, cur)

    # --- transmission losses, then the machine stops reporting after failure
    values[rng.random(values.shape) < cfg.missing_rate] = np.nan
    alive = ~(faulty[:, None] & (hours[None, :] >= failure_h[:, None]))
    values[~alive] = np.nan

    width = max(4, len(str(n - 1)))
    device_ids = np.array([f"M{i:0{width}d}" for i in range(n)])
    sec = lambda h: (cfg.start_ts + np.round(h * 3600)).astype(np.int64)
    labels = pd.DataFrame({
        "device_id": device_ids,
        "fault": np.where(faulty, np.array(FAULT_KINDS + ("",))[kind], "none"),
        "fault_sensor": np.where(np.isin(kind, [3, 4]), np.array(SENSORS)[sensor_of_fault], ""),
        "onset_ts": np.where(faulty, sec(onset_h), -1),
        "failure_ts": np.where(faulty, sec(failure_h), -1),
    })
    return Fleet(device_ids=device_ids, ts=ts, values=values, alive=alive, labels=labels,
                 period_s=cfg.period_s)


def _smooth(x: np.ndarray, alpha: float) -> np.ndarray:
    """First-order lag along time (axis 1), started at the first value so there is no start-up ramp."""
    first = x[:, :1]
    return (lfilter([alpha], [1, alpha - 1], x - first, axis=1) + first).astype(np.float32)


def labels_path_for(out: str) -> str:
    """``fleet.parquet`` -> ``fleet.labels.csv`` (labels travel beside the data, never inside it)."""
    from pathlib import Path

    p = Path(out)
    return str(p.with_name(p.name[: -len(p.suffix)] + ".labels.csv"))
