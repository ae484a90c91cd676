"""Typed fine-tuning config: a YAML file (+ ``key=value`` overrides) validated into ``FinetuneConfig``.

The shape follows torchtune: plain sections (``data``, ``training``, ``evaluation``, ``curriculum``) and
*components* (``peft``, ``optimizer``, ``lr_scheduler``) written as ``{_component_: NAME, **kwargs}``.
A component name is either a registered PEFT method (``lora``; see ``core.finetune.methods``) or a
dotted import path (``torch.optim.AdamW``). ``check_components`` binds each component's kwargs to the
target's real signature, so a typo fails at load time, not an hour into training.

Every error is an ``InputError`` that names the file and the offending key.
"""
from __future__ import annotations

import importlib
import inspect
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from shared.io import InputError

#: Keys the recipe itself passes to each component (so a config must not, and the signature must accept).
RECIPE_SUPPLIED_ARGS: dict[str, tuple[str, ...]] = {
    "optimizer": ("params",),
    "lr_scheduler": ("optimizer", "num_training_steps"),
    "peft": ("model",),
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ComponentSpec(BaseModel):
    """``{_component_: name, **kwargs}``: the kwargs are kept as-is and checked against the signature."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)
    component: str = Field(alias="_component_")

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class MixConfig(_Strict):
    """A training set mixed from named JSONL sources at a ratio, e.g. general:domain:adversarial = 3:5:2."""

    sources: dict[str, str]
    ratio: dict[str, float]
    total: int | None = None
    """Records in the mix; default: the largest total the sources allow at this ratio without repeats."""

    @field_validator("ratio")
    @classmethod
    def _positive(cls, ratio: dict[str, float]) -> dict[str, float]:
        bad = [k for k, v in ratio.items() if v < 0]
        if bad or not any(v > 0 for v in ratio.values()):
            raise ValueError(f"ratio weights must be >= 0 with at least one > 0 (bad: {bad or 'all zero'})")
        return ratio


DataSource = str | MixConfig
"""A JSONL path of chat records, or a ``MixConfig``."""


class DataConfig(_Strict):
    train: DataSource | None = None
    """Training records (ignored when ``curriculum`` is given: each stage names its own)."""
    val: str | None = None
    """Validation records: eval loss per stage, BLEU-4/ROUGE-L at the end."""
    max_length: int = Field(512, gt=8)
    """Token budget per record; longer conversations are truncated (loss only on what remains)."""


class TrainingConfig(_Strict):
    epochs: int = Field(3, ge=1)
    batch_size: int = Field(8, ge=1)
    """Per-device (per-process under torchrun) micro-batch size."""
    grad_accum: int = Field(4, ge=1)
    log_every: int = Field(50, ge=1)
    """Optimizer steps between loss logs (console + MLflow)."""
    checkpoint_every: int = Field(100, ge=1)
    """Optimizer steps between resumable checkpoints."""
    max_steps: int | None = Field(None, ge=1)
    """Stop after this many optimizer steps in total (all stages); for smoke runs and benchmarks."""
    resume: bool = True
    """Resume from the last checkpoint of an interrupted run of the same config."""
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda)$")
    """auto: a GPU when one is visible (one per torchrun rank), else the CPU."""
    num_threads: int | None = Field(None, ge=1)
    """torch intra-op threads per process (default: leave torch's setting)."""


class StageConfig(_Strict):
    name: str
    data: DataSource
    epochs: int | None = Field(None, ge=1)
    """Default: ``training.epochs``."""


class EvalConfig(_Strict):
    max_new_tokens: int = Field(64, ge=1)
    batch_size: int = Field(8, ge=1)
    max_records: int | None = Field(None, ge=1)
    """Evaluate only the first N validation records (generation is the slow part)."""
    generate: bool = True
    """Compute BLEU-4/ROUGE-L by greedy generation at the end of training (needs ``data.val``)."""


class FinetuneConfig(_Strict):
    adapter_name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    """Name of the adapter: directory under DSV_HOME/adapters and registry model ``adapter-<name>``."""
    base_model: str | None = None
    """Checkpoint directory of the base model (default: DSV_HOME/models/deepseek-tiny)."""
    output_dir: str | None = None
    """Where the PEFT adapter is written (default: DSV_HOME/adapters/<adapter_name>)."""
    checkpoint_dir: str | None = None
    """Resumable checkpoints (default: DSV_HOME/checkpoints/<adapter_name>)."""
    seed: int = 0
    peft: ComponentSpec = Field(default_factory=lambda: ComponentSpec(_component_="lora"))
    optimizer: ComponentSpec = Field(
        default_factory=lambda: ComponentSpec(_component_="torch.optim.AdamW", lr=5e-5))
    lr_scheduler: ComponentSpec = Field(
        default_factory=lambda: ComponentSpec(
            _component_="transformers.get_linear_schedule_with_warmup", num_warmup_steps=0))
    data: DataConfig = Field(default_factory=DataConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    curriculum: list[StageConfig] = Field(default_factory=list)
    evaluation: EvalConfig = Field(default_factory=EvalConfig)
    registry: bool = True
    """Register the adapter in the MLflow registry (alias ``challenger``)."""
    merge: bool = False
    """Also write base+adapter merged into a full model (DSV_HOME/models/<adapter_name>-merged)."""

    def stages(self) -> list[StageConfig]:
        """The curriculum, or a single stage ``main`` over ``data.train``."""
        if self.curriculum:
            return list(self.curriculum)
        if self.data.train is None:
            raise InputError("config: set data.train (a JSONL path or a mix) or a curriculum")
        return [StageConfig(name="main", data=self.data.train, epochs=self.training.epochs)]


# ---------------------------------------------------------------------------------------------------
# Loading


def _expand(value: Any, home: Path | None) -> Any:
    """Expand ``${DSV_HOME}`` (the settings' home, even if the env var is unset) and other env vars."""
    if isinstance(value, str):
        if home is not None:
            value = value.replace("${DSV_HOME}", str(home))
        return os.path.expandvars(value)
    if isinstance(value, dict):
        return {k: _expand(v, home) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, home) for v in value]
    return value


def apply_overrides(raw: dict, overrides: Sequence[str]) -> dict:
    """Apply ``a.b.c=value`` overrides (value parsed as YAML; list items by index: ``curriculum.0.epochs=1``)."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise InputError(f"override {item!r}: expected KEY=VALUE (e.g. training.max_steps=10)")
        value = yaml.safe_load(text) if text else None
        node: Any = raw
        parts = key.split(".")
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise InputError(f"override {item!r}: '{'.'.join(parts[:i + 1])}' is not an item of the list")
                if last:
                    node[int(part)] = value
                else:
                    node = node[int(part)]
            else:
                if last:
                    node[part] = value
                else:
                    node = node.setdefault(part, {})
                    if not isinstance(node, (dict, list)):
                        raise InputError(f"override {item!r}: '{'.'.join(parts[:i + 1])}' is not a section")
    return raw


#: Tags pydantic inserts into an error's location for the members of a ``str | MixConfig`` union.
_UNION_TAGS = {"str", "MixConfig"}


def _format_validation_error(exc: ValidationError, source: str) -> str:
    errors = exc.errors()
    if any(e["type"] != "string_type" for e in errors):  # a mapping given: the str branch is noise
        errors = [e for e in errors if e["type"] != "string_type"]
    lines = []
    for err in errors:
        key = ".".join(str(p) for p in err["loc"] if p not in _UNION_TAGS) or "(top level)"
        if err["type"] == "extra_forbidden":
            lines.append(f"{source}: unknown key '{key}'")
        elif err["type"] == "missing":
            lines.append(f"{source}: missing required key '{key}'")
        else:
            lines.append(f"{source}: key '{key}': {err['msg']}")
    return "\n".join(dict.fromkeys(lines))


def parse_config(raw: dict, source: str = "config", home: Path | None = None) -> FinetuneConfig:
    if not isinstance(raw, dict):
        raise InputError(f"{source}: expected a mapping at the top level, got {type(raw).__name__}")
    try:
        config = FinetuneConfig.model_validate(_expand(raw, home))
    except ValidationError as exc:
        raise InputError(_format_validation_error(exc, source)) from None
    check_components(config, source)
    return config


def load_config(path: str | Path, overrides: Sequence[str] = (), home: Path | None = None) -> FinetuneConfig:
    """Read, override, validate. ``home`` fills ``${DSV_HOME}`` (pass ``settings.home``)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: invalid YAML ({exc})") from None
    raw = apply_overrides(raw, overrides)
    return parse_config(raw, str(path), home)


# ---------------------------------------------------------------------------------------------------
# Components


def resolve_component(section: str, name: str) -> Callable:
    """The callable a component names: a registered PEFT method for ``peft``, else a dotted path."""
    if section == "peft":
        from core.finetune.methods import get_method

        return get_method(name)
    module_name, _, attr = name.rpartition(".")
    if not module_name:
        raise InputError(f"{section}._component_: {name!r} is not a dotted path (e.g. torch.optim.AdamW)")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise InputError(f"{section}._component_: cannot import {name!r} ({exc})") from None


def check_component(section: str, spec: ComponentSpec, source: str = "config") -> Callable:
    """Bind the config's kwargs plus the recipe-supplied ones to the target's signature."""
    try:
        target = resolve_component(section, spec.component)
    except InputError as exc:
        raise InputError(f"{source}: {exc}") from None
    supplied = RECIPE_SUPPLIED_ARGS.get(section, ())
    clash = sorted(set(spec.kwargs) & set(supplied))
    if clash:
        raise InputError(f"{source}: {section}.{clash[0]} is set by the recipe; remove it from the config")
    signature = inspect.signature(target)
    try:
        signature.bind(**{k: None for k in supplied}, **spec.kwargs)
    except TypeError as exc:
        accepted = [p for p in signature.parameters if p not in supplied and p not in ("self", "kwargs", "args")]
        unknown = [k for k in spec.kwargs if k not in signature.parameters]
        what = f"unknown key '{section}.{unknown[0]}'" if unknown else str(exc)
        raise InputError(f"{source}: {what} for {spec.component} (accepted: {', '.join(accepted)})") from None
    return target


def check_components(config: FinetuneConfig, source: str = "config") -> None:
    for section in ("peft", "optimizer", "lr_scheduler"):
        check_component(section, getattr(config, section), source)


def instantiate(section: str, spec: ComponentSpec, **supplied):
    """Call the component with the recipe-supplied arguments plus the config's kwargs."""
    return resolve_component(section, spec.component)(**supplied, **spec.kwargs)
