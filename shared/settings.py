"""Typed settings read once at the edge (CLI / service start-up) and passed down.

Every value has an embedded default so that one command works on a fresh machine; each can be
overridden by an environment variable (named in the field's description) for the compose / k8s stacks.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def _env_path(name: str, default: Path) -> Path:
    value = os.environ.get(name)
    return Path(value).expanduser().resolve() if value else default


@dataclass(frozen=True)
class Settings:
    """Where things live and which services to talk to."""

    home: Path = field(default_factory=lambda: _env_path("DSV_HOME", REPO_ROOT / "var"))
    """Root of all local state (models, adapters, MLflow store, app data). Env: DSV_HOME."""
    server_url: str = field(default_factory=lambda: os.environ.get("DSV_SERVER_URL", "http://127.0.0.1:8000/v1"))
    """OpenAI-compatible base URL of the model server (ours or vLLM). Env: DSV_SERVER_URL."""
    api_key: str | None = field(default_factory=lambda: os.environ.get("DSV_API_KEY"))
    """API key the apps present to the model server. Env: DSV_API_KEY."""
    kafka_bootstrap: str | None = field(default_factory=lambda: os.environ.get("KAFKA_BOOTSTRAP"))
    """Kafka cluster; unset means start the embedded broker under home/kafka. Env: KAFKA_BOOTSTRAP."""
    mlflow_uri: str | None = field(default_factory=lambda: os.environ.get("MLFLOW_TRACKING_URI"))
    """MLflow tracking server; unset means a local store under home/mlflow. Env: MLFLOW_TRACKING_URI."""

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def adapters_dir(self) -> Path:
        return self.home / "adapters"

    @property
    def default_model_dir(self) -> Path:
        return self.models_dir / "deepseek-tiny"

    @property
    def tracking_uri(self) -> str:
        if self.mlflow_uri:
            return self.mlflow_uri
        return f"sqlite:///{self.home / 'mlflow' / 'mlflow.db'}"

    def app_dir(self, app: str) -> Path:
        return self.home / app


def load_settings() -> Settings:
    return Settings()
