"""LoRA adapters served beside the base model: discovery on disk, on-demand loading, LRU eviction.

All adapters live in ONE ``PeftModel`` around the shared base so that one forward pass can serve rows
for different adapters (PEFT's ``adapter_names=`` mixed-batch inference). Every load gets a fresh
internal slot name (``finance#2``): a reload or removal only retires the old slot, which is deleted
once the sequences still decoding with it have finished, so in-flight requests are never disturbed.

Thread model: ``resolve``/``names``/``register``/``remove`` may be called from any thread (they take
the lock and touch only bookkeeping); ``acquire``/``release``/``collect`` change the model's modules
and must run on the engine thread, between forward passes.
"""
from __future__ import annotations

import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from core.serving.metrics import ADAPTERS_LOADED, MODEL_LOAD_SECONDS

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"


class AdapterNotFound(LookupError):
    pass


@dataclass
class AdapterSlot:
    name: str            # public model id, e.g. "finance" or "finance@3"
    slot: str            # PEFT adapter name inside the shared PeftModel, unique per load
    path: Path
    load_seconds: float
    refs: int = 0        # sequences currently decoding with this slot
    retired: bool = False
    last_used: float = field(default_factory=time.monotonic)


def discover_adapters(adapters_dir: Path | None) -> dict[str, Path]:
    """``<dir>/<name>/`` and registry versions ``<dir>/<name>/versions/<v>/`` (served as ``name@v``)."""
    found: dict[str, Path] = {}
    if adapters_dir is None or not adapters_dir.is_dir():
        return found
    for child in sorted(adapters_dir.iterdir()):
        if not child.is_dir() or child.name.startswith("."):
            continue
        if (child / ADAPTER_CONFIG).exists():
            found[child.name] = child
        versions = child / "versions"
        if versions.is_dir():
            for version in sorted(versions.iterdir()):
                if (version / ADAPTER_CONFIG).exists():
                    found[f"{child.name}@{version.name}"] = version
    return found


class AdapterStore:
    def __init__(self, base_model, adapters_dir: Path | None, max_loaded: int = 8, quantized: bool = False,
                 registry_lookup: Callable[[str, str], Path | None] | None = None):
        self.model = base_model          # becomes a PeftModel on the first adapter load
        self.quantized = quantized       # int8 modules cannot go through PEFT's state-dict loading
        # ("finance", "3" | "champion") -> directory, for model ids naming registry versions/aliases.
        self._registry_lookup = registry_lookup
        self.adapters_dir = adapters_dir
        self.max_loaded = max_loaded
        self._lock = threading.Lock()
        self._registered: dict[str, Path] = {}    # added by an admin call (may live outside the dir)
        self._removed: set[str] = set()           # hidden by an admin call although on disk
        self._resident: OrderedDict[str, AdapterSlot] = OrderedDict()  # LRU order, newest last
        self._retired: list[AdapterSlot] = []
        self._generation = 0

    # -- any thread -----------------------------------------------------------------------------

    def available(self) -> dict[str, Path]:
        with self._lock:
            found = {k: v for k, v in discover_adapters(self.adapters_dir).items() if k not in self._removed}
            found.update(self._registered)
            return found

    def names(self) -> list[str]:
        return sorted(self.available())

    def resolve(self, name: str) -> Path:
        path = self.available().get(name)
        if path is None and "@" in name and self._registry_lookup is not None and name not in self._removed:
            path = self._from_registry(name)
        if path is None:
            raise AdapterNotFound(name)
        return path

    def _from_registry(self, name: str) -> Path | None:
        """``finance@3`` (a version) or ``finance@champion`` (an alias) via the model registry.

        A version never changes, so it is remembered; an alias is looked up each time, and a resident
        copy keeps serving until ``reload`` (the admin call to make after a promotion).
        """
        adapter, _, ref = name.partition("@")
        try:
            path = self._registry_lookup(adapter, ref)
        except Exception as exc:  # unknown name/version, registry unavailable: all mean "not found"
            log.info("registry lookup of %s failed: %s", name, exc)
            return None
        if path is None or not (Path(path) / ADAPTER_CONFIG).exists():
            return None
        if ref.isdigit():
            with self._lock:
                self._registered[name] = Path(path)
        return Path(path)

    def register(self, name: str, path: Path) -> None:
        """Add (or repoint) ``name``; a resident copy is retired so the next request loads the new one."""
        if not (path / ADAPTER_CONFIG).exists():
            raise AdapterNotFound(f"{path / ADAPTER_CONFIG}: not a PEFT adapter directory")
        with self._lock:
            self._registered[name] = path
            self._removed.discard(name)
            self._retire_locked(name)

    def reload(self, name: str) -> None:
        """Retire the resident copy so that the next request reads the files again."""
        self.resolve(name)
        with self._lock:
            self._retire_locked(name)

    def remove(self, name: str) -> None:
        self.resolve(name)
        with self._lock:
            self._registered.pop(name, None)
            self._removed.add(name)
            self._retire_locked(name)

    def status(self) -> list[dict]:
        with self._lock:
            slots = list(self._resident.values()) + list(self._retired)
            return [{"name": s.name, "slot": s.slot, "path": str(s.path), "in_flight": s.refs,
                     "retired": s.retired, "load_seconds": round(s.load_seconds, 4)} for s in slots]

    def _retire_locked(self, name: str) -> None:
        slot = self._resident.pop(name, None)
        if slot is not None:
            slot.retired = True
            self._retired.append(slot)

    # -- engine thread only ----------------------------------------------------------------------

    def acquire(self, name: str, path: Path | None = None) -> AdapterSlot:
        """The resident slot for ``name`` (loading it if needed), with one more in-flight reference.

        ``path`` is where ``name`` resolved when the request was accepted: a request queued before an
        admin removed the adapter is still served (from a slot retired as soon as it is done).
        """
        with self._lock:
            slot = self._resident.get(name)
            if slot is not None:
                self._resident.move_to_end(name)
        if slot is None:
            slot = self._load(name, path or self.resolve(name))
        slot.refs += 1
        slot.last_used = time.monotonic()
        return slot

    def release(self, slot: AdapterSlot) -> None:
        slot.refs -= 1

    def collect(self) -> None:
        """Delete retired slots nobody uses any more, then evict least-recently-used idle ones."""
        with self._lock:
            done = [s for s in self._retired if s.refs == 0]
            self._retired = [s for s in self._retired if s.refs > 0]
            idle = [s for s in self._resident.values() if s.refs == 0]
            excess = len(self._resident) - self.max_loaded
            evict = idle[:max(excess, 0)]  # OrderedDict order = least recently used first
            for slot in evict:
                del self._resident[slot.name]
        for slot in done + evict:
            self._delete(slot)

    def _load(self, name: str, path: Path) -> AdapterSlot:
        from peft import PeftModel

        self._generation += 1
        slot_name = f"{name}#{self._generation}"
        start = time.perf_counter()
        if self.quantized:
            self._load_by_copy(path, slot_name)
        elif isinstance(self.model, PeftModel):
            self.model.load_adapter(str(path), adapter_name=slot_name, is_trainable=False)
        else:
            self.model = PeftModel.from_pretrained(self.model, str(path), adapter_name=slot_name,
                                                   is_trainable=False)
        self.model.eval()
        seconds = time.perf_counter() - start
        MODEL_LOAD_SECONDS.labels(model=f"adapter:{name}").observe(seconds)
        slot = AdapterSlot(name=name, slot=slot_name, path=path, load_seconds=seconds)
        with self._lock:
            if name in self._removed:  # removed while this request was queued: serve it, then unload
                slot.retired = True
                self._retired.append(slot)
            else:
                self._resident[name] = slot
            ADAPTERS_LOADED.set(len(self._resident))
        log.info("loaded adapter %s from %s in %.3fs", name, path, seconds)
        return slot

    def _load_by_copy(self, path: Path, slot_name: str) -> None:
        """Inject empty LoRA layers, then copy the saved tensors in by name.

        PEFT's loader runs ``load_state_dict`` over the whole model, which int8 dynamic-quantized
        Linear modules reject (they expect their own scale/zero-point keys); copying parameter by
        parameter touches only the LoRA weights.
        """
        from peft import PeftConfig, PeftModel, get_peft_model
        from peft.utils import load_peft_weights

        config = PeftConfig.from_pretrained(str(path))
        config.inference_mode = True
        if isinstance(self.model, PeftModel):
            self.model.add_adapter(slot_name, config)
        else:
            self.model = get_peft_model(self.model, config, adapter_name=slot_name)
        params = dict(self.model.named_parameters())
        for key, value in load_peft_weights(str(path)).items():
            target = re.sub(r"\.(lora_[AB])\.weight$", lambda m: f".{m.group(1)}.{slot_name}.weight", key)
            if target not in params:
                raise ValueError(f"{path}: adapter tensor {key} matches no module of the base model")
            params[target].data.copy_(value)

    def _delete(self, slot: AdapterSlot) -> None:
        adapters = list(self.model.peft_config)
        if len(adapters) <= 1:
            return  # PEFT cannot drop its last adapter; an unused slot costs only its small weights
        if self.model.active_adapter == slot.slot:
            self.model.set_adapter(next(a for a in adapters if a != slot.slot))
        self.model.delete_adapter(slot.slot)
        with self._lock:
            ADAPTERS_LOADED.set(len(self._resident))
        log.info("unloaded adapter slot %s", slot.slot)
