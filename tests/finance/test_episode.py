"""Episode context: the live path (scorer watch list -> fraud.alerts/fraud.context -> EpisodeBuffer) shows
the adjudicator exactly what the offline builder (training data, adjudicator_eval) shows it."""
from __future__ import annotations

import numpy as np
import pytest

from apps.finance.adjudicator_data import flag_set
from apps.finance.data import GeneratorConfig, columns_to_records, generate_columns
from apps.finance.episode import (
    ALERT,
    BELOW,
    FLAGGED,
    EpisodeBuffer,
    Neighbour,
    Thresholds,
    neighbours_from_columns,
    render,
)
from apps.finance.features import featurize_all
from apps.finance.model import FastScorer
from apps.finance.pipeline import BatchScorer


def _tx(tx_id, ts, account, device, type_="PAYMENT", amount=10.0, country="GB"):
    return {"tx_id": tx_id, "ts": ts, "account": account, "device": device, "type": type_, "amount": amount,
            "country": country, "counterparty": "M1", "currency": "GBP", "channel": "card", "mcc": "5411"}


def _flag(tx, alert=True, score=0.9):
    return {"tx_id": tx["tx_id"], "score": score, "alert": alert, "reasons": [], "tx": tx, "threshold": 0.5}


def test_live_buffer_sees_what_the_offline_builder_sees(fin_model):
    """Score a synthetic stream in micro-batches as the service does, replay its flags and context
    records into the buffer, and compare every flag's neighbours with the offline computation."""
    cols = generate_columns(GeneratorConfig(n=30_000, seed=5, fraud_rate=0.01))
    records = columns_to_records(cols, labelled=False)
    fast = FastScorer.load(fin_model)
    scorer = BatchScorer(fast, context_window_s=1800.0)
    buffer = EpisodeBuffer(window_s=1800.0, max_wait_s=1e9)
    live: dict[str, list[Neighbour]] = {}
    n_context = 0
    for start in range(0, len(records), 5000):
        batch = scorer.score_records(records[start:start + 5000])
        # context before flags within a batch: the buffer must not depend on arrival order across topics
        for record in batch.context:
            buffer.add_context(record)
        for flag in batch.flags:
            buffer.add_flag(flag, now=0.0)
        n_context += len(batch.context)
        live.update({a["tx_id"]: n for a, n in buffer.ready(now=0.0)})
    buffer.stream_ts = float("inf")  # end of stream: every remaining window is closed
    live.update({a["tx_id"]: n for a, n in buffer.ready(now=0.0)})

    X = featurize_all(cols)
    offline = flag_set(cols, X, fast.predict_proba(X), Thresholds(fast.threshold, fast.review_at), window_s=1800.0)
    assert len(offline) > 20 and n_context > 0
    assert set(live) == {a["tx_id"] for a in offline.alerts}
    for alert, neighbours in zip(offline.alerts, offline.neighbours):
        assert live[alert["tx_id"]] == neighbours, alert["tx_id"]
        assert render(alert["tx"], live[alert["tx_id"]]) == render(alert["tx"], neighbours)
    assert any(neighbours for neighbours in offline.neighbours), "some flags must have an episode"


def test_neighbours_rules():
    cols = {k: np.asarray(v) for k, v in {
        "ts": [0.0, 100.0, 200.0, 300.0, 400.0, 5000.0],
        "account": ["a", "a", "b", "a", "c", "a"],
        "device": ["d1", "d1", "d1", "d2", "d9", "d1"],
        "type": ["PAYMENT", "TRANSFER", "CASH_OUT", "PAYMENT", "PAYMENT", "PAYMENT"],
        "amount": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0], "country": ["GB"] * 5 + ["FR"]}.items()}
    scores = np.array([0.01, 0.9, 0.01, 0.3, 0.9, 0.01])
    (n,) = neighbours_from_columns(cols, scores, [1], Thresholds(0.5, 0.2), window_s=1000.0)
    # before the flag only flagged rows count (row 0 is below review); after: every row of the account
    # (row 3, any device) and the device's other accounts (row 2); row 4 shares nothing; row 5 is too late
    assert n == [Neighbour(200.0, True, "PAYMENT", 4.0, "GB", FLAGGED),
                 Neighbour(100.0, False, "CASH_OUT", 3.0, "GB", BELOW)]
    text = render({"country": "GB"}, n, 1000.0)
    assert "same account after: 3 min payment 4 review" in text and "other account after: 2 min cash out 3" in text
    assert "same account before: no alert" in text


def test_buffer_waits_for_the_window_and_commits_only_what_it_no_longer_holds():
    buffer = EpisodeBuffer(window_s=600.0, max_wait_s=30.0)
    flag = _flag(_tx("f", 1000.0, "a", "d"))
    buffer.add_flag(flag, now=0.0, position=("fraud.alerts", 0, 7))
    buffer.add_context({"tx_id": "c1", "score": 0.0, "tx": _tx("c1", 1300.0, "a", "d", "CASH_OUT")},
                       position=("fraud.context", 1, 3))
    assert buffer.ready(now=1.0) == []                      # stream time 1300: window still open
    safe = buffer.commit_offsets({("fraud.alerts", 0): 8, ("fraud.context", 1): 4})
    assert safe == {("fraud.alerts", 0): 7, ("fraud.context", 1): 3}
    buffer.add_context({"tx_id": "c2", "score": 0.0, "tx": _tx("c2", 1700.0, "z", "other")})
    ((alert, neighbours),) = buffer.ready(now=2.0)          # stream time 1700 >= 1000 + 600
    assert alert["tx_id"] == "f" and [n.type for n in neighbours] == ["CASH_OUT"]
    # a replayed context record (at-least-once upstream) is counted once
    buffer.add_flag(_flag(_tx("g", 1750.0, "b", "e")), now=2.0)
    for _ in range(2):
        buffer.add_context({"tx_id": "c3", "score": 0.0, "tx": _tx("c3", 1800.0, "b", "e")})
    buffer.add_context({"tx_id": "late", "score": 0.0, "tx": _tx("late", 1760.0, "q", "q")})
    ((alert, neighbours),) = buffer.ready(now=40.0)         # wall-clock bound: a quiet stream still gets verdicts
    assert alert["tx_id"] == "g" and len(neighbours) == 1
    assert len(buffer) == 0


@pytest.mark.parametrize("alert, level", [(True, ALERT), (False, FLAGGED)])
def test_flags_before_count_with_their_level(alert, level):
    buffer = EpisodeBuffer(window_s=600.0, max_wait_s=1e9)
    buffer.add_flag(_flag(_tx("first", 100.0, "a", "d"), alert=alert), now=0.0)
    buffer.add_flag(_flag(_tx("second", 400.0, "a", "d")), now=0.0)
    buffer.add_context({"tx_id": "x", "score": 0.0, "tx": _tx("x", 2000.0, "z", "z")})
    verdicts = dict((a["tx_id"], n) for a, n in buffer.ready(now=0.0))
    assert [n.level for n in verdicts["second"]] == [level]       # before: the earlier flag
    assert [n.dt_s for n in verdicts["first"]] == [300.0]         # after: the later flag
