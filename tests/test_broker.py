def test_embedded_broker_round_trip(kafka_broker):
    from kafka import KafkaConsumer, KafkaProducer

    from shared.broker import ensure_topics

    ensure_topics(kafka_broker.bootstrap, {"smoke": 2})
    producer = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap)
    for i in range(10):
        producer.send("smoke", key=str(i).encode(), value=f"m{i}".encode())
    producer.flush()
    consumer = KafkaConsumer("smoke", bootstrap_servers=kafka_broker.bootstrap, group_id="smoke-test",
                             auto_offset_reset="earliest", consumer_timeout_ms=5000,
                             session_timeout_ms=6000, heartbeat_interval_ms=1000)
    got = {m.value.decode() for m in consumer}
    consumer.close()
    assert got == {f"m{i}" for i in range(10)}
