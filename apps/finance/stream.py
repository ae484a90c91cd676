"""Kafka plumbing behind one small interface, with two implementations.

kafka-python is the client the product names; on two cores its pure-Python protocol code tops out near
10-18k messages/s (../shared/NOTES.md), so librdkafka (``confluent-kafka``) can serve the hot path. Both
implement ``Consumer``/``Producer`` below, both are tested against the real broker, and the choice is a
flag (``--client kafka-python|confluent``).
"""
from __future__ import annotations

import contextlib
import logging
import operator
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

log = logging.getLogger(__name__)

TOPIC_TX, TOPIC_SCORES, TOPIC_ALERTS = "transactions", "fraud.scores", "fraud.alerts"
TOPIC_DLQ, TOPIC_ADJUDICATIONS = "transactions.dlq", "fraud.adjudications"
TOPIC_CONTEXT = "fraud.context"  # transactions around a flag, for the adjudicator (apps/finance/episode.py)
ALL_TOPICS = (TOPIC_TX, TOPIC_SCORES, TOPIC_ALERTS, TOPIC_DLQ, TOPIC_ADJUDICATIONS, TOPIC_CONTEXT)
CLIENTS = ("confluent", "kafka-python")


@dataclass
class Message:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int
    headers: dict[str, bytes]


class Polled:
    """One poll's messages for the hot path: the values as a list (what the scorer needs), the rest of
    each message only on demand (DLQ entries, latency), so a batch costs no per-message Python object."""

    def __init__(self, raw: list, to_message, value_of):
        self._raw, self._to_message = raw, to_message
        self.values: list[bytes] = [value_of(m) or b"" for m in raw]

    def __len__(self) -> int:
        return len(self._raw)

    def message(self, i: int) -> Message:
        return self._to_message(self._raw[i])

    def timestamps_ms(self) -> np.ndarray:
        return np.fromiter((self.message(i).timestamp_ms for i in range(len(self))), np.float64, len(self))


class DeliveryFailed(RuntimeError):
    """An output could not be written; the batch's offsets must not be committed."""


class Consumer(Protocol):
    def poll(self, max_records: int, timeout_s: float) -> list[Message]: ...
    def poll_batch(self, max_records: int, timeout_s: float) -> Polled: ...
    def commit(self) -> None: ...
    def commit_offsets(self, offsets: dict[tuple[str, int], int]) -> None: ...
    def has_assignment(self) -> bool: ...
    def lag(self) -> int: ...
    def close(self) -> None: ...


class Producer(Protocol):
    def send(self, topic: str, value: bytes, key: bytes | None = None,
             headers: dict[str, bytes] | None = None) -> None: ...
    def send_many(self, topic: str, values: list[bytes], keys: list[bytes]) -> None: ...
    def flush(self, timeout_s: float = 60.0) -> None: ...
    def close(self) -> None: ...


# -- confluent-kafka (librdkafka) ---------------------------------------------------------------------

def _rebalance_codes() -> set:
    from confluent_kafka import KafkaError

    return {KafkaError.ILLEGAL_GENERATION, KafkaError.UNKNOWN_MEMBER_ID, KafkaError.REBALANCE_IN_PROGRESS,
            KafkaError._STATE, KafkaError._ASSIGNMENT_LOST}


class _LazyCodes:
    def __contains__(self, code) -> bool:
        return code in _rebalance_codes()


_REBALANCE_CODES = _LazyCodes()


class ConfluentConsumer:
    def __init__(self, bootstrap: str, group: str, topics: list[str], max_records: int = 5000,
                 instance_id: str | None = None):
        from confluent_kafka import Consumer as _C

        conf = {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False,
                "auto.offset.reset": "earliest", "session.timeout.ms": 6000,
                "heartbeat.interval.ms": 1000, "fetch.wait.max.ms": 50,
                "queued.max.messages.kbytes": 65536, "max.poll.interval.ms": 60000}
        if instance_id:
            conf["group.instance.id"] = instance_id
        self._c = _C(conf)
        self._c.subscribe(topics, on_assign=self._on_assign, on_revoke=self._on_revoke)

    @staticmethod
    def _on_assign(consumer, partitions) -> None:
        log.info("partitions assigned: %s", sorted(f"{p.topic}/{p.partition}" for p in partitions))

    @staticmethod
    def _on_revoke(consumer, partitions) -> None:
        log.info("partitions revoked: %s", sorted(f"{p.topic}/{p.partition}" for p in partitions))

    def _consume(self, max_records: int, timeout_s: float) -> list:
        msgs = self._c.consume(num_messages=max_records, timeout=timeout_s)
        if any(m.error() for m in msgs):
            for m in msgs:
                if m.error():
                    log.warning("consumer: %s", m.error())
            msgs = [m for m in msgs if not m.error()]
        return msgs

    @staticmethod
    def _message(m) -> Message:
        return Message(m.topic(), m.partition(), m.offset(), m.key(), m.value(), m.timestamp()[1],
                       dict(m.headers() or []))

    def poll(self, max_records: int, timeout_s: float) -> list[Message]:
        return [self._message(m) for m in self._consume(max_records, timeout_s)]

    def poll_batch(self, max_records: int, timeout_s: float) -> Polled:
        return Polled(self._consume(max_records, timeout_s), self._message, _value)

    def has_assignment(self) -> bool:
        return bool(self._c.assignment())

    def commit(self) -> None:
        self._commit(None)

    def commit_offsets(self, offsets: dict[tuple[str, int], int]) -> None:
        """Commit ``(topic, partition) -> next offset to read`` (a consumer that holds records past a
        poll, like the adjudicator, commits only what it no longer needs)."""
        from confluent_kafka import TopicPartition

        if offsets:
            self._commit([TopicPartition(t, p, o) for (t, p), o in offsets.items()])

    def _commit(self, offsets) -> None:
        from confluent_kafka import KafkaError, KafkaException

        try:
            if offsets is None:
                self._c.commit(asynchronous=False)
            else:
                self._c.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            code = exc.args[0].code() if exc.args else None
            if code == KafkaError._NO_OFFSET:  # nothing consumed since the last commit
                return
            if code in _REBALANCE_CODES:
                # The partitions moved during the batch. Its outputs are already flushed; the new owner
                # replays from the last committed offset, so this costs duplicates, never losses.
                log.warning("commit lost to a rebalance (%s); the batch will be replayed", exc)
                return
            raise

    def lag(self) -> int:
        total = 0
        assignment = self._c.assignment()
        if not assignment:
            return 0
        for tp in self._c.position(assignment):
            _, high = self._c.get_watermark_offsets(tp, timeout=2, cached=False)
            total += max(0, high - tp.offset) if tp.offset >= 0 else high
        return total

    def close(self) -> None:
        self._c.close()


class ConfluentProducer:
    def __init__(self, bootstrap: str, linger_ms: int = 5):
        from confluent_kafka import Producer as _P

        self._p = _P({"bootstrap.servers": bootstrap, "linger.ms": linger_ms, "acks": "all",
                      "enable.idempotence": False, "queue.buffering.max.messages": 1_000_000,
                      "batch.num.messages": 10000, "batch.size": 4 * 1024 * 1024,
                      # no compression: kafka-python consumers need extra codec packages for lz4/snappy/zstd
                      "compression.type": "none",
                      "message.timeout.ms": 120000,
                      # A Python callback per delivered message cost ~1 us each; only failures need one
                      # (flush() still waits for every message, and counts what is left undelivered).
                      "delivery.report.only.error": True, "on_delivery": self._on_delivery})
        self._failures: list[str] = []

    def _on_delivery(self, err, msg) -> None:
        if err is not None:
            self._failures.append(str(err))

    def send(self, topic, value, key=None, headers=None) -> None:
        while True:
            try:
                self._p.produce(topic, value, key, headers=list(headers.items()) if headers else None)
                return
            except BufferError:  # local queue full: let librdkafka drain it
                self._p.poll(0.05)

    def send_many(self, topic, values, keys) -> None:
        produce, i, n = self._p.produce, 0, len(values)
        while i < n:
            try:
                for i in range(i, n):  # noqa: B020 - resumes at the message that did not fit
                    produce(topic, values[i], keys[i])
                i = n
            except BufferError:  # local queue full: let librdkafka drain it, then go on from i
                self._p.poll(0.05)

    def flush(self, timeout_s: float = 120.0) -> None:
        remaining = self._p.flush(timeout_s)
        if remaining or self._failures:
            failures, self._failures = self._failures, []
            raise DeliveryFailed(f"{remaining} undelivered, {len(failures)} failed: {failures[:3]}")

    def close(self) -> None:
        self._p.flush(10)


# -- kafka-python -------------------------------------------------------------------------------------

class KafkaPythonConsumer:
    def __init__(self, bootstrap: str, group: str, topics: list[str], max_records: int = 5000,
                 instance_id: str | None = None):
        from kafka import KafkaConsumer

        extra = {"group_instance_id": instance_id} if instance_id else {}
        self._c = KafkaConsumer(*topics, bootstrap_servers=bootstrap, group_id=group, **extra,
                                enable_auto_commit=False, auto_offset_reset="earliest",
                                session_timeout_ms=6000, heartbeat_interval_ms=1000,
                                max_poll_records=max_records, fetch_max_wait_ms=50,
                                max_partition_fetch_bytes=8 * 1024 * 1024)

    def _records(self, max_records: int, timeout_s: float) -> list:
        batches = self._c.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        return [r for records in batches.values() for r in records]

    @staticmethod
    def _message(r) -> Message:
        return Message(r.topic, r.partition, r.offset, r.key, r.value, r.timestamp,
                       {k: v for k, v in (r.headers or [])})

    def poll(self, max_records: int, timeout_s: float) -> list[Message]:
        return [self._message(r) for r in self._records(max_records, timeout_s)]

    def poll_batch(self, max_records: int, timeout_s: float) -> Polled:
        return Polled(self._records(max_records, timeout_s), self._message, _record_value)

    def has_assignment(self) -> bool:
        return bool(self._c.assignment())

    def commit(self) -> None:
        self._commit(None)

    def commit_offsets(self, offsets: dict[tuple[str, int], int]) -> None:
        from kafka import OffsetAndMetadata, TopicPartition

        if offsets:
            self._commit({TopicPartition(t, p): OffsetAndMetadata(o, "", -1) for (t, p), o in offsets.items()})

    def _commit(self, offsets) -> None:
        from kafka.errors import (
            CommitFailedError,
            IllegalGenerationError,
            RebalanceInProgressError,
        )

        try:
            self._c.commit(offsets) if offsets is not None else self._c.commit()
        except (CommitFailedError, IllegalGenerationError, RebalanceInProgressError) as exc:
            log.warning("commit lost to a rebalance (%s); the batch will be replayed", exc)

    def lag(self) -> int:
        assignment = self._c.assignment()
        if not assignment:
            return 0
        ends = self._c.end_offsets(list(assignment))
        return sum(max(0, ends[tp] - self._c.position(tp)) for tp in assignment)

    def close(self) -> None:
        self._c.close()


class KafkaPythonProducer:
    def __init__(self, bootstrap: str, linger_ms: int = 5):
        from kafka import KafkaProducer

        self._p = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=linger_ms, acks="all",
                                batch_size=256 * 1024, retries=2**31 - 1, request_timeout_ms=30000,
                                max_block_ms=120000)
        self._futures = []

    def send(self, topic, value, key=None, headers=None) -> None:
        self._futures.append(self._p.send(topic, value=value, key=key,
                                          headers=list(headers.items()) if headers else None))

    def send_many(self, topic, values, keys) -> None:
        for value, key in zip(values, keys):
            self.send(topic, value, key)

    def flush(self, timeout_s: float = 120.0) -> None:
        self._p.flush(timeout=timeout_s)
        futures, self._futures = self._futures, []
        failed = [f.exception for f in futures if not f.is_done or f.failed()]
        if failed:
            raise DeliveryFailed(f"{len(failed)} outputs not delivered: {failed[:3]}")

    def close(self) -> None:
        self._p.flush(10)
        self._p.close(timeout=10)


_value = operator.methodcaller("value")           # confluent_kafka.Message
_record_value = operator.attrgetter("value")     # kafka-python ConsumerRecord


def make_consumer(client: str, bootstrap: str, group: str, topics: list[str], max_records: int = 5000,
                  instance_id: str | None = None) -> Consumer:
    """``instance_id`` turns on static group membership (KIP-345): a restarted member with the same id
    takes its partitions back at once. The embedded broker (noida-db 0.2.3) never evicted a SIGKILLed
    dynamic member in our tests, so a crashed-and-restarted scorer needs it there."""
    cls = {"confluent": ConfluentConsumer, "kafka-python": KafkaPythonConsumer}[client]
    return cls(bootstrap, group, topics, max_records, instance_id)


def make_producer(client: str, bootstrap: str, linger_ms: int = 5) -> Producer:
    cls = {"confluent": ConfluentProducer, "kafka-python": KafkaPythonProducer}[client]
    return cls(bootstrap, linger_ms)


# -- the broker -------------------------------------------------------------------------------------

# The embedded broker is shared.broker.EmbeddedBroker (its stop/kill reach the whole process group).
from shared.broker import EmbeddedBroker  # noqa: E402
from shared.net import port_open  # noqa: E402


@contextlib.contextmanager
def kafka_bootstrap(settings, partitions: int = 4) -> Iterator[str]:
    """KAFKA_BOOTSTRAP when set; otherwise the embedded broker under DSV_HOME/kafka, shared by every
    `dsv finance` process of that home (the first one starts it and stops it when it exits)."""
    from shared.broker import ensure_topics, wait_for_kafka

    if settings.kafka_bootstrap:
        wait_for_kafka(settings.kafka_bootstrap, timeout=30)
        ensure_topics(settings.kafka_bootstrap, {t: partitions for t in ALL_TOPICS})
        yield settings.kafka_bootstrap
        return
    data_dir = Path(settings.home) / "kafka"
    address_file = data_dir / "bootstrap"
    if address_file.exists() and port_open(address_file.read_text().strip()):
        bootstrap = address_file.read_text().strip()
        ensure_topics(bootstrap, {t: partitions for t in ALL_TOPICS})
        log.info("using the embedded broker already running at %s", bootstrap)
        yield bootstrap
        return
    broker = EmbeddedBroker(data_dir)
    broker.start()
    address_file.write_text(broker.bootstrap)
    try:
        ensure_topics(broker.bootstrap, {t: partitions for t in ALL_TOPICS})
        yield broker.bootstrap
    finally:
        broker.stop()
        address_file.unlink(missing_ok=True)


def wait_until(predicate, timeout_s: float, interval_s: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return predicate()
