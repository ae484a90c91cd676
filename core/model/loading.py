"""Load any Hugging Face causal-LM checkpoint directory from disk, with its tokenizer; never download.

Every failure names the file at fault, and load time is both returned and exported as a metric.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.io import InputError
from shared.metrics import MODEL_LOAD_SECONDS

log = logging.getLogger(__name__)

WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.gguf", "*.pt")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    path: Path
    load_seconds: float

    @property
    def name(self) -> str:
        return self.path.name


def check_checkpoint_dir(path: str | Path) -> Path:
    """Raise ``InputError`` naming what is missing or corrupt in a checkpoint directory."""
    path = Path(path)
    if not path.is_dir():
        raise InputError(f"{path}: checkpoint directory not found")
    config = path / "config.json"
    if not config.exists():
        raise InputError(f"{config}: missing (not a Hugging Face checkpoint directory)")
    try:
        json.loads(config.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise InputError(f"{config}: corrupt JSON ({exc})") from None
    if not any(next(path.glob(p), None) for p in WEIGHT_PATTERNS):
        raise InputError(f"{path}: no weight files (*.safetensors / *.bin)")
    if not any((path / f).exists() for f in TOKENIZER_FILES):
        raise InputError(f"{path}: missing tokenizer files (expected one of {', '.join(TOKENIZER_FILES)})")
    return path


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    path = Path(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:  # transformers raises many types; name the directory
        raise InputError(f"{path}: cannot load tokenizer ({type(exc).__name__}: {exc})") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def load_model(path: str | Path, *, dtype: str = "float32", device: str = "cpu") -> LoadedModel:
    """Load model and tokenizer from ``path`` (local files only) and record the load time."""
    import torch
    from transformers import AutoModelForCausalLM

    path = check_checkpoint_dir(path)
    start = time.perf_counter()
    tokenizer = load_tokenizer(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(path), local_files_only=True, dtype=getattr(torch, dtype)
        )
    except Exception as exc:
        raise InputError(f"{path}: cannot load weights ({type(exc).__name__}: {exc})") from None
    model.to(device).eval()
    seconds = time.perf_counter() - start
    MODEL_LOAD_SECONDS.labels(model=path.name).observe(seconds)
    log.info("loaded %s in %.2fs (%.1fM parameters)", path, seconds,
             sum(p.numel() for p in model.parameters()) / 1e6)
    return LoadedModel(model=model, tokenizer=tokenizer, path=path, load_seconds=seconds)
