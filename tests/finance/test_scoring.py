"""Features, the fast-tier model and the shared batch scorer (no Kafka)."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from apps.finance.data import GeneratorConfig, generate_columns, write_jsonl_fast
from apps.finance.features import FEATURE_NAMES, FeatureState, featurize_all
from apps.finance.model import FastScorer, metrics
from apps.finance.pipeline import BatchScorer, dumps
from shared.io import InputError


def test_wavefront_batches_match_one_at_a_time():
    """Micro-batched state updates give the same features as a message-at-a-time loop (except the
    cross-account ones, which are documented to become visible from the next batch)."""
    cols = generate_columns(GeneratorConfig(n=1500, seed=4, fraud_rate=0.005))
    batched = featurize_all(cols, batch_size=500)
    single = featurize_all(cols, batch_size=1)
    # Cross-account effects (money and transfers a counterparty received, a recipient's history) are
    # applied after each batch, so they are documented to become visible from the next batch on.
    cross_batch = {"log_inflow_1h", "cp_log_seen", "cp_log_received", "log_received"}
    same = [i for i, n in enumerate(FEATURE_NAMES) if n not in cross_batch]
    np.testing.assert_allclose(batched[:, same], single[:, same], rtol=1e-9, atol=1e-9)


def test_card_testing_burst_is_visible_within_one_batch():
    t0 = 1767225600.0
    batch = {"ts": t0 + np.arange(6) * 20.0, "account": np.array(["C1"] * 6), "counterparty": np.array(["M1"] * 6),
             "amount": np.full(6, 1.5), "type": np.array(["PAYMENT"] * 6), "channel": np.array(["online"] * 6),
             "country": np.array(["GB"] * 6), "device": np.array(["X1"] * 6), "mcc": np.array(["5999"] * 6)}
    X = FeatureState().transform(batch)
    burst = X[:, FEATURE_NAMES.index("acct_count_5m")]
    assert burst[0] == 0 and np.all(np.diff(burst) > 0.5) and burst[-1] > 3  # decayed, yet rising


def test_model_generalises_to_a_held_out_seed(fin_model):
    model = FastScorer.load(fin_model)
    test = generate_columns(GeneratorConfig(n=20_000, seed=99))
    m = metrics(test["is_fraud"].astype(int), model.predict_proba(featurize_all(test)), model.threshold)
    # Synthetic data; a 40-tree model trained on 20k rows. Random scoring would give AUPRC ~0.003.
    assert m["auprc"] > 0.5 and m["recall"] > 0.5, m


def test_model_file_errors(tmp_path, fin_model):
    with pytest.raises(InputError, match="no fast-tier model"):
        FastScorer.load(tmp_path / "missing.pkl")
    model = FastScorer.load(fin_model)
    target = tmp_path / "m.pkl"
    model.save(target)
    assert FastScorer.load(target).threshold == model.threshold
    assert not list(tmp_path.glob(".m.pkl.*")), "no temp file left behind"


def test_poison_batch_rejects_with_reasons(fin_model):
    good = [json.loads(line) for line in
            [dumps(r).decode() for r in
             __import__("apps.finance.data", fromlist=["generate"]).generate(GeneratorConfig(n=50, seed=5))]]
    for g in good:
        g.pop("is_fraud"), g.pop("typology"), g.pop("label_ts")
    raws = [dumps(g) for g in good[:10]]
    raws += [b"not json", dumps({k: v for k, v in good[10].items() if k != "amount"}),
             dumps({**good[11], "amount": -3.0}), dumps({**good[12], "account": "A" * 1_000_000}), b"[1,2]",
             dumps({**good[13], "ts": None})]
    raws += [dumps(g) for g in good[14:20]]
    result = BatchScorer(FastScorer.load(fin_model)).score_raw(raws)
    assert [o["tx_id"] for o in result.outputs] == [g["tx_id"] for g in good[:10] + good[14:20]]
    reasons = {r.index: r.reason for r in result.rejects}
    assert sorted(reasons) == [10, 11, 12, 13, 14, 15]
    assert "not valid JSON" in reasons[10] and "'amount'" in reasons[11] and "'amount'" in reasons[12]
    assert "'account'" in reasons[13] and "JSON object" in reasons[14] and "'ts'" in reasons[15]
    for o in result.outputs:
        assert set(o) == {"tx_id", "score", "alert", "reasons", "model"} and 0 <= o["score"] <= 1
        assert o["alert"] == (o["score"] >= FastScorer.load(fin_model).threshold - 1e-5) or o["alert"]


def test_cli_batch_scoring(tmp_path, fin_model):
    cols = generate_columns(GeneratorConfig(n=4000, seed=6))
    src = tmp_path / "tx.jsonl"
    write_jsonl_fast(src, cols, labelled=False)
    with open(src, "a") as fh:
        fh.write("garbage line\n")
    out = tmp_path / "scores.jsonl"
    run = subprocess.run([sys.executable, "-m", "core.cli", "finance", "score", "--input", str(src), "--output",
                          str(out), "--model", str(fin_model), "--batch-size", "700"],
                         capture_output=True, text=True, check=False, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "tx.jsonl:4001" in run.stderr and "skipped 1 bad lines" in run.stdout
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["tx_id"] for r in rows] == cols["tx_id"].tolist()
    alerts = [r for r in rows if r["alert"]]
    assert alerts and all(r["reasons"] for r in alerts)
    fraud_ids = set(cols["tx_id"][cols["is_fraud"] == 1].tolist())
    assert len(fraud_ids & {r["tx_id"] for r in alerts}) > len(fraud_ids) / 2


def test_compiled_feature_steps_match_the_numpy_reference():
    """The numba per-row kernel (the hot path) gives the numpy wavefront's features and state to the last
    bits: numba's log/exp come from LLVM's libm, numpy's (2.4+) from its own SIMD routines, which can
    differ by an ulp, so "equal" is a relative 1e-12 (bit-identical under numpy 2.3)."""
    from dataclasses import fields

    from apps.finance import features_jit

    assert features_jit.AVAILABLE, "features_jit.FEATURES must cover FEATURE_NAMES (else the slow path runs)"
    cols = generate_columns(GeneratorConfig(n=12_000, seed=8, fraud_rate=0.005))
    reference, compiled = FeatureState(), FeatureState()
    reference.compiled = False
    X_ref = featurize_all(cols, batch_size=1500, state=reference)
    X_fast = featurize_all(cols, batch_size=1500, state=compiled)
    np.testing.assert_allclose(X_fast, X_ref, rtol=1e-12, atol=0)
    for ref_state, fast_state in ((reference.acct, compiled.acct), (reference.dev, compiled.dev)):
        for f in fields(ref_state):
            np.testing.assert_allclose(getattr(fast_state, f.name), getattr(ref_state, f.name), rtol=1e-12, atol=0,
                                       err_msg=f.name)


def test_compiled_trees_give_sklearns_probabilities(fin_model):
    """The compiled tree walk returns scikit-learn's probabilities bit for bit, including missing values,
    unknown and negative category codes."""
    from apps.finance.fastpredict import compiled_for

    model = FastScorer.load(fin_model)
    X = featurize_all(generate_columns(GeneratorConfig(n=6000, seed=9)))
    X[:40, FEATURE_NAMES.index("type")] = -1          # the wrapper shifts negatives to a spare code
    X[40:80, FEATURE_NAMES.index("mcc")] = 77          # a category never seen in training
    X[80:120, FEATURE_NAMES.index("amount_zscore")] = np.nan
    X[120:160, FEATURE_NAMES.index("channel")] = np.nan
    compiled = compiled_for(model.classifier)
    assert compiled is not None
    expected = model.classifier.predict_proba(X)[:, 1]
    np.testing.assert_array_equal(compiled.predict_proba(X), expected)
    np.testing.assert_array_equal(model.predict_proba(X), expected)


def test_column_validation_agrees_with_the_record_validator():
    """The column-wise fast path accepts exactly what ``validate_transaction`` accepts, field by field."""
    from apps.finance.data import ContractError, generate, validate_transaction
    from apps.finance.pipeline import _decode, to_columns

    base = [{k: v for k, v in r.items() if k not in ("typology", "label_ts")}
            for r in generate(GeneratorConfig(n=60, seed=5))]
    variants = [("amount", "12"), ("amount", True), ("amount", 0), ("amount", 1e11), ("amount", 7),
                ("ts", -1.0), ("ts", "x"), ("ts", None), ("account", 123), ("account", ""), ("account", "A" * 129),
                ("account", "A" * 128), ("type", "payment"), ("type", "REFUND"), ("channel", "fax"),
                ("currency", "eur"), ("currency", "EU"), ("currency", "E1R"), ("country", "gb"), ("country", "GBR"),
                ("mcc", "54a1"), ("mcc", 5411), ("mcc", "541"), ("mcc", "٥٤١١"), ("device", ["D1"]),
                ("tx_id", "ü-\"quoted\"\\"), ("is_fraud", 2), ("is_fraud", None), ("is_fraud", True)]
    records = [dict(base[i]) for i in range(len(variants))]
    for rec, (k, v) in zip(records, variants):
        rec[k] = v
    records += [{k: v for k, v in base[40].items() if k != "mcc"}, [1, 2], "tx", base[41], base[42]]
    raws = [dumps(r) for r in records] + [b"{not json", b""]

    def accepted_by_validator(raw):
        try:
            validate_transaction(__import__("orjson").loads(raw))
            return True
        except (ContractError, ValueError):
            return False

    objs, bad = _decode(raws)
    cols, keep, rejects = to_columns(objs, bad)
    assert keep.tolist() == [i for i, r in enumerate(raws) if accepted_by_validator(r)]
    assert sorted(r.index for r in rejects) == [i for i in range(len(raws)) if i not in set(keep.tolist())]
    assert cols["tx_id"] == [objs[i]["tx_id"] for i in keep.tolist()]


def test_encoded_outputs_are_the_output_records(fin_model):
    """The stream's template serialisation gives exactly ``dumps`` of each output record (alerts too)."""
    from apps.finance.data import generate

    recs = [{k: v for k, v in r.items() if k not in ("is_fraud", "typology", "label_ts")}
            for r in generate(GeneratorConfig(n=3000, seed=10, fraud_rate=0.01))]
    recs[0]["tx_id"] = 'quote " back \\ ü \u2028'
    result = BatchScorer(FastScorer.load(fin_model)).score_records(recs)
    assert result.alert.any() and not result.alert.all()
    encoded = result.encoded()
    assert encoded == [dumps(o) for o in result.outputs]
    assert json.loads(encoded[0])["tx_id"] == recs[0]["tx_id"]
