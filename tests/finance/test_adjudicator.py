"""The DeepSeek adjudicator: against the real model server, and its labelled fallback over Kafka."""
from __future__ import annotations

import json
import threading

from apps.finance.llm import AdjudicatorConfig, adjudicate, chat_record, run_adjudicator, score_prompt
from apps.finance.pipeline import dumps
from apps.finance.stream import TOPIC_ADJUDICATIONS, TOPIC_ALERTS
from shared.broker import free_port
from tests.finance.conftest import produce, read_until_keys, synthetic_records, unique


def _alerts(n: int) -> list[dict]:
    return [{"tx_id": r["tx_id"], "score": 0.9, "alert": True, "reasons": ["new device for this account"],
             "model": "fast-hgb-v1", "tx": r} for r in synthetic_records(n, seed=21)[:n]]


def test_adjudicates_with_the_finance_adapter_on_the_real_server(model_server):
    from core.client import ModelClient

    client = ModelClient(model_server.base_url, model_server.api_keys["finance"], timeout=60)
    alert = _alerts(1)[0]
    row = adjudicate(client, alert, "finance")
    assert row["source"] == "model" and row["label"] in ("fraud", "legit")
    assert 0.0 <= row["fraud_probability"] <= 1.0 and row["reason"]
    # The same prompt scored directly: the verdict is the server's, not a copy of the fast tier's.
    probs = client.score("finance", score_prompt(alert), ["fraud", "legit"])
    assert abs(sum(probs.values()) - 1) < 1e-6 and row["label"] == max(probs, key=probs.get)


def test_recent_history_is_the_same_accounts_previous_transactions():
    import numpy as np

    from apps.finance.llm import question, recent_history

    cols = {"ts": np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]), "account": np.array(["a", "b", "a", "a", "b", "a"]),
            "type": np.array(["PAYMENT"] * 5 + ["TRANSFER"]), "amount": np.arange(1.0, 7.0),
            "country": np.array(["GB"] * 6), "device": np.array(["d1", "d2", "d1", "d9", "d2", "d1"])}
    hist = recent_history(cols, np.array([5, 1, 0]), k=2)
    assert [h["ts"] for h in hist[0]] == [4.0, 3.0]      # newest first, at most k, only account a
    assert hist[1] == [] and hist[2] == []                 # first transactions have no history
    text = question({"tx": {k: v[5].item() for k, v in cols.items()}, "score": 0.5, "history": hist[0]})
    assert "History: 0 min ago PAYMENT 4 in GB on another device; 0 min ago PAYMENT 3 in GB on the same device." in text


def test_training_record_shape():
    rec = chat_record(_alerts(1)[0], True, "card_testing")
    assert [m["role"] for m in rec["messages"]] == ["system", "user", "assistant"]
    assert rec["messages"][2]["content"].startswith("fraud: ")


def test_falls_back_when_the_server_is_down(broker, tmp_path):
    alerts = _alerts(5)
    produce(broker.bootstrap, TOPIC_ALERTS, [dumps(a) for a in alerts], [a["tx_id"].encode() for a in alerts])
    stop = threading.Event()
    cfg = AdjudicatorConfig(broker.bootstrap, f"http://127.0.0.1:{free_port()}/v1", group=unique("adj"),
                            idle_exit_s=3, sink_path=tmp_path / "dash.db", timeout_s=2)
    thread = threading.Thread(target=run_adjudicator, args=(cfg, stop), daemon=True)
    thread.start()
    try:
        msgs = read_until_keys(broker.bootstrap, TOPIC_ADJUDICATIONS, {a["tx_id"] for a in alerts}, timeout_s=60)
    finally:
        stop.set()
        thread.join(30)
    rows = [json.loads(m.value()) for m in msgs]
    assert {r["tx_id"] for r in rows} == {a["tx_id"] for a in alerts}
    assert all(r["source"] == "fallback" and r["reason"].startswith("[fallback") for r in rows)
    assert all("new device" in r["reason"] and r["label"] == "fraud" for r in rows)


def test_adapter_config_is_a_valid_two_stage_curriculum():
    from pathlib import Path

    from core.finetune.config import check_components, load_config

    cfg = load_config(Path(__file__).resolve().parents[2] / "apps" / "finance" / "finetune.yaml")
    check_components(cfg)
    assert cfg.adapter_name == "finance"
    assert [s.name for s in cfg.stages()] == ["synthetic", "real-pseudo-labelled"]
