"""The second tier: the DeepSeek adjudicator (the `finance` LoRA adapter behind the model server).

It consumes `fraud.alerts` in its own consumer group, off the hot path (the scorer never waits for it),
asks the server's scoring endpoint for P(fraud) vs P(legit) and the chat endpoint for the analyst's
reason, and writes `fraud.adjudications` keyed by tx_id. When the server cannot be reached the fast
tier's decision and reasons are passed on, marked ``source: "fallback"``.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.model.tokenizer import ASSISTANT, BOS, USER

log = logging.getLogger(__name__)

LABELS = ["fraud", "legit"]
SYSTEM = ("You are a payments fraud analyst. Decide whether the flagged transaction is fraud or legit and "
          "give a one-sentence reason an analyst can act on.")

TYPOLOGY_REASONS = {
    "account_takeover": "a new device moved most of the balance out and the money was cashed out within minutes",
    "card_testing": "a burst of tiny online payments at many merchants is a card-testing pattern",
    "compromised_device": "one device was used by several unrelated accounts within the hour",
    "money_mule": "the account passed on money it had just received, a money-mule hop",
    "geo_jump": "the card was used far from home too soon after a home purchase",
}


HISTORY_LEN = 4  # the account's previous transactions shown to the adjudicator


def question(alert: dict[str, Any]) -> str:
    tx = alert.get("tx", {})
    signals = "; ".join(alert.get("reasons") or []) or "none"
    text = (f"{tx.get('type')} of {tx.get('amount')} {tx.get('currency')} via {tx.get('channel')} in "
            f"{tx.get('country')} (mcc {tx.get('mcc')}), account {tx.get('account')} -> {tx.get('counterparty')}, "
            f"device {tx.get('device')}. Fast-tier score {float(alert.get('score', 0)):.2f}. "
            f"Signals: {signals}.")
    if "history" in alert:
        text += " " + render_history(tx, alert["history"])
    return text + " Fraud or legit?"


def render_history(tx: dict[str, Any], history: list[dict[str, Any]]) -> str:
    """The account's recent transactions, newest first, in words a small model can compare without
    matching identifiers: minutes ago, type, amount, country, and same/other device."""
    if not history:
        return "History: none (first transaction seen)."
    items = [f"{max(0.0, (float(tx.get('ts', h['ts'])) - float(h['ts'])) / 60):.0f} min ago {h['type']} "
             f"{float(h['amount']):.0f} in {h['country']} on {'the same' if h['device'] == tx.get('device') else 'another'}"
             f" device" for h in history]
    return "History: " + "; ".join(items) + "."


def recent_history(cols: dict[str, Any], rows, k: int = HISTORY_LEN) -> list[list[dict[str, Any]]]:
    """For the given rows of a time-sorted column set, the same account's up to ``k`` previous
    transactions (newest first): what the adjudicator knows beyond the fast tier's aggregates."""
    import numpy as np

    rows = np.asarray(rows, dtype=np.int64)
    order = np.lexsort((cols["ts"], cols["account"]))
    pos = np.empty(len(order), dtype=np.int64)
    pos[order] = np.arange(len(order))
    acct = cols["account"]
    out: list[list[dict[str, Any]]] = [[] for _ in range(len(rows))]
    alive = np.ones(len(rows), dtype=bool)
    for back in range(1, k + 1):
        p = pos[rows] - back
        ok = alive & (p >= 0)
        prev = order[np.where(ok, p, 0)]
        ok &= acct[prev] == acct[rows]
        alive = ok
        for i in np.flatnonzero(ok).tolist():
            j = int(prev[i])
            out[i].append({f: (cols[f][j].item() if hasattr(cols[f][j], "item") else cols[f][j])
                           for f in ("ts", "type", "amount", "country", "device")})
    return out


def score_prompt(alert: dict[str, Any]) -> str:
    """The chat-formatted prompt whose continuation is scored against the labels (same text the
    adapter was trained on: system, user turn, then the assistant's first word is the label)."""
    return f"{BOS}{SYSTEM}{USER}{question(alert)}{ASSISTANT}"


def chat_record(alert: dict[str, Any], is_fraud: bool, typology: str = "") -> dict:
    """One fine-tuning record: the assistant answers '<label>: <reason>'."""
    if is_fraud:
        answer = f"fraud: {TYPOLOGY_REASONS.get(typology, 'the pattern matches known fraud')}."
    else:
        answer = "legit: the signals are explained by the customer's usual behaviour (travel, a second device)."
    return {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question(alert)},
                         {"role": "assistant", "content": answer}]}


def fallback(alert: dict[str, Any], why: str) -> dict[str, Any]:
    return {"tx_id": alert["tx_id"], "label": "fraud" if alert.get("alert") else "legit",
            "fraud_probability": float(alert.get("score", 0.0)),
            "reason": f"[fallback: {why}] fast tier: " + "; ".join(alert.get("reasons") or []),
            "source": "fallback", "model": alert.get("model", "fast-tier")}


def adjudicate(client, alert: dict[str, Any], model: str = "finance", server_up: bool = True) -> dict[str, Any]:
    from core.client import ModelRequestError, ModelUnavailable

    if not server_up:
        return fallback(alert, "model server unavailable")
    try:
        probs = client.score(model, score_prompt(alert), LABELS)
        reason = client.chat(model, [{"role": "system", "content": SYSTEM},
                                     {"role": "user", "content": question(alert)}], max_tokens=48)
    except ModelUnavailable as exc:
        return fallback(alert, f"model server unavailable ({str(exc)[:60]})")
    except ModelRequestError as exc:
        return fallback(alert, f"model server refused the request ({str(exc)[:60]})")
    label = max(probs, key=probs.get)
    return {"tx_id": alert["tx_id"], "label": label, "fraud_probability": round(probs.get("fraud", 0.0), 5),
            "reason": reason.strip() or "(no reason text)", "source": "model", "model": model}


@dataclass
class AdjudicatorConfig:
    bootstrap: str
    server_url: str
    api_key: str | None = None
    group: str = "fraud-adjudicator"
    client: str = "confluent"
    model: str = "finance"
    batch_size: int = 32
    sink_path: Path | None = None
    idle_exit_s: float | None = None
    metrics_port: int | None = None
    timeout_s: float = 30.0


def run_adjudicator(cfg: AdjudicatorConfig, stop: threading.Event | None = None) -> int:
    from prometheus_client import Counter, start_http_server

    from apps.finance.pipeline import dumps, loads
    from apps.finance.service import CONSUMER_LAG
    from apps.finance.stream import TOPIC_ADJUDICATIONS, TOPIC_ALERTS, make_consumer, make_producer
    from core.client import ModelClient

    done = Counter("dsv_finance_adjudications_total", "Alerts adjudicated", ["source", "label"])
    stop = stop or threading.Event()
    if cfg.metrics_port:
        start_http_server(cfg.metrics_port)
    sink = None
    if cfg.sink_path:
        from apps.finance.sink import Sink
        sink = Sink(cfg.sink_path)
    client = ModelClient(cfg.server_url, cfg.api_key, timeout=cfg.timeout_s, max_retries=0)
    consumer = make_consumer(cfg.client, cfg.bootstrap, cfg.group, [TOPIC_ALERTS], cfg.batch_size)
    producer = make_producer(cfg.client, cfg.bootstrap)
    total, last_msg, last_lag = 0, time.monotonic(), 0.0
    try:
        while not stop.is_set():
            msgs = consumer.poll(cfg.batch_size, 0.5)
            now = time.monotonic()
            if now - last_lag > 2.0:
                try:
                    CONSUMER_LAG.labels("adjudicator").set(consumer.lag())
                except Exception as exc:  # noqa: BLE001 - broker restarting: lag is informative only
                    log.debug("lag unavailable: %s", exc)
                last_lag = now
            if not msgs:
                if not consumer.has_assignment():
                    last_msg = now
                elif cfg.idle_exit_s is not None and now - last_msg > cfg.idle_exit_s:
                    break
                continue
            last_msg = now
            server_up = client.available()  # one probe per batch, not one timeout per alert
            rows = []
            for m in msgs:
                try:
                    alert = loads(m.value)
                except ValueError:
                    log.warning("skipping an unreadable alert at %s/%d/%d", m.topic, m.partition, m.offset)
                    continue
                row = adjudicate(client, alert, cfg.model, server_up)
                rows.append(row)
                done.labels(row["source"], row["label"]).inc()
                producer.send(TOPIC_ADJUDICATIONS, dumps(row), row["tx_id"].encode())
            producer.flush()
            consumer.commit()
            total += len(rows)
            if sink and rows:
                sink.record_adjudications(rows)
    finally:
        producer.close()
        consumer.close()
        client.close()
        if sink:
            sink.close()
    return total
