"""Real-broker tests for worker.local.broker and for the kafka-python features the worker relies on."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Callable

import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import KafkaError, ProducerFencedError
from kafka.structs import OffsetAndMetadata

from tests.kafka_fixtures import LocalBroker
from worker.local import broker

pytestmark = pytest.mark.kafka


def _consume(consumer: KafkaConsumer, expected: int, timeout: float = 30) -> list:
    """Poll until ``expected`` records arrived (or fail after ``timeout`` seconds)."""
    records: list = []
    deadline = time.monotonic() + timeout
    while len(records) < expected and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=500).values():
            records.extend(batch)
    assert len(records) == expected, f"got {len(records)} of {expected} records"
    return records


def _consumer(bootstrap: str, topic: str, **kwargs: object) -> KafkaConsumer:
    settings: dict[str, object] = {
        "bootstrap_servers": bootstrap,
        "auto_offset_reset": "earliest",
        "enable_auto_commit": False,
        "group_id": f"g-{uuid.uuid4().hex[:8]}",
    }
    settings.update(kwargs)
    return KafkaConsumer(topic, **settings)


def test_lifecycle(broker_factory: Callable[..., LocalBroker]) -> None:
    b = broker_factory()
    pid_file = b.config.data_dir / "broker.pid"
    assert b.status() is None
    assert b.stop() is False

    bootstrap = b.start()
    assert bootstrap == b.bootstrap == f"127.0.0.1:{b.config.port}"
    assert pid_file.is_file()
    assert b.status() == bootstrap

    t0 = time.monotonic()
    assert b.start() == bootstrap  # idempotent: returns the running broker
    assert time.monotonic() - t0 < 5
    assert pid_file.read_text().strip().isdigit()

    assert b.stop() is True
    assert not pid_file.exists()
    assert b.status() is None
    assert b.stop() is False


def test_restart_after_kill_keeps_data(broker_factory: Callable[..., LocalBroker]) -> None:
    b = broker_factory()
    bootstrap = b.start()
    topic = f"durable-{uuid.uuid4().hex[:8]}"
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for i in range(10):
        producer.send(topic, str(i).encode())
    producer.flush()
    producer.close()

    assert b.kill() is True
    assert b.status() is None
    assert b.start() == bootstrap  # same ports, same data dir, storage not re-formatted

    consumer = _consumer(bootstrap, topic)
    try:
        values = sorted(int(r.value) for r in _consume(consumer, 10))
    finally:
        consumer.close()
    assert values == list(range(10))


def test_start_failure_is_a_readable_error(broker_factory: Callable[..., LocalBroker]) -> None:
    b = broker_factory(extra_properties={"num.network.threads": "not-a-number"})
    with pytest.raises(broker.BrokerError, match="num.network.threads"):
        b.start(timeout=60)
    assert b.status() is None


def test_port_in_use_is_refused(broker_factory: Callable[..., LocalBroker]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        b = broker_factory(port=s.getsockname()[1])
        with pytest.raises(broker.BrokerError, match="in use"):
            b.start()


def test_produce_consume_round_trip(
    kafka_bootstrap: str, topic_factory: Callable[..., str]
) -> None:
    topic = topic_factory(partitions=4)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    for i in range(100):
        producer.send(topic, key=str(i % 7).encode(), value=str(i).encode())
    producer.flush()
    producer.close()

    consumer = _consumer(kafka_bootstrap, topic)
    try:
        records = _consume(consumer, 100)
    finally:
        consumer.close()
    assert sorted(int(r.value) for r in records) == list(range(100))
    assert {r.partition for r in records} <= set(range(4))
    for key in {r.key for r in records}:  # per-key order is preserved
        seq = [int(r.value) for r in records if r.key == key]
        assert seq == sorted(seq)


def test_transactional_consume_transform_produce(
    kafka_bootstrap: str, topic_factory: Callable[..., str]
) -> None:
    """Exactly-once loop: outputs + input offsets commit atomically; aborts stay invisible."""
    src, dst = topic_factory(partitions=2, prefix="src"), topic_factory(partitions=2, prefix="dst")
    group = f"tx-{uuid.uuid4().hex[:8]}"
    seed = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    for i in range(40):
        seed.send(src, str(i).encode())
    seed.flush()
    seed.close()

    consumer = _consumer(kafka_bootstrap, src, group_id=group, isolation_level="read_committed")
    producer = KafkaProducer(
        bootstrap_servers=kafka_bootstrap, transactional_id=f"tid-{uuid.uuid4().hex[:8]}"
    )
    try:
        producer.init_transactions()
        done = 0
        n_tx = 0
        deadline = time.monotonic() + 60
        while done < 40 and time.monotonic() < deadline:
            polled = consumer.poll(timeout_ms=500, max_records=10)
            if not polled:
                continue
            producer.begin_transaction()
            offsets = {}
            for tp, batch in polled.items():
                for r in batch:
                    producer.send(dst, str(int(r.value) * 10).encode())
                offsets[tp] = OffsetAndMetadata(batch[-1].offset + 1, "", -1)
                done += len(batch)
            producer.send_offsets_to_transaction(offsets, consumer.group_metadata())
            producer.commit_transaction()
            n_tx += 1
        assert done == 40
        assert n_tx >= 2

        producer.begin_transaction()  # an aborted transaction must never be read
        for i in range(5):
            producer.send(dst, f"aborted-{i}".encode())
        producer.flush()
        producer.abort_transaction()

        producer.begin_transaction()  # a final committed marker after the abort
        producer.send(dst, b"last")
        producer.commit_transaction()
    finally:
        producer.close()

    committed = {tp: consumer.committed(tp) for tp in consumer.assignment()}
    ends = consumer.end_offsets(list(consumer.assignment()))
    consumer.close()
    assert committed == ends  # input offsets were committed inside the transactions

    reader = _consumer(kafka_bootstrap, dst, isolation_level="read_committed")
    try:
        values = [r.value for r in _consume(reader, 41)]
        assert not reader.poll(timeout_ms=1000)  # nothing else (no aborted records)
    finally:
        reader.close()
    assert sorted(values) == sorted([str(i * 10).encode() for i in range(40)] + [b"last"])

    dirty = _consumer(kafka_bootstrap, dst, isolation_level="read_uncommitted")
    try:
        assert sum(r.value.startswith(b"aborted-") for r in _consume(dirty, 46)) == 5
    finally:
        dirty.close()


def test_transactional_producer_is_fenced(
    kafka_bootstrap: str, topic_factory: Callable[..., str]
) -> None:
    """A second producer with the same transactional_id fences the first (zombie protection)."""
    topic = topic_factory(partitions=1)
    tid = f"fence-{uuid.uuid4().hex[:8]}"
    old = KafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=tid)
    new = KafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=tid)
    try:
        old.init_transactions()
        old.begin_transaction()
        old.send(topic, b"zombie")
        old.flush()

        new.init_transactions()  # aborts the old producer's open transaction
        new.begin_transaction()
        new.send(topic, b"fresh")
        new.commit_transaction()

        with pytest.raises((ProducerFencedError, KafkaError)):
            old.send(topic, b"zombie-2")
            old.commit_transaction()
    finally:
        new.close()
        old.close(timeout=5)

    reader = _consumer(kafka_bootstrap, topic, isolation_level="read_committed")
    try:
        assert [r.value for r in _consume(reader, 1)] == [b"fresh"]
        assert not reader.poll(timeout_ms=1000)
    finally:
        reader.close()
