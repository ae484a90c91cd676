"""The long-running parts: the stream scorer, the producers, and `dsv finance service` tying them up.

Delivery is at-least-once: a batch's outputs (scores, alerts, DLQ entries) are flushed to the broker
*before* its offsets are committed, so a crash between the two replays the batch; outputs are keyed by
``tx_id``, so the replay is idempotent for any consumer that keys on it.
"""
from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from prometheus_client import Counter, Gauge, Histogram, start_http_server

from apps.finance.episode import WINDOW_S
from apps.finance.pipeline import BatchScorer, dumps
from apps.finance.stream import (
    TOPIC_ALERTS,
    TOPIC_CONTEXT,
    TOPIC_DLQ,
    TOPIC_SCORES,
    TOPIC_TX,
    make_consumer,
    make_producer,
)

log = logging.getLogger(__name__)

TX_TOTAL = Counter("dsv_finance_transactions_total", "Transactions handled by the fast tier", ["outcome"])
CONSUMER_LAG = Gauge("dsv_finance_consumer_lag", "Messages not yet consumed", ["consumer"])
BATCH_SECONDS = Histogram("dsv_finance_batch_seconds", "Micro-batch time: poll to committed",
                          buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
THROUGHPUT = Gauge("dsv_finance_throughput_tps", "Transactions scored per second (last interval)", ["consumer"])


@dataclass
class ScorerConfig:
    bootstrap: str
    model_path: Path
    group: str = "fraud-scorer"
    client: str = "confluent"
    batch_size: int = 5000
    poll_timeout_s: float = 0.2
    metrics_port: int | None = None
    sink_path: Path | None = None
    idle_exit_s: float | None = None      # stop after this long without messages (tests, benchmarks)
    instance_id: str | None = None        # static group membership: a restart reclaims its partitions
    record_latency: bool = False          # keep produce->scored latencies (benchmarks)
    stop_after: int | None = None         # stop once this many transactions are scored (benchmarks)
    stats_every_s: float = 1.0
    context_window_s: float | None = WINDOW_S  # episode context for the adjudicator (None: no fraud.context)


@dataclass
class ScorerStats:
    scored: int = 0
    alerts: int = 0
    dlq: int = 0
    batches: int = 0
    batch_seconds: list[float] = field(default_factory=list)
    latencies_ms: list = field(default_factory=list)   # arrays, one per batch (record_latency only)
    first_input_at: float | None = None    # wall time of the first non-empty poll
    cpu_at_first_input: float = 0.0        # process CPU seconds (all threads) then, and at the last output
    cpu_at_last_output: float = 0.0
    first_output_at: float | None = None
    last_output_at: float | None = None


def install_stop_signals(stop: threading.Event) -> None:
    """SIGTERM and SIGINT set ``stop``; the loop finishes its batch, commits, and closes cleanly."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())


def run_scorer(cfg: ScorerConfig, stop: threading.Event | None = None) -> ScorerStats:
    from apps.finance.model import FastScorer

    stop = stop or threading.Event()
    scorer = BatchScorer(FastScorer.load(cfg.model_path), context_window_s=cfg.context_window_s)
    if cfg.metrics_port:
        start_http_server(cfg.metrics_port)
    sink = None
    if cfg.sink_path:
        from apps.finance.sink import Sink
        sink = Sink(cfg.sink_path)
    consumer = make_consumer(cfg.client, cfg.bootstrap, cfg.group, [TOPIC_TX], cfg.batch_size, cfg.instance_id)
    producer = make_producer(cfg.client, cfg.bootstrap)
    stats = ScorerStats()
    last_msg = last_stats = time.monotonic()
    since_stats = 0
    log.info("scorer %s in group %s on %s (%s client)", scorer.model.name, cfg.group, cfg.bootstrap, cfg.client)
    try:
        while not stop.is_set():
            msgs = consumer.poll_batch(cfg.batch_size, cfg.poll_timeout_s)
            now = time.monotonic()
            if not len(msgs):
                # Idle time only counts while we own partitions: a restarted member may wait a session
                # timeout for the group to rebalance before it gets any.
                if not consumer.has_assignment():
                    last_msg = now
                elif cfg.idle_exit_s is not None and now - last_msg > cfg.idle_exit_s:
                    break
                if now - last_stats > cfg.stats_every_s:
                    _report(consumer, sink, stats, 0, now - last_stats)
                    last_stats, since_stats = now, 0
                continue
            last_msg = now
            if stats.first_input_at is None:
                stats.first_input_at, stats.cpu_at_first_input = time.time(), time.process_time()
            t0 = time.perf_counter()
            result = scorer.score_raw(msgs.values)
            producer.send_many(TOPIC_SCORES, result.encoded(), [t.encode() for t in result.tx_ids])
            for flag in result.flags:
                producer.send(TOPIC_ALERTS, dumps(flag), flag["tx_id"].encode())
            for record in result.context:
                producer.send(TOPIC_CONTEXT, dumps(record), record["tx_id"].encode())
            for reject in result.rejects:
                m = msgs.message(reject.index)
                producer.send(TOPIC_DLQ, m.value or b"", m.key, headers={
                    "dlq.reason": reject.reason.encode(), "dlq.source": f"{m.topic}/{m.partition}/{m.offset}".encode()})
            producer.flush()      # outputs durable first ...
            consumer.commit()     # ... then the input offsets (at-least-once)
            elapsed = time.perf_counter() - t0
            if cfg.record_latency:  # broker CreateTime of each input -> its outputs committed
                done_ms = time.time() * 1000.0
                stats.latencies_ms.append(done_ms - msgs.timestamps_ms())
            stats.first_output_at = stats.first_output_at or time.time()
            stats.last_output_at, stats.cpu_at_last_output = time.time(), time.process_time()
            BATCH_SECONDS.observe(elapsed)
            n_alerts = int(result.alert.sum())
            TX_TOTAL.labels("scored").inc(result.n - n_alerts)
            TX_TOTAL.labels("alert").inc(n_alerts)
            TX_TOTAL.labels("dlq").inc(len(result.rejects))
            stats.scored += result.n
            stats.alerts += n_alerts
            stats.dlq += len(result.rejects)
            stats.batches += 1
            stats.batch_seconds.append(elapsed)
            since_stats += result.n
            if sink:
                sink.record_scores(result.scores, [f for f in result.flags if f["alert"]])
            if now - last_stats > cfg.stats_every_s:
                _report(consumer, sink, stats, since_stats, now - last_stats)
                last_stats, since_stats = now, 0
            if cfg.stop_after and stats.scored + stats.dlq >= cfg.stop_after:
                break
    finally:
        producer.close()
        consumer.close()
        if sink:
            sink.close()
    log.info("scorer stopped: %d scored, %d alerts, %d to DLQ", stats.scored, stats.alerts, stats.dlq)
    return stats


def _report(consumer, sink, stats: ScorerStats, n: int, seconds: float) -> None:
    try:
        lag = consumer.lag()
    except Exception as exc:  # noqa: BLE001 - the broker may be restarting; lag is only informative
        log.debug("lag unavailable: %s", exc)
        lag = -1
    rate = n / seconds if seconds > 0 else 0.0
    CONSUMER_LAG.labels("scorer").set(max(lag, 0))
    THROUGHPUT.labels("scorer").set(rate)
    if sink:
        recent = stats.batch_seconds[-50:]
        sink.record_stats("scorer", stats.scored, rate, lag, 1000 * float(np.mean(recent)) if recent else 0.0,
                          stats.dlq)
    stats.batch_seconds = stats.batch_seconds[-1000:]


# -- producers ----------------------------------------------------------------------------------------

def produce_file(path: Path, bootstrap: str, client: str = "confluent", rate: float | None = None,
                 keep_labels: bool = False) -> int:
    """Replay a JSONL file into `transactions` (keyed by account, so an account stays on one partition
    and its state on one scorer), optionally throttled to ``rate`` messages/s. Labels are stripped
    unless ``keep_labels``: the stream, like production, does not know them."""
    from apps.finance.pipeline import loads

    producer = make_producer(client, bootstrap)
    sent, t0 = 0, time.monotonic()
    with open(path, "rb") as fh:
        for line in fh:
            if not line.strip():
                continue
            value = line.rstrip(b"\n")
            key = None
            try:
                tx = loads(value)
                if isinstance(tx, dict):
                    if not keep_labels:
                        for k in ("is_fraud", "typology", "label_ts"):
                            tx.pop(k, None)
                        value = dumps(tx)
                    key = str(tx.get("account", "")).encode()[:128] or None
            except ValueError:
                pass  # a malformed line is sent as-is: the scorer routes it to the DLQ
            producer.send(TOPIC_TX, value, key)
            sent += 1
            if rate and sent % max(1, int(rate / 20)) == 0:
                ahead = sent / rate - (time.monotonic() - t0)
                if ahead > 0:
                    time.sleep(ahead)
    producer.flush()
    producer.close()
    return sent


def produce_live(bootstrap: str, rate: float, stop: threading.Event, client: str = "confluent",
                 seed: int = 1000, sink_path: Path | None = None, label_delay_s: float = 30.0) -> int:
    """Replay freshly generated synthetic transactions at ~``rate``/s until ``stop``. With a sink, each transaction's label is recorded to 'arrive' after an exponential delay, which is
    what the dashboard's precision/recall-over-time uses."""
    from apps.finance.data import GeneratorConfig, columns_to_records, generate_columns
    from apps.finance.sink import Sink

    producer = make_producer(client, bootstrap)
    sink = Sink(sink_path) if sink_path else None
    rng = np.random.default_rng(seed)
    chunk = max(1, int(rate))   # one second of traffic per chunk
    sent, pool_no = 0, 0
    try:
        while not stop.is_set():
            # A pool of synthetic traffic replayed in order, so fraud episodes stay whole; data time (ts)
            # is the generator's, wall time only paces the replay.
            pool = GeneratorConfig(n=max(chunk * 600, 20_000), seed=seed + pool_no, span_days=2, fraud_rate=0.004)
            # each pool continues the previous one's data time, so stream time never runs backwards
            # (the adjudicator's episode windows are in stream time)
            pool = replace(pool, start_ts=pool.start_ts + pool_no * pool.span_days * 86400.0)
            cols = generate_columns(pool)
            cols["tx_id"] = np.char.add(f"live{seed + pool_no}-", np.arange(len(cols["ts"])).astype(str))
            for start in range(0, len(cols["ts"]), chunk):
                if stop.is_set():
                    break
                t_start = time.time()
                part = {k: v[start:start + chunk] for k, v in cols.items()}
                for rec in columns_to_records(part, labelled=False):
                    producer.send(TOPIC_TX, dumps(rec), rec["account"].encode())
                producer.flush()
                if sink:
                    n = len(part["ts"])
                    arrive = t_start + rng.exponential(label_delay_s, n)
                    sink.record_labels(list(zip(part["tx_id"].tolist(), part["ts"].tolist(), arrive.tolist(),
                                                part["is_fraud"].astype(int).tolist(), part["typology"].tolist())))
                sent += len(part["ts"])
                stop.wait(max(0.0, 1.0 - (time.time() - t_start)))
            pool_no += 1
    finally:
        producer.close()
        if sink:
            sink.close()
    return sent
