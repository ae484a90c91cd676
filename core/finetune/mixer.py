"""Build a training set from named sources at a ratio (the product's general:domain:adversarial = 3:5:2).

Deterministic under ``seed``; the *real* counts are returned (and the recipe logs them to MLflow),
since a ratio can only be met approximately: counts are apportioned by the largest-remainder method,
so they always add up to ``total``. A source smaller than its share is repeated (reshuffled each pass)
and the report says so, rather than silently shifting the ratio.
"""
from __future__ import annotations

import logging
import math
import random
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from core.finetune.data import ChatRecord, load_chat_jsonl
from shared.io import InputError

log = logging.getLogger(__name__)


@dataclass
class MixResult:
    records: list[ChatRecord]
    counts: dict[str, int]
    """Records taken from each source."""
    available: dict[str, int]
    """Records each source holds."""
    requested_ratio: dict[str, float]
    repeated: list[str] = field(default_factory=list)
    """Sources that had to be repeated to meet their share."""

    @property
    def realised_ratio(self) -> dict[str, float]:
        total = sum(self.counts.values()) or 1
        return {name: n / total for name, n in self.counts.items()}

    def metrics(self) -> dict[str, float]:
        """Flat numbers for MLflow: ``mix_count_<source>``, ``mix_share_<source>``, ``mix_total``."""
        out: dict[str, float] = {"mix_total": float(sum(self.counts.values()))}
        for name, n in self.counts.items():
            out[f"mix_count_{name}"] = float(n)
            out[f"mix_share_{name}"] = round(self.realised_ratio[name], 6)
        return out


def apportion(total: int, ratio: dict[str, float]) -> dict[str, int]:
    """Integer counts proportional to ``ratio`` summing to ``total`` (largest remainder, ties by name)."""
    weight_sum = sum(ratio.values())
    exact = {name: total * w / weight_sum for name, w in ratio.items()}
    counts = {name: math.floor(x) for name, x in exact.items()}
    leftover = total - sum(counts.values())
    for name in sorted(exact, key=lambda n: (-(exact[n] - counts[n]), n))[:leftover]:
        counts[name] += 1
    return counts


def _draw(records: list[ChatRecord], n: int, rng: random.Random) -> list[ChatRecord]:
    out: list[ChatRecord] = []
    while len(out) < n:
        batch = list(records)
        rng.shuffle(batch)
        out.extend(batch[: n - len(out)])
    return out


def mix_records(sources: dict[str, list[ChatRecord]], ratio: dict[str, float], *,
                total: int | None = None, seed: int = 0) -> MixResult:
    if set(ratio) != set(sources):
        raise InputError(f"mix: ratio names {sorted(ratio)} must match source names {sorted(sources)}")
    active = {name: w for name, w in ratio.items() if w > 0}
    available = {name: len(recs) for name, recs in sources.items()}
    empty = [name for name in active if not available[name]]
    if empty:
        raise InputError(f"mix: source(s) {', '.join(empty)} are empty but have a non-zero ratio")
    if total is None:
        # The largest mix that meets the ratio without repeating any record.
        weight_sum = sum(active.values())
        total = min(math.floor(available[n] * weight_sum / w) for n, w in active.items())
    counts = apportion(total, active)
    counts.update({name: 0 for name in ratio if name not in active})
    repeated = sorted(name for name, n in counts.items() if n > available[name])
    if repeated:
        log.warning("mix: source(s) %s smaller than their share; records repeated", ", ".join(repeated))
    mixed: list[ChatRecord] = []
    for name in sorted(sources):  # fixed order + per-source seeded RNG => deterministic
        rng = random.Random(seed * 1_000_003 + zlib.crc32(name.encode()))
        mixed.extend(_draw(sources[name], counts[name], rng))
    random.Random(seed).shuffle(mixed)
    return MixResult(mixed, {n: counts[n] for n in ratio}, available, dict(ratio), repeated)


def mix_files(sources: dict[str, str | Path], ratio: dict[str, float], *, total: int | None = None,
              seed: int = 0) -> MixResult:
    """``mix_records`` over JSONL files (each validated; errors name ``file:line``)."""
    return mix_records({name: load_chat_jsonl(path) for name, path in sources.items()}, ratio,
                       total=total, seed=seed)
