"""The DeepSeek adjudicator: prompts, against the real model server, and over Kafka behind the real scorer."""
from __future__ import annotations

import json
import threading

from apps.finance.episode import Neighbour
from apps.finance.llm import (
    AdjudicatorConfig,
    Calibration,
    adjudicate,
    chat_record,
    question,
    run_adjudicator,
    score_prompt,
    score_prompt_from_record,
)
from apps.finance.pipeline import dumps
from apps.finance.stream import TOPIC_ADJUDICATIONS, TOPIC_ALERTS, TOPIC_TX
from shared.broker import free_port
from tests.finance.conftest import produce, produce_records, read_until_keys, synthetic_records, unique


def _alerts(n: int) -> list[dict]:
    return [{"tx_id": r["tx_id"], "score": 0.9, "alert": True, "reasons": ["new device for this account"],
             "model": "fast-hgb-v1", "tx": r, "threshold": 0.6} for r in synthetic_records(n, seed=21)[:n]]


EPISODE = [Neighbour(240.0, True, "CASH_OUT", 480.0, "NG", 0), Neighbour(-60.0, False, "PAYMENT", 3.0, "GB", 2)]


def test_adjudicates_with_the_finance_adapter_on_the_real_server(model_server):
    from core.client import ModelClient

    client = ModelClient(model_server.base_url, model_server.api_keys["finance"], timeout=60)
    alert = _alerts(1)[0]
    row = adjudicate(client, alert, EPISODE, "finance")
    assert row["source"] == "model" and row["label"] in ("fraud", "legit") and row["episode_size"] == 2
    assert 0.0 <= row["fraud_probability"] <= 1.0 and row["reason"]
    # The same prompt scored directly: the verdict is the server's at the cut, not a copy of the fast tier's.
    probs = client.score("finance", score_prompt(alert, EPISODE), ["fraud", "legit"])
    assert abs(sum(probs.values()) - 1) < 1e-6
    assert row["label"] == ("fraud" if probs["fraud"] >= 0.5 else "legit")
    assert abs(row["model_probability"] - probs["fraud"]) < 1e-4 and row["fraud_probability"] == row["model_probability"]
    for cut in (0.0, 1.01):  # the calibration's cut, not the argmax, decides
        verdict = adjudicate(client, alert, EPISODE, "finance", calibration=Calibration(cut=cut))
        assert verdict["label"] == ("fraud" if cut == 0.0 else "legit")


def test_calibration_combines_the_adapter_with_the_fast_tier():
    assert abs(Calibration().probability(0.9, 0.5, 0.3) - 0.3) < 1e-9     # default: the adapter alone
    cal = Calibration(fast_weight=2.0, model_weight=1.0, bias=0.0, cut=0.5)
    at_threshold = cal.probability(0.5, 0.5, 0.5)
    assert abs(at_threshold - 0.5) < 1e-9                                  # score at its threshold: neutral
    assert cal.probability(0.9, 0.5, 0.5) > at_threshold > cal.probability(0.2, 0.5, 0.5)
    assert cal.probability(0.5, 0.5, 0.9) > at_threshold


def test_prompt_shows_the_episode_and_no_identifiers():
    alert = _alerts(1)[0]
    text = question(alert, EPISODE)
    tx = alert["tx"]
    assert tx["account"] not in text and tx["device"] not in text and tx["counterparty"] not in text
    assert "1.5 times the alert level: alert" in text
    assert "same account after: 4 min cash out 480 in NG" in text
    assert "same device, other account before: 1 min payment 3" in text and "alert" in text
    rec = chat_record(alert, EPISODE, True, "card_testing")
    assert [m["role"] for m in rec["messages"]] == ["system", "user", "assistant"]
    assert rec["messages"][2]["content"].startswith("fraud: ")
    assert chat_record(alert, EPISODE, False)["messages"][2]["content"].startswith("legit: ")
    # validation records are scored with exactly the prompt the adapter sees in service
    assert score_prompt_from_record(rec) == score_prompt(alert, EPISODE)


def test_prompt_matches_the_chat_template_the_adapter_is_trained_with(tiny_model_dir):
    """The scored prompt is the chat template's rendering of the record up to the assistant's answer."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    rec = chat_record(_alerts(1)[0], EPISODE, True)
    enc = tok.apply_chat_template(rec["messages"], tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    first_answer_token = list(enc["assistant_masks"]).index(1)
    assert list(enc["input_ids"][:first_answer_token]) == tok(score_prompt_from_record(rec)).input_ids


def test_falls_back_when_the_server_is_down(broker, tmp_path):
    alerts = _alerts(5)
    produce(broker.bootstrap, TOPIC_ALERTS, [dumps(a) for a in alerts], [a["tx_id"].encode() for a in alerts])
    stop = threading.Event()
    cfg = AdjudicatorConfig(broker.bootstrap, f"http://127.0.0.1:{free_port()}/v1", group=unique("adj"),
                            idle_exit_s=3, sink_path=tmp_path / "dash.db", timeout_s=2, max_wait_s=1.0)
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


def test_scorer_and_adjudicator_over_kafka_with_the_real_model(broker, fin_model, model_server):
    """The scorer writes flags and the transactions around them; the adjudicator decides every flag with
    the model, after its episode window, and some verdicts rest on a non-empty episode."""
    from apps.finance.data import GeneratorConfig, columns_to_records, generate_columns
    from apps.finance.service import ScorerConfig, run_scorer
    from apps.finance.stream import TOPIC_CONTEXT
    from tests.finance.conftest import read_topic, topic_size

    records = columns_to_records(generate_columns(GeneratorConfig(n=4000, seed=31, fraud_rate=0.005)), labelled=False)
    produce_records(broker.bootstrap, TOPIC_TX, records)
    stop = threading.Event()
    scorer = threading.Thread(target=run_scorer, args=(ScorerConfig(
        broker.bootstrap, fin_model, group=unique("s"), batch_size=500, idle_exit_s=8), stop), daemon=True)
    scorer.start()
    scorer.join(120)
    n_flags, n_context = topic_size(broker.bootstrap, TOPIC_ALERTS), topic_size(broker.bootstrap, TOPIC_CONTEXT)
    assert 3 <= n_flags <= 80 and n_context > 0, (n_flags, n_context)
    flags = {m.key().decode() for m in read_topic(broker.bootstrap, TOPIC_ALERTS, until=n_flags)}
    adjudicator = threading.Thread(target=run_adjudicator, args=(AdjudicatorConfig(
        broker.bootstrap, model_server.base_url, model_server.api_keys["finance"], group=unique("a"),
        idle_exit_s=5, max_wait_s=3.0), stop), daemon=True)
    adjudicator.start()
    try:
        msgs = read_until_keys(broker.bootstrap, TOPIC_ADJUDICATIONS, flags, timeout_s=240)
    finally:
        stop.set()
        adjudicator.join(60)
    rows = {m.key().decode(): json.loads(m.value()) for m in msgs}
    assert set(rows) == flags
    assert all(r["source"] == "model" and r["label"] in ("fraud", "legit") for r in rows.values())
    assert any(r["episode_size"] for r in rows.values())


def test_adapter_config_is_a_valid_two_stage_curriculum():
    from pathlib import Path

    from core.finetune.config import check_components, load_config

    cfg = load_config(Path(__file__).resolve().parents[2] / "apps" / "finance" / "finetune.yaml")
    check_components(cfg)
    assert cfg.adapter_name == "finance"
    assert [s.name for s in cfg.stages()] == ["synthetic", "real-pseudo-labelled"]
