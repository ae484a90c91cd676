"""From records to model input: a regular per-device time grid, sliding windows, per-regime
normalisation, the training augmentations and the synthetic faults used as contrastive negatives.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

MIN_OBSERVED = 0.5
"""A window is scored only if at least half of its time steps carry a reading (else it is 'no data')."""


@dataclass
class Grid:
    """Records snapped onto a regular time grid: values[device, step, sensor] (NaN = no reading)."""

    device_ids: np.ndarray   # (N,) str
    ts: np.ndarray           # (T,) int64 epoch seconds of each grid step
    values: np.ndarray       # (N, T, S) float32
    sensors: tuple[str, ...]
    period_s: int


def to_grid(frame: pd.DataFrame, sensors, period_s: int, *, t0: float | None = None) -> Grid:
    """Snap validated records (see ``data.validate_frame``) onto a ``period_s`` grid. Several records
    in one step keep the last; steps without a record stay NaN."""
    sensors = tuple(sensors)
    device_codes, device_ids = pd.factorize(frame["device_id"], sort=True)
    ts = frame["ts"].to_numpy(dtype=float)
    if t0 is None:
        t0 = float(np.floor(ts.min() / period_s) * period_s) if len(ts) else 0.0
    step = np.round((ts - t0) / period_s).astype(np.int64)
    keep = step >= 0
    n_steps = int(step.max()) + 1 if len(step) else 0
    values = np.full((len(device_ids), n_steps, len(sensors)), np.nan, dtype=np.float32)
    cols = np.stack([frame[s].to_numpy(dtype=np.float32) if s in frame else
                     np.full(len(frame), np.nan, np.float32) for s in sensors], axis=1)
    values[device_codes[keep], step[keep]] = cols[keep]
    grid_ts = (t0 + np.arange(n_steps) * period_s).astype(np.int64)
    return Grid(np.asarray(device_ids, dtype=str), grid_ts, values, sensors, period_s)


def sliding_windows(values: np.ndarray, window: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, T, S) -> windows (N, K, window, S) (a view, no copy) and the end step index of each (K,)."""
    n, t, s = values.shape
    if t < window:
        return np.empty((n, 0, window, s), values.dtype), np.empty(0, dtype=np.int64)
    view = np.lib.stride_tricks.sliding_window_view(values, window, axis=1)  # (N, T-w+1, S, w)
    ends = np.arange(window - 1, t, stride)
    return view[:, ends - window + 1].transpose(0, 1, 3, 2), ends


def latest_windows(values: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """The most recent full window per device, ending at that device's last observed step.

    Returns windows (N, window, S) and the end step per device (-1 where a device has no data)."""
    n, t, s = values.shape
    observed = ~np.isnan(values).all(axis=2)                            # (N, T)
    last = np.where(observed.any(axis=1), t - 1 - np.argmax(observed[:, ::-1], axis=1), -1)
    padded = np.concatenate([np.full((n, window - 1, s), np.nan, values.dtype), values], axis=1)
    idx = np.clip(last, 0, None)[:, None] + np.arange(window)[None, :]  # index into padded
    out = np.take_along_axis(padded, idx[:, :, None], axis=1)
    return out, last


def observed_fraction(windows: np.ndarray) -> np.ndarray:
    """Share of time steps with at least one reading, per window."""
    return (~np.isnan(windows).all(axis=-1)).mean(axis=-1)


class RegimeNormalizer:
    """Per-regime z-scores. Regimes are found with k-means on the regime sensors (speed, load), per
    time step, on normal operation, so a window that spans a speed change is normalised step by step.

    Each sensor is then standardised with its mean / std in that regime, which removes the operating
    point (a machine at 3000 rpm vibrates more than at 1200 and that is not a fault)."""

    def __init__(self, sensors, regime_sensors, n_regimes: int = 4, seed: int = 0):
        self.sensors = tuple(sensors)
        self.regime_idx = [self.sensors.index(s) for s in regime_sensors if s in self.sensors]
        self.n_regimes = n_regimes if self.regime_idx else 1
        self.seed = seed
        self.centers = self.r_mean = self.r_std = self.mean = self.std = None

    def fit(self, samples: np.ndarray) -> RegimeNormalizer:
        """``samples``: (M, S) raw readings from normal operation."""
        samples = samples[~np.isnan(samples).all(axis=1)]
        self.mean = np.nanmean(samples, axis=0).astype(np.float32)
        self.std = (np.nanstd(samples, axis=0) + 1e-6).astype(np.float32)
        regimes = np.zeros(len(samples), dtype=np.int64)
        if self.regime_idx:
            from sklearn.cluster import KMeans

            feats = self._regime_features(samples)
            km = KMeans(n_clusters=self.n_regimes, n_init=4, random_state=self.seed)
            regimes = km.fit_predict(feats[np.random.default_rng(self.seed).permutation(len(feats))[:50_000]]
                                     if len(feats) > 50_000 else feats)
            self.centers = km.cluster_centers_.astype(np.float32)
            regimes = self._assign(feats)
        self.r_mean = np.stack([np.nanmean(samples[regimes == r], axis=0) for r in range(self.n_regimes)])
        self.r_std = np.stack([np.nanstd(samples[regimes == r], axis=0) for r in range(self.n_regimes)])
        # A sensor with almost no spread in a regime would turn tiny noise into huge z-scores.
        self.r_std = np.maximum(self.r_std, 0.05 * self.std[None, :]).astype(np.float32)
        self.r_mean = np.nan_to_num(self.r_mean.astype(np.float32))
        return self

    def _regime_features(self, samples: np.ndarray) -> np.ndarray:
        feats = samples[..., self.regime_idx]
        mean, std = self.mean[self.regime_idx], self.std[self.regime_idx]
        return np.nan_to_num((feats - mean) / std).astype(np.float32)

    def _assign(self, feats: np.ndarray) -> np.ndarray:
        d = ((feats[..., None, :] - self.centers) ** 2).sum(-1)
        return d.argmin(-1)

    def regimes(self, windows: np.ndarray) -> np.ndarray:
        """Raw (..., W, S) -> the regime of every time step (..., W)."""
        if not self.regime_idx:
            return np.zeros(windows.shape[:-1], dtype=np.int64)
        # Fill a missing regime reading from the previous step so the regime stays put.
        return self._assign(self._regime_features(_ffill_time(windows)))

    def transform(self, windows: np.ndarray, clip: float = 20.0, regimes: np.ndarray | None = None) -> np.ndarray:
        """Raw (..., W, S) -> z (..., W, S) float32; missing readings become 0 (the regime mean)."""
        if regimes is None:
            regimes = self.regimes(windows)
        z = (windows - self.r_mean[regimes]) / self.r_std[regimes]
        return np.clip(np.nan_to_num(z, nan=0.0), -clip, clip).astype(np.float32)

    def state(self) -> dict:
        return {"sensors": list(self.sensors), "regime_idx": self.regime_idx, "n_regimes": self.n_regimes,
                "centers": self.centers, "r_mean": self.r_mean, "r_std": self.r_std,
                "mean": self.mean, "std": self.std}

    @classmethod
    def from_state(cls, st: dict) -> RegimeNormalizer:
        obj = cls.__new__(cls)
        obj.sensors = tuple(st["sensors"])
        obj.regime_idx = list(st["regime_idx"])
        obj.n_regimes = int(st["n_regimes"])
        obj.seed = 0
        for key in ("centers", "r_mean", "r_std", "mean", "std"):
            setattr(obj, key, None if st[key] is None else np.asarray(st[key], dtype=np.float32))
        return obj


def _ffill_time(windows: np.ndarray) -> np.ndarray:
    """Forward-fill NaN along the time axis (-2), vectorised (pandas-free)."""
    x = windows
    mask = np.isnan(x)
    if not mask.any():
        return x
    t = x.shape[-2]
    idx = np.where(~mask, np.arange(t)[:, None], 0)
    np.maximum.accumulate(idx, axis=-2, out=idx)
    return np.take_along_axis(x, idx, axis=-2)


# ------------------------------------------------------------------ augmentations (positive views)
def augment(x, generator=None, offset_scale: float = 0.5):
    """Jitter, per-sensor scaling, time masking and random crop (resized back) on a batch (B, W, S)
    of normalised windows: views that must map close to the original (torch tensors)."""
    import torch
    import torch.nn.functional as F

    b, w, s = x.shape
    g = generator
    x = x * (1 + 0.1 * torch.randn(b, 1, s, generator=g)) + 0.1 * torch.randn(b, w, s, generator=g)
    # A small constant offset per sensor: machines of one type differ a little (mounting, calibration),
    # and that spread is normal; faults (the negatives) move a sensor by 2 sigma or more.
    x = x + offset_scale * torch.randn(b, 1, s, generator=g)
    if w < 4:  # a single reading (e.g. the Shuttle rows): nothing to mask or crop in time
        return x
    # time masking: blank a span of 10-20 % (as a dropped packet would)
    span = max(1, int(w * 0.15))
    start = torch.randint(0, w - span + 1, (b,), generator=g)
    steps = torch.arange(w)[None, :]
    masked = (steps >= start[:, None]) & (steps < start[:, None] + span)
    apply = torch.rand(b, generator=g) < 0.5
    x = torch.where((masked & apply[:, None])[:, :, None], torch.zeros_like(x), x)
    # crop 80-100 % of the window and stretch it back to full length
    keep = int(w * (0.8 + 0.2 * torch.rand(1, generator=g).item()))
    if keep < w:
        offset = int(torch.randint(0, w - keep + 1, (1,), generator=g))
        x = F.interpolate(x[:, offset:offset + keep].transpose(1, 2), size=w, mode="linear",
                          align_corners=True).transpose(1, 2)
    return x


# --------------------------------------------------------------- synthetic faults (negatives)
FAULT_TRANSFORMS = ("level_shift", "drift", "spikes", "noise_burst", "stuck", "decorrelate")


def synthesize_faults(z: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Turn normal normalised windows (B, W, S) into fault-like ones. Generic by design (a random
    sensor, a random magnitude) so nothing here knows the simulator's fault physics:
    level shift, ramp (drift / wear), impulsive spikes, variance burst, stuck-at value (dead
    sensor), and a sensor that stops following the others (decorrelation)."""
    z = z.copy()
    b, w, s = z.shape
    kind = rng.integers(0, len(FAULT_TRANSFORMS), size=b)
    sensor = rng.integers(0, s, size=b)
    second = rng.random(b) < 0.3                           # some faults show on two sensors
    sensor2 = rng.integers(0, s, size=b)
    mag = rng.uniform(2.0, 8.0, size=b) * rng.choice([-1.0, 1.0], size=b)
    ramp = np.linspace(0.0, 1.0, w, dtype=np.float32)
    rows = np.arange(b)
    for targets in (sensor, np.where(second, sensor2, -1)):
        sel = targets >= 0
        r, c = rows[sel], targets[sel]
        k, m = kind[sel], mag[sel]
        col = z[r, :, c]                                   # (n, W)
        col = np.where((k == 0)[:, None], col + m[:, None], col)
        col = np.where((k == 1)[:, None], col + m[:, None] * ramp[None, :] * 1.5, col)
        spikes = rng.random((len(r), w)) < 0.25
        col = np.where((k == 2)[:, None] & spikes, col + np.abs(m)[:, None] * 1.2, col)
        col = np.where((k == 3)[:, None], col * (1.0 + np.abs(m)[:, None] * 0.5), col)
        stuck_from = rng.integers(0, max(1, w // 2), size=len(r))
        stuck = np.arange(w)[None, :] >= stuck_from[:, None]
        col = np.where((k == 4)[:, None] & stuck, -np.abs(m)[:, None], col)
        shuffled = rng.permuted(col, axis=1)
        col = np.where((k == 5)[:, None], shuffled + m[:, None] * 0.5, col)
        z[r, :, c] = col
    return z.astype(np.float32)
