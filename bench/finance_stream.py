"""Finance stream benchmark: sustained end-to-end scoring rate and produce->score latency, broker included.

    OMP_NUM_THREADS=1 .venv/bin/python bench/finance_stream.py --n 300000

Every Kafka run gets a fresh embedded broker (noida-db, 4 partitions) in a temp dir. Data is synthetic.

1. ``cpu_profile_no_kafka``: the scoring path alone on the first N messages, split into stages
   (decode, validate/columns, features, predict, serialise), with the reference implementations timed on
   the same data in the same run (numpy wavefront features, scikit-learn predict) as ratios.
2. ``drain_*``: the backlog (N transactions) is produced *first*; then 1 or 2 scorer processes in one
   consumer group (the real ``run_scorer``: poll, decode, validate, features, model, write
   ``fraud.scores``/``fraud.alerts``, flush, commit) drain it. Rate = N / (last batch committed - first
   message polled): transactions scored and written per second, with no producer competing for the CPU.
   CPU per transaction of the scorer processes (all threads) and of the broker's process group, so the
   split between them does not depend on what else the machine runs.
3. ``concurrent_produce_and_score``: the same scorer while this process produces the N transactions as
   fast as it can (the producer shares the 2 cores). Rate = N / (last committed - first produced).
4. ``paced_latency_<rate>``: produce at a fixed rate while one scorer keeps up (a poll takes what came in
   within 20 ms, so batches stay small at low rates); latency is
   each input's broker timestamp (set at produce) -> its batch's outputs flushed and offsets committed.
5. ``naive_one_at_a_time``: the baseline in the same run, a scorer that handles one message at a time
   (json.loads, validate, features and model on one row, produce, flush, commit), on a smaller backlog.
6. ``kafka_floor_no_scoring``: the same Kafka loop with the scoring taken out (poll, write one output
   per input, flush, commit): the ceiling of this broker and client on this machine.
7. ``drain_kafka_python``: the batched scorer with the kafka-python client (``--kafka-python-n``).
8. ``trees_study``: F1 and predict cost of the first 25/50/100/all trees of the same model (held-out
   synthetic stream), to show what a smaller fast tier would trade; the scorer always uses all trees.
Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
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
from apps.finance.episode import WINDOW_S
from apps.finance.model import FastScorer, train_fast_scorer
from apps.finance.pipeline import BatchScorer, _decode, dumps, to_columns
from apps.finance.service import ScorerConfig, run_scorer
from apps.finance.stream import (
    ALL_TOPICS,
    TOPIC_SCORES,
    TOPIC_TX,
    make_consumer,
    make_producer,
)
from shared.broker import EmbeddedBroker, ensure_topics


def produce_all(bootstrap: str, values: list[bytes], keys: list[bytes], rate: float | None = None) -> tuple[float, float]:
    """Produce everything (as fast as possible, or paced at ``rate``/s); returns (start, end) times."""
    producer = make_producer("confluent", bootstrap)
    t0 = time.time()
    step = max(1, int(rate / 100)) if rate else 10_000
    for i in range(0, len(values), step):
        producer.send_many(TOPIC_TX, values[i:i + step], keys[i:i + step])
        if rate:
            ahead = (i + step) / rate - (time.time() - t0)
            if ahead > 0:
                time.sleep(ahead)
    producer.flush()
    producer.close()
    return t0, time.time()


def _scorer_child(kwargs: dict, model_path: str, out: mp.Queue, ready: mp.Queue) -> None:
    """One scorer process: warm the compiled kernels (loaded from numba's cache), then run_scorer."""
    model = FastScorer.load(model_path)
    sample = columns_to_records(generate_columns(GeneratorConfig(n=50, seed=3)), labelled=False)
    BatchScorer(model).score_records(sample)
    ready.put(os.getpid())
    stats = run_scorer(ScorerConfig(model_path=Path(model_path), **kwargs))
    # CPU of all threads of this process (Python and librdkafka's), first poll -> last commit
    cpu = stats.cpu_at_last_output - stats.cpu_at_first_input
    lat = np.concatenate(stats.latencies_ms) if stats.latencies_ms else np.zeros(0)
    out.put({"scored": stats.scored, "dlq": stats.dlq, "alerts": stats.alerts, "batches": stats.batches,
             "cpu_s": cpu,
             "first_input_at": stats.first_input_at, "last_output_at": stats.last_output_at,
             "latencies_ms": lat.tolist()})


def scorers(bootstrap: str, model_path: Path, client: str, batch_size: int, processes: int,
            idle_exit_s: float, record_latency: bool = False, poll_timeout_s: float = 0.2):
    """Start ``processes`` scorer processes in one fresh consumer group; returns (processes, queue)."""
    ctx = mp.get_context("spawn")
    queue, ready = ctx.Queue(), ctx.Queue()
    group = f"bench-{client}-{time.time_ns()}"
    procs = []
    for i in range(processes):
        kwargs = {"bootstrap": bootstrap, "group": group, "client": client, "batch_size": batch_size,
                  "record_latency": record_latency, "idle_exit_s": idle_exit_s, "poll_timeout_s": poll_timeout_s,
                  "instance_id": f"bench-{i}"}
        p = ctx.Process(target=_scorer_child, args=(kwargs, str(model_path), queue, ready))
        p.start()
        procs.append(p)
    return procs, queue, ready


def wait_ready(procs, ready, join_s: float = 3.0) -> None:
    """Until every scorer has imported and warmed up, plus ``join_s`` to join the group (empty topic)."""
    for _ in procs:
        ready.get(timeout=300)
    time.sleep(join_s)


def group_cpu_s(pgid: int) -> float:
    """CPU seconds (user + system) used so far by every live process of a process group (the broker
    runs in its own group: the noida-db wrapper and its server)."""
    tick, total = os.sysconf("SC_CLK_TCK"), 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # fields after the command: state, ppid, pgrp, ..., utime (12), stime (13)
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


class CpuSampler:
    """Samples a process group's CPU seconds every 0.2 s in a thread, to read its use over a window."""

    def __init__(self, pgid: int):
        self.pgid, self.samples, self._stop = pgid, [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.time(), group_cpu_s(self.pgid)))
            self._stop.wait(0.2)

    def between(self, t0: float, t1: float) -> float:
        self._stop.set()
        self._thread.join()
        times = np.array([t for t, _ in self.samples])
        cpu = np.array([c for _, c in self.samples])
        return float(np.interp(t1, times, cpu) - np.interp(t0, times, cpu))


def collect(procs, queue, timeout_s: float = 900) -> list[dict]:
    results = [queue.get(timeout=timeout_s) for _ in procs]
    for p in procs:
        p.join(30)
    return results


def _summary(results: list[dict], n_expected: int, t_start: float, **extra) -> dict:
    n = sum(r["scored"] + r["dlq"] for r in results)
    t_end = max(r["last_output_at"] or 0 for r in results)
    seconds = t_end - t_start
    lat = np.concatenate([np.asarray(r["latencies_ms"]) for r in results]) if results else np.zeros(0)
    cpu_us = sum(r.get("cpu_s", 0.0) for r in results) / max(n, 1) * 1e6
    out = {"n": n, "n_expected": n_expected, "seconds": round(seconds, 2), "tx_per_s": round(n / seconds),
           "scorer_cpu_us_per_tx": round(cpu_us, 2),
           "per_process": [r["scored"] + r["dlq"] for r in results], "alerts": sum(r["alerts"] for r in results),
           "batches": sum(r["batches"] for r in results)}
    if len(lat):
        out |= {"latency_ms_p50": round(float(np.percentile(lat, 50)), 1),
                "latency_ms_p99": round(float(np.percentile(lat, 99)), 1)}
    return out | extra


def drain_run(broker: EmbeddedBroker, model_path: Path, values, keys, client: str, batch_size: int,
              processes: int) -> dict:
    """Backlog first, then the scorers drain it (no producer running while they score)."""
    bootstrap = broker.bootstrap
    t0, t1 = produce_all(bootstrap, values, keys)
    sampler = CpuSampler(broker.process.pid)
    procs, queue, _ = scorers(bootstrap, model_path, client, batch_size, processes, idle_exit_s=3)
    results = collect(procs, queue)
    t_start = min(r["first_input_at"] for r in results if r["first_input_at"])
    broker_cpu = sampler.between(t_start, max(r["last_output_at"] for r in results))
    return _summary(results, len(values), t_start, client=client, processes=processes, batch_size=batch_size,
                    broker_cpu_us_per_tx=round(broker_cpu / len(values) * 1e6, 2),
                    backlog_produce_tx_per_s=round(len(values) / (t1 - t0)),
                    measured="first message polled -> last batch committed; backlog produced beforehand")


def kafka_floor_run(broker: EmbeddedBroker, values, keys, batch_size: int) -> dict:
    """The scorer's Kafka loop with the scoring taken out: poll a batch, write one output per input
    (the input bytes, keyed like the scores), flush, commit. The most this broker and client can do
    here, whatever the scoring costs."""
    bootstrap = broker.bootstrap
    produce_all(bootstrap, values, keys)
    sampler = CpuSampler(broker.process.pid)
    consumer = make_consumer("confluent", bootstrap, f"bench-floor-{time.time_ns()}", [TOPIC_TX], batch_size)
    producer = make_producer("confluent", bootstrap)
    done, t0, cpu0 = 0, None, 0.0
    while done < len(values):
        batch = consumer.poll_batch(batch_size, 0.2)
        if not len(batch):
            continue
        if t0 is None:
            t0, cpu0 = time.time(), time.process_time()
        producer.send_many(TOPIC_SCORES, batch.values, [b"k"] * len(batch))
        producer.flush()
        consumer.commit()
        done += len(batch)
    t1, cpu = time.time(), time.process_time() - cpu0
    consumer.close()
    producer.close()
    return {"client": "confluent", "n": done, "seconds": round(t1 - t0, 2), "tx_per_s": round(done / (t1 - t0)),
            "client_cpu_us_per_tx": round(cpu / done * 1e6, 2),
            "broker_cpu_us_per_tx": round(sampler.between(t0, t1) / done * 1e6, 2),
            "measured": "first message polled -> last committed; backlog produced beforehand; no scoring"}


def concurrent_run(bootstrap: str, model_path: Path, values, keys, batch_size: int) -> dict:
    """The scorer joins an empty topic, then this process produces N as fast as it can while it scores."""
    procs, queue, ready = scorers(bootstrap, model_path, "confluent", batch_size, 1, idle_exit_s=3)
    wait_ready(procs, ready)  # imports, kernels loaded and the group joined before the clock starts
    t0, t1 = produce_all(bootstrap, values, keys)
    results = collect(procs, queue)
    return _summary(results, len(values), t0, client="confluent", processes=1, batch_size=batch_size,
                    producer_tx_per_s=round(len(values) / (t1 - t0)),
                    measured="first message produced -> last batch committed, producer running meanwhile")


def paced_run(bootstrap: str, model_path: Path, values, keys, rate: float, batch_size: int) -> dict:
    # A poll returns what has arrived within 20 ms (up to batch_size), so batches stay small at low rates.
    procs, queue, ready = scorers(bootstrap, model_path, "confluent", batch_size, 1, idle_exit_s=3,
                                  record_latency=True, poll_timeout_s=0.02)
    wait_ready(procs, ready)
    t0, _ = produce_all(bootstrap, values, keys, rate=rate)
    results = collect(procs, queue)
    return _summary(results, len(values), t0, client="confluent", processes=1, batch_size=batch_size, produce_rate=rate,
                    measured="latency: broker timestamp at produce -> outputs flushed and offsets committed")


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
            "latency_ms_p99": round(float(np.percentile(lat, 99)), 1),
            "measured": "first message polled -> last committed; backlog produced beforehand (latency = queueing)"}


_cpu = time.process_time


def cpu_profile(model_path: Path, values: list[bytes], batch_size: int) -> dict:
    """The scoring path without Kafka, stage by stage (CPU us per transaction: ``process_time``, so
    other jobs on the machine do not inflate it), plus the reference implementations of the two
    compiled stages on the same batches."""
    from apps.finance.features import FeatureState

    model = FastScorer.load(model_path)
    BatchScorer(model).score_raw(values[:200]).encoded()  # compiled kernels loaded before the clock
    state, ref_state = FeatureState(), FeatureState()
    ref_state.compiled = False
    t = dict.fromkeys(("decode", "validate_columns", "features", "predict", "outputs_serialise",
                       "features_numpy_reference", "predict_sklearn_reference"), 0.0)
    whole = 0.0
    for i in range(0, len(values), batch_size):
        raws = values[i:i + batch_size]
        c0 = _cpu()
        objs, bad = _decode(raws)
        c1 = _cpu()
        cols, _, _ = to_columns(objs, bad)
        c2 = _cpu()
        X = state.transform(cols)
        c3 = _cpu()
        model.predict_proba(X)
        c4 = _cpu()
        ref_state.transform(cols)
        c5 = _cpu()
        model.classifier.predict_proba(X)
        c6 = _cpu()
        t["decode"] += c1 - c0
        t["validate_columns"] += c2 - c1
        t["features"] += c3 - c2
        t["predict"] += c4 - c3
        t["features_numpy_reference"] += c5 - c4
        t["predict_sklearn_reference"] += c6 - c5
    # The whole path as the stream runs it (run_scorer: episode context on), then the same without the
    # adjudicator's inputs (no fraud.context, flags not serialised) to show what they cost.
    counts = {"flags": 0, "context": 0}
    without_inputs = 0.0
    for window in (WINDOW_S, None):
        scorer = BatchScorer(model, FeatureState(), context_window_s=window)
        for i in range(0, len(values), batch_size):
            c0 = _cpu()
            result = scorer.score_raw(values[i:i + batch_size])
            c1 = _cpu()
            result.encoded(), [x.encode() for x in result.tx_ids]  # what the stream hands the producer
            c2 = _cpu()
            if window is None:
                without_inputs += c2 - c0
                continue
            [dumps(r) for r in result.flags], [dumps(r) for r in result.context]  # fraud.alerts, fraud.context
            c3 = _cpu()
            whole += c3 - c0
            t["outputs_serialise"] += c2 - c1
            t["adjudicator_inputs_serialise"] = t.get("adjudicator_inputs_serialise", 0.0) + c3 - c2
            counts["flags"] += len(result.flags)
            counts["context"] += len(result.context)
    n = len(values)
    us = {k: round(v / n * 1e6, 2) for k, v in t.items()}
    us["adjudicator_inputs_total"] = round((whole - without_inputs) / n * 1e6, 2)
    return {"n": n, "batch_size": batch_size, "us_per_tx": us, "adjudicator_inputs_records": counts,
            "score_and_serialise_tx_per_cpu_s": round(n / whole),  # one core, no Kafka
            "without_adjudicator_inputs_tx_per_cpu_s": round(n / without_inputs),
            "features_speedup_vs_numpy": round(t["features_numpy_reference"] / t["features"], 1),
            "predict_speedup_vs_sklearn": round(t["predict_sklearn_reference"] / t["predict"], 2),
            "trees": len(getattr(model.classifier, "clf", model.classifier)._predictors)}


def trees_study(model_path: Path, n: int, batch_size: int) -> dict:
    """What fewer trees would save and cost: the first k trees of the same model, threshold chosen for F1
    on a validation stream (seed 11), F1/AUPRC on a held-out stream (seed 12). Not the scorer's path:
    the stream always uses the whole model."""
    from apps.finance.fastpredict import compiled_for
    from apps.finance.features import featurize_all
    from apps.finance.model import best_f1_threshold, metrics

    model = FastScorer.load(model_path)
    compiled = compiled_for(model.classifier)
    if compiled is None:
        return {"skipped": "not a gradient-boosted tree model"}
    from scipy.special import expit

    val, test = (generate_columns(GeneratorConfig(n=n, seed=s)) for s in (11, 12))
    Xv, Xt = featurize_all(val, batch_size), featurize_all(test, batch_size)
    yv, yt = val["is_fraud"].astype(int), test["is_fraud"].astype(int)
    total = len(compiled.flat.roots)
    out = {"n_validation": n, "n_test": n, "test_frauds": int(yt.sum()), "rows": []}
    for k in sorted({25, 50, 100, total} & set(range(1, total + 1))):
        pv = expit(compiled.raw(Xv, k))
        t0 = _cpu()
        pt = expit(compiled.raw(Xt, k))
        us = (_cpu() - t0) / n * 1e6
        m = metrics(yt, pt, best_f1_threshold(yv, pv))
        out["rows"].append({"trees": k, "predict_us_per_tx": round(us, 2), "f1": m["f1"], "precision": m["precision"],
                            "recall": m["recall"], "auprc": m["auprc"]})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=300_000, help="transactions for each drain run")
    ap.add_argument("--naive-n", type=int, default=3000, help="transactions for the one-at-a-time baseline")
    ap.add_argument("--kafka-python-n", type=int, default=50_000, help="transactions for the kafka-python run (0 = skip)")
    ap.add_argument("--concurrent-n", type=int, default=100_000, help="transactions for the produce-while-scoring run (0 = skip)")
    ap.add_argument("--batch-size", type=int, default=5000)
    ap.add_argument("--processes", default="1,2", help="scorer processes for the drain runs")
    ap.add_argument("--paced-rate", default="1000,10000", help="produce rates for the latency runs (comma list; empty = skip)")
    ap.add_argument("--paced-n", type=int, default=20_000, help="transactions for the paced latency run")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--profile-n", type=int, default=100_000, help="transactions for the no-Kafka CPU profile")
    ap.add_argument("--model", help="fast-tier model (default: train one on 50k synthetic transactions)")
    ap.add_argument("--trees-study-n", type=int, default=100_000,
                    help="transactions per stream for the fewer-trees cost/quality study (0 = skip)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="finance-bench-") as tmp:
        model_path = Path(args.model) if args.model else Path(tmp) / "model.pkl"
        if not args.model:
            train_fast_scorer(generate_columns(GeneratorConfig(n=50_000, seed=1)), seed=1).save(model_path)
        processes = [int(p) for p in args.processes.split(",") if p]
        sizes = {"drain": args.n, "concurrent": args.concurrent_n, "kafka_python": args.kafka_python_n,
                 "paced": args.paced_n, "naive": args.naive_n}
        total = max(sizes.values())
        recs = columns_to_records(generate_columns(GeneratorConfig(n=total, seed=5)), labelled=False)
        values = [dumps(r) for r in recs]
        keys = [r["account"].encode() for r in recs]
        del recs
        results = {"machine_cpus": os.cpu_count(), "load_average_at_start": os.getloadavg(),
                   "broker": "noida-db (embedded, one fresh broker per run)", "data": "synthetic",
                   "partitions": args.partitions}
        results["cpu_profile_no_kafka"] = cpu_profile(model_path, values[:args.profile_n], args.batch_size)
        print("cpu_profile_no_kafka", json.dumps(results["cpu_profile_no_kafka"]), file=sys.stderr, flush=True)
        if args.trees_study_n:
            results["trees_study"] = trees_study(model_path, args.trees_study_n, args.batch_size)
            print("trees_study", json.dumps(results["trees_study"]), file=sys.stderr, flush=True)

        runs = [(f"drain_confluent_{k}proc", lambda b, k=k: drain_run(
            b, model_path, values[:args.n], keys[:args.n], "confluent", args.batch_size, k)) for k in processes]
        runs.append(("kafka_floor_no_scoring", lambda b: kafka_floor_run(
            b, values[:args.n], keys[:args.n], args.batch_size)))
        if args.concurrent_n:
            runs.append(("concurrent_produce_and_score", lambda b: concurrent_run(
                b.bootstrap, model_path, values[:args.concurrent_n], keys[:args.concurrent_n], args.batch_size)))
        for rate in [float(r) for r in args.paced_rate.split(",") if r]:
            runs.append((f"paced_latency_{rate:.0f}_per_s", lambda b, rate=rate: paced_run(
                b.bootstrap, model_path, values[:args.paced_n], keys[:args.paced_n], rate, args.batch_size)))
        if args.kafka_python_n:
            runs.append(("drain_kafka_python_1proc", lambda b: drain_run(
                b, model_path, values[:args.kafka_python_n], keys[:args.kafka_python_n], "kafka-python",
                args.batch_size, 1)))
        runs.append(("naive_one_at_a_time", lambda b: naive_run(
            b.bootstrap, FastScorer.load(model_path), values[:args.naive_n], keys[:args.naive_n])))
        for name, run in runs:
            # A fresh broker per run: each run's consumer group starts from an empty topic.
            broker = EmbeddedBroker(Path(tmp) / f"kafka-{name}").start()
            try:
                ensure_topics(broker.bootstrap, {t: args.partitions for t in ALL_TOPICS})
                results[name] = run(broker) | {"load_average_after": os.getloadavg()[0]}
            finally:
                broker.stop()
            print(name, json.dumps(results[name]), file=sys.stderr, flush=True)
        best = max((results[f"drain_confluent_{k}proc"] for k in processes), key=lambda r: r["tx_per_s"])
        results["best_drain_tx_per_s"] = best["tx_per_s"]
        results["speedup_best_drain_vs_naive"] = round(best["tx_per_s"] / results["naive_one_at_a_time"]["tx_per_s"], 1)
        results["goal_tx_per_s"] = 120_000
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
