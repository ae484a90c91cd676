"""Per-account and per-device state, updated in vectorised micro-batches.

The stream is scored in micro-batches; within a batch one account may appear several times and each
occurrence must see the state left by the previous one (a card-testing burst is only visible that way).
Instead of a Python loop per message, rows are grouped by key and processed as a *wavefront*: step k
handles the k-th occurrence of every key in the batch at once, so the number of numpy steps is the
largest per-key count in the batch (a handful), not the batch size.

Velocities are exponentially decayed counters (a sliding window without storing history): after a gap
``dt`` a counter is multiplied by ``exp(-dt/tau)``. Balance trajectory is tracked as decayed outflow and
inflow sums. Cross-account effects (money received by a counterparty) are applied after the batch, so
they are visible from the next batch on; that is the one place where batch size matters.
"""
from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass, field, fields
from functools import cache, partial
from itertools import repeat
from typing import ClassVar

import numpy as np

from apps.finance.data import CHANNELS, COUNTRIES, MCCS, TX_TYPES

log = logging.getLogger(__name__)

FEATURE_NAMES = (
    "log_amount", "type", "channel", "mcc", "log_acct_seen", "log_secs_since_last", "acct_count_5m",
    "acct_count_1h", "amount_zscore", "log_outflow_1h", "country_changed", "foreign", "fast_country_change",
    "new_device", "device_account_switches_1h", "device_count_1h", "log_device_seen", "log_inflow_1h",
    "cashout_after_transfer", "hour", "new_account",
    # appended (existing column indices stay put): recipient history for transfers, hour's outflow
    # relative to the account's usual amount (a drain), transfers the sender itself has received
    "cp_log_seen", "cp_log_received", "log_outflow_ratio", "log_received",
)
TAU_5M, TAU_1H = 300.0, 3600.0
_NEVER = 1e7  # "seconds since last" for a first transaction

_TYPE_CODE = {t: i for i, t in enumerate(TX_TYPES)}
_CHANNEL_CODE = {c: i for i, c in enumerate(CHANNELS)}
_MCC_CODE = {m: i for i, m in enumerate(MCCS)}
_COUNTRY_CODE = {c: i for i, c in enumerate(COUNTRIES)}


# String columns arrive as numpy arrays (generated data sets, training) or as plain lists of str (the
# stream: pipeline.to_columns). For lists, a C-level ``map(dict.get)`` per row is several times cheaper
# than building a numpy unicode array and sorting it with ``np.unique``.

def encode(values: np.ndarray | list[str], table: dict[str, int], unknown: int) -> np.ndarray:
    """Map a string column to small ints (``unknown`` for values not in ``table``)."""
    if isinstance(values, list):
        return np.fromiter(map(table.get, values, repeat(unknown)), np.int64, len(values))
    uniq, inverse = np.unique(values, return_inverse=True)
    return np.fromiter((table.get(u, unknown) for u in uniq.tolist()), np.int64, len(uniq))[inverse]


def take(values: np.ndarray | list[str], mask: np.ndarray) -> np.ndarray | list[str]:
    """The rows of a string column where ``mask`` is set, keeping the column's kind."""
    if isinstance(values, list):
        return [values[i] for i in np.flatnonzero(mask).tolist()]
    return np.asarray(values)[mask]


class KeyIndex:
    """Stable string -> dense int ids, so per-key state lives in flat numpy arrays."""

    def __init__(self):
        self.ids: dict[str, int] = {}

    def lookup(self, keys: np.ndarray | list[str]) -> np.ndarray:
        if isinstance(keys, list):
            out = list(map(self.ids.get, keys))
            if None in out:  # keys seen for the first time get the next ids
                ids = self.ids
                out = [ids.setdefault(k, len(ids)) if v is None else v for k, v in zip(keys, out)]
            return np.fromiter(out, np.int64, len(out))
        uniq, inverse = np.unique(keys, return_inverse=True)
        ids = self.ids
        out = np.fromiter((ids.setdefault(k, len(ids)) for k in uniq.tolist()), np.int64, len(uniq))
        return out[inverse]

    def __len__(self) -> int:
        return len(self.ids)


def _grow(arr: np.ndarray, size: int, fill) -> np.ndarray:
    if size <= len(arr):
        return arr
    new = np.full(max(size, 2 * len(arr), 1024), fill, dtype=arr.dtype)
    new[: len(arr)] = arr
    return new


def _wavefront(keys: np.ndarray, ts: np.ndarray):
    """Yield row-index arrays: step k holds the k-th occurrence (in time order) of every key."""
    order = np.lexsort((ts, keys))
    sorted_keys = keys[order]
    starts = np.r_[0, np.flatnonzero(sorted_keys[1:] != sorted_keys[:-1]) + 1]
    group_of = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(keys)]))
    rank = np.arange(len(keys)) - starts[group_of]
    for k in range(int(rank.max()) + 1 if len(rank) else 0):
        yield order[rank == k]


@dataclass
class AccountState:
    last_ts: np.ndarray = field(default_factory=lambda: np.full(0, np.nan))
    seen: np.ndarray = field(default_factory=lambda: np.zeros(0))
    mean: np.ndarray = field(default_factory=lambda: np.zeros(0))     # EMA of log amount
    var: np.ndarray = field(default_factory=lambda: np.ones(0))       # EMA of squared deviation
    c5m: np.ndarray = field(default_factory=lambda: np.zeros(0))
    c1h: np.ndarray = field(default_factory=lambda: np.zeros(0))
    out1h: np.ndarray = field(default_factory=lambda: np.zeros(0))
    in1h: np.ndarray = field(default_factory=lambda: np.zeros(0))
    in_ts: np.ndarray = field(default_factory=lambda: np.full(0, np.nan))
    last_country: np.ndarray = field(default_factory=lambda: np.full(0, -1, dtype=np.int64))
    home_country: np.ndarray = field(default_factory=lambda: np.full(0, -1, dtype=np.int64))
    last_device: np.ndarray = field(default_factory=lambda: np.full(0, -1, dtype=np.int64))
    first_device: np.ndarray = field(default_factory=lambda: np.full(0, -1, dtype=np.int64))
    last_type: np.ndarray = field(default_factory=lambda: np.full(0, -1, dtype=np.int64))
    received: np.ndarray = field(default_factory=lambda: np.zeros(0))  # transfers received (count)

    _FILL: ClassVar[dict[str, float]] = {"last_ts": np.nan, "in_ts": np.nan, "var": 1.0, "last_country": -1, "home_country": -1,
             "last_device": -1, "first_device": -1, "last_type": -1}

    def ensure(self, size: int) -> None:
        for name in (f.name for f in fields(self)):
            setattr(self, name, _grow(getattr(self, name), size, self._FILL.get(name, 0.0)))


@dataclass
class DeviceState:
    last_ts: np.ndarray = field(default_factory=lambda: np.full(0, np.nan))
    seen: np.ndarray = field(default_factory=lambda: np.zeros(0))
    c1h: np.ndarray = field(default_factory=lambda: np.zeros(0))
    switches1h: np.ndarray = field(default_factory=lambda: np.zeros(0))
    last_account: np.ndarray = field(default_factory=lambda: np.full(0, -1, dtype=np.int64))

    def ensure(self, size: int) -> None:
        for name in (f.name for f in fields(self)):
            fill = np.nan if name == "last_ts" else (-1 if name == "last_account" else 0.0)
            setattr(self, name, _grow(getattr(self, name), size, fill))


@cache
def _warn_numpy_steps() -> None:
    log.warning("features_jit does not implement this FEATURE_NAMES (or numba is missing): "
                "using the slower numpy wavefront for the per-account/device state")


def _decay(value: np.ndarray, last: np.ndarray, now: np.ndarray, tau: float) -> np.ndarray:
    dt = np.where(np.isnan(last), np.inf, np.maximum(now - last, 0.0))
    return value * np.exp(-dt / tau)


class FeatureState:
    """All streaming state of the fast tier; ``transform`` turns a batch into features and updates it."""

    compiled = True  # False: always the numpy reference path (tests compare the two)

    def __init__(self):
        self.accounts, self.devices = KeyIndex(), KeyIndex()
        self.acct, self.dev = AccountState(), DeviceState()
        # Dense account and device ids of the last batch's rows (the scorer's watch list reuses them).
        self.batch_keys: tuple[np.ndarray, np.ndarray] = (np.zeros(0, np.int64), np.zeros(0, np.int64))

    def transform(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """Features (rows in the batch's order) computed with the state *before* each transaction."""
        n = len(batch["ts"])
        X = np.zeros((n, len(FEATURE_NAMES)), dtype=np.float64)
        if n == 0:
            return X
        ts = np.asarray(batch["ts"], dtype=np.float64)
        amount = np.asarray(batch["amount"], dtype=np.float64)
        log_amt = np.log1p(amount)
        ttype = encode(batch["type"], _TYPE_CODE, -1)
        country = encode(batch["country"], _COUNTRY_CODE, len(COUNTRIES))
        acct = self.accounts.lookup(batch["account"])
        dev = self.devices.lookup(batch["device"])
        self.batch_keys = (acct, dev)
        self.acct.ensure(len(self.accounts))
        self.dev.ensure(len(self.devices))

        X[:, 0] = log_amt
        X[:, 1] = ttype
        X[:, 2] = encode(batch["channel"], _CHANNEL_CODE, -1)
        X[:, 3] = encode(batch["mcc"], _MCC_CODE, len(MCCS))
        X[:, 19] = (ts % 86400.0) / 3600.0
        recv = self._recipients(X, batch["counterparty"], ttype)
        account_steps, device_steps = self._steps()
        account_steps(X, acct, dev, ts, log_amt, amount, ttype, country)
        device_steps(X, dev, acct, ts)
        self._credit_counterparties(recv, ttype, amount, ts)
        return X

    def _steps(self):
        """The per-row state updates: numba-compiled (apps/finance/features_jit.py) when that kernel
        implements this feature set, else the numpy wavefront below, which is the reference."""
        if self.compiled:
            from apps.finance import features_jit

            if features_jit.AVAILABLE:
                return (partial(features_jit.account_steps, self.acct),
                        partial(features_jit.device_steps, self.dev))
            _warn_numpy_steps()
        return self._account_steps, self._device_steps

    def _account_steps(self, X, acct, dev, ts, log_amt, amount, ttype, country) -> None:
        s = self.acct
        for rows in _wavefront(acct, ts):
            a, t = acct[rows], ts[rows]
            known = s.seen[a] > 0
            since = np.where(known, t - s.last_ts[a], _NEVER)
            c5 = _decay(s.c5m[a], s.last_ts[a], t, TAU_5M)
            c1 = _decay(s.c1h[a], s.last_ts[a], t, TAU_1H)
            out1 = _decay(s.out1h[a], s.last_ts[a], t, TAU_1H)
            in1 = _decay(s.in1h[a], s.in_ts[a], t, TAU_1H)
            changed = known & (s.last_country[a] != country[rows])
            new_dev = known & (s.last_device[a] != dev[rows]) & (s.first_device[a] != dev[rows])
            X[rows, 4] = np.log1p(s.seen[a])
            X[rows, 5] = np.log1p(np.maximum(since, 0.0))
            X[rows, 6] = c5
            X[rows, 7] = c1
            X[rows, 8] = np.where(known, (log_amt[rows] - s.mean[a]) / np.sqrt(s.var[a] + 0.25), 0.0)
            X[rows, 9] = np.log1p(out1)
            X[rows, 10] = changed
            X[rows, 11] = known & (s.home_country[a] != country[rows])
            X[rows, 12] = changed & (since < 6 * 3600)
            X[rows, 13] = new_dev
            X[rows, 17] = np.log1p(in1)
            X[rows, 18] = (ttype[rows] == 2) & (s.last_type[a] == 1) & (since < 3600)
            X[rows, 20] = ~known
            X[rows, 23] = np.where(known, np.log1p(out1 + amount[rows]) - s.mean[a], 0.0)
            X[rows, 24] = np.log1p(s.received[a])
            # update
            alpha = np.maximum(0.05, 1.0 / (s.seen[a] + 1.0))
            delta = log_amt[rows] - s.mean[a]
            s.mean[a] += alpha * delta
            s.var[a] = np.where(known, (1 - alpha) * (s.var[a] + alpha * delta * delta), 1.0)
            s.c5m[a], s.c1h[a] = c5 + 1.0, c1 + 1.0
            outgoing = ttype[rows] != 3  # CASH_IN is the only inflow the account initiates
            s.out1h[a] = out1 + np.where(outgoing, amount[rows], 0.0)
            s.in1h[a], s.in_ts[a] = in1, t
            s.home_country[a] = np.where(known, s.home_country[a], country[rows])
            s.first_device[a] = np.where(known, s.first_device[a], dev[rows])
            s.last_country[a], s.last_device[a], s.last_type[a] = country[rows], dev[rows], ttype[rows]
            s.last_ts[a] = t
            s.seen[a] += 1

    def _device_steps(self, X, dev, acct, ts) -> None:
        s = self.dev
        for rows in _wavefront(dev, ts):
            d, t = dev[rows], ts[rows]
            c1 = _decay(s.c1h[d], s.last_ts[d], t, TAU_1H)
            sw = _decay(s.switches1h[d], s.last_ts[d], t, TAU_1H)
            switch = (s.last_account[d] >= 0) & (s.last_account[d] != acct[rows])
            X[rows, 14] = sw + switch
            X[rows, 15] = c1
            X[rows, 16] = np.log1p(s.seen[d])
            s.c1h[d], s.switches1h[d] = c1 + 1.0, sw + switch
            s.last_account[d], s.last_ts[d] = acct[rows], t
            s.seen[d] += 1

    def _recipients(self, X, counterparty, ttype) -> np.ndarray:
        """Account ids of the transfers' recipients, and whether each has ever sent or received money
        (an account-takeover or mule-chain recipient is typically fresh; -1 for other types)."""
        sel = ttype == 1
        recv = self.accounts.lookup(take(counterparty, sel))
        self.acct.ensure(len(self.accounts))
        X[:, 21] = X[:, 22] = -1.0
        X[sel, 21] = np.log1p(self.acct.seen[recv])
        X[sel, 22] = np.log1p(self.acct.received[recv])
        return recv

    def _credit_counterparties(self, recv, ttype, amount, ts) -> None:
        """Transfers credit the receiving account's decayed inflow (visible from the next batch)."""
        sel = ttype == 1
        if not sel.any():
            return
        s, t = self.acct, ts[sel]
        decayed = _decay(s.in1h[recv], s.in_ts[recv], t, TAU_1H)
        s.in1h[recv] = decayed
        s.in_ts[recv] = np.where(np.isnan(s.in_ts[recv]), t, np.maximum(s.in_ts[recv], t))
        np.add.at(s.in1h, recv, amount[sel])
        np.add.at(s.received, recv, 1.0)

    # Checkpointing lets a restarted scorer resume with warm state (optional; offsets stay the truth).
    def dumps(self) -> bytes:
        return pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL)

    @staticmethod
    def loads(blob: bytes) -> FeatureState:
        return pickle.loads(blob)


def featurize_all(cols: dict[str, np.ndarray], batch_size: int = 5000, state: FeatureState | None = None
                  ) -> np.ndarray:
    """Features for a whole (time-sorted) data set, computed in the same micro-batches as the stream."""
    state = state or FeatureState()
    n = len(cols["ts"])
    parts = [state.transform({k: v[i:i + batch_size] for k, v in cols.items()}) for i in range(0, n, batch_size)]
    return np.vstack(parts) if parts else np.zeros((0, len(FEATURE_NAMES)))
