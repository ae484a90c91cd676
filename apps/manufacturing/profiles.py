"""Per-device profiles: each machine's own normal, learnt from its first day of data.

Per-regime normalisation removes the operating point but not the machine: one pump's pressure sits
+2.8 sigma above the fleet's in every regime because of how it was mounted and calibrated, and that
is its normal. A fleet-wide model sees such a machine permanently near the edge of normal operation,
and its ordinary variation then trips alerts (in the held-out SYNTHETIC fleet one such machine raised
5 of the model's 8 false alarms). So every machine gets a profile: the mean per-regime z-score of
each sensor over its commissioning period (its first ``steps`` observed time steps), per regime,
shrunk towards the machine's all-regime mean while a regime has few samples, and that towards 0
(the fleet's normal) while the machine itself is new. The model then sees each machine's deviation
from ITS OWN normal, rescaled by the fleet's within-machine spread (``fit_scale``).

Causal everywhere: a window is corrected with the profile as it stood at the window's end, exactly
as the scheduler, which learns the profile cycle by cycle (``ProfileState``), can know it. A fault
already present during commissioning would be learnt as normal; the simulator never starts one that
early, a real plant would commission a machine after an inspection.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ProfileConfig:
    steps: int = 288
    """Commissioning length in observed time steps (288 x 5 minutes = the first 24 h); 0 = off."""
    prior_steps: float = 36.0
    """Shrinkage: a mean over n steps is trusted n / (n + prior_steps) (3 h of data = half)."""


def offsets_from_sums(sums: np.ndarray, counts: np.ndarray, prior: float) -> np.ndarray:
    """Accumulated z sums / counts (..., R, S) -> a profile (..., 2, R, S): [offset, unknown share].

    The offset is shrunk as described above; the unknown share is the weight still on the fleet's
    normal (0), from 1 for a new device to ~0.1 after commissioning. ``correct`` widens the scale by
    it, because an offset not yet known is still part of the (fleet-wide) spread."""
    device_n = counts.sum(-2, keepdims=True)
    device_mean = sums.sum(-2, keepdims=True) / (device_n + prior)
    offset = (sums + prior * device_mean) / (counts + prior)
    unknown = (prior / (counts + prior)) * (prior / (device_n + prior))
    return np.stack([offset, np.broadcast_to(unknown, offset.shape)], axis=-3).astype(np.float32)


def _contributions(z: np.ndarray, regimes: np.ndarray, observed: np.ndarray, n_regimes: int,
                   take: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per step (..., R, S) z sums and counts for the steps in ``take`` (..., T)."""
    onehot = (regimes[..., None] == np.arange(n_regimes)) & take[..., None]        # (..., T, R)
    obs = observed & take[..., None]                                                # (..., T, S)
    sums = onehot[..., :, None] * np.where(obs, z, 0.0)[..., None, :]               # (..., T, R, S)
    counts = onehot[..., :, None] & obs[..., None, :]
    return sums.astype(np.float32), counts.astype(np.float32)


def causal_offsets(z: np.ndarray, regimes: np.ndarray, observed: np.ndarray, ends: np.ndarray,
                   n_regimes: int, cfg: ProfileConfig) -> np.ndarray:
    """Profiles over whole device histories: ``z`` (N, T, S) per-regime z-scores, ``regimes`` (N, T),
    ``observed`` (N, T, S) reading present; returns profiles (N, K, 2, R, S) as they stood at each window
    end step ``ends`` (K,). A step counts towards commissioning if it carries any reading and is
    among the device's first ``cfg.steps`` such steps."""
    any_obs = observed.any(-1)
    take = any_obs & (np.cumsum(any_obs, axis=1) <= cfg.steps)
    last = int(np.flatnonzero(take.any(0))[-1]) + 1 if take.any() else 0
    sums = np.zeros((*z.shape[:1], len(ends), n_regimes, z.shape[-1]), np.float32)
    counts = np.zeros_like(sums)
    if last:
        # Only the commissioning span needs a running sum; after it each profile stays as it is.
        s, c = _contributions(z[:, :last], regimes[:, :last], observed[:, :last], n_regimes, take[:, :last])
        s, c = np.cumsum(s, axis=1), np.cumsum(c, axis=1)
        at = np.minimum(ends, last - 1)
        sums, counts = s[:, at], c[:, at]
    return offsets_from_sums(sums, counts, cfg.prior_steps)


def correct(z: np.ndarray, regimes: np.ndarray, observed: np.ndarray, profiles: np.ndarray,
            scale: np.ndarray, clip: float = 20.0) -> np.ndarray:
    """z (M, W, S) -> deviation from the device's own normal, (z - offset[regime]) / scale';
    ``profiles`` (M, 2, R, S), one per window. The scale moves from 1 (the fleet's spread, a new
    device) to the within-machine spread ``scale`` (R, S) as the profile fills:
    scale'^2 = scale^2 + unknown * (1 - scale^2). Missing readings stay 0 (= the device's normal)."""
    idx = regimes[..., None].astype(np.int64)
    off = np.take_along_axis(profiles[:, 0], idx, axis=1)                           # (M, W, S)
    unknown = np.take_along_axis(profiles[:, 1], idx, axis=1)
    within = scale[regimes] ** 2
    out = np.where(observed, (z - off) / np.sqrt(within + unknown * np.clip(1.0 - within, 0.0, None)), 0.0)
    return np.clip(out, -clip, clip).astype(np.float32)


def fit_scale(z: np.ndarray, regimes: np.ndarray, observed: np.ndarray, offsets: np.ndarray,
              n_regimes: int) -> np.ndarray:
    """Within-machine spread (R, S): the std of z minus the device's profile over normal windows.
    Smaller than 1 where machines differ more from each other than from themselves."""
    off = np.take_along_axis(offsets, regimes[..., None].astype(np.int64), axis=1)
    resid = np.where(observed, z - off, np.nan)
    scale = np.stack([np.nanstd(resid[regimes == r], axis=0) for r in range(n_regimes)])
    return np.clip(np.nan_to_num(scale, nan=1.0), 0.05, None).astype(np.float32)


@dataclass
class ProfileState:
    """Running profiles for the scheduler: z sums / counts (N, R, S) and observed steps taken (N,)."""

    sums: np.ndarray
    counts: np.ndarray
    taken: np.ndarray

    @classmethod
    def fresh(cls, n: int, n_regimes: int, n_sensors: int) -> ProfileState:
        return cls(np.zeros((n, n_regimes, n_sensors), np.float32),
                   np.zeros((n, n_regimes, n_sensors), np.float32), np.zeros(n, np.int64))

    def update(self, z: np.ndarray, regimes: np.ndarray, observed: np.ndarray, new: np.ndarray,
               cfg: ProfileConfig) -> np.ndarray:
        """Add each window's NEW steps (``new`` (N, W): not seen in an earlier cycle) while the
        device is still commissioning; returns which devices changed."""
        n_reg = self.sums.shape[1]
        any_obs = observed.any(-1) & new
        changed = np.zeros(len(self.taken), bool)
        for j in range(z.shape[1]):     # step by step: the commissioning count must stop exactly
            take = any_obs[:, j] & (self.taken < cfg.steps)
            if not take.any():
                continue
            s, c = _contributions(z[:, j:j + 1], regimes[:, j:j + 1], observed[:, j:j + 1], n_reg,
                                  take[:, None])
            self.sums += s[:, 0]
            self.counts += c[:, 0]
            self.taken += take
            changed |= take
        return changed

    def profiles(self, cfg: ProfileConfig) -> np.ndarray:
        return offsets_from_sums(self.sums, self.counts, cfg.prior_steps)
