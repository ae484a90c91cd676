"""Finance stream benchmark: sustained end-to-end scoring rate and produce->score latency, broker included.

    OMP_NUM_THREADS=1 .venv/bin/python bench/finance_stream.py --n 300000

1. Starts the embedded Kafka-protocol broker (noida-db) in a temp dir (or uses KAFKA_BOOTSTRAP).
2. Produces N synthetic transactions into `transactions` (4 partitions) while the micro-batched scorer
   (the real `run_scorer`: decode, validate, features, model, write `fraud.scores`/`fraud.alerts`, flush,
   commit) consumes them. Rate = N / (last batch committed - first message produced).
   Latency = from each input's broker timestamp (set at produce) to its batch's outputs flushed+committed.
3. Baseline in the same run: a naive scorer that handles one message at a time (json.loads, validate,
   features and model on a single row, produce, flush, commit), on a smaller slice, same broker.
4. Optionally the same batch scorer with kafka-python (`--kafka-python-n`).
Prints one JSON object. Data is synthetic.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from apps.finance.data import GeneratorConfig, columns_to_records, generate_columns
from apps.finance.model import FastScorer, train_fast_scorer
from apps.finance.pipeline import BatchScorer, dumps
from apps.finance.service import ScorerConfig, run_scorer
from apps.finance.stream import ALL_TOPICS, TOPIC_SCORES, TOPIC_TX, GroupedBroker, make_consumer, make_producer


def produce_all(bootstrap: str, values: list[bytes], keys: list[bytes], client: str = "confluent",
                rate: float | None = None) -> float:
    """Produce everything (as fast as possible, or paced at ``rate``/s); returns the start time."""
    producer = make_producer(client, bootstrap)
    t0 = time.time()
    step = max(1, int(rate / 100)) if rate else len(values)
    for i in range(0, len(values), step):
        for v, k in zip(values[i:i + step], keys[i:i + step]):
            producer.send(TOPIC_TX, v, k)
        if rate:
            ahead = (i + step) / rate - (time.time() - t0)
            if ahead > 0:
                time.sleep(ahead)
    producer.flush()
    producer.close()
    return t0


def batch_run(bootstrap: str, model_path: Path, values, keys, client: str, batch_size: int,
              rate: float | None = None) -> dict:
    cfg = ScorerConfig(bootstrap, model_path, group=f"bench-{client}-{time.time_ns()}", client=client,
                       batch_size=batch_size, record_latency=True, stop_after=len(values), idle_exit_s=30)
    holder: dict = {}
    thread = threading.Thread(target=lambda: holder.setdefault("stats", run_scorer(cfg)))
    thread.start()
    time.sleep(3)  # the consumer joins its group first, so the clock measures scoring, not joining
    t0 = produce_all(bootstrap, values, keys, rate=rate)
    thread.join()
    stats = holder["stats"]
    lat = np.concatenate(stats.latencies_ms) if stats.latencies_ms else np.zeros(1)
    seconds = stats.last_output_at - t0
    return {"client": client, "n": stats.scored + stats.dlq, "seconds": round(seconds, 2),
            "tx_per_s": round((stats.scored + stats.dlq) / seconds), "alerts": stats.alerts,
            "latency_ms_p50": round(float(np.percentile(lat, 50)), 1),
            "latency_ms_p99": round(float(np.percentile(lat, 99)), 1), "batch_size": batch_size,
            "produce_rate": rate or "unpaced (backlog: latency = queueing)"}


def pipeline_only(model_path: Path, values: list[bytes], batch_size: int) -> dict:
    """The scoring path without Kafka (decode, validate, features, model, outputs): CPU cost per tx."""
    scorer = BatchScorer(FastScorer.load(model_path))
    t0 = time.perf_counter()
    for i in range(0, len(values), batch_size):
        out = scorer.score_raw(values[i:i + batch_size]).outputs
        b"".join(dumps(o) for o in out)
    seconds = time.perf_counter() - t0
    return {"n": len(values), "seconds": round(seconds, 2), "tx_per_s": round(len(values) / seconds)}


def naive_run(bootstrap: str, model: FastScorer, values, keys) -> dict:
    """One message at a time: what a straightforward consumer loop would do."""
    produce_all(bootstrap, values, keys)
    consumer = make_consumer("confluent", bootstrap, f"bench-naive-{time.time_ns()}", [TOPIC_TX], 1)
    producer = make_producer("confluent", bootstrap, linger_ms=0)
    scorer = BatchScorer(model)
    lat, done, start = [], 0, None
    while done < len(values):
        msgs = consumer.poll(1, 1.0)
        if not msgs:
            continue
        start = start or time.time()
        m = msgs[0]
        result = scorer.score_records([json.loads(m.value)])
        for out in result.outputs:
            producer.send(TOPIC_SCORES, json.dumps(out).encode(), out["tx_id"].encode())
        producer.flush()
        consumer.commit()
        lat.append(time.time() * 1000 - m.timestamp_ms)
        done += 1
    seconds = time.time() - start
    consumer.close()
    producer.close()
    return {"client": "confluent", "n": done, "seconds": round(seconds, 2), "tx_per_s": round(done / seconds),
            "latency_ms_p50": round(float(np.percentile(lat, 50)), 1),
            "latency_ms_p99": round(float(np.percentile(lat, 99)), 1), "produce_rate": "unpaced",
            "note": "latency includes waiting behind the backlog produced up front (same as the batched run)"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=300_000, help="transactions for the micro-batched scorer")
    ap.add_argument("--naive-n", type=int, default=3000, help="transactions for the one-at-a-time baseline")
    ap.add_argument("--kafka-python-n", type=int, default=50_000, help="transactions for the kafka-python run (0 = skip)")
    ap.add_argument("--batch-size", type=int, default=5000)
    ap.add_argument("--paced-rate", type=float, default=1000, help="produce rate for the latency run (0 = skip)")
    ap.add_argument("--paced-n", type=int, default=20_000, help="transactions for the paced latency run")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--model", help="fast-tier model (default: train one on 50k synthetic transactions)")
    args = ap.parse_args()

    from shared.broker import ensure_topics

    with tempfile.TemporaryDirectory(prefix="finance-bench-") as tmp:
        model_path = Path(args.model) if args.model else Path(tmp) / "model.pkl"
        if not args.model:
            train_fast_scorer(generate_columns(GeneratorConfig(n=50_000, seed=1)), seed=1).save(model_path)
        total = args.n + args.naive_n + args.kafka_python_n + args.paced_n
        recs = columns_to_records(generate_columns(GeneratorConfig(n=total, seed=5)), labelled=False)
        values = [dumps(r) for r in recs]
        keys = [r["account"].encode() for r in recs]
        results = {"machine_cpus": os.cpu_count(), "broker": "noida-db (embedded, one fresh broker per run)",
                   "data": "synthetic", "partitions": args.partitions, "n_produced_by": "confluent-kafka"}
        runs = [("batched_confluent", slice(0, args.n), "confluent")]
        if args.kafka_python_n:
            runs.append(("batched_kafka_python", slice(args.n, args.n + args.kafka_python_n), "kafka-python"))
        if args.paced_rate:
            lo = args.n + args.kafka_python_n
            runs.append(("paced_latency_confluent", slice(lo, lo + args.paced_n), "confluent"))
        runs.append(("naive_one_at_a_time", slice(total - args.naive_n, total), "naive"))
        results["pipeline_only_no_kafka"] = pipeline_only(model_path, values[:args.n], args.batch_size)
        for name, part, client in runs:
            # A fresh broker per run: each run's consumer group starts from an empty topic.
            broker = GroupedBroker(Path(tmp) / f"kafka-{name}").start()
            try:
                ensure_topics(broker.bootstrap, {t: args.partitions for t in ALL_TOPICS})
                if client == "naive":
                    results[name] = naive_run(broker.bootstrap, FastScorer.load(model_path), values[part], keys[part])
                else:
                    paced = name.startswith("paced")
                    results[name] = batch_run(broker.bootstrap, model_path, values[part], keys[part], client,
                                              500 if paced else args.batch_size,
                                              rate=args.paced_rate if paced else None)
            finally:
                broker.stop()
            print(name, json.dumps(results[name]), file=sys.stderr, flush=True)
        results["speedup_batched_vs_naive"] = round(
            results["batched_confluent"]["tx_per_s"] / results["naive_one_at_a_time"]["tx_per_s"], 1)
        results["goal_tx_per_s"] = 120_000
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
