"""The promotion gate: a challenger adapter becomes champion only if BOTH BLEU-4 and ROUGE-L improve.

Registry model ``adapter-<name>``; aliases ``challenger`` (set by every fine-tune) and ``champion``.
Metrics come from real evaluation runs: either the end-of-training evaluation logged on the version's
own MLflow run (accepted only if both versions were scored on the same validation file, by hash), or,
with ``data``, a fresh evaluation of both versions on that file now (each an MLflow run in the
``evaluation`` experiment). The decision itself is an MLflow run in the ``promotion`` experiment.

After a decision the serving directory ``DSV_HOME/adapters/<name>/`` holds the champion's files, so a
refused challenger (which ``dsv finetune`` wrote there) is not left being served.
"""
from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from shared.io import InputError, atomic_path

log = logging.getLogger(__name__)

GATED_METRICS = ("bleu4", "rougeL")
CHAMPION, CHALLENGER = "champion", "challenger"


def registry_name(name: str) -> str:
    """``finance`` -> ``adapter-finance`` (an already prefixed name is kept)."""
    return name if name.startswith("adapter-") else f"adapter-{name}"


def adapter_name(name: str) -> str:
    return name.removeprefix("adapter-")


@dataclass(frozen=True)
class Comparison:
    metric: str
    challenger: float
    champion: float | None

    @property
    def improved(self) -> bool:
        return self.champion is None or self.challenger > self.champion

    def line(self) -> str:
        if self.champion is None:
            return f"{self.metric}: challenger {self.challenger:.4f} (no champion)"
        verdict = "improved" if self.improved else "NOT improved"
        return f"{self.metric}: challenger {self.challenger:.4f} vs champion {self.champion:.4f} -> {verdict}"


@dataclass
class GateDecision:
    model: str
    challenger_version: int
    champion_version: int | None
    promoted: bool
    comparisons: list[Comparison] = field(default_factory=list)
    source: str = "training-run metrics"

    def report(self) -> str:
        head = (f"{self.model}: version {self.challenger_version} "
                f"{'PROMOTED to champion' if self.promoted else 'REFUSED'}"
                f" (champion was {self.champion_version if self.champion_version is not None else 'none'};"
                f" metrics: {self.source})")
        return "\n".join([head, *("  " + c.line() for c in self.comparisons)])

    def to_json(self) -> dict:
        return {"model": self.model, "challenger_version": self.challenger_version,
                "champion_version": self.champion_version, "promoted": self.promoted, "source": self.source,
                "comparisons": [{"metric": c.metric, "challenger": c.challenger, "champion": c.champion,
                                 "improved": c.improved} for c in self.comparisons]}


def compare(challenger: dict[str, float], champion: dict[str, float] | None) -> list[Comparison]:
    return [Comparison(m, challenger[m], None if champion is None else champion[m]) for m in GATED_METRICS]


def _stored_metrics(registry, info) -> dict[str, float]:
    missing = [m for m in GATED_METRICS if m not in info.metrics]
    if missing:
        raise InputError(f"{info.name} version {info.version} has no {', '.join(missing)} on its run; "
                         f"pass --data VAL.jsonl to evaluate it now")
    return {m: info.metrics[m] for m in GATED_METRICS}


def _val_hash(registry, info) -> str | None:
    return registry.run_params(info.run_id).get("eval.val_sha256") if info.run_id else None


def evaluate_version(registry, info, data: str | Path, **eval_kwargs) -> dict[str, float]:
    """Evaluate a registered adapter version on ``data`` now; the result is an MLflow run."""
    from core.evaluation.metrics import evaluate_adapter
    from core.finetune.recipe import file_sha256

    scores = evaluate_adapter(info.path, data, **eval_kwargs)
    params = {"model": info.name, "version": info.version, "adapter_path": str(info.path), "data": str(data),
              "data_sha256": file_sha256(data), "bleu_tokenize": scores.bleu_tokenize}
    with registry.start_run("evaluation", f"{info.name}-v{info.version}", params) as run:
        run.log_metrics(scores.metrics())
    return {m: scores.metrics()[m] for m in GATED_METRICS}


def publish(info, adapters_dir: Path) -> Path:
    """Copy a version's adapter files into the serving directory (atomically)."""
    target = adapters_dir / adapter_name(info.name)
    if not Path(info.path).is_dir():
        raise InputError(f"{info.path}: files of {info.name} version {info.version} are missing")
    with atomic_path(target, is_dir=True) as tmp:
        shutil.copytree(info.path, tmp, dirs_exist_ok=True)
    return target


def promote(registry, name: str, *, version: int | None = None, data: str | Path | None = None,
            adapters_dir: Path | None = None, **eval_kwargs) -> GateDecision:
    """Apply the gate to ``version`` (default: the ``challenger`` alias) of adapter ``name``."""
    model = registry_name(name)
    if version is not None:
        challenger = registry.get_version(model, version)
    else:
        challenger = registry.get_alias(model, CHALLENGER)
        if challenger is None:
            raise InputError(f"{model}: no '{CHALLENGER}' alias (fine-tune an adapter first, or pass --version)")
    champion = registry.get_alias(model, CHAMPION)
    if champion is not None and champion.version == challenger.version:
        raise InputError(f"{model}: version {challenger.version} is already the champion")

    if data is not None:
        source = f"evaluated now on {data}"
        challenger_metrics = evaluate_version(registry, challenger, data, **eval_kwargs)
        champion_metrics = evaluate_version(registry, champion, data, **eval_kwargs) if champion else None
    else:
        source = "end-of-training evaluation"
        challenger_metrics = _stored_metrics(registry, challenger)
        champion_metrics = _stored_metrics(registry, champion) if champion else None
        if champion is not None and _val_hash(registry, challenger) != _val_hash(registry, champion):
            raise InputError(f"{model}: versions {challenger.version} and {champion.version} were evaluated on "
                             f"different validation sets; pass --data VAL.jsonl to evaluate both on one")

    comparisons = compare(challenger_metrics, champion_metrics)
    promoted = all(c.improved for c in comparisons)
    decision = GateDecision(model, challenger.version, champion.version if champion else None, promoted,
                            comparisons, source)
    if promoted:
        registry.set_alias(model, CHAMPION, challenger.version)
    serving = challenger if promoted else champion
    if adapters_dir is not None and serving is not None:  # serve the champion, whichever it is now
        publish(serving, adapters_dir)

    with registry.start_run("promotion", f"{model}-v{challenger.version}",
                            {"model": model, "challenger_version": challenger.version,
                             "champion_version": decision.champion_version, "source": source}) as run:
        run.log_metrics({"promoted": float(promoted),
                         **{f"challenger_{c.metric}": c.challenger for c in comparisons},
                         **{f"champion_{c.metric}": c.champion for c in comparisons if c.champion is not None}})
    log.info("%s version %s %s", model, challenger.version, "promoted" if promoted else "refused")
    return decision
