"""Fixtures for the manufacturing tests: a small SYNTHETIC fleet and a health model trained on it
(real encoder, real contrastive training, just few steps), shared by the whole session."""
from __future__ import annotations

import pytest

# Small but real: 30 machines x 4 days for training, a different seed for held-out checks.
TRAIN_FLEET = {"devices": 30, "days": 4.0, "seed": 0}
HELDOUT_FLEET = {"devices": 30, "days": 4.0, "seed": 11}


@pytest.fixture(scope="session")
def train_fleet():
    from apps.manufacturing.simulate import SimConfig, simulate_fleet

    return simulate_fleet(SimConfig(**TRAIN_FLEET))


@pytest.fixture(scope="session")
def heldout_fleet():
    from apps.manufacturing.simulate import SimConfig, simulate_fleet

    return simulate_fleet(SimConfig(**HELDOUT_FLEET, fault_fraction=0.6))


@pytest.fixture(scope="session")
def trained_model_dir(tmp_path_factory, train_fleet):
    from apps.manufacturing.model import TrainConfig
    from apps.manufacturing.pipeline import PipelineConfig, normal_windows_from_grid, train_health_model

    cfg = PipelineConfig(train=TrainConfig(steps=60, batch_size=64), max_train_windows=6000,
                         reference_size=1024)
    windows = normal_windows_from_grid(train_fleet.values, train_fleet.ts, cfg,
                                       train_fleet.labels["onset_ts"].to_numpy())
    model = train_health_model(windows, cfg, progress=False)
    return model.save(tmp_path_factory.mktemp("mfg") / "model")


@pytest.fixture(scope="session")
def trained_model(trained_model_dir):
    from apps.manufacturing.pipeline import HealthModel

    return HealthModel.load(trained_model_dir)
