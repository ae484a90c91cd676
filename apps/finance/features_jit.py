"""Compiled per-row state updates for ``features.FeatureState`` (numba), same results as its numpy path.

The numpy path (``FeatureState._account_steps`` / ``_device_steps``) processes a micro-batch as a
wavefront: step k handles the k-th occurrence of every key. Its cost is the number of steps, i.e. the
busiest key's count in the batch (a card-testing burst or a heavy account put 300+ occurrences of one key
into a 5,000-row batch), each step paying ~60 numpy calls for a handful of rows. Here every row is
visited once, in the same per-key time order, by one compiled loop: the same formulas, the same state,
a small constant cost per row.

The numpy path stays the reference: ``tests/finance/test_scoring.py`` checks that both give the same
features and state over many batches. ``FEATURES`` names the columns this kernel writes; when
``features.FEATURE_NAMES`` changes without this file, ``FeatureState`` uses the numpy path (and logs it)
until the kernel is brought in line.
"""
from __future__ import annotations

import math

import numpy as np

from apps.finance.features import _NEVER, FEATURE_NAMES, TAU_1H, TAU_5M

try:
    from numba import njit
except ImportError:  # pragma: no cover - numba is in the finance extra; without it numpy steps run
    njit = None

#: the feature set this kernel implements (must equal features.FEATURE_NAMES to be used)
FEATURES = (
    "log_amount", "type", "channel", "mcc", "log_acct_seen", "log_secs_since_last", "acct_count_5m",
    "acct_count_1h", "amount_zscore", "log_outflow_1h", "country_changed", "foreign", "fast_country_change",
    "new_device", "device_account_switches_1h", "device_count_1h", "log_device_seen", "log_inflow_1h",
    "cashout_after_transfer", "hour", "new_account",
    "cp_log_seen", "cp_log_received", "log_outflow_ratio", "log_received",
)
AVAILABLE = njit is not None and FEATURES == FEATURE_NAMES


def _decay(value, last, now, tau):
    # features._decay for one value: dt = inf for a key never seen (NaN last), else max(now - last, 0)
    dt = math.inf if math.isnan(last) else max(now - last, 0.0)
    return value * math.exp(-dt / tau)


def _account_rows(order, X, acct, dev, ts, log_amt, amount, ttype, country, last_ts, seen, mean, var, c5m,
                  c1h, out1h, in1h, in_ts, last_country, home_country, last_device, first_device,
                  last_type, received):
    for r in order:
        a, t = acct[r], ts[r]
        known = seen[a] > 0
        since = t - last_ts[a] if known else _NEVER
        c5 = decay(c5m[a], last_ts[a], t, TAU_5M)
        c1 = decay(c1h[a], last_ts[a], t, TAU_1H)
        out1 = decay(out1h[a], last_ts[a], t, TAU_1H)
        in1 = decay(in1h[a], in_ts[a], t, TAU_1H)
        changed = known and last_country[a] != country[r]
        X[r, 4] = math.log1p(seen[a])
        X[r, 5] = math.log1p(max(since, 0.0))
        X[r, 6] = c5
        X[r, 7] = c1
        X[r, 8] = (log_amt[r] - mean[a]) / math.sqrt(var[a] + 0.25) if known else 0.0
        X[r, 9] = math.log1p(out1)
        X[r, 10] = changed
        X[r, 11] = known and home_country[a] != country[r]
        X[r, 12] = changed and since < 6 * 3600
        X[r, 13] = known and last_device[a] != dev[r] and first_device[a] != dev[r]
        X[r, 17] = math.log1p(in1)
        X[r, 18] = ttype[r] == 2 and last_type[a] == 1 and since < 3600
        X[r, 20] = not known
        X[r, 23] = math.log1p(out1 + amount[r]) - mean[a] if known else 0.0
        X[r, 24] = math.log1p(received[a])
        # update (same order of operations as the numpy path)
        alpha = max(0.05, 1.0 / (seen[a] + 1.0))
        delta = log_amt[r] - mean[a]
        mean[a] += alpha * delta
        var[a] = (1 - alpha) * (var[a] + alpha * delta * delta) if known else 1.0
        c5m[a], c1h[a] = c5 + 1.0, c1 + 1.0
        out1h[a] = out1 + (amount[r] if ttype[r] != 3 else 0.0)  # CASH_IN is the only inflow it initiates
        in1h[a], in_ts[a] = in1, t
        if not known:
            home_country[a], first_device[a] = country[r], dev[r]
        last_country[a], last_device[a], last_type[a] = country[r], dev[r], ttype[r]
        last_ts[a] = t
        seen[a] += 1


def _device_rows(order, X, dev, acct, ts, last_ts, seen, c1h, switches1h, last_account):
    for r in order:
        d, t = dev[r], ts[r]
        c1 = decay(c1h[d], last_ts[d], t, TAU_1H)
        sw = decay(switches1h[d], last_ts[d], t, TAU_1H)
        switch = 1.0 if (last_account[d] >= 0 and last_account[d] != acct[r]) else 0.0
        X[r, 14] = sw + switch
        X[r, 15] = c1
        X[r, 16] = math.log1p(seen[d])
        c1h[d], switches1h[d] = c1 + 1.0, sw + switch
        last_account[d], last_ts[d] = acct[r], t
        seen[d] += 1


if njit is not None:
    decay = njit(cache=True, inline="always")(_decay)
    _account_kernel = njit(cache=True)(_account_rows)
    _device_kernel = njit(cache=True)(_device_rows)
else:  # pragma: no cover
    decay = _decay


def account_steps(s, X, acct, dev, ts, log_amt, amount, ttype, country) -> None:
    """``FeatureState._account_steps`` with state ``s`` (an ``AccountState``), compiled."""
    order = np.lexsort((ts, acct))  # per account in time order, ties in input order (as the wavefront)
    _account_kernel(order, X, acct, dev, ts, log_amt, amount, ttype, country, s.last_ts, s.seen, s.mean,
                    s.var, s.c5m, s.c1h, s.out1h, s.in1h, s.in_ts, s.last_country, s.home_country,
                    s.last_device, s.first_device, s.last_type, s.received)


def device_steps(s, X, dev, acct, ts) -> None:
    """``FeatureState._device_steps`` with state ``s`` (a ``DeviceState``), compiled."""
    order = np.lexsort((ts, dev))
    _device_kernel(order, X, dev, acct, ts, s.last_ts, s.seen, s.c1h, s.switches1h, s.last_account)
