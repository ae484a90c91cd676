"""Tenants: API keys map to one vertical team each (or admin); a tenant may use the base model and its
own adapters only.

Keys come from the environment (``DSV_API_KEYS="key1:finance,key2:admin"``) and/or a file (one
``key:tenant`` per line, ``#`` comments) — never from the repository. With no key configured at all
the server runs open (every caller is admin), like vLLM without ``--api-key``; it logs a warning.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from core.serving.protocol import ServingError
from shared.io import InputError

log = logging.getLogger(__name__)

ADMIN = "admin"
ENV_VAR = "DSV_API_KEYS"


@dataclass(frozen=True)
class Tenant:
    name: str

    @property
    def is_admin(self) -> bool:
        return self.name == ADMIN


def adapter_owner(adapter: str) -> str:
    """The vertical an adapter belongs to: ``finance``, ``finance@3``, ``finance-fraud-v2`` -> finance."""
    return re.split(r"[@\-_.]", adapter, maxsplit=1)[0]


def may_use(tenant: Tenant, adapter: str | None) -> bool:
    """Base model (``adapter is None``): everyone; an adapter: its own vertical and admin."""
    return adapter is None or tenant.is_admin or adapter_owner(adapter) == tenant.name


def _parse_pairs(pairs, source: str) -> dict[str, Tenant]:
    keys: dict[str, Tenant] = {}
    for where, pair in pairs:
        pair = pair.strip()
        if not pair or pair.startswith("#"):
            continue
        key, sep, tenant = pair.rpartition(":")
        if not sep or not key.strip() or not tenant.strip():
            raise InputError(f"{source}{where}: expected 'key:tenant', got {pair[:40]!r}")
        keys[key.strip()] = Tenant(tenant.strip())
    return keys


class TenantKeys:
    def __init__(self, keys: dict[str, Tenant]):
        self._keys = dict(keys)

    @property
    def open(self) -> bool:
        return not self._keys

    @classmethod
    def load(cls, keys_file: Path | None = None, env: dict[str, str] | None = None) -> "TenantKeys":
        env = os.environ if env is None else env
        keys: dict[str, Tenant] = {}
        if env.get(ENV_VAR):
            keys.update(_parse_pairs(((f" item {i + 1}", p) for i, p in enumerate(env[ENV_VAR].split(","))),
                                     ENV_VAR))
        if keys_file is not None:
            if not keys_file.is_file():
                raise InputError(f"{keys_file}: API keys file not found")
            lines = keys_file.read_text(encoding="utf-8").splitlines()
            keys.update(_parse_pairs(((f":{n}", line) for n, line in enumerate(lines, start=1)), str(keys_file)))
        if not keys:
            log.warning("no API keys configured (%s or --api-keys-file): the server is OPEN, every caller is admin",
                        ENV_VAR)
        return cls(keys)

    def authenticate(self, authorization: str | None) -> Tenant:
        if self.open:
            return Tenant(ADMIN)
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ServingError(401, "Missing API key: send 'Authorization: Bearer <key>'.",
                               "authentication_error", code="missing_api_key")
        tenant = self._keys.get(token.strip())
        if tenant is None:
            raise ServingError(401, "Invalid API key.", "authentication_error", code="invalid_api_key")
        return tenant
