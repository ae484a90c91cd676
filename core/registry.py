"""MLflow model registry and experiment tracking for every build, fine-tune, evaluation and promotion.

API in one paragraph (for the fine-tuning / evaluation layers): ``reg = Registry.from_settings(settings)``
(embedded default: a SQLite store at ``DSV_HOME/mlflow/mlflow.db`` with artifacts beside it; a tracking
server when ``MLFLOW_TRACKING_URI`` is set). Track work with ``with reg.start_run("finetune", "finance-r16",
params) as run:`` then ``run.log_metrics({"loss": 1.2}, step=10)``, ``run.log_artifact(path)``,
``run.log_text(text, "samples.txt")``, ``run.set_tags({...})``; ``run.run_id`` is the id to register
against. The run ends FINISHED, or FAILED if the block raises (the exception propagates). Register what
you produced with ``version = reg.register("finance", adapter_dir, run.run_id, tags={...})`` -- the
version's source is the on-disk directory itself (weights are *not* copied into MLflow). Then
``reg.set_alias("finance", "challenger", version)``; the gate reads ``reg.get_alias("finance",
"champion")`` (``None`` when there is no champion yet) and gets a ``ModelVersionInfo`` with ``.name
.version .path .run_id .tags .aliases`` and ``.metrics`` (the final metrics of the run that produced it,
e.g. the evaluation's BLEU/ROUGE if you logged them on that run -- or use ``reg.run_metrics(run_id)``
for any run). ``reg.versions(name)`` lists every version (oldest first; ``[]`` for an unknown model).
``reg.delete_version(name, version)`` rolls back a registration whose files did not land. A model name
that MLflow would mangle (spaces, slashes, empty) or an unknown version/alias target raises
``shared.io.InputError`` with the offending value in the message.

Why the MLflow client rather than the fluent ``mlflow.start_run`` API: the fluent API keeps a global
"active run" per process, which breaks when the model server, a test and a fine-tune share a process
or thread; ``MlflowClient`` calls are explicit and side-effect free.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from shared.io import InputError

# No telemetry calls and no progress bars from MLflow: the product runs offline and logs its own progress.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# MLflow configures its own loggers at INFO when imported (table creation, migrations): keep them quiet.
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")

log = logging.getLogger(__name__)

# Letters, digits, '.', '_', '-': safe as an MLflow name, a directory name and a URL path segment
# (the model server exposes adapters under these names).
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_ALIAS_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
_MAX_PARAM_CHARS = 6000  # MLflow's limit on one parameter value


def _quiet_mlflow_logging() -> None:
    # Alembic logs every schema migration at INFO on the first use of a store; noise to a user.
    for name in ("alembic", "alembic.runtime.migration"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _check_name(name: str, what: str = "model name") -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise InputError(
            f"invalid {what} {name!r}: use 1-100 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return name


def _flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested dicts become dotted keys; values become strings within MLflow's length limit."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        full = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten_params(value, prefix=f"{full}."))
        else:
            text = str(value)
            flat[full] = text if len(text) <= _MAX_PARAM_CHARS else text[: _MAX_PARAM_CHARS - 3] + "..."
    return flat


@dataclass(frozen=True)
class ModelVersionInfo:
    """One registered version: where its files are and how it was made."""

    name: str
    version: int
    path: Path
    run_id: str | None
    tags: dict[str, str] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    metrics: dict[str, float] = field(default_factory=dict)
    created: float = 0.0
    """Creation time, seconds since the epoch."""


class RunHandle:
    """The run inside a ``Registry.start_run`` block."""

    def __init__(self, client, run_id: str):
        self._client = client
        self.run_id = run_id

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(key, float(value), now, int(step or 0)) for key, value in metrics.items()]
        if batch:
            self._client.log_batch(self.run_id, metrics=batch)

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        batch = [Param(k, v) for k, v in _flatten_params(params).items()]
        if batch:
            self._client.log_batch(self.run_id, params=batch)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        for key, value in tags.items():
            self._client.set_tag(self.run_id, key, str(value))

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """Copy a (small) file or directory into the run's artifacts: curves, samples, configs."""
        path = Path(path)
        if path.is_dir():
            self._client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self._client.log_artifact(self.run_id, str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self._client.log_text(self.run_id, text, artifact_file)

    def log_dict(self, data: Any, artifact_file: str) -> None:
        self._client.log_dict(self.run_id, data, artifact_file)


class Registry:
    """MLflow tracking + model registry on one store (SQLite file by default)."""

    def __init__(self, tracking_uri: str, artifact_root: str | os.PathLike | None = None):
        _quiet_mlflow_logging()
        self.tracking_uri = tracking_uri
        self._artifact_root = Path(artifact_root) if artifact_root else None
        parsed = urlparse(tracking_uri)
        if parsed.scheme == "sqlite":
            # sqlite:////abs/path.db -> the database sits in a directory we create; artifacts go
            # beside it (MLflow's default would be ./mlruns relative to whatever the cwd is).
            db_path = Path(tracking_uri[len("sqlite:///"):])
            db_path.parent.mkdir(parents=True, exist_ok=True)
            if self._artifact_root is None:
                self._artifact_root = db_path.parent / "artifacts"
        self._client_obj = None

    @classmethod
    def from_settings(cls, settings) -> "Registry":
        return cls(settings.tracking_uri)

    @property
    def _client(self):
        if self._client_obj is None:
            from mlflow.tracking import MlflowClient

            # In case mlflow was imported before this module set MLFLOW_LOGGING_LEVEL.
            logging.getLogger("mlflow").setLevel(logging.WARNING)
            self._client_obj = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        return self._client_obj

    # -- experiment tracking -------------------------------------------------------------------

    def _experiment_id(self, experiment: str) -> str:
        found = self._client.get_experiment_by_name(experiment)
        if found is not None:
            return found.experiment_id
        location = None
        if self._artifact_root is not None:
            location = (self._artifact_root / experiment).resolve().as_uri()
        try:
            return self._client.create_experiment(experiment, artifact_location=location)
        except Exception:
            # Another process created it between our lookup and create.
            found = self._client.get_experiment_by_name(experiment)
            if found is None:
                raise
            return found.experiment_id

    @contextlib.contextmanager
    def start_run(self, experiment: str, run_name: str, params: Mapping[str, Any] | None = None,
                  tags: Mapping[str, Any] | None = None) -> Iterator[RunHandle]:
        """A tracked run; FINISHED when the block completes, FAILED (and re-raised) when it raises."""
        experiment_id = self._experiment_id(experiment)
        run = self._client.create_run(experiment_id, run_name=run_name,
                                      tags={k: str(v) for k, v in (tags or {}).items()})
        handle = RunHandle(self._client, run.info.run_id)
        if params:
            handle.log_params(params)
        try:
            yield handle
        except BaseException:
            self._client.set_terminated(handle.run_id, status="FAILED")
            raise
        self._client.set_terminated(handle.run_id, status="FINISHED")

    def run_metrics(self, run_id: str) -> dict[str, float]:
        """The latest value of every metric logged on ``run_id``."""
        return dict(self._get_run(run_id).data.metrics)

    def run_params(self, run_id: str) -> dict[str, str]:
        return dict(self._get_run(run_id).data.params)

    def _get_run(self, run_id: str):
        from mlflow.exceptions import MlflowException

        try:
            return self._client.get_run(run_id)
        except MlflowException as exc:
            raise InputError(f"unknown MLflow run {run_id!r} in {self.tracking_uri}") from exc

    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        """``(step, value)`` pairs of one metric, in step order (a loss curve, say)."""
        history = self._client.get_metric_history(run_id, key)
        return sorted((m.step, m.value) for m in history)

    # -- model registry ------------------------------------------------------------------------

    def register(self, name: str, source_path: str | os.PathLike, run_id: str | None,
                 tags: Mapping[str, Any] | None = None, *, check_path: bool = True) -> int:
        """Register the on-disk directory ``source_path`` as a new version of ``name``; returns it.

        ``check_path=False`` is for a caller that registers just before renaming its files into
        place (and deletes the version if the rename fails).
        """
        from mlflow.exceptions import MlflowException

        _check_name(name)
        source = Path(source_path).resolve()
        if check_path and not source.exists():
            raise InputError(f"{source}: cannot register {name!r}: path does not exist")
        try:
            self._client.get_registered_model(name)
        except MlflowException:
            try:
                self._client.create_registered_model(name)
            except MlflowException:
                self._client.get_registered_model(name)  # created concurrently; fine if it exists now
        version = self._client.create_model_version(
            name, source=str(source), run_id=run_id,
            tags={k: str(v) for k, v in (tags or {}).items()})
        log.info("registered %s version %s -> %s", name, version.version, source)
        return int(version.version)

    def delete_version(self, name: str, version: int) -> None:
        self._client.delete_model_version(_check_name(name), str(version))

    def set_alias(self, name: str, alias: str, version: int) -> None:
        """Point ``alias`` ("champion", "challenger") at ``version`` (moving it if it pointed elsewhere)."""
        from mlflow.exceptions import MlflowException

        _check_name(name)
        if not _ALIAS_RE.match(alias or ""):
            raise InputError(f"invalid alias {alias!r}: use letters, digits, '_' or '-', starting with a letter")
        if alias.lower() == "latest" or re.fullmatch(r"v\d+", alias.lower()):
            raise InputError(f"invalid alias {alias!r}: reserved by MLflow")
        try:
            self._client.get_model_version(name, str(version))
        except MlflowException:
            raise InputError(f"cannot set alias {alias!r}: {name!r} has no version {version}") from None
        self._client.set_registered_model_alias(name, alias, str(version))

    def delete_alias(self, name: str, alias: str) -> None:
        self._client.delete_registered_model_alias(_check_name(name), alias)

    def get_alias(self, name: str, alias: str) -> ModelVersionInfo | None:
        """The version ``alias`` points at, or ``None`` if the model or the alias does not exist."""
        from mlflow.exceptions import MlflowException

        _check_name(name)
        try:
            version = self._client.get_model_version_by_alias(name, alias)
        except MlflowException:
            return None
        return self._info(version)

    def get_version(self, name: str, version: int) -> ModelVersionInfo:
        from mlflow.exceptions import MlflowException

        _check_name(name)
        try:
            return self._info(self._client.get_model_version(name, str(version)))
        except MlflowException:
            raise InputError(f"{name!r} has no version {version} in {self.tracking_uri}") from None

    def versions(self, name: str) -> list[ModelVersionInfo]:
        """Every version of ``name``, oldest first (``[]`` if nothing is registered under it)."""
        _check_name(name)
        found = self._client.search_model_versions(f"name = '{name}'")
        # Search results omit aliases; fetch each version for the full record.
        full = [self._client.get_model_version(name, v.version) for v in found]
        return sorted((self._info(v) for v in full), key=lambda info: info.version)

    def models(self) -> list[str]:
        """Names of all registered models."""
        return sorted(m.name for m in self._client.search_registered_models())

    def _info(self, version) -> ModelVersionInfo:
        metrics: dict[str, float] = {}
        if version.run_id:
            with contextlib.suppress(Exception):  # a run deleted from the store leaves the version usable
                metrics = self.run_metrics(version.run_id)
        return ModelVersionInfo(
            name=version.name,
            version=int(version.version),
            path=Path(version.source),
            run_id=version.run_id or None,
            tags=dict(version.tags or {}),
            aliases=tuple(version.aliases or ()),
            metrics=metrics,
            created=(version.creation_timestamp or 0) / 1000.0,
        )
