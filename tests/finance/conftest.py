"""Finance fixtures: a small trained fast-tier model and helpers to talk to the real broker."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from apps.finance.data import GeneratorConfig, columns_to_records, generate_columns
from apps.finance.pipeline import dumps

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def fin_model(tmp_path_factory) -> Path:
    """A fast-tier model trained on 20k synthetic transactions (few trees: tests need speed, not quality)."""
    from apps.finance.model import train_fast_scorer

    path = tmp_path_factory.mktemp("finance") / "fast_model.pkl"
    train_fast_scorer(generate_columns(GeneratorConfig(n=20_000, seed=1)), seed=1, max_iter=40).save(path)
    return path


def synthetic_records(n: int, seed: int) -> list[dict]:
    return columns_to_records(generate_columns(GeneratorConfig(n=n, seed=seed)), labelled=False)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def broker(tmp_path):
    """A real Kafka-protocol broker process per test (starts in well under a second), topics created
    with 4 partitions, so tests never see each other's messages or consumer groups."""
    from apps.finance.stream import ALL_TOPICS
    from shared.broker import EmbeddedBroker
    from shared.broker import ensure_topics

    b = EmbeddedBroker(tmp_path / "kafka").start()
    ensure_topics(b.bootstrap, {t: 4 for t in ALL_TOPICS})
    yield b
    b.stop()


def produce(bootstrap: str, topic: str, values: list[bytes], keys: list[bytes | None] | None = None) -> None:
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for i, v in enumerate(values):
        p.produce(topic, v, keys[i] if keys else None)
        if i % 1000 == 0:
            p.poll(0)
    assert p.flush(30) == 0


def produce_records(bootstrap: str, topic: str, records: list[dict]) -> None:
    produce(bootstrap, topic, [dumps(r) for r in records], [r["account"].encode() for r in records])


def read_topic(bootstrap: str, topic: str, until: int, timeout_s: float = 40.0) -> list:
    """All messages of ``topic`` from the start, stopping once ``until`` have arrived or at the timeout."""
    from confluent_kafka import Consumer

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": unique("reader"), "auto.offset.reset": "earliest",
                  "enable.auto.commit": False, "session.timeout.ms": 6000})
    c.subscribe([topic])
    out, deadline = [], time.monotonic() + timeout_s
    try:
        while len(out) < until and time.monotonic() < deadline:
            out.extend(m for m in c.consume(1000, 0.5) if not m.error())
    finally:
        c.close()
    return out


def scorer_process(bootstrap: str, model: Path, group: str, *extra: str, home: Path | None = None) -> subprocess.Popen:
    env = {**os.environ, "KAFKA_BOOTSTRAP": bootstrap, "OMP_NUM_THREADS": "1"}
    if home:
        env["DSV_HOME"] = str(home)
    return subprocess.Popen(
        [sys.executable, "-m", "core.cli", "finance", "score", "--model", str(model), "--group", group,
         "--no-sink", "--batch-size", "500", *extra],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def read_until_keys(bootstrap: str, topic: str, expected: set[str], timeout_s: float = 60.0) -> list:
    """Messages of ``topic`` from the start until every key in ``expected`` was seen (duplicates kept)."""
    from confluent_kafka import Consumer

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": unique("reader"), "auto.offset.reset": "earliest",
                  "enable.auto.commit": False, "session.timeout.ms": 6000})
    c.subscribe([topic])
    out, seen, deadline = [], set(), time.monotonic() + timeout_s
    try:
        while not expected <= seen and time.monotonic() < deadline:
            batch = [m for m in c.consume(1000, 0.5) if not m.error()]
            out.extend(batch)
            seen.update(m.key().decode() for m in batch if m.key())
        # drain what is already there (duplicates of a replay) without waiting long
        out.extend(m for m in c.consume(100_000, 1.0) if not m.error())
    finally:
        c.close()
    return out


def topic_size(bootstrap: str, topic: str, partitions: int = 4) -> int:
    """Messages in ``topic`` (sum of high watermarks), without joining a consumer group."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": unique("size")})
    try:
        return sum(c.get_watermark_offsets(TopicPartition(topic, p), timeout=5)[1] for p in range(partitions))
    except Exception:  # noqa: BLE001 - broker briefly unavailable
        return 0
    finally:
        c.close()
