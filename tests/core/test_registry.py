"""The MLflow registry against a real SQLite store in a temporary directory."""
from __future__ import annotations

import pytest

from shared.io import InputError


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    from core.registry import Registry

    root = tmp_path_factory.mktemp("mlflow")
    return Registry(f"sqlite:///{root / 'mlflow.db'}")


def test_runs_versions_aliases_and_metrics_round_trip(registry, tmp_path):
    v1_dir, v2_dir = tmp_path / "v1", tmp_path / "v2"
    v1_dir.mkdir()
    v2_dir.mkdir()
    (tmp_path / "curve.txt").write_text("0 3.2\n1 2.9\n")

    run_ids = []
    for i, (path, bleu) in enumerate([(v1_dir, 10.5), (v2_dir, 12.25)]):
        with registry.start_run("finetune-test", f"run-{i}", {"lora": {"r": 16, "alpha": 32}, "lr": 5e-5}) as run:
            run.log_metrics({"loss": 3.0 - i}, step=0)
            run.log_metrics({"loss": 2.0 - i, "bleu4": bleu}, step=1)
            run.log_artifact(tmp_path / "curve.txt")
            run.set_tags({"app": "finance"})
            run_ids.append(run.run_id)

    assert registry.register("finance-test", v1_dir, run_ids[0], tags={"kind": "adapter"}) == 1
    assert registry.register("finance-test", v2_dir, run_ids[1]) == 2
    registry.set_alias("finance-test", "champion", 1)
    registry.set_alias("finance-test", "challenger", 2)

    champion = registry.get_alias("finance-test", "champion")
    assert champion.version == 1 and champion.path == v1_dir.resolve()
    assert champion.run_id == run_ids[0] and champion.tags == {"kind": "adapter"}
    assert champion.metrics == {"loss": 2.0, "bleu4": 10.5}  # latest value per metric
    assert registry.run_metrics(run_ids[1]) == {"loss": 1.0, "bleu4": 12.25}
    assert registry.metric_history(run_ids[0], "loss") == [(0, 3.0), (1, 2.0)]
    assert registry.run_params(run_ids[0]) == {"lora.r": "16", "lora.alpha": "32", "lr": "5e-05"}

    # Promotion moves the alias; the old champion keeps its version but loses the alias.
    registry.set_alias("finance-test", "champion", 2)
    versions = registry.versions("finance-test")
    assert [v.version for v in versions] == [1, 2]
    assert versions[0].aliases == () and set(versions[1].aliases) == {"champion", "challenger"}
    assert "finance-test" in registry.models()


def test_failed_run_is_marked_failed(registry):
    from mlflow.tracking import MlflowClient

    with pytest.raises(RuntimeError, match="boom"):
        with registry.start_run("finetune-test", "doomed", {}) as run:
            run_id = run.run_id
            raise RuntimeError("boom")
    status = MlflowClient(tracking_uri=registry.tracking_uri).get_run(run_id).info.status
    assert status == "FAILED"


def test_missing_things_and_bad_names_are_clear(registry, tmp_path):
    assert registry.get_alias("never-registered", "champion") is None
    assert registry.versions("never-registered") == []
    with pytest.raises(InputError, match="invalid model name 'bad name/x'"):
        registry.register("bad name/x", tmp_path, None)
    with pytest.raises(InputError, match="path does not exist"):
        registry.register("ok-name", tmp_path / "absent", None)
    registry.register("alias-test", tmp_path, None)
    with pytest.raises(InputError, match="has no version 7"):
        registry.set_alias("alias-test", "champion", 7)
    with pytest.raises(InputError, match="invalid alias"):
        registry.set_alias("alias-test", "not an alias", 1)
    with pytest.raises(InputError, match="unknown MLflow run"):
        registry.run_metrics("0" * 32)


def test_from_settings_uses_dsv_home(tmp_path):
    from core.registry import Registry
    from shared.settings import Settings

    registry = Registry.from_settings(Settings(home=tmp_path, mlflow_uri=None))
    assert registry.tracking_uri == f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    with registry.start_run("build", "r", {"a": 1}) as run:
        run.log_text("hello", "samples.txt")
    assert (tmp_path / "mlflow" / "mlflow.db").exists()
    assert list((tmp_path / "mlflow" / "artifacts").rglob("samples.txt"))
