"""The worker's transactions: the scored batches waiting in the commit queue go out as one
Kafka transaction (verdicts, dead letters, changed windows and consumed offsets commit together
or not at all), or are aborted and handed back to be re-read."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass

import structlog
from kafka import KafkaProducer, TopicPartition
from kafka.errors import KafkaError, KafkaTimeoutError, ProducerFencedError
from kafka.structs import OffsetAndMetadata

from worker.formats.codec import encode_verdict
from worker.formats.deadletter import dead_letter_headers
from worker.formats.windows import encode_window
from worker.kafka.config import ServiceConfig, client_settings
from worker.kafka.errors import ServiceError
from worker.kafka.internals import transaction_manager, wake_sender
from worker.metrics import Metrics
from worker.processor import BatchResult, Record
from worker.validate import WindowState

__all__ = ["DEAD_LETTER_OVERHEAD", "Aborted", "Batch", "Transactions", "batch_of", "merged"]

log = structlog.get_logger("radiusguard.worker")

# Room for a dead letter's key, headers and batch framing beyond its value.
DEAD_LETTER_OVERHEAD = 64 << 10

# How long the producer waits before retrying a transactional request. Kafka answers a request
# of the next transaction with CONCURRENT_TRANSACTIONS while it still writes the markers of the
# previous one (a few ms); kafka-python's default 100 ms wait would then hold up every verdict
# of that transaction, back to back transactions being the normal case here.
_RETRY_BACKOFF_MS = 10


@dataclass(frozen=True)
class Batch:
    """A scored batch waiting for its transaction: the records, what they produced, the
    offsets to commit and the group generation they were polled in (KIP-447 fencing)."""

    records: list[Record]
    result: BatchResult
    offsets: dict[TopicPartition, OffsetAndMetadata]
    group: object  # kafka-python's ConsumerGroupMetadata
    polled_at: float  # time.monotonic() when the poll returned


def batch_of(records: list[Record], result: BatchResult, group: object,
             polled_at: float) -> Batch:
    """A Batch committing the offsets just past `records`."""
    offsets: dict[TopicPartition, OffsetAndMetadata] = {}
    for r in records:
        tp = TopicPartition(r.topic, r.partition)
        if tp not in offsets or offsets[tp].offset <= r.offset:
            offsets[tp] = OffsetAndMetadata(r.offset + 1, "", -1)
    return Batch(records, result, offsets, group, polled_at)


def merged(batches: list[Batch]) -> Batch:
    """Consecutive batches as one: verdicts and dead letters in order, the last window of each
    stream, the furthest offset of each partition, the latest group generation."""
    if len(batches) == 1:
        return batches[0]
    result = BatchResult()
    states: dict[tuple[int, str], WindowState] = {}
    offsets: dict[TopicPartition, OffsetAndMetadata] = {}
    for b in batches:
        result.verdicts += b.result.verdicts
        result.dead_letters += b.result.dead_letters
        states.update(b.result.states)
        offsets.update(b.offsets)  # later batches hold later records of a partition
    result.states = states
    return Batch([r for b in batches for r in b.records], result, offsets, batches[-1].group,
                 min(b.polled_at for b in batches))


class Aborted(Exception):
    """A transaction was aborted: its records (and those scored after) are re-read."""


class Transactions:
    """The transactional producer: `commit(batches)` runs on the commit queue's thread."""

    def __init__(self, cfg: ServiceConfig, metrics: Metrics):
        self.cfg = cfg
        self.metrics = metrics
        self.producer: KafkaProducer | None = None

    def open(self) -> None:
        """Start the producer (fencing a previous incarnation's open transaction)."""
        self.producer = self._new_producer()

    def close(self) -> None:
        """Close the producer."""
        if self.producer is not None:
            self.producer.close()

    def commit(self, batches: list[Batch]) -> None:
        """Commit the batches in one transaction, or abort it (replacing a producer that cannot
        even abort) and raise Aborted; ServiceError if another worker took the transactional
        id."""
        batch = merged(batches)
        try:
            self.write(batch, self.producer)
        except ProducerFencedError as exc:
            raise ServiceError(
                f"fenced: another worker uses transactional id {self.cfg.transactional_id!r} "
                "(worker ids must be unique within a group)"
            ) from exc
        except KafkaError as exc:
            self.metrics.aborts.inc()
            log.warning("transaction aborted", error=repr(exc), records=len(batch.records))
            self.producer = self._abort(self.producer)
            raise Aborted(repr(exc)) from exc
        result = batch.result
        self.metrics.observe_verdicts(result.verdicts)
        self.metrics.dead_letters.inc(len(result.dead_letters))
        self.metrics.batch.observe(len(batch.records))
        self.metrics.latency.observe(time.monotonic() - batch.polled_at)
        log.debug("transaction", records=len(batch.records),
                  **Counter(v.verdict for _, v in result.verdicts))

    def write(self, batch: Batch, producer: KafkaProducer) -> None:
        """One transaction: the batch's verdicts, dead letters, windows and offsets."""
        cfg = self.cfg
        result = batch.result
        producer.begin_transaction()
        for key, verdict in result.verdicts:
            producer.send(cfg.output_topic, key=key, value=encode_verdict(verdict))
        for dl in result.dead_letters:
            src = dl.source
            value = dl.value
            dropped = None
            if value is not None and len(value) > cfg.max_dead_letter_bytes:
                dropped = len(value)
                value = None  # a copy that cannot be written must not block the stream
            headers = dead_letter_headers(dl.error, src.topic, src.partition, src.offset, dropped)
            producer.send(cfg.dlq_topic, key=dl.key, value=value, headers=headers)
        for (partition, stream), state in result.states.items():
            producer.send(cfg.changelog_topic, key=stream.encode(), value=encode_window(state),
                          partition=partition)
        txn = transaction_manager(producer)
        self._await(producer, txn.send_offsets_to_transaction(batch.offsets, batch.group),
                    "sending the offsets")
        self._await(producer, txn.begin_commit(), "the commit")

    def _await(self, producer: KafkaProducer, result, what: str) -> None:
        """Wait for a transactional request, at most the transaction timeout (the broker aborts
        the transaction by then): kafka-python's own methods wait without a bound, and a request
        lost to a broker restart would block the worker forever."""
        wake_sender(producer)
        timeout_ms = self.cfg.transaction_timeout_ms
        if not result.wait(timeout_ms=timeout_ms):
            raise KafkaTimeoutError(f"{what} did not complete in {timeout_ms} ms")

    def _abort(self, producer: KafkaProducer) -> KafkaProducer:
        """Abort the open transaction; replace a producer that cannot abort."""
        try:
            self._await(producer, transaction_manager(producer).begin_abort(), "the abort")
            return producer
        except KafkaError as exc:
            log.warning("abort failed; starting a new producer", error=repr(exc))
        try:
            producer.close(timeout=5)
        except Exception as exc:  # the old producer is being replaced either way
            log.warning("close failed", error=repr(exc))
        return self._new_producer()  # init_transactions fences and aborts the old epoch

    def _new_producer(self) -> KafkaProducer:
        cfg = self.cfg
        settings = client_settings(KafkaProducer, cfg.kafka)
        settings.setdefault("max_request_size", cfg.max_dead_letter_bytes + DEAD_LETTER_OVERHEAD)
        settings.setdefault("retry_backoff_ms", _RETRY_BACKOFF_MS)
        producer = KafkaProducer(
            bootstrap_servers=cfg.bootstrap, client_id=cfg.worker_id,
            transactional_id=cfg.transactional_id,
            transaction_timeout_ms=cfg.transaction_timeout_ms, **settings,
        )
        producer.init_transactions()
        return producer
