"""Tenant identity in the legal service comes from the API key (core.serving.auth), not from the request."""
from __future__ import annotations

import pytest

from tests.legal.conftest import SECRET_TERM

KEYS = {"key-a": "firm-a", "key-b": "firm-b", "key-root": "admin"}


@pytest.fixture(scope="module")
def client(legal_kb):
    from fastapi.testclient import TestClient

    from apps.legal.service import create_app
    from core.serving.auth import Tenant, TenantKeys
    from shared.settings import Settings

    cfg, _, _ = legal_kb
    keys = TenantKeys({k: Tenant(t) for k, t in KEYS.items()})
    return TestClient(create_app(cfg, Settings(), keys=keys))


def _search(client, key, **params):
    return client.get("/search", params={"q": f"{SECRET_TERM} acquisition transfer", "k": 50, **params},
                      headers={"Authorization": f"Bearer {key}"} if key else {})


def test_a_key_only_ever_reads_its_own_tenant(client):
    ids_a = {h["doc_id"] for h in _search(client, "key-a").json()}
    ids_b = {h["doc_id"] for h in _search(client, "key-b").json()}
    assert "secret-a-1" in ids_a and "secret-b-1" not in ids_a
    assert "secret-b-1" in ids_b and "secret-a-1" not in ids_b


def test_naming_another_tenant_is_refused_not_honoured(client):
    r = _search(client, "key-a", tenant="firm-b")
    assert r.status_code == 403 and r.json()["error"]["code"] == "tenant_mismatch"
    assert "secret-b-1" not in r.text
    r = client.post("/ask", json={"question": f"{SECRET_TERM} transfer", "tenant": "firm-b"},
                    headers={"Authorization": "Bearer key-a"})
    assert r.status_code == 403
    r = client.post("/review", json={"text": "The supplier may share personal data with any third party.",
                                     "tenant": "firm-b"}, headers={"Authorization": "Bearer key-a"})
    assert r.status_code == 403
    # Naming one's own tenant is fine (a cross-check, not a grant).
    assert "secret-a-1" in {h["doc_id"] for h in _search(client, "key-a", tenant="firm-a").json()}


def test_missing_or_unknown_key_is_401(client):
    assert _search(client, None).status_code == 401
    assert _search(client, "not-a-key", tenant="firm-a").status_code == 401


def test_admin_key_acts_for_a_named_tenant_and_defaults_to_public(client):
    assert "secret-b-1" in {h["doc_id"] for h in _search(client, "key-root", tenant="firm-b").json()}
    public = {h["doc_id"] for h in _search(client, "key-root").json()}
    assert not public & {"secret-a-1", "secret-b-1"}
