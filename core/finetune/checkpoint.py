"""Resumable checkpoints: one ``state.pt`` (adapter, optimizer, scheduler, RNG, position) written atomically.

A kill at any moment leaves either the previous checkpoint or the new one, never a torn file (temp file
+ rename). Loading refuses a checkpoint written for a different config (by fingerprint).
"""
from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

from core.finetune.config import FinetuneConfig
from shared.io import InputError, atomic_path

CHECKPOINT_FILE = "state.pt"


def config_fingerprint(config: FinetuneConfig) -> str:
    """Identity of a run for resuming: everything but the switches that don't change training."""
    data = config.model_dump(mode="json", by_alias=True,
                             exclude={"training": {"resume", "log_every"}, "registry": True, "merge": True})
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]




def save_checkpoint(path: Path, model, optimizer, scheduler, position: dict, fingerprint: str) -> None:
    import torch
    from peft import get_peft_model_state_dict

    state = {
        "fingerprint": fingerprint,
        "adapter": get_peft_model_state_dict(model),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": {"torch": torch.get_rng_state(), "python": random.getstate(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
        "position": position,
    }
    with atomic_path(path) as tmp:  # a kill mid-write leaves the previous checkpoint intact
        torch.save(state, tmp)


def load_checkpoint(path: Path, model, optimizer, scheduler, fingerprint: str) -> dict:
    import torch
    from peft import set_peft_model_state_dict

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch.load raises many types for a torn or foreign file
        raise InputError(f"{path}: unreadable checkpoint ({exc}); delete it or set training.resume=false") from None
    if state["fingerprint"] != fingerprint:
        raise InputError(f"{path}: checkpoint belongs to a different config; delete it or set training.resume=false")
    set_peft_model_state_dict(model, state["adapter"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"]["torch"])
    random.setstate(state["rng"]["python"])
    if state["rng"].get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return state["position"]
