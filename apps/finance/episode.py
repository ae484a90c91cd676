"""Episode context for the adjudicator: what the same account and device did around a flagged transaction.

Fraud comes in episodes (a transfer then a cash-out, a burst of card tests, one terminal used by several
victims), and the fast tier scores each transaction causally, on its own. The adjudicator runs off the hot
path, so it can wait for an episode to unfold: it decides a flagged transaction once ``window_s`` seconds
of stream time have passed and shows the model what happened on the same account and device within that
window on either side. Measured on synthetic data (docs/benchmarks/finance.md): this context, not the
account's older history, is what lets a second tier clear the fast tier's false alerts.

Two producers of the same neighbour lists, so training, evaluation and the live service show the model
the same text:

- ``neighbours_from_columns``: offline, from a whole time-sorted column set and its fast-tier scores
  (training data, ``adjudicator_eval``);
- ``EpisodeBuffer``: live, from the ``fraud.alerts`` and ``fraud.context`` topics (the scorer writes every
  transaction of an account or device that had a flag in the last ``window_s`` to ``fraud.context``).

What each side shows: *after* the flag, every transaction of the account and every transaction of the
device by another account; *before* it, only the flagged ones (the live adjudicator keeps recent flags,
not the whole stream).
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

WINDOW_S = 1800.0
MAX_SHOWN = 4  # neighbours listed per side and key; the rest are counted

# How a neighbour's fast-tier score compares with the fast tier's thresholds.
BELOW, FLAGGED, ALERT = 0, 1, 2
_LEVEL_WORD = {BELOW: "", FLAGGED: " review", ALERT: " alert"}


@dataclass(frozen=True)
class Thresholds:
    """The fast tier's alert threshold and the lower one that sends a transaction to the adjudicator."""

    alert: float
    review: float

    def levels(self, scores: np.ndarray) -> np.ndarray:
        return np.where(scores >= self.alert, ALERT, np.where(scores >= self.review, FLAGGED, BELOW))


@dataclass(frozen=True)
class Neighbour:
    dt_s: float            # seconds from the flagged transaction (negative: before it)
    same_account: bool     # False: the same device used by another account
    type: str
    amount: float
    country: str
    level: int             # BELOW, FLAGGED or ALERT


def episode_order(n: Neighbour) -> tuple:
    """The order neighbours are listed in (account first, then by time; ties broken on every field, so
    the offline and the live lists render the same text)."""
    return (not n.same_account, n.dt_s, n.type, n.amount, n.country, n.level)


def _rows(cols: dict[str, Any], name: str) -> list:
    values = cols[name]
    return values.tolist() if isinstance(values, np.ndarray) else list(values)


def neighbours_from_columns(cols: dict[str, Any], scores: np.ndarray, rows, thresholds: Thresholds,
                            window_s: float = WINDOW_S) -> list[list[Neighbour]]:
    """For each of ``rows`` (indices into a column set), its neighbours within ``window_s``."""
    rows = np.asarray(rows, dtype=np.int64)
    ts = np.asarray(cols["ts"], dtype=np.float64)
    accounts, devices = np.asarray(cols["account"]), np.asarray(cols["device"])
    types, countries = _rows(cols, "type"), _rows(cols, "country")
    amounts = np.asarray(cols["amount"], dtype=np.float64)
    levels = thresholds.levels(np.asarray(scores))
    out: list[list[Neighbour]] = [[] for _ in range(len(rows))]
    for key, same_account in ((accounts, True), (devices, False)):
        order = np.lexsort((ts, key))
        pos = np.empty(len(order), dtype=np.int64)
        pos[order] = np.arange(len(order))
        sorted_key, sorted_ts = key[order], ts[order]
        for i, r in enumerate(rows.tolist()):
            p = int(pos[r])
            # the run of this key within [ts - W, ts + W], found by binary search inside the key's block
            lo = int(np.searchsorted(sorted_key, key[r], "left"))
            hi = int(np.searchsorted(sorted_key, key[r], "right"))
            a = lo + int(np.searchsorted(sorted_ts[lo:hi], ts[r] - window_s, "left"))
            b = lo + int(np.searchsorted(sorted_ts[lo:hi], ts[r] + window_s, "right"))
            for q in range(a, b):
                if q == p:
                    continue
                j = int(order[q])
                if not same_account and accounts[j] == accounts[r]:
                    continue  # the account's own use of its device is already on the account side
                dt = float(ts[j] - ts[r])
                if dt < 0 and levels[j] == BELOW:  # before the flag: flagged neighbours only
                    continue
                out[i].append(Neighbour(dt, same_account, types[j], float(amounts[j]), countries[j], int(levels[j])))
    for lst in out:
        lst.sort(key=episode_order)
    return out


# Words this model's tokenizer knows as single tokens (upper-case codes cost a token per letter).
TYPE_WORDS = {"PAYMENT": "payment", "TRANSFER": "transfer", "CASH_OUT": "cash out", "CASH_IN": "cash in",
              "DEBIT": "debit"}


def render(tx: dict[str, Any], neighbours: list[Neighbour], window_s: float = WINDOW_S) -> str:
    """The episode in few tokens a small model can read: for the account and for the device's other
    accounts, the flagged transactions before and all transactions after, each as minutes from the flag,
    type, amount, country (when it differs from the flag's) and the fast tier's verdict."""
    minutes = round(window_s / 60)
    parts = [f"Within {minutes} min:"]
    for same_account, title in ((True, "same account"), (False, "same device, other account")):
        for before, side, empty in ((True, "before", "no alert"), (False, "after", "no")):
            items = [n for n in neighbours if n.same_account == same_account and (n.dt_s < 0) == before]
            shown = [f"{abs(n.dt_s) / 60:.0f} min {TYPE_WORDS.get(n.type, n.type)} {n.amount:.0f}"
                     f"{'' if n.country == tx.get('country') else ' in ' + n.country}{_LEVEL_WORD[n.level]}"
                     for n in items[:MAX_SHOWN]]
            more = f", {len(items) - MAX_SHOWN} more" if len(items) > MAX_SHOWN else ""
            parts.append(f"{title} {side}: {', '.join(shown) + more if shown else empty};")
    return " ".join(parts)[:-1] + "."


Position = tuple[str, int, int]  # (topic, partition, offset) of the Kafka record something came from


@dataclass(frozen=True)
class _Seen:
    ts: float
    tx_id: str
    tx: dict[str, Any]
    level: int
    position: Position | None = None


@dataclass
class _Pending:
    alert: dict[str, Any]
    ts: float
    received_at: float
    neighbours: list[Neighbour] = field(default_factory=list)
    seen_ids: set[str] = field(default_factory=set)

    def consider(self, seen: _Seen, window_s: float) -> None:
        """Add ``seen`` if it is a neighbour (same rules as ``neighbours_from_columns``); replays of the
        same transaction (at-least-once delivery) count once."""
        tx = self.alert["tx"]
        dt = seen.ts - self.ts
        if seen.tx_id == self.alert["tx_id"] or seen.tx_id in self.seen_ids or abs(dt) > window_s:
            return
        if dt < 0 and seen.level == BELOW:
            return
        if seen.tx["account"] == tx["account"]:
            same_account = True
        elif seen.tx["device"] == tx["device"]:
            same_account = False
        else:
            return
        self.seen_ids.add(seen.tx_id)
        self.neighbours.append(Neighbour(dt, same_account, seen.tx["type"], float(seen.tx["amount"]),
                                         seen.tx["country"], seen.level))


def _keys(tx: dict[str, Any]) -> tuple[tuple[str, str], tuple[str, str]]:
    return ("a", tx["account"]), ("d", tx["device"])


class EpisodeBuffer:
    """Live episode context: holds each flagged transaction until its window has passed in stream time
    (the largest ``ts`` seen) or it has waited ``max_wait_s`` of wall time, collecting its neighbours.

    Records may arrive in any order across the two topics (a follow-up's context record can come before
    the flag it follows), so every record of a watched account or device is remembered for ``window_s``
    of stream time and a new flag looks at both sides. Memory is bounded by the flags of the last window
    and the transactions the scorer sends as context for them."""

    def __init__(self, window_s: float = WINDOW_S, max_wait_s: float = 60.0):
        self.window_s, self.max_wait_s = window_s, max_wait_s
        self.stream_ts = float("-inf")
        self._pending: dict[str, _Pending] = {}
        self._pending_by_key: dict[tuple[str, str], set[str]] = defaultdict(set)
        self._recent: dict[tuple[str, str], list[_Seen]] = defaultdict(list)

    def __len__(self) -> int:
        return len(self._pending)

    def add_flag(self, alert: dict[str, Any], now: float, position: Position | None = None) -> None:
        """A flagged transaction (a ``fraud.alerts`` record: ``tx``, and ``alert`` = the fast tier's own
        verdict at its alert threshold; every record there passed the review threshold)."""
        tx_id = alert["tx_id"]
        if tx_id in self._pending:
            return  # a replay
        self._remember(alert["tx"], ALERT if alert.get("alert") else FLAGGED, tx_id, position)
        pending = _Pending(alert, float(alert["tx"]["ts"]), now)
        for key in _keys(alert["tx"]):
            for seen in self._recent.get(key, ()):
                pending.consider(seen, self.window_s)
            self._pending_by_key[key].add(tx_id)
        self._pending[tx_id] = pending

    def add_context(self, record: dict[str, Any], position: Position | None = None) -> None:
        """A transaction below the review threshold that the scorer sent (``fraud.context``: ``tx_id``,
        ``tx``) because its account or device had a flag in the last window."""
        self._remember(record["tx"], BELOW, record["tx_id"], position)

    def _remember(self, tx: dict[str, Any], level: int, tx_id: str, position: Position | None) -> None:
        seen = _Seen(float(tx["ts"]), tx_id, tx, level, position)
        self.stream_ts = max(self.stream_ts, seen.ts)
        for key in _keys(tx):
            self._recent[key].append(seen)
            for pid in self._pending_by_key.get(key, ()):
                self._pending[pid].consider(seen, self.window_s)

    def ready(self, now: float) -> list[tuple[dict[str, Any], list[Neighbour]]]:
        """Flags whose window has closed (stream time) or that waited ``max_wait_s`` (wall time)."""
        done = [pid for pid, p in self._pending.items()
                if self.stream_ts - p.ts >= self.window_s or now - p.received_at >= self.max_wait_s]
        out = []
        for pid in done:
            p = self._pending.pop(pid)
            for key in _keys(p.alert["tx"]):
                ids = self._pending_by_key[key]
                ids.discard(pid)
                if not ids:
                    del self._pending_by_key[key]
            p.neighbours.sort(key=episode_order)
            out.append((p.alert, p.neighbours))
        self._forget(self.stream_ts - 2 * self.window_s)
        return out

    def commit_offsets(self, consumed: dict[tuple[str, int], int]) -> dict[tuple[str, int], int]:
        """Offsets safe to commit: per partition, the oldest record still held (a flag not yet decided,
        or a record a flag may still need), else the next one to read (``consumed``). A restart replays
        from there: at-least-once for adjudications, which are keyed by tx_id."""
        safe = dict(consumed)
        held = [s.position for seen in self._recent.values() for s in seen if s.position is not None]
        for topic, partition, offset in held:
            key = (topic, partition)
            if key in safe and offset < safe[key]:
                safe[key] = offset
        return safe

    def _forget(self, before_ts: float) -> None:
        """Drop remembered records older than ``before_ts`` (two windows back: a flag still pending
        may need them) of keys no pending flag watches."""
        for key in list(self._recent):
            kept = [s for s in self._recent[key] if s.ts >= before_ts]
            if kept:
                self._recent[key] = kept
            elif key not in self._pending_by_key:
                del self._recent[key]


class WatchList:
    """The scorer's side: accounts and devices with a flag in the last ``window_s`` seconds (transaction
    time), so their other transactions can be sent to the adjudicator as context. Two float arrays
    indexed by the feature state's dense key ids: a few vectorised operations per batch."""

    def __init__(self, window_s: float = WINDOW_S):
        self.window_s = window_s
        self.account_until = np.zeros(0)
        self.device_until = np.zeros(0)

    def update(self, accounts: np.ndarray, devices: np.ndarray, ts, flagged: np.ndarray) -> np.ndarray:
        """Start watching the keys of this batch's flags; return which rows fall in a watched window
        (flags of this batch included: within a batch, a row after a flag is context for it)."""
        ts = np.asarray(ts, dtype=np.float64)
        self.account_until = _grown(self.account_until, int(accounts.max(initial=-1)) + 1)
        self.device_until = _grown(self.device_until, int(devices.max(initial=-1)) + 1)
        if flagged.any():
            np.maximum.at(self.account_until, accounts[flagged], ts[flagged] + self.window_s)
            np.maximum.at(self.device_until, devices[flagged], ts[flagged] + self.window_s)
        return (self.account_until[accounts] >= ts) | (self.device_until[devices] >= ts)


def _grown(arr: np.ndarray, size: int) -> np.ndarray:
    if size <= len(arr):
        return arr
    new = np.zeros(max(size, 2 * len(arr), 1024))
    new[: len(arr)] = arr
    return new
