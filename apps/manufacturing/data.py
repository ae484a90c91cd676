"""Input contract for sensor records, its validation, and the CSV / Parquet / Kafka readers.

Contract: wide records, one per device per timestamp::

    device_id (string), ts (ISO 8601 or epoch seconds), then one numeric column per sensor
    (vibration_rms, vibration_kurtosis, temperature, pressure, current, rpm, load, ...).

Policy (documented in docs/manufacturing.md):
- a missing ``device_id`` or ``ts`` column, or a file that cannot be read, is an ``InputError`` naming
  the file (and the column);
- a bad cell (unparseable ``ts``, empty ``device_id``, non-numeric text in a sensor column) is an
  ``InputError`` naming file, line (CSV, header = line 1) or row (Parquet, 0-based) and column — unless
  ``skip_bad`` is set (always the case for the Kafka stream, which must not stop), in which case the
  row is dropped and counted in the ``ReadReport``;
- NaN / empty sensor values, sensors absent for a device, out-of-order and repeated timestamps are
  normal plant data: they are handled (sorted, de-duplicated keeping the last record, NaN imputed at
  windowing) and counted in the ``ReadReport``, never fatal.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from shared.io import InputError

log = logging.getLogger(__name__)

SENSORS: tuple[str, ...] = ("vibration_rms", "vibration_kurtosis", "temperature", "pressure",
                            "current", "rpm", "load")
"""Sensors of the simulated fleet (and the default model). Other fleets may use other columns."""
REGIME_SENSORS: tuple[str, ...] = ("rpm", "load")
"""Sensors that define the operating regime (speed, load): normalisation is per regime."""
KEY_COLUMNS = ("device_id", "ts")
SENSORS_TOPIC = "sensors"


@dataclass
class ReadReport:
    """What was wrong with the input and what was done about it (all counts, never fatal)."""

    source: str = ""
    rows_read: int = 0
    rows_kept: int = 0
    bad_rows: list[str] = field(default_factory=list)
    """Human-readable reasons for dropped rows (first 20 kept; ``n_bad_rows`` counts all)."""
    n_bad_rows: int = 0
    duplicate_timestamps: int = 0
    out_of_order: int = 0
    nan_values: dict[str, int] = field(default_factory=dict)
    missing_sensors: dict[str, list[str]] = field(default_factory=dict)
    """device_id -> sensors with no value at all for that device."""

    def add_bad(self, reason: str, n: int = 1) -> None:
        self.n_bad_rows += n
        if len(self.bad_rows) < 20:
            self.bad_rows.append(reason)

    def summary(self) -> str:
        nan_total = sum(self.nan_values.values())
        return (f"{self.source}: {self.rows_read} rows read, {self.rows_kept} kept, {self.n_bad_rows} bad rows "
                f"dropped, {self.duplicate_timestamps} repeated timestamps, {self.out_of_order} out of order, "
                f"{nan_total} NaN values, {len(self.missing_sensors)} devices missing a sensor")

    def to_dict(self) -> dict:
        return asdict(self)


def _where(source: str, kind: str, index: int) -> str:
    # CSV: the header is line 1, so data row i (0-based) sits on line i + 2.
    if kind == "csv":
        return f"{source}:{index + 2}"
    return f"{source} row {index}"


def parse_timestamps(values: pd.Series) -> pd.Series:
    """Epoch seconds (float) from ISO 8601 strings or epoch seconds; unparseable -> NaN."""
    if pd.api.types.is_datetime64_any_dtype(values):  # a Parquet timestamp column
        ts = pd.to_datetime(values, utc=True)
        return (ts - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)
    numeric = pd.to_numeric(values, errors="coerce")
    out = numeric.astype(float)
    text_mask = numeric.isna() & values.notna()
    if text_mask.any():
        parsed = pd.to_datetime(values[text_mask].astype(str), utc=True, errors="coerce", format="ISO8601")
        out[text_mask] = (parsed - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)  # NaT -> NaN
    return out


def validate_frame(df: pd.DataFrame, source: str, kind: str = "csv", *, skip_bad: bool = False,
                   sensors: list[str] | None = None) -> tuple[pd.DataFrame, ReadReport]:
    """Check ``df`` against the contract; return a clean frame (``device_id`` str, ``ts`` float epoch
    seconds, sensor columns float, sorted by device then time, one row per device and timestamp)."""
    report = ReadReport(source=source, rows_read=len(df))
    for col in KEY_COLUMNS:
        if col not in df.columns:
            raise InputError(f"{source}: required column '{col}' is missing (columns: {list(df.columns)})")
    if sensors is None:
        sensors = [c for c in df.columns if c not in KEY_COLUMNS]
    if not sensors:
        raise InputError(f"{source}: no sensor columns besides device_id and ts")
    df = df.reset_index(drop=True)
    bad = pd.Series(False, index=df.index)

    def reject(mask: pd.Series, column: str, what: str) -> None:
        nonlocal bad
        mask = mask & ~bad
        if not mask.any():
            return
        first = int(np.flatnonzero(mask.to_numpy())[0])
        value = df.at[first, column] if column in df.columns else None
        reason = f"{_where(source, kind, first)}: column '{column}': {what} ({value!r})"
        if not skip_bad:
            raise InputError(reason)
        for i in np.flatnonzero(mask.to_numpy()):
            report.add_bad(f"{_where(source, kind, int(i))}: column '{column}': {what}")
        bad = bad | mask

    device = df["device_id"]
    device_str = device.astype("string").str.strip()
    reject(device.isna() | (device_str == ""), "device_id", "empty device_id")
    ts = parse_timestamps(df["ts"])
    reject(ts.isna(), "ts", "not ISO 8601 or epoch seconds")

    out = pd.DataFrame({"device_id": device_str.astype(str), "ts": ts})
    for col in sensors:
        if col not in df.columns:
            out[col] = np.nan  # a sensor the fleet lacks entirely: counted per device below
            continue
        raw = df[col]
        if pd.api.types.is_numeric_dtype(raw):  # Parquet / Kafka numbers: nothing to parse
            num = raw.astype(float)
        else:
            num = pd.to_numeric(raw, errors="coerce")
            # Empty strings and NaN are missing values (allowed); any other text is garbage.
            garbage = num.isna() & raw.notna() & ~raw.astype("string").str.strip().str.lower().isin(
                ["", "nan", "null", "none", "na"])
            reject(garbage.fillna(False).astype(bool), col, "not a number")
            num = num.astype(float)
        num[~np.isfinite(num.to_numpy())] = np.nan  # inf is as unusable as NaN
        out[col] = num

    out = out[~bad.to_numpy()]
    # Out-of-order: a record whose timestamp is earlier than its predecessor for the same device.
    prev = out.groupby("device_id", sort=False)["ts"].shift()
    report.out_of_order = int((out["ts"] < prev).sum())
    out = out.sort_values(["device_id", "ts"], kind="stable")
    dup = out.duplicated(["device_id", "ts"], keep="last")
    report.duplicate_timestamps = int(dup.sum())
    out = out[~dup].reset_index(drop=True)
    report.nan_values = {c: int(out[c].isna().sum()) for c in sensors if out[c].isna().any()}
    if report.nan_values:
        has_any = out[sensors].notna().groupby(out["device_id"]).any()
        lacking = has_any[~has_any.all(axis=1)]          # usually few devices: loop only over those
        for dev, row in zip(lacking.index, lacking.to_numpy()):
            report.missing_sensors[str(dev)] = [s for s, ok in zip(sensors, row) if not ok]
    report.rows_kept = len(out)
    return out, report


def read_table(path: str | Path, *, skip_bad: bool = False,
               sensors: list[str] | None = None) -> tuple[pd.DataFrame, ReadReport]:
    """Read one CSV / Parquet file, or every such file in a directory, and validate it."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".csv", ".parquet"))
        if not files:
            raise InputError(f"{path}: no .csv or .parquet files in this directory")
        parts = [read_table(f, skip_bad=skip_bad, sensors=sensors) for f in files]
        frame = pd.concat([p[0] for p in parts], ignore_index=True)
        frame, merged = validate_frame(frame, str(path), "merged", skip_bad=True, sensors=sensors)
        merged.rows_read = sum(rep.rows_read for _, rep in parts)
        for _, rep in parts:
            merged.n_bad_rows += rep.n_bad_rows
            merged.bad_rows.extend(rep.bad_rows[:5])
            merged.out_of_order += rep.out_of_order
        return frame, merged
    if not path.exists():
        raise InputError(f"{path}: file not found")
    try:
        if path.suffix == ".parquet":
            raw, kind = pd.read_parquet(path), "parquet"
        elif path.suffix == ".csv":
            # Read as text so that garbage is reported by us (with a line number), not by pandas.
            raw, kind = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""]), "csv"
        else:
            raise InputError(f"{path}: unsupported file type (use .csv or .parquet)")
    except InputError:
        raise
    except Exception as exc:  # a truncated parquet, a binary file named .csv...
        raise InputError(f"{path}: cannot be read as {path.suffix[1:]} ({exc})") from None
    return validate_frame(raw, str(path), kind, skip_bad=skip_bad, sensors=sensors)


def write_table(df: pd.DataFrame, path: str | Path) -> None:
    """Write CSV or Parquet by suffix, atomically (temp file + rename)."""
    from shared.io import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        if path.suffix == ".parquet":
            df.to_parquet(tmp, index=False)
        else:
            df.to_csv(tmp, index=False)


# ----------------------------------------------------------------------------------------- Kafka
def publish_records(bootstrap: str, df: pd.DataFrame, topic: str = SENSORS_TOPIC) -> int:
    """Send each row as one JSON message keyed by device_id (so a device stays on one partition)."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, batch_size=256 * 1024,
                             key_serializer=str.encode, value_serializer=lambda v: json.dumps(v).encode())
    n = 0
    try:
        for rec in df.to_dict(orient="records"):
            rec = {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in rec.items()}
            producer.send(topic, key=str(rec["device_id"]), value=rec)
            n += 1
        producer.flush()
    finally:
        producer.close()
    return n


class KafkaSensorReader:
    """Consume sensor records from the ``sensors`` topic in a consumer group (offsets committed by
    the caller with ``commit()`` once the data is safely used, so a restart re-reads nothing it lost).

    Malformed messages (not JSON, not an object, bad cells) are dropped and counted, never fatal.
    """

    def __init__(self, bootstrap: str, group_id: str, topic: str = SENSORS_TOPIC,
                 sensors: list[str] | None = None):
        from kafka import KafkaConsumer

        self.sensors = list(sensors or SENSORS)
        self.consumer = KafkaConsumer(
            topic, bootstrap_servers=bootstrap, group_id=group_id, enable_auto_commit=False,
            auto_offset_reset="earliest", session_timeout_ms=6000, heartbeat_interval_ms=1000,
            max_poll_records=5000)

    def poll(self, timeout_s: float = 2.0, max_records: int = 1_000_000) -> tuple[pd.DataFrame, ReadReport]:
        """Return what arrived within ``timeout_s`` (stops early once a poll comes back empty)."""
        import time

        rows: list[dict] = []
        report = ReadReport(source="kafka:sensors")
        deadline = time.monotonic() + timeout_s
        empty_after_assignment = 0
        while time.monotonic() < deadline and len(rows) < max_records:
            batch = self.consumer.poll(timeout_ms=500)
            if not batch:
                # Joining the group takes a moment; once partitions are assigned, two empty polls
                # in a row mean we have caught up with the topic.
                if self.consumer.assignment():
                    empty_after_assignment += 1
                    if empty_after_assignment >= 2:
                        break
                continue
            empty_after_assignment = 0
            for tp, messages in batch.items():
                for msg in messages:
                    where = f"kafka:{tp.topic}[{tp.partition}]@{msg.offset}"
                    try:
                        obj = json.loads(msg.value)
                        if not isinstance(obj, dict):
                            raise ValueError("not a JSON object")
                    except ValueError as exc:
                        report.add_bad(f"{where}: malformed message ({exc})")
                        continue
                    obj["_where"] = where
                    rows.append(obj)
        if not rows:
            empty = pd.DataFrame(columns=["device_id", "ts", *self.sensors])
            report.rows_read = report.n_bad_rows
            return empty, report
        frame = pd.DataFrame(rows)
        where = frame.pop("_where")
        bad_before = report.n_bad_rows
        clean, rep = validate_frame(frame, "kafka:sensors", "kafka", skip_bad=True, sensors=self.sensors)
        # Replace row indices with the message coordinates, which is what an operator can look up.
        rep.bad_rows = [r for r in report.bad_rows] + [
            _rewrite_where(r, where) for r in rep.bad_rows]
        rep.n_bad_rows += bad_before
        rep.rows_read += bad_before
        return clean, rep

    def commit(self) -> None:
        self.consumer.commit()

    def close(self) -> None:
        self.consumer.close()


def _rewrite_where(reason: str, where: pd.Series) -> str:
    try:
        head, rest = reason.split(": ", 1)
        index = int(head.rsplit(" ", 1)[1])
        return f"{where.iloc[index]}: {rest}"
    except (ValueError, IndexError):
        return reason
