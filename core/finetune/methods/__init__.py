"""PEFT methods, registered by name (``peft: {_component_: lora, ...}`` in a config).

Each module in this package registers its builder with ``@register_method("name")``; the registry
imports every module here on first use, so adding a method means adding a module, never editing an
``if/elif``. A builder takes the base model (to check its targets against the real layer names) plus
the config's kwargs, and returns a ``peft.PeftConfig`` for ``peft.get_peft_model``.
"""
from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable

from shared.io import InputError

_METHODS: dict[str, Callable] = {}
_discovered = False


def register_method(name: str) -> Callable[[Callable], Callable]:
    def decorator(builder: Callable) -> Callable:
        if name in _METHODS and _METHODS[name] is not builder:
            raise ValueError(f"PEFT method {name!r} registered twice")
        _METHODS[name] = builder
        return builder
    return decorator


def _discover() -> None:
    global _discovered
    if not _discovered:
        for module in pkgutil.iter_modules(__path__):
            importlib.import_module(f"{__name__}.{module.name}")
        _discovered = True


def available_methods() -> list[str]:
    _discover()
    return sorted(_METHODS)


def get_method(name: str) -> Callable:
    _discover()
    try:
        return _METHODS[name]
    except KeyError:
        raise InputError(f"peft._component_: unknown PEFT method {name!r} "
                         f"(available: {', '.join(available_methods())})") from None
