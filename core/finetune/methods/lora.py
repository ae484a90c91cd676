"""LoRA (``peft.LoraConfig``) with the product's reference settings as defaults.

DeepSeek-V3's MLA attention has no ``q_proj``/``v_proj``: the query goes through a low-rank pair
``q_a_proj -> q_b_proj`` and keys/values through ``kv_a_proj_with_mqa -> kv_b_proj`` (whose output
holds K-nope and V together). So the classic "q_proj, v_proj" targets map to ``q_a_proj``,
``q_b_proj`` and ``kv_b_proj``. PEFT has no default targets for deepseek_v3, hence explicit names.
"""
from __future__ import annotations

from collections.abc import Sequence

from core.finetune.methods import register_method
from shared.io import InputError

DEFAULT_TARGETS = ("q_a_proj", "q_b_proj", "kv_b_proj")
#: MLP names that PEFT also applies to the routed experts, which transformers v5 stores as fused 3-D
#: parameters (``experts.gate_up_proj``, ``experts.down_proj``); LoRA there cannot use dropout.
EXPERT_MLP_NAMES = {"gate_proj", "up_proj", "down_proj", "gate_up_proj"}


def linear_module_names(model) -> list[str]:
    """Short names (last path component) of every ``nn.Linear`` in ``model``, sorted."""
    import torch

    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if isinstance(module, torch.nn.Linear) and name})


def check_targets(model, target_modules: Sequence[str]) -> list[str]:
    available = linear_module_names(model)
    unknown = [t for t in target_modules if t not in available]
    if unknown:
        raise InputError(f"peft.target_modules: unknown module(s) {', '.join(map(repr, unknown))} "
                         f"(Linear layers of this model: {', '.join(available)})")
    return list(target_modules)


@register_method("lora")
def lora(model, r: int = 16, lora_alpha: int = 32, lora_dropout: float = 0.1, bias: str = "none",
         target_modules: Sequence[str] = DEFAULT_TARGETS, modules_to_save: Sequence[str] | None = None,
         use_rslora: bool = False):
    """Build a ``LoraConfig`` for ``model`` (task CAUSAL_LM); target names are checked against it."""
    from peft import LoraConfig, TaskType

    has_fused_experts = any(p.ndim == 3 for _, p in model.named_parameters())
    if lora_dropout and has_fused_experts and EXPERT_MLP_NAMES & set(target_modules):
        raise InputError(f"peft: target_modules {sorted(EXPERT_MLP_NAMES & set(target_modules))} reach the fused "
                         f"MoE expert weights, where LoRA needs lora_dropout: 0 (got {lora_dropout})")
    return LoraConfig(
        task_type=TaskType.CAUSAL_LM, r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, bias=bias,
        target_modules=check_targets(model, target_modules),
        modules_to_save=list(modules_to_save) if modules_to_save else None, use_rslora=use_rslora,
    )
