"""The baselines the contrastive model is compared with (same windows, same hysteresis).

Both score a window by its second half (the most recent hour), one number per window, higher = worse,
so that one threshold per method can be tuned to a target recall:

- ``static_threshold_scores``: classic per-sensor static limits, mean +- c * std of each sensor over
  all normal operation, regardless of regime. The score is the largest |deviation| / std over the
  sensors, so the alert "score > c" is exactly "some sensor outside its static band".
- ``zscore_scores``: per-regime z-scores (the same normalisation the model sees), largest |mean z|
  over the sensors: a strong, regime-aware statistical baseline.
"""
from __future__ import annotations

import warnings

import numpy as np

from .windows import RegimeNormalizer


def _recent_mean(x: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices -> NaN, handled below
        return np.nanmean(x[..., x.shape[-2] // 2:, :], axis=-2)


def static_threshold_scores(raw_windows: np.ndarray, normalizer: RegimeNormalizer) -> np.ndarray:
    dev = np.abs(_recent_mean(raw_windows) - normalizer.mean) / normalizer.std
    return np.nan_to_num(dev, nan=0.0).max(axis=-1)


def zscore_scores(z_windows: np.ndarray) -> np.ndarray:
    return np.abs(_recent_mean(z_windows)).max(axis=-1)
