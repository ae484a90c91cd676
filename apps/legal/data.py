"""The judgment corpus contract: one record per judgment, from JSONL or Parquet.

Fields: ``id`` (string), ``court``, ``date`` (ISO ``YYYY-MM-DD``), ``case_type``, ``title``, ``text``,
``statutes`` (list of cited statute references), optional ``language`` (``zh``/``en``; guessed from the
text when absent) and ``access`` (``public`` or a tenant name; default ``public``).

A malformed record is reported with its file and line (Parquet: row number) and skipped; the rest of
the file is still read. ``iter_corpus`` yields ``(line_no, Judgment)`` so callers can checkpoint.
"""
from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from shared.io import InputError

REQUIRED_TEXT_FIELDS = ("id", "court", "date", "case_type", "title", "text")
LANGUAGES = ("zh", "en")
ACCESS_LABEL = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_CJK = re.compile(r"[\u4e00-\u9fff]")


@dataclass(frozen=True)
class Judgment:
    id: str
    court: str
    date: str
    case_type: str
    title: str
    text: str
    statutes: tuple[str, ...] = ()
    language: str = "en"
    access: str = "public"

    def to_record(self) -> dict:
        rec = asdict(self)
        rec["statutes"] = list(self.statutes)
        return rec


@dataclass
class ValidationReport:
    """Malformed records seen while reading one file: (line, reason)."""
    path: str
    errors: list[tuple[int, str]] = field(default_factory=list)

    def add(self, line: int, reason: str) -> None:
        self.errors.append((line, reason))

    def summary(self, limit: int = 10) -> str:
        lines = [f"{self.path}:{ln}: {why}" for ln, why in self.errors[:limit]]
        more = len(self.errors) - limit
        return "\n".join(lines + ([f"... and {more} more"] if more > 0 else []))


def guess_language(text: str) -> str:
    sample = text[:200]
    return "zh" if sample and len(_CJK.findall(sample)) >= max(1, len(sample) // 10) else "en"


def validate_record(rec: object) -> Judgment:
    """Return a ``Judgment`` or raise ``ValueError`` naming the offending field."""
    if not isinstance(rec, dict):
        raise ValueError(f"expected an object, got {type(rec).__name__}")  # noqa: TRY004 - reported like any bad record
    for name in REQUIRED_TEXT_FIELDS:
        value = rec.get(name)
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"field '{name}' must be a non-empty string (got {value!r:.40})")
    try:
        date = dt.date.fromisoformat(rec["date"][:10])
    except ValueError:
        raise ValueError(f"field 'date' is not an ISO date: {rec['date']!r:.40}") from None
    statutes = rec.get("statutes", [])
    if statutes is None:
        statutes = []
    if hasattr(statutes, "tolist"):  # numpy array from Parquet
        statutes = statutes.tolist()
    if not isinstance(statutes, list) or not all(isinstance(s, str) for s in statutes):
        raise ValueError("field 'statutes' must be a list of strings")
    language = rec.get("language") or guess_language(rec["text"])
    if language not in LANGUAGES:
        raise ValueError(f"field 'language' must be one of {LANGUAGES} (got {language!r:.20})")
    access = rec.get("access") or "public"
    if not isinstance(access, str) or not ACCESS_LABEL.match(access):
        raise ValueError(f"field 'access' must be a label like 'public' or a tenant name (got {access!r:.40})")
    return Judgment(id=rec["id"].strip(), court=rec["court"].strip(), date=date.isoformat(),
                    case_type=rec["case_type"].strip(), title=rec["title"].strip(), text=rec["text"],
                    statutes=tuple(s.strip() for s in statutes), language=language, access=access)


def parse_record(raw: str | dict) -> Judgment:
    """One raw record (a JSONL line, or a Parquet row already decoded) -> ``Judgment``; raises
    ``ValueError`` with the reason. Split from reading so ingest workers can parse in parallel."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError as exc:
            raise ValueError(f"malformed JSON ({exc})") from None
    return validate_record(raw)


def _iter_jsonl(path: Path, start_line: int) -> Iterator[tuple[int, str]]:
    with open(path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, start=1):
            if line_no < start_line or not line.strip():
                continue
            yield line_no, line


def _iter_parquet(path: Path, start_line: int) -> Iterator[tuple[int, dict]]:
    import pyarrow.parquet as pq

    row = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=10_000):
        if row + batch.num_rows < start_line:
            row += batch.num_rows
            continue
        for rec in batch.to_pylist():
            row += 1
            if row >= start_line:
                yield row, rec


def iter_raw(path: str | Path, start_line: int = 1) -> Iterator[tuple[int, str | dict]]:
    """``(line_no, raw record)`` from ``start_line`` on, unparsed (see ``parse_record``)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    return _iter_parquet(path, start_line) if path.suffix == ".parquet" else _iter_jsonl(path, start_line)


def iter_corpus(path: str | Path, report: ValidationReport | None = None,
                start_line: int = 1) -> Iterator[tuple[int, Judgment]]:
    """Yield ``(line_no, judgment)`` for each valid record from ``start_line`` on; malformed ones go to
    ``report`` (file + line + reason) and are skipped."""
    for line_no, raw in iter_raw(path, start_line):
        try:
            yield line_no, parse_record(raw)
        except ValueError as exc:
            if report is not None:
                report.add(line_no, str(exc))
