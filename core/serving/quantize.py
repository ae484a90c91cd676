"""INT8 weight quantization for serving (``dsv serve --quantize int8``).

Uses PyTorch's dynamic quantization (``torch.ao.quantization.quantize_dynamic``): ``nn.Linear``
weights stored as int8, activations quantized on the fly. It is deprecated upstream in favour of
torchao, but torchao's int8 weight-only path is slower than fp32 on this AVX2 CPU without
``torch.compile`` (see NOTES.md); measured figures are in docs/benchmarks/serving.md.

What is NOT quantized, and why:
* the LoRA-targeted projections (``q_b_proj``/``kv_b_proj`` by default, or whatever the adapters on
  disk target): PEFT can only wrap a float ``nn.Linear``, and adapters must keep working;
* DeepSeek-V3's routed experts: transformers v5 stores them as fused 3-D parameters, not ``nn.Linear``.
"""
from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_LORA_TARGETS = frozenset({"q_b_proj", "kv_b_proj"})


def lora_targets(adapters_dir: Path | None) -> set[str]:
    """Module names targeted by any adapter under ``adapters_dir`` (plus the project defaults)."""
    from core.serving.adapters import ADAPTER_CONFIG, discover_adapters

    targets = set(DEFAULT_LORA_TARGETS)
    for path in discover_adapters(adapters_dir).values():
        try:
            config = json.loads((path / ADAPTER_CONFIG).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        modules = config.get("target_modules") or []
        targets.update([modules] if isinstance(modules, str) else modules)
    return targets


def quantize_int8(model, keep_float: set[str] | frozenset[str] = DEFAULT_LORA_TARGETS):
    """Quantize every ``nn.Linear`` to dynamic int8 except modules whose last name is in ``keep_float``."""
    import torch

    names = {name for name, module in model.named_modules()
             if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] not in keep_float}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the deprecation notice for torch.ao.quantization
        torch.ao.quantization.quantize_dynamic(model, qconfig_spec=names, dtype=torch.qint8, inplace=True)
    log.info("int8: quantized %d Linear layers; kept float: %s", len(names), ", ".join(sorted(keep_float)))
    return model
