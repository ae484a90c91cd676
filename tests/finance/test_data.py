"""The transaction contract and the synthetic generator."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from apps.finance.data import (
    TYPOLOGIES,
    ContractError,
    GeneratorConfig,
    generate,
    generate_columns,
    parse_transaction,
    validate_transaction,
)

GOOD = {"tx_id": "t1", "ts": 1767225600.0, "account": "C1", "counterparty": "M2", "amount": 12.5,
        "currency": "EUR", "type": "PAYMENT", "channel": "card", "country": "DE", "device": "D1", "mcc": "5411"}


def test_generator_rates_typologies_and_contract():
    cols = generate_columns(GeneratorConfig(n=60_000, seed=3))
    assert len(cols["ts"]) == 60_000
    assert 0.001 <= cols["is_fraud"].mean() <= 0.005
    assert set(cols["typology"][cols["is_fraud"] == 1]) == set(TYPOLOGIES)
    assert (cols["typology"][cols["is_fraud"] == 0] == "").all()
    assert np.all(np.diff(cols["ts"]) >= 0), "stream order"
    assert np.all(cols["label_ts"] >= cols["ts"]), "labels arrive after the transaction"
    assert len(set(cols["tx_id"].tolist())) == 60_000
    for rec in generate(GeneratorConfig(n=2000, seed=3)):
        validate_transaction(rec)


def test_generator_is_seeded_and_drifts():
    a = generate_columns(GeneratorConfig(n=5000, seed=7))
    b = generate_columns(GeneratorConfig(n=5000, seed=7))
    c = generate_columns(GeneratorConfig(n=5000, seed=8))
    assert np.array_equal(a["amount"], b["amount"]) and not np.array_equal(a["amount"], c["amount"])
    flat = generate_columns(GeneratorConfig(n=40_000, seed=9))
    drifted = generate_columns(GeneratorConfig(n=40_000, seed=9, drift=1.0))
    late = lambda cols: cols["ts"] > np.quantile(cols["ts"], 0.8)
    assert np.median(drifted["amount"][late(drifted)]) > 1.2 * np.median(flat["amount"][late(flat)])


@pytest.mark.parametrize("patch, field", [
    ({"amount": -5}, "amount"), ({"amount": 0}, "amount"), ({"type": "STEAL"}, "type"),
    ({"channel": "pigeon"}, "channel"), ({"currency": "euro"}, "currency"), ({"country": "DEU"}, "country"),
    ({"mcc": "54a1"}, "mcc"), ({"account": "A" * 100_000}, "account"), ({"ts": "yesterday"}, "ts"),
    ({"amount": True}, "amount"), ({"is_fraud": 2}, "is_fraud"),
])
def test_validation_names_the_field(patch, field):
    with pytest.raises(ContractError, match=f"'{field}'"):
        validate_transaction({**GOOD, **patch})


def test_missing_field_and_bad_json():
    bad = dict(GOOD)
    del bad["device"]
    with pytest.raises(ContractError, match="missing field 'device'"):
        validate_transaction(bad)
    with pytest.raises(ContractError, match="not valid JSON"):
        parse_transaction(b"{nope")
    assert parse_transaction(json.dumps(GOOD)) == GOOD


def test_cli_generate(tmp_path):
    out = tmp_path / "tx.jsonl"
    run = subprocess.run([sys.executable, "-m", "core.cli", "finance", "generate", "--n", "3000", "--seed", "2",
                          "--out", str(out)], capture_output=True, text=True, check=False, timeout=60)
    assert run.returncode == 0, run.stderr
    lines = out.read_text().splitlines()
    assert len(lines) == 3000 and "is_fraud" in json.loads(lines[0])
    bad = subprocess.run([sys.executable, "-m", "core.cli", "finance", "generate", "--n", "0", "--out", str(out)],
                         capture_output=True, text=True, check=False, timeout=60)
    assert bad.returncode == 2 and "--n must be positive" in bad.stderr
    assert len(out.read_text().splitlines()) == 3000, "a failed run leaves the earlier file intact"
