"""Every fine-tuning YAML in the repository validates, and its components instantiate (torchtune's check).

Load-time validation binds each component's kwargs to the real signature of what it names; here the
PEFT component is also built against a real DeepseekV3 model so that target module names are checked.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from core.finetune.config import (
    RECIPE_SUPPLIED_ARGS,
    check_component,
    instantiate,
    load_config,
)

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted([*REPO.glob("core/finetune/configs/*.yaml"), *REPO.glob("apps/*/finetune.yaml")])


def test_configs_exist():
    assert REPO / "core/finetune/configs/lora_tiny.yaml" in CONFIGS


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(REPO)))
def test_config_validates_and_components_instantiate(path, tiny_model_dir, tmp_path):
    import torch

    from core.model.loading import load_model

    config = load_config(path, home=tmp_path)  # unknown keys / bad types / bad kwargs raise here
    for section in RECIPE_SUPPLIED_ARGS:
        check_component(section, getattr(config, section), str(path))
    model = load_model(tiny_model_dir).model
    peft_config = instantiate("peft", config.peft, model=model)  # checks target modules exist
    assert peft_config.task_type == "CAUSAL_LM"
    params = [torch.nn.Parameter(torch.zeros(2))]
    optimizer = instantiate("optimizer", config.optimizer, params=params)
    instantiate("lr_scheduler", config.lr_scheduler, optimizer=optimizer, num_training_steps=10)
    assert config.stages()  # data.train or a curriculum is set
