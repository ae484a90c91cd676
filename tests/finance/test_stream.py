"""The stream scorer against a real Kafka-protocol broker process (noida-db), both client libraries."""
from __future__ import annotations

import collections
import json
import threading
import time

import pytest

from apps.finance.model import FastScorer
from apps.finance.pipeline import dumps
from apps.finance.service import ScorerConfig, run_scorer
from apps.finance.stream import (
    TOPIC_ALERTS,
    TOPIC_DLQ,
    TOPIC_SCORES,
    TOPIC_TX,
    wait_until,
)
from shared.net import port_open
from tests.finance.conftest import (
    produce,
    produce_records,
    read_topic,
    read_until_keys,
    scorer_process,
    synthetic_records,
    topic_size,
    unique,
)


def _start_scorer_thread(cfg: ScorerConfig):
    stop = threading.Event()
    holder = {}
    thread = threading.Thread(target=lambda: holder.setdefault("stats", run_scorer(cfg, stop)), daemon=True)
    thread.start()
    return stop, thread, holder


@pytest.mark.parametrize("client", ["confluent", "kafka-python"])
def test_stream_scores_everything_and_routes_poison_to_dlq(broker, fin_model, client):
    records = synthetic_records(1200, seed=11)
    good = [dumps(r) for r in records]
    poison = [b"this is not json", dumps({k: v for k, v in records[0].items() if k != "device"}),
              dumps({**records[1], "tx_id": "neg", "amount": -10.0}), dumps({**records[2], "tx_id": "huge",
                                                                         "counterparty": "Z" * 200_000})]
    values = good[:400] + poison[:2] + good[400:800] + poison[2:] + good[800:]
    produce(broker.bootstrap, TOPIC_TX, values)
    stop, thread, _ = _start_scorer_thread(ScorerConfig(
        broker.bootstrap, fin_model, group=unique("g"), client=client, batch_size=300))
    try:
        scores = read_until_keys(broker.bootstrap, TOPIC_SCORES, {r["tx_id"] for r in records})
        dlq = read_topic(broker.bootstrap, TOPIC_DLQ, until=4, timeout_s=10)
    finally:
        stop.set()
        thread.join(30)
    ids = [m.key().decode() for m in scores]
    assert set(ids) == {r["tx_id"] for r in records}
    out = [json.loads(m.value()) for m in scores]
    assert all(set(o) == {"tx_id", "score", "alert", "reasons", "model"} for o in out)
    assert all(o["tx_id"] == k for o, k in zip(out, ids)), "outputs keyed by tx_id"
    reasons = sorted(dict(m.headers())["dlq.reason"].decode() for m in dlq)
    assert len(reasons) == 4
    assert any("not valid JSON" in r for r in reasons) and any("missing field 'device'" in r for r in reasons)
    assert any("'amount'" in r for r in reasons) and any("'counterparty' has length 200000" in r for r in reasons)
    # fraud.alerts holds every flag for the adjudicator (score >= the review threshold, below the alert
    # threshold too), each with the transaction and the fast tier's own verdict
    review = FastScorer.load(fin_model).review_at
    flagged = {o["tx_id"] for o in out if o["score"] >= round(review, 5) + 1e-5}
    flags = [json.loads(m.value()) for m in read_topic(broker.bootstrap, TOPIC_ALERTS, until=len(flagged), timeout_s=10)]
    assert {f["tx_id"] for f in flags} >= flagged and {f["tx_id"] for f in flags if f["alert"]} == {
        o["tx_id"] for o in out if o["alert"]}
    assert all(f["tx"]["tx_id"] == f["tx_id"] and f["score"] >= review - 1e-5 for f in flags)


def _collect_output(proc) -> list[str]:
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True).start()
    return lines


def test_two_processes_split_the_partitions(broker, fin_model):
    records = synthetic_records(3000, seed=12)
    group = unique("split")
    def assignments(lines: list[str]) -> list[str]:
        return [line for line in lines if "partitions assigned: ['" in line]

    # Scale-out as it happens in production: a second member joins a group that already consumes, and
    # the group rebalances the partitions between them.
    # --idle-exit counts from the last assignment: it must outlast the second member's start-up and the
    # rebalance (seconds under load), or the first member leaves before the data arrives.
    procs = [scorer_process(broker.bootstrap, fin_model, group, "--idle-exit", "20")]
    logs = [_collect_output(procs[0])]
    assert wait_until(lambda: assignments(logs[0]), 60), logs
    procs.append(scorer_process(broker.bootstrap, fin_model, group, "--idle-exit", "20"))
    logs.append(_collect_output(procs[1]))
    # Data goes in only once both members hold partitions after the rebalance (the first one re-assigned),
    # so the split is the group's doing, not timing.
    assert wait_until(lambda: assignments(logs[1]) and len(assignments(logs[0])) >= 2, 60), logs
    produce_records(broker.bootstrap, TOPIC_TX, records)
    for p in procs:
        p.wait(timeout=90)
    time.sleep(0.5)
    summaries = [next((line for line in lg if line.startswith("scored ")), "") for lg in logs]
    counts = [int(line.split()[1].rstrip(",")) for line in summaries if line]
    assert len(counts) == 2 and all(c > 0 for c in counts), f"both members must score: {summaries}\n{logs}"
    assert sum(counts) >= len(records)
    scores = read_until_keys(broker.bootstrap, TOPIC_SCORES, {r["tx_id"] for r in records})
    assert {m.key().decode() for m in scores} == {r["tx_id"] for r in records}


def _feed_until(bootstrap: str, records: list[dict], stop: threading.Event, sent: list[int], chunk: int = 100) -> None:
    """Produce ``records`` in small paced chunks, as a live stream arrives, until done or ``stop`` is set;
    ``sent`` holds how many went in."""
    for start in range(0, len(records), chunk):
        if stop.is_set():
            return
        batch = records[start:start + chunk]
        produce_records(bootstrap, TOPIC_TX, batch)
        sent[0] = start + len(batch)
        time.sleep(0.02)


def test_kill_9_mid_stream_then_restart_loses_nothing(broker, fin_model, capsys):
    records = synthetic_records(6000, seed=13)
    group = unique("crash")
    # The kill must land while data is flowing, on any machine: a scorer scores 6,000 transactions in a
    # fraction of a second, faster than a test can watch the output topic, so the stream is fed live and
    # its tail goes in only after the kill.
    head, live, tail = records[:1500], records[1500:5000], records[5000:]
    produce_records(broker.bootstrap, TOPIC_TX, head)
    # A static member id, as a StatefulSet pod would have: the restart takes the partitions back at once.
    first = scorer_process(broker.bootstrap, fin_model, group, "--instance-id", "scorer-0")
    assert wait_until(lambda: topic_size(broker.bootstrap, TOPIC_SCORES) >= 1000, 60, 0.05)
    killed, sent = threading.Event(), [0]
    feeder = threading.Thread(target=_feed_until, args=(broker.bootstrap, live, killed, sent), daemon=True)
    feeder.start()
    time.sleep(0.5)  # batches of the live feed are being scored when the kill lands
    first.kill()
    first.wait()
    killed.set()
    feeder.join(30)
    partial = topic_size(broker.bootstrap, TOPIC_SCORES)
    assert 1000 <= partial < len(records)
    produce_records(broker.bootstrap, TOPIC_TX, live[sent[0]:] + tail)
    second = scorer_process(broker.bootstrap, fin_model, group, "--instance-id", "scorer-0", "--idle-exit", "4")
    second.communicate(timeout=90)
    scores = read_until_keys(broker.bootstrap, TOPIC_SCORES, {r["tx_id"] for r in records}, timeout_s=20)
    seen = collections.Counter(m.key().decode() for m in scores)
    assert set(seen) == {r["tx_id"] for r in records}, "every tx_id at least once"
    duplicates = sum(c - 1 for c in seen.values())
    with capsys.disabled():
        print(f"\n[kill -9] outputs before kill {partial}, total {len(scores)}, duplicates {duplicates}")
    assert duplicates < len(records)


def test_broker_restart_mid_stream(broker, fin_model):
    records = synthetic_records(4000, seed=14)
    produce_records(broker.bootstrap, TOPIC_TX, records[:2000])
    stop, thread, _ = _start_scorer_thread(ScorerConfig(
        broker.bootstrap, fin_model, group=unique("restart"), batch_size=250, instance_id="scorer-0"))
    try:
        assert wait_until(lambda: topic_size(broker.bootstrap, TOPIC_SCORES) >= 500, 60, 0.05)
        broker.stop()
        assert not port_open(broker.bootstrap), "the broker must really be down"
        time.sleep(2)
        broker.start()  # same port, same data directory
        produce_records(broker.bootstrap, TOPIC_TX, records[2000:])
        scores = read_until_keys(broker.bootstrap, TOPIC_SCORES, {r["tx_id"] for r in records}, timeout_s=60)
    finally:
        stop.set()
        thread.join(60)
    missing = {r["tx_id"] for r in records} - {m.key().decode() for m in scores}
    assert not missing, (len(missing), sorted(int(x.split("-")[1]) for x in missing)[:: max(1, len(missing) // 20)])
    assert not thread.is_alive()
