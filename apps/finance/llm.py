"""The second tier: the DeepSeek adjudicator (the `finance` LoRA adapter behind the model server).

It consumes `fraud.alerts` in its own consumer group, off the hot path (the scorer never waits for it),
asks the server's scoring endpoint for P(fraud) vs P(legit) and the chat endpoint for the analyst's
reason, and writes `fraud.adjudications` keyed by tx_id. When the server cannot be reached the fast
tier's decision and reasons are passed on, marked ``source: "fallback"``.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import Counter

from apps.finance.episode import TYPE_WORDS, WINDOW_S, Neighbour, render
from core.model.tokenizer import ASSISTANT, BOS, USER

log = logging.getLogger(__name__)

ADJUDICATIONS = Counter("dsv_finance_adjudications_total", "Flags adjudicated", ["source", "label"])

LABELS = ["fraud", "legit"]
SYSTEM = "Payments fraud analyst: is the flagged transaction fraud or legit? Answer with the label and a reason."

TYPOLOGY_REASONS = {
    "account_takeover": "most of the balance went to a fresh account and was cashed out within minutes",
    "card_testing": "a burst of tiny online payments at many merchants is a card-testing pattern",
    "compromised_device": "one device was used by several unrelated accounts within the hour",
    "money_mule": "the account passed on money it had just received, a money-mule hop",
    "geo_jump": "the card was used far from home too soon after a home purchase",
}


def question(alert: dict[str, Any], neighbours: list[Neighbour] | None = None, window_s: float = WINDOW_S) -> str:
    """The user turn: the transaction (no identifiers: to a small model they are noise), the fast tier's
    verdict relative to its own alert threshold (so the text means the same for every fast-tier version),
    its reasons, and the episode around it (``apps.finance.episode``)."""
    tx = alert.get("tx", {})
    signals = "; ".join(alert.get("reasons") or []) or "none"
    score, threshold = float(alert.get("score", 0.0)), float(alert.get("threshold") or 0.0)
    verdict = "alert" if alert.get("alert") else "review"
    relative = f", {score / threshold:.1f} times the alert level" if threshold > 0 else ""
    text = (f"{TYPE_WORDS.get(tx.get('type'), tx.get('type'))} of {float(tx.get('amount', 0)):.0f} "
            f"{tx.get('currency')} by {tx.get('channel')} in {tx.get('country')}. "
            f"Fast score {score:.2f}{relative}: {verdict}. Reasons: {signals}.")
    if neighbours is not None:
        text += " " + render(tx, neighbours, window_s)
    return text + " Fraud or legit?"


def score_prompt(alert: dict[str, Any], neighbours: list[Neighbour] | None = None, window_s: float = WINDOW_S) -> str:
    """The chat-formatted prompt whose continuation is scored against the labels (same text the
    adapter was trained on: system, user turn, then the assistant's first word is the label)."""
    return f"{BOS}{SYSTEM}{USER}{question(alert, neighbours, window_s)}{ASSISTANT}"


def score_prompt_from_record(record: dict) -> str:
    """``score_prompt`` of a fine-tuning record (its system and user turns), for validation sets."""
    turns = {m["role"]: m["content"] for m in record["messages"]}
    return f"{BOS}{turns.get('system', '')}{USER}{turns['user']}{ASSISTANT}"


LEGIT_REASON = "nothing around it on the account or device looks like fraud"


def chat_record(alert: dict[str, Any], neighbours: list[Neighbour] | None, is_fraud: bool, typology: str = "",
                window_s: float = WINDOW_S) -> dict:
    """One fine-tuning record: the assistant answers '<label>: <reason>'. ``flag`` (ignored by the
    fine-tune) keeps the fast tier's score and threshold, which the adjudicator's calibration is fitted on."""
    if is_fraud:
        answer = f"fraud: {TYPOLOGY_REASONS.get(typology, 'the pattern matches known fraud')}."
    else:
        answer = f"legit: {LEGIT_REASON}."
    return {"messages": [{"role": "system", "content": SYSTEM},
                         {"role": "user", "content": question(alert, neighbours, window_s)},
                         {"role": "assistant", "content": answer}],
            "flag": {"tx_id": alert.get("tx_id"), "score": alert.get("score"), "threshold": alert.get("threshold"),
                     "alert": bool(alert.get("alert"))}}


CALIBRATION_FILE = "adjudicator_calibration.json"  # under DSV_HOME/finance, written by adjudicator_eval


def _logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


@dataclass(frozen=True)
class Calibration:
    """How a verdict combines the adapter's P(fraud) with the fast tier's score: a logistic model on the
    score's log-odds relative to the alert threshold and the adapter's log-odds, fitted on held-out
    validation flags, with a cut of half the best F1 reached there (``adjudicator_eval.fit_calibration``).
    Neither signal alone ranks the flags as well as both together (measured in docs/benchmarks/finance.md).
    The default is the adapter alone at P(fraud) >= 0.5."""

    fast_weight: float = 0.0
    model_weight: float = 1.0
    bias: float = 0.0
    cut: float = 0.5

    def probability(self, score: float, threshold: float, p_fraud: float) -> float:
        relative = _logit(score) - _logit(threshold) if threshold > 0 else 0.0
        z = self.fast_weight * relative + self.model_weight * _logit(p_fraud) + self.bias
        return 1.0 / (1.0 + math.exp(-max(min(z, 50.0), -50.0)))

    def to_json(self) -> dict[str, float]:
        return {"fast_weight": self.fast_weight, "model_weight": self.model_weight, "bias": self.bias,
                "cut": self.cut}


def saved_calibration(app_dir: Path, adapter: str) -> Calibration | None:
    """The calibration ``adjudicator_eval --write-calibration`` fitted for ``adapter``, if any."""
    import json

    path = Path(app_dir) / CALIBRATION_FILE
    if not path.exists():
        return None
    entry = json.loads(path.read_text()).get(adapter)
    return Calibration(**{k: float(entry[k]) for k in ("fast_weight", "model_weight", "bias", "cut")}) if entry else None


def fallback(alert: dict[str, Any], why: str) -> dict[str, Any]:
    return {"tx_id": alert["tx_id"], "label": "fraud" if alert.get("alert") else "legit",
            "fraud_probability": float(alert.get("score", 0.0)),
            "reason": f"[fallback: {why}] fast tier: " + "; ".join(alert.get("reasons") or []),
            "source": "fallback", "model": alert.get("model", "fast-tier")}


def adjudicate(client, alert: dict[str, Any], neighbours: list[Neighbour] | None = None, model: str = "finance",
               server_up: bool = True, calibration: Calibration = Calibration(),
               window_s: float = WINDOW_S) -> dict[str, Any]:
    """The verdict on one flag: ``fraud`` when the calibrated probability (the adapter's P(fraud) with the
    fast tier's score, see ``Calibration``) reaches the cut, with the adapter's own words as the reason."""
    from core.client import ModelRequestError, ModelUnavailable

    if not server_up:
        return fallback(alert, "model server unavailable")
    try:
        probs = client.score(model, score_prompt(alert, neighbours, window_s), LABELS)
        reason = client.chat(model, [{"role": "system", "content": SYSTEM},
                                     {"role": "user", "content": question(alert, neighbours, window_s)}],
                             max_tokens=48)
    except ModelUnavailable as exc:
        return fallback(alert, f"model server unavailable ({str(exc)[:60]})")
    except ModelRequestError as exc:
        return fallback(alert, f"model server refused the request ({str(exc)[:60]})")
    p = probs.get("fraud", 0.0)
    verdict = calibration.probability(float(alert.get("score", 0.0)), float(alert.get("threshold") or 0.0), p)
    return {"tx_id": alert["tx_id"], "label": "fraud" if verdict >= calibration.cut else "legit",
            "fraud_probability": round(verdict, 5), "model_probability": round(p, 5),
            "reason": reason.strip() or "(no reason text)", "source": "model", "model": model,
            "fast_tier_alert": bool(alert.get("alert")), "episode_size": len(neighbours or ())}


@dataclass
class AdjudicatorConfig:
    bootstrap: str
    server_url: str
    api_key: str | None = None
    group: str = "fraud-adjudicator"
    client: str = "confluent"
    model: str = "finance"
    batch_size: int = 256
    sink_path: Path | None = None
    idle_exit_s: float | None = None
    metrics_port: int | None = None
    timeout_s: float = 30.0
    calibration: Calibration = Calibration()  # adjudicator_eval --write-calibration fits one
    window_s: float = WINDOW_S       # episode window (stream time) each flag waits for
    max_wait_s: float = 60.0         # wall-clock bound on that wait (a quiet stream must not stall verdicts)


def run_adjudicator(cfg: AdjudicatorConfig, stop: threading.Event | None = None) -> int:
    """Consume `fraud.alerts` (the flags) and `fraud.context` (the transactions around them), decide each
    flag once its episode window has passed, write `fraud.adjudications`. Offsets are committed only up to
    the oldest record still held, so a crash replays undecided flags (at-least-once, keyed by tx_id)."""
    from prometheus_client import start_http_server

    from apps.finance.episode import EpisodeBuffer
    from apps.finance.pipeline import dumps, loads
    from apps.finance.service import CONSUMER_LAG
    from apps.finance.stream import TOPIC_ADJUDICATIONS, TOPIC_ALERTS, TOPIC_CONTEXT, make_consumer, make_producer
    from core.client import ModelClient

    stop = stop or threading.Event()
    if cfg.metrics_port:
        start_http_server(cfg.metrics_port)
    sink = None
    if cfg.sink_path:
        from apps.finance.sink import Sink
        sink = Sink(cfg.sink_path)
    client = ModelClient(cfg.server_url, cfg.api_key, timeout=cfg.timeout_s, max_retries=0)
    consumer = make_consumer(cfg.client, cfg.bootstrap, cfg.group, [TOPIC_ALERTS, TOPIC_CONTEXT], cfg.batch_size)
    producer = make_producer(cfg.client, cfg.bootstrap)
    buffer = EpisodeBuffer(cfg.window_s, cfg.max_wait_s)
    consumed: dict[tuple[str, int], int] = {}
    total, last_msg, last_lag = 0, time.monotonic(), 0.0
    try:
        while not stop.is_set():
            msgs = consumer.poll(cfg.batch_size, 0.5)
            now = time.monotonic()
            if now - last_lag > 2.0:
                try:
                    CONSUMER_LAG.labels("adjudicator").set(consumer.lag() + len(buffer))
                except Exception as exc:  # noqa: BLE001 - broker restarting: lag is informative only
                    log.debug("lag unavailable: %s", exc)
                last_lag = now
            for m in msgs:
                consumed[(m.topic, m.partition)] = m.offset + 1
                try:
                    record = loads(m.value)
                    if m.topic == TOPIC_ALERTS:
                        buffer.add_flag(record, now, (m.topic, m.partition, m.offset))
                    else:
                        buffer.add_context(record, (m.topic, m.partition, m.offset))
                except (ValueError, KeyError, TypeError) as exc:
                    log.warning("skipping an unreadable record at %s/%d/%d: %s", m.topic, m.partition, m.offset, exc)
            if msgs:
                last_msg = now
            ready = buffer.ready(now)
            if ready:
                server_up = client.available()  # one probe per round, not one timeout per flag
                rows = []
                for alert, neighbours in ready:
                    row = adjudicate(client, alert, neighbours, cfg.model, server_up, cfg.calibration, cfg.window_s)
                    rows.append(row)
                    ADJUDICATIONS.labels(row["source"], row["label"]).inc()
                    producer.send(TOPIC_ADJUDICATIONS, dumps(row), row["tx_id"].encode())
                producer.flush()
                total += len(rows)
                if sink:
                    sink.record_adjudications(rows)
            if msgs or ready:
                consumer.commit_offsets(buffer.commit_offsets(consumed))
            elif not consumer.has_assignment():
                last_msg = now
            elif cfg.idle_exit_s is not None and not len(buffer) and now - last_msg > cfg.idle_exit_s:
                break
    finally:
        producer.close()
        consumer.close()
        client.close()
        if sink:
            sink.close()
    return total
