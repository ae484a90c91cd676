"""From raw messages to scores: decode, validate (column-wise), featurise, score, explain.

The same ``BatchScorer`` serves the Kafka stream, batch files (`dsv finance score --input`) and the
benchmark, so there is exactly one scoring path. Validation runs column-wise (C-level passes over the
decoded objects, per-distinct-value format checks); only the rows a column check flags go through the
per-record validator, to get a reason that names the field. Strings stay Python lists end to end: no
numpy unicode arrays, no string sorts on the hot path.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from itertools import repeat
from operator import itemgetter
from typing import Any

import numpy as np

try:  # orjson is ~5x faster than the standard library for small objects; json works too.
    import orjson as _json

    def dumps(obj) -> bytes:
        return _json.dumps(obj)

    loads = _json.loads
except ImportError:  # pragma: no cover - exercised only where orjson is missing
    import json as _json

    def dumps(obj) -> bytes:
        return _json.dumps(obj, separators=(",", ":")).encode()

    loads = _json.loads

from apps.finance.data import (
    CHANNELS,
    MAX_AMOUNT,
    MAX_STRING_LEN,
    REQUIRED_FIELDS,
    TX_TYPES,
    ContractError,
    validate_transaction,
)
from apps.finance.episode import WatchList
from apps.finance.features import FeatureState
from apps.finance.model import FastScorer, reasons_for

_STRING_FIELDS = [f for f, k in REQUIRED_FIELDS.items() if k is str]
_NUMBER_FIELDS = ["ts", "amount"]
_ABSENT = object()


def _is_code(v: str, length: int) -> bool:  # currency (3) / country (2): as validate_transaction
    return len(v) == length and v.isalpha() and v.isupper()


# Per-value format checks, run once per *distinct* value of a column (a handful per batch) with the
# same predicates as the per-record validator, so both agree on what the contract allows.
_FORMAT_CHECKS = {
    "type": lambda v: v in TX_TYPES,
    "channel": lambda v: v in CHANNELS,
    "currency": lambda v: _is_code(v, 3),
    "country": lambda v: _is_code(v, 2),
    "mcc": lambda v: len(v) == 4 and v.isdigit(),
}


@dataclass
class Reject:
    index: int          # position in the input batch
    reason: str


@dataclass
class ScoredBatch:
    """Scores of the valid transactions (input order) as columns; ``outputs`` / ``encoded()`` give the
    contract's output records (the latter already serialised, which is what the stream sends)."""

    tx_ids: list[str] = field(default_factory=list)
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0))   # rounded to 5 decimals
    alert: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    reasons: dict[int, list[str]] = field(default_factory=dict)       # alerts only
    model: str = ""
    flags: list[dict[str, Any]] = field(default_factory=list)         # `fraud.alerts` records (flag_record)
    context: list[dict[str, Any]] = field(default_factory=list)       # `fraud.context` records (context_record)
    rejects: list[Reject] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.tx_ids)

    @property
    def outputs(self) -> list[dict[str, Any]]:
        reasons, name = self.reasons, self.model
        return [{"tx_id": t, "score": s, "alert": a, "reasons": reasons.get(i, []), "model": name}
                for i, (t, s, a) in enumerate(zip(self.tx_ids, self.scores.tolist(), self.alert.tolist()))]

    def encoded(self) -> list[bytes]:
        """One JSON document per output, the same bytes ``dumps(output)`` gives. The common case (no
        alert) is filled into a template (3x cheaper than a dict per row through orjson); ids and the
        model name still go through the JSON encoder, so any string is escaped correctly."""
        if not self.n:
            return []
        tail = b',"alert":false,"reasons":[],"model":' + dumps(self.model) + b"}"
        scores = dumps(self.scores.tolist())[1:-1].split(b",")  # JSON numbers never contain a comma
        out = [b'{"tx_id":%b,"score":%b%b' % (t, s, tail) for t, s in zip(map(dumps, self.tx_ids), scores)]
        for i in np.flatnonzero(self.alert).tolist():
            out[i] = dumps({"tx_id": self.tx_ids[i], "score": float(self.scores[i]), "alert": True,
                            "reasons": self.reasons.get(i, []), "model": self.model})
        return out


def _decode(raws: list[bytes]) -> tuple[list[Any], dict[int, str]]:
    try:
        return list(map(loads, raws)), {}
    except (ValueError, TypeError):  # orjson's and json's decode errors are ValueErrors
        objs, bad = [], {}  # at least one is not JSON: decode one by one to find which
        for i, r in enumerate(raws):
            try:
                objs.append(loads(r))
            except (ValueError, TypeError) as exc:
                objs.append(None)
                bad[i] = f"not valid JSON ({str(exc)[:80]})"
        return objs, bad


def _column(rows: list[dict], name: str, default=None) -> list:
    """One field of every row; ``map(itemgetter)`` runs in C, the ``.get`` loop only when a row lacks it."""
    try:
        return list(map(itemgetter(name), rows))
    except KeyError:
        return [r.get(name, default) for r in rows]


def _flag(suspect: np.ndarray, col: list, bad_row) -> None:
    """Mark the rows of ``col`` for which ``bad_row(value)`` holds (called only when some row is bad)."""
    suspect |= np.fromiter(map(bad_row, col), bool, len(col))


def to_columns(objs: list[Any], bad: dict[int, str]) -> tuple[dict[str, Any], np.ndarray, list[Reject]]:
    """Validate column-wise. Returns (columns of the valid rows, their input indices, rejects).

    String columns come back as lists of str, numbers as float64 arrays. The checks run per column in C
    (type sets, min/max length, per-distinct-value formats); only the rows they flag go through the
    per-record validator, which gives the reason naming the field (and has the last word)."""
    n = len(objs)
    if n == 0:
        return {}, np.zeros(0, np.int64), []
    suspect = np.zeros(n, dtype=bool)
    for i in bad:
        suspect[i] = True
    rows = objs
    if bad or set(map(type, objs)) != {dict}:
        suspect |= np.fromiter((type(o) is not dict for o in objs), bool, n)
        rows = [o if type(o) is dict else {} for o in objs]
    cols: dict[str, Any] = {}
    for name in _STRING_FIELDS:
        col = _column(rows, name)
        if set(map(type, col)) != {str}:
            _flag(suspect, col, lambda v: type(v) is not str)
            col = [v if type(v) is str else "" for v in col]
        check = _FORMAT_CHECKS.get(name)
        if check is not None:  # a few distinct values: checked one by one (length included)
            invalid = {v for v in set(col) if not check(v)}
            if invalid:
                _flag(suspect, col, invalid.__contains__)
        elif min(map(len, col)) == 0 or max(map(len, col)) > MAX_STRING_LEN:
            # never let an abusive payload into the state (a 10 MB "account" would stay forever)
            _flag(suspect, col, lambda v: not 0 < len(v) <= MAX_STRING_LEN)
            col = [v if 0 < len(v) <= MAX_STRING_LEN else "" for v in col]
        cols[name] = col
    for name in _NUMBER_FIELDS:
        col = _column(rows, name)
        if not set(map(type, col)) <= {int, float}:  # bool is neither; None (missing) neither
            _flag(suspect, col, lambda v: type(v) not in (int, float))
            col = [v if type(v) in (int, float) else np.nan for v in col]
        try:
            cols[name] = np.array(col, dtype=np.float64)
        except OverflowError:  # an integer beyond float range: the validator names it
            _flag(suspect, col, lambda v: type(v) is int and abs(v) > 1e300)
            cols[name] = np.array([v if abs(v) <= 1e300 else np.nan for v in col], dtype=np.float64)
    suspect |= ~((cols["amount"] > 0) & (cols["amount"] <= MAX_AMOUNT))
    suspect |= ~(np.isfinite(cols["ts"]) & (cols["ts"] >= 0))
    if any(map(dict.__contains__, rows, repeat("is_fraud"))):  # labelled input: 0/1 or absent
        _flag(suspect, _column(rows, "is_fraud", _ABSENT), lambda v: v is not _ABSENT and v not in (0, 1))
    # Exact reasons (and a second opinion) from the per-record validator, for suspects only.
    rejects = []
    for i in np.flatnonzero(suspect).tolist():
        if i in bad:
            rejects.append(Reject(i, bad[i]))
            continue
        try:
            validate_transaction(objs[i])
            suspect[i] = False  # the column checks were stricter than the contract
        except ContractError as exc:
            rejects.append(Reject(i, str(exc)))
    keep = np.flatnonzero(~suspect)
    if len(keep) < n:
        kept = keep.tolist()
        cols = {k: (v[keep] if isinstance(v, np.ndarray) else [v[i] for i in kept]) for k, v in cols.items()}
    return cols, keep, rejects


def flag_record(tx_id: str, score: float, alert: bool, reasons: list[str], model: str, tx: dict[str, Any],
                threshold: float) -> dict[str, Any]:
    """A `fraud.alerts` record: a transaction at or above the fast tier's review threshold, for the
    adjudicator. ``alert`` is the fast tier's own verdict (score >= ``threshold``, its alert threshold)."""
    return {"tx_id": tx_id, "score": score, "alert": alert, "reasons": reasons, "model": model, "tx": tx,
            "threshold": threshold}


def context_record(tx_id: str, score: float, model: str, tx: dict[str, Any]) -> dict[str, Any]:
    """A `fraud.context` record: a transaction below the review threshold whose account or device had a
    flag within the episode window (the adjudicator's view of what happened around the flag)."""
    return {"tx_id": tx_id, "score": score, "model": model, "tx": tx}


class BatchScorer:
    """Decode -> validate -> features (stateful) -> fast-tier score -> outputs.

    Besides the scores, each batch yields the adjudicator's inputs: the flags (score at or above the
    review threshold) and, with ``context_window_s`` set, the context: every other transaction of an
    account or device flagged within that many seconds (of transaction time) before it."""

    def __init__(self, model: FastScorer, state: FeatureState | None = None,
                 context_window_s: float | None = None):
        self.model = model
        self.state = state or FeatureState()
        self.watch = WatchList(context_window_s) if context_window_s else None

    def score_raw(self, raws: list[bytes]) -> ScoredBatch:
        objs, bad = _decode(raws)
        return self._score(objs, bad)

    def score_records(self, records: list[dict[str, Any]]) -> ScoredBatch:
        return self._score(records, {})

    def _score(self, objs: list[Any], bad: dict[int, str]) -> ScoredBatch:
        cols, keep, rejects = to_columns(objs, bad)
        batch = ScoredBatch(model=self.model.name, rejects=rejects)
        if len(keep) == 0:
            return batch
        X = self.state.transform(cols)
        p = self.model.predict_proba(X)
        batch.alert = p >= self.model.threshold
        batch.scores = np.round(p, 5)
        batch.tx_ids = cols["tx_id"]
        flagged = p >= self.model.review_at
        flag_rows = np.flatnonzero(flagged)
        flag_reasons = dict(zip(flag_rows.tolist(), reasons_for(X, flag_rows)))
        batch.reasons = {i: r for i, r in flag_reasons.items() if batch.alert[i]}
        threshold = float(self.model.threshold)
        for i, why in flag_reasons.items():  # flags carry the transaction for the adjudicator
            batch.flags.append(flag_record(batch.tx_ids[i], float(batch.scores[i]), bool(batch.alert[i]), why,
                                           batch.model, objs[int(keep[i])], threshold))
        if self.watch is not None:
            acct, dev = self.state.batch_keys
            for i in np.flatnonzero(self.watch.update(acct, dev, cols["ts"], flagged) & ~flagged).tolist():
                batch.context.append(context_record(batch.tx_ids[i], float(batch.scores[i]), batch.model,
                                                    objs[int(keep[i])]))
        return batch
