"""The Kafka path against the real broker process: records on the `sensors` topic are buffered per
device and scored; malformed messages are counted, not fatal; after a restart the committed offsets
and the saved buffer mean nothing is re-scored and new records are picked up."""
from __future__ import annotations

import json
import uuid

from apps.manufacturing.data import SENSORS_TOPIC, publish_records
from apps.manufacturing.scheduler import HistoryStore, KafkaSource, Scheduler, SchedulerConfig
from shared.broker import ensure_topics

N_DEVICES = 3


def test_kafka_records_are_scored_and_offsets_resume(tmp_path, kafka_broker, trained_model, heldout_fleet):
    from kafka import KafkaProducer

    bootstrap = kafka_broker.bootstrap
    ensure_topics(bootstrap, {SENSORS_TOPIC: 2})
    frame = heldout_fleet.to_frame()
    frame = frame[frame.device_id.isin(heldout_fleet.device_ids[:N_DEVICES])]
    first_part = frame.groupby("device_id").head(30)            # 30 samples: more than one window
    assert publish_records(bootstrap, first_part) == len(first_part)
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    producer.send(SENSORS_TOPIC, b"this is not json")
    producer.send(SENSORS_TOPIC, json.dumps({"device_id": "M0000", "ts": 1767225600,
                                             "temperature": "very hot"}).encode())
    producer.flush()
    producer.close()

    group = f"mfg-test-{uuid.uuid4().hex[:8]}"
    buffer, db = tmp_path / "kafka_buffer.parquet", tmp_path / "history.sqlite"

    def scheduler():
        source = KafkaSource(bootstrap, group, trained_model.cfg, buffer, poll_seconds=15.0)
        return Scheduler(trained_model, source, HistoryStore(db), SchedulerConfig(interval_s=0)), source

    sched, source = scheduler()
    cycle = sched.run_cycle()
    assert cycle["n_devices"] == N_DEVICES and cycle["n_scored"] == N_DEVICES
    report = json.loads(cycle["report"])
    assert report["n_bad_rows"] == 2
    assert any("malformed" in r for r in report["bad_rows"]) and any("temperature" in r for r in report["bad_rows"])
    source.close()
    sched.store.close()

    # Restart: offsets were committed and the buffer saved, so no record is read (or scored) twice.
    sched, source = scheduler()
    again = sched.run_cycle()
    assert again["cycle_id"] == 2 and again["n_devices"] == N_DEVICES and again["n_scored"] == 0
    # New data for one device: only that device gets a new window.
    one = heldout_fleet.device_ids[0]
    publish_records(bootstrap, frame[frame.device_id == one].iloc[30:33])
    third = sched.run_cycle()
    assert third["n_scored"] == 1
    source.close()
    sched.store.close()
