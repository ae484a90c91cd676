"""Health 0-100 from embedding distance, alert hysteresis, and the sensors behind a low score."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

HEALTH_ALERT_BELOW = 50.0


@dataclass(frozen=True)
class Calibration:
    """Distance quantiles on held-out NORMAL windows: the median maps to health 100, the 99.9th
    percentile to 50 (the default alert line), and the score halves again every further step."""

    d_median: float
    d_p999: float
    k: int = 10

    def health(self, distance: np.ndarray) -> np.ndarray:
        scale = max(self.d_p999 - self.d_median, 1e-6)
        excess = np.maximum(0.0, distance - self.d_median) / scale
        return (100.0 * np.power(0.5, excess)).astype(np.float32)

    def distance_for_health(self, health: float) -> float:
        """Inverse of ``health`` (for tuning thresholds on distances)."""
        return self.d_median + (self.d_p999 - self.d_median) * np.log2(100.0 / health)


def knn_distance(emb: np.ndarray, reference: np.ndarray, k: int = 10, chunk: int = 16384) -> np.ndarray:
    """Cosine distance to the k nearest normal embeddings (unit vectors), averaged. kNN rather than
    one centroid because normal operation spans several regimes, i.e. several clusters."""
    out = np.empty(len(emb), dtype=np.float32)
    k = min(k, len(reference))
    for i in range(0, len(emb), chunk):
        sim = emb[i:i + chunk] @ reference.T
        top = np.partition(sim, -k, axis=1)[:, -k:]
        out[i:i + chunk] = 1.0 - top.mean(axis=1)
    return out


def calibrate(normal_distances: np.ndarray, k: int) -> Calibration:
    return Calibration(float(np.median(normal_distances)), float(np.quantile(normal_distances, 0.999)), k)


@dataclass
class HysteresisState:
    """Per-device alert state carried between scoring cycles (persisted by the scheduler)."""

    low_streak: np.ndarray     # consecutive windows below the line
    high_streak: np.ndarray    # consecutive windows at or above it
    in_alert: np.ndarray       # bool

    @classmethod
    def fresh(cls, n: int) -> HysteresisState:
        return cls(np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n, bool))


def apply_hysteresis(low: np.ndarray, enter_after: int = 3, leave_after: int = 4,
                     state: HysteresisState | None = None, valid: np.ndarray | None = None
                     ) -> tuple[np.ndarray, HysteresisState]:
    """``low`` (N, K): window below the alert line. An alert starts after ``enter_after`` consecutive
    low windows and ends after ``leave_after`` consecutive healthy ones, so one noisy window neither
    pages anyone nor silences a real alert. Windows with ``valid`` False (no data) leave the state as
    it is. Vectorised over devices, sequential over time."""
    n, k = low.shape
    st = state or HysteresisState.fresh(n)
    low_s, high_s, in_alert = st.low_streak.copy(), st.high_streak.copy(), st.in_alert.copy()
    alerts = np.zeros((n, k), dtype=bool)
    for j in range(k):
        lo = low[:, j]
        ok = np.ones(n, bool) if valid is None else valid[:, j]
        low_s = np.where(ok, np.where(lo, low_s + 1, 0), low_s)
        high_s = np.where(ok, np.where(lo, 0, high_s + 1), high_s)
        in_alert = np.where(ok & ~in_alert & (low_s >= enter_after), True, in_alert)
        in_alert = np.where(ok & in_alert & (high_s >= leave_after), False, in_alert)
        alerts[:, j] = in_alert
    return alerts, HysteresisState(low_s, high_s, in_alert)


def contributing_sensors(z: np.ndarray, sensors, top: int = 3, min_abs_z: float = 2.0) -> list[str]:
    """Per window, the sensors furthest from their regime's normal over the window's second half,
    e.g. ``"temperature(+4.2);current(+2.1)"``. A plain per-sensor z-score: cheap, and an operator can
    check it against the raw trace, which gradient attributions of the encoder would not allow."""
    half = z[..., z.shape[-2] // 2:, :]
    mean_z = half.mean(axis=-2)                                  # (M, S)
    order = np.argsort(-np.abs(mean_z), axis=1)[:, :top]
    names = np.asarray(sensors)
    out = []
    for row, idx in zip(mean_z, order):
        parts = [f"{names[i]}({row[i]:+.1f})" for i in idx if abs(row[i]) >= min_abs_z]
        out.append(";".join(parts))
    return out
