"""Pure functions of the serving layer: key parsing, adapter ownership, registry discovery."""
from __future__ import annotations

import pytest

from core.serving.adapters import discover_adapters
from core.serving.auth import Tenant, TenantKeys, adapter_owner, may_use
from core.serving.protocol import ServingError
from shared.io import InputError


def test_keys_from_env_and_file(tmp_path):
    keys_file = tmp_path / "keys"
    keys_file.write_text("# team keys\nk2:legal\n\n")
    keys = TenantKeys.load(keys_file, env={"DSV_API_KEYS": "k1:finance, k0:admin"})
    assert keys.authenticate("Bearer k1") == Tenant("finance")
    assert keys.authenticate("bearer k2").name == "legal"
    assert keys.authenticate("Bearer k0").is_admin
    with pytest.raises(ServingError) as info:
        keys.authenticate("Bearer nope")
    assert info.value.status == 401
    keys_file.write_text("no-colon-here\n")
    with pytest.raises(InputError, match=r"keys:1"):
        TenantKeys.load(keys_file, env={})
    assert TenantKeys.load(None, env={}).authenticate(None).is_admin  # no keys configured: open server


def test_adapter_ownership():
    assert adapter_owner("finance@3") == "finance" and adapter_owner("legal-v2") == "legal"
    assert may_use(Tenant("finance"), None) and may_use(Tenant("finance"), "finance_fraud")
    assert not may_use(Tenant("finance"), "financex") and not may_use(Tenant("medical"), "legal")
    assert may_use(Tenant("admin"), "legal")


def test_discovery_includes_registry_versions(tmp_path):
    for rel in ("finance", "finance/versions/3", "legal@2", "not-an-adapter"):
        (tmp_path / rel).mkdir(parents=True)
    for rel in ("finance", "finance/versions/3", "legal@2"):
        (tmp_path / rel / "adapter_config.json").write_text("{}")
    assert sorted(discover_adapters(tmp_path)) == ["finance", "finance@3", "legal@2"]
