"""`dsv finance ...`: generate, train, score (batch or stream), produce, adjudicate, curriculum, service.

Heavy imports (numpy, scikit-learn, Kafka clients) happen inside the handlers so `dsv --help` is instant.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path

from shared.cli_helpers import add_command, add_group
from shared.io import InputError

log = logging.getLogger(__name__)


def model_path(settings) -> Path:
    return settings.app_dir("finance") / "fast_model.pkl"


def sink_path(settings) -> Path:
    return settings.app_dir("finance") / "dashboard.db"


def _generate(args, settings) -> int:
    from apps.finance.data import GeneratorConfig, generate_columns, write_jsonl_fast

    if args.n <= 0:
        raise InputError(f"--n must be positive, got {args.n}")
    cfg = GeneratorConfig(n=args.n, seed=args.seed, drift=args.drift, fraud_rate=args.fraud_rate)
    cols = generate_columns(cfg)
    n = write_jsonl_fast(args.out, cols, labelled=not args.unlabelled)
    print(f"wrote {n} synthetic transactions ({int(cols['is_fraud'].sum())} fraud) to {args.out}")
    return 0


def _train(args, settings) -> int:
    from apps.finance.data import GeneratorConfig, generate_columns
    from apps.finance.model import train_fast_scorer

    if args.input:
        cols = load_labelled_columns(Path(args.input))
    else:
        cols = generate_columns(GeneratorConfig(n=args.n, seed=args.seed))
    scorer = train_fast_scorer(cols, seed=args.seed)
    out = Path(args.out) if args.out else model_path(settings)
    scorer.save(out)
    print(f"fast-tier model saved to {out}; threshold {scorer.threshold:.3f}; "
          f"validation (synthetic, last 20% by time) {scorer.meta['validation']}")
    return 0


def load_labelled_columns(path: Path):
    """A labelled JSONL file as generator-style columns, sorted by ts (for training)."""
    import numpy as np

    from apps.finance.data import ContractError, validate_transaction
    from shared.io import read_jsonl

    records = []
    for line_no, rec in enumerate(read_jsonl(path), start=1):
        try:
            validate_transaction(rec)
        except ContractError as exc:
            raise InputError(f"{path}: record {line_no}: {exc}") from None
        if "is_fraud" not in rec:
            raise InputError(f"{path}: record {line_no}: field 'is_fraud' is required for training")
        records.append(rec)
    records.sort(key=lambda r: r["ts"])
    names = ["tx_id", "ts", "account", "counterparty", "amount", "currency", "type", "channel", "country",
             "device", "mcc", "is_fraud"]
    cols = {k: np.asarray([r[k] for r in records]) for k in names}
    cols["typology"] = np.asarray([r.get("typology", "") for r in records])
    return cols


def _score(args, settings) -> int:
    if args.input:
        return _score_file(args, settings)
    from apps.finance.service import ScorerConfig, install_stop_signals, run_scorer
    from apps.finance.stream import kafka_bootstrap

    ensure_model(settings, Path(args.model) if args.model else None)
    stop = threading.Event()
    install_stop_signals(stop)
    with kafka_bootstrap(settings, args.partitions) as bootstrap:
        cfg = ScorerConfig(bootstrap=bootstrap, model_path=Path(args.model) if args.model else model_path(settings),
                           group=args.group, client=args.client, batch_size=args.batch_size,
                           metrics_port=args.metrics_port or None,
                           sink_path=None if args.no_sink else sink_path(settings), idle_exit_s=args.idle_exit,
                           instance_id=args.instance_id)
        stats = run_scorer(cfg, stop)
    print(f"scored {stats.scored}, alerts {stats.alerts}, DLQ {stats.dlq}")
    return 0


def _score_file(args, settings) -> int:
    from apps.finance.model import FastScorer
    from apps.finance.pipeline import BatchScorer, dumps
    from shared.io import atomic_path

    if not args.output:
        raise InputError("--output is required with --input")
    src = Path(args.input)
    if not src.exists():
        raise InputError(f"{src}: file not found")
    scorer = BatchScorer(FastScorer.load(Path(args.model) if args.model else model_path(settings)))
    n_out = n_bad = 0
    with open(src, "rb") as fh, atomic_path(args.output) as tmp, open(tmp, "wb") as out:
        line_no = 0
        while True:
            lines = []
            for line in fh:
                line_no += 1
                if line.strip():
                    lines.append((line_no, line.rstrip(b"\n")))
                if len(lines) >= args.batch_size:
                    break
            if not lines:
                break
            result = scorer.score_raw([raw for _, raw in lines])
            for reject in result.rejects:
                n_bad += 1
                log.warning("%s:%d: skipped: %s", src, lines[reject.index][0], reject.reason)
            out.write(b"".join(dumps(o) + b"\n" for o in result.outputs))
            n_out += len(result.outputs)
    print(f"scored {n_out} transactions into {args.output}" + (f"; skipped {n_bad} bad lines" if n_bad else ""))
    return 0


def ensure_model(settings, path: Path | None = None, n: int = 200_000) -> Path:
    """Train the fast tier on synthetic data if no model exists yet (first start on a fresh machine)."""
    from apps.finance.data import GeneratorConfig, generate_columns
    from apps.finance.model import train_fast_scorer

    path = path or model_path(settings)
    if not path.exists():
        log.info("no fast-tier model at %s: training one on %d synthetic transactions", path, n)
        train_fast_scorer(generate_columns(GeneratorConfig(n=n, seed=1))).save(path)
    return path


def _produce(args, settings) -> int:
    from apps.finance.service import install_stop_signals, produce_file, produce_live
    from apps.finance.stream import kafka_bootstrap

    if not args.input and not args.live:
        raise InputError("give --input FILE or --live")
    with kafka_bootstrap(settings, args.partitions) as bootstrap:
        if args.input:
            if not Path(args.input).exists():
                raise InputError(f"{args.input}: file not found")
            n = produce_file(Path(args.input), bootstrap, args.client, args.rate or None)
        else:
            stop = threading.Event()
            install_stop_signals(stop)
            if args.duration:
                threading.Timer(args.duration, stop.set).start()
            n = produce_live(bootstrap, args.rate or 200, stop, args.client, sink_path=sink_path(settings))
    print(f"produced {n} transactions")
    return 0


def _adjudicate(args, settings) -> int:
    from apps.finance.llm import AdjudicatorConfig, Calibration, run_adjudicator, saved_calibration
    from apps.finance.service import install_stop_signals
    from apps.finance.stream import kafka_bootstrap

    calibration = saved_calibration(settings.app_dir("finance"), args.model)
    if calibration is None:
        log.warning("no calibration for adapter %s (python -m apps.finance.adjudicator_eval "
                    "--write-calibration): the adapter's P(fraud) alone decides, at 0.5", args.model)
        calibration = Calibration()
    stop = threading.Event()
    install_stop_signals(stop)
    with kafka_bootstrap(settings) as bootstrap:
        cfg = AdjudicatorConfig(bootstrap=bootstrap, server_url=settings.server_url, api_key=settings.api_key,
                                group=args.group, client=args.client, model=args.model,
                                sink_path=sink_path(settings), idle_exit_s=args.idle_exit,
                                metrics_port=args.metrics_port or None, calibration=calibration,
                                window_s=args.window_s)
        n = run_adjudicator(cfg, stop)
    print(f"adjudicated {n} alerts")
    return 0


def _curriculum(args, settings) -> int:
    import json

    from apps.finance.curriculum import CurriculumConfig, run_curriculum

    try:
        seeds = tuple(int(s) for s in args.seeds.split(","))
    except ValueError:
        seeds = ()
    if len(seeds) != 3:
        raise InputError(f"--seeds: expected three integers 'STAGE1,STAGE2,TEST', got {args.seeds!r}")
    result = run_curriculum(CurriculumConfig(n_stage1=args.n_stage1, n_stage2=args.n_stage2, n_test=args.n_test,
                                             n_adjudicator_stage1=args.n_adjudicator_stage1, data_seeds=seeds,
                                             out_dir=Path(args.out) if args.out else
                                             settings.app_dir("finance") / "curriculum"))
    print(json.dumps(result, indent=2))
    return 0


def _service(args, settings) -> int:
    from apps.finance.orchestrate import run_service

    return run_service(settings, rate=args.rate, client=args.client, metrics_port=args.metrics_port)


def register(subparsers) -> None:
    group = add_group(subparsers, "finance", "Real-time fraud scoring of a Kafka transaction stream (synthetic data).")

    p = add_command(group, "generate", _generate, "Write synthetic labelled transactions (PaySim-style) as JSONL.")
    p.add_argument("--n", type=int, default=100_000, help="number of transactions")
    p.add_argument("--seed", type=int, default=0, help="random seed (a different seed = a different world)")
    p.add_argument("--out", required=True, help="output JSONL file (written atomically)")
    p.add_argument("--drift", type=float, default=0.0, help="behaviour drift over the span (0 = none, 1 = strong)")
    p.add_argument("--fraud-rate", type=float, default=0.003, help="share of fraud transactions (0.001-0.005)")
    p.add_argument("--unlabelled", action="store_true", help="omit is_fraud/typology/label_ts")

    p = add_command(group, "train", _train, "Train the fast-tier scorer on labelled (synthetic) transactions.")
    p.add_argument("--input", help="labelled JSONL (default: generate --n synthetic transactions)")
    p.add_argument("--n", type=int, default=200_000, help="synthetic training size when --input is absent")
    p.add_argument("--seed", type=int, default=1, help="generator and model seed")
    p.add_argument("--out", help="model file (default DSV_HOME/finance/fast_model.pkl)")

    p = add_command(group, "score", _score,
                    "Score transactions: from Kafka as a consumer-group member (default) or a JSONL file (--input).")
    p.add_argument("--input", help="JSONL transactions to score without Kafka (batch mode)")
    p.add_argument("--output", help="JSONL scores (batch mode)")
    p.add_argument("--model", help="fast-tier model file (default DSV_HOME/finance/fast_model.pkl)")
    p.add_argument("--group", default="fraud-scorer", help="consumer group (more processes = more throughput)")
    p.add_argument("--client", choices=("confluent", "kafka-python"), default="confluent", help="Kafka client")
    p.add_argument("--batch-size", type=int, default=5000, help="micro-batch size")
    p.add_argument("--partitions", type=int, default=4, help="partitions for topics this command creates")
    p.add_argument("--metrics-port", type=int, default=0, help="serve Prometheus metrics on this port (0 = off)")
    p.add_argument("--idle-exit", type=float, default=None, help="exit after this many idle seconds")
    p.add_argument("--no-sink", action="store_true", help="do not write dashboard data under DSV_HOME/finance")
    p.add_argument("--instance-id", help="static group membership id (a restarted scorer reclaims its partitions at once)")

    p = add_command(group, "produce", _produce, "Send transactions to the `transactions` topic: a file or a live generator.")
    p.add_argument("--input", help="JSONL file to replay (labels are stripped)")
    p.add_argument("--live", action="store_true", help="generate synthetic traffic until Ctrl-C")
    p.add_argument("--rate", type=float, default=0, help="messages per second (0 = as fast as possible; live default 200)")
    p.add_argument("--duration", type=float, default=0, help="live mode: stop after this many seconds (0 = never)")
    p.add_argument("--client", choices=("confluent", "kafka-python"), default="confluent", help="Kafka client")
    p.add_argument("--partitions", type=int, default=4, help="partitions for topics this command creates")

    p = add_command(group, "adjudicate", _adjudicate,
                    "Run the DeepSeek adjudicator on `fraud.alerts` (off the hot path), writing `fraud.adjudications`.")
    p.add_argument("--group", default="fraud-adjudicator", help="consumer group")
    p.add_argument("--client", choices=("confluent", "kafka-python"), default="confluent", help="Kafka client")
    p.add_argument("--model", default="finance", help="adapter name on the model server")
    p.add_argument("--window-s", type=float, default=1800.0, help="episode window in stream time (seconds)")
    p.add_argument("--idle-exit", type=float, default=None, help="exit after this many idle seconds")
    p.add_argument("--metrics-port", type=int, default=0, help="serve Prometheus metrics on this port (0 = off)")

    p = add_command(group, "curriculum", _curriculum,
                    "Measure the two-stage curriculum (synthetic -> sparsely labelled drifted stream) on synthetic data.")
    p.add_argument("--n-stage1", type=int, default=300_000, help="stage-1 labelled synthetic transactions")
    p.add_argument("--n-stage2", type=int, default=300_000, help="stage-2 'real' stream (0.3%% labelled)")
    p.add_argument("--n-test", type=int, default=200_000, help="held-out stream (different seed)")
    p.add_argument("--n-adjudicator-stage1", type=int, default=1_000_000,
                   help="synthetic transactions whose flags become the adjudicator's stage-1 records")
    p.add_argument("--seeds", default="101,202,303", help="generator seeds: stage 1, stage 2, held-out stream")
    p.add_argument("--out", default=None, help="output directory (default: DSV_HOME/finance/curriculum)")

    p = add_command(group, "service", _service,
                    "Run everything on embedded defaults: broker, live producer, scorer, adjudicator (Ctrl-C stops).")
    p.add_argument("--rate", type=float, default=200, help="live transactions per second")
    p.add_argument("--client", choices=("confluent", "kafka-python"), default="confluent", help="Kafka client")
    p.add_argument("--metrics-port", type=int, default=9108, help="Prometheus port of the scorer (adjudicator: +1)")
