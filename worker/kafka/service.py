"""`radiusguard serve`: a consumer-group member that turns input records into verdicts.

Each batch is one Kafka transaction: the verdicts, the dead letters, the changed windows (to a
compacted changelog co-partitioned with the inputs) and the consumed offsets commit together
or not at all, so every input gets exactly one committed verdict and a window always matches
the offset it was committed with. Windows are restored from the changelog when a partition
is assigned, in the poll loop (never inside the rebalance callback, which shares the client's
network thread with the heartbeats), and only once every transaction that wrote to the
changelog partition has completed, so a restored window is the last committed one.

Batches are pipelined (worker.kafka.pipeline): batch k commits on the commit thread while the poll
loop polls and scores batch k+1 from the windows batch k left. One transaction at a time: k+1
is handed over only once k committed; if k aborted, k+1 is dropped and the partitions of both
are re-read from their committed offsets and windows. A revocation waits for the running
commit, so a partition changes owner only with everything processed on it committed.
"""

from __future__ import annotations

import logging
import signal
import ssl
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import structlog
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import (
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    ProducerFencedError,
    SaslAuthenticationFailedError,
    TopicAlreadyExistsError,
)
from kafka.structs import OffsetAndMetadata

from verifier.network import load_onnx
from verifier.score import plan_for
from worker.formats.codec import Limits, encode_verdict
from worker.formats.deadletter import dead_letter_headers
from worker.kafka.config import ConfigError, ServiceConfig, client_settings
from worker.kafka.internals import transaction_manager, wake_sender
from worker.kafka.pipeline import BatchSizer, CommitStage
from worker.metrics import Metrics, MetricsServer
from worker.processor import BatchResult, Processor, Record, Scorer
from worker.profile import check_model, load_profile
from worker.validate import WindowState

__all__ = ["RestoreError", "Service", "ServiceError", "WindowRestorer"]

log = structlog.get_logger("radiusguard.worker")

# Room for a dead letter's key, headers and batch framing beyond its value.
_DEAD_LETTER_OVERHEAD = 64 << 10

# How long the broker may hold an empty fetch. The client keeps one fetch per broker in flight
# and leaves out partitions whose records it still buffers, so a record arriving on such a
# partition waits for that fetch to return: up to kafka-python's default 500 ms without this.
_FETCH_MAX_WAIT_MS = 20


class ServiceError(RuntimeError):
    """The worker cannot go on (fenced by another instance, state not restorable)."""


class RestoreError(ServiceError):
    """A changelog partition could not be read to its end in time."""


@dataclass(frozen=True)
class Batch:
    """A scored batch on its way to the commit thread: the records, what they produced, the
    offsets to commit and the group generation they were polled in (KIP-447 fencing)."""

    records: list[Record]
    result: BatchResult
    offsets: dict[TopicPartition, OffsetAndMetadata]
    group: object  # kafka-python's ConsumerGroupMetadata
    polled_at: float  # time.monotonic() when the poll returned


class _Aborted(Exception):
    """A batch's transaction was aborted: its records (and those polled after) are re-read."""


class _Listener(ConsumerRebalanceListener):
    """Records assignment changes; the poll loop does the work they imply."""

    def __init__(self, service: Service):
        self.service = service

    def on_partitions_revoked(self, revoked) -> None:
        """Before a rebalance: the running commit completes (a few ms, at most the transaction
        timeout, well within the session timeout), then these partitions' windows are dropped."""
        self.service._revoke({tp.partition for tp in revoked})

    def on_partitions_assigned(self, assigned) -> None:
        """After a rebalance: restore these partitions' windows before processing them."""
        self.service._assign({tp.partition for tp in assigned})


class WindowRestorer:
    """Reads committed windows from the changelog: a read_committed reader, and a second client
    for the high watermarks, so the reader waits out transactions still open at restore time
    (their commit markers may land after the new owner asked for its partitions)."""

    def __init__(self, cfg: ServiceConfig):
        self.cfg = cfg
        common = {
            "bootstrap_servers": cfg.bootstrap, "group_id": None, "enable_auto_commit": False,
            **client_settings(KafkaConsumer, cfg.kafka),
        }
        self.reader = KafkaConsumer(isolation_level="read_committed",
                                    client_id=f"{cfg.worker_id}-restore", **common)
        self.marks = KafkaConsumer(isolation_level="read_uncommitted",
                                   client_id=f"{cfg.worker_id}-restore-marks", **common)

    def restore(
        self, partitions: Iterable[int], cancelled: Callable[[], bool] = lambda: False
    ) -> dict[tuple[int, str], WindowState] | None:
        """The committed windows of the given changelog partitions, keyed (partition, stream);
        None if `cancelled()` turned true meanwhile."""
        tps = [TopicPartition(self.cfg.changelog_topic, p) for p in sorted(partitions)]
        if not tps:
            return {}
        targets = self.marks.end_offsets(tps)
        self.reader.assign(tps)
        self.reader.seek_to_beginning(*tps)
        states: dict[tuple[int, str], WindowState] = {}
        deadline = time.monotonic() + self.cfg.restore_timeout_s
        remaining = {tp for tp in tps if self.reader.position(tp) < targets[tp]}
        try:
            while remaining:
                if cancelled():
                    return None
                if time.monotonic() > deadline:
                    raise RestoreError(
                        f"changelog {self.cfg.changelog_topic} partitions "
                        f"{sorted(tp.partition for tp in remaining)} not read to their end "
                        f"within {self.cfg.restore_timeout_s:.0f}s (a transaction left open?)"
                    )
                for tp, msgs in self.reader.poll(timeout_ms=200).items():
                    for m in msgs:
                        if m.key is None or m.value is None:
                            continue
                        stream = m.key.decode("utf-8", "replace")
                        try:
                            states[(tp.partition, stream)] = WindowState.from_bytes(m.value)
                        except ValueError as exc:
                            raise RestoreError(
                                f"changelog {tp.topic}/{tp.partition} offset {m.offset}: {exc}"
                            ) from None
                remaining = {tp for tp in remaining if self.reader.position(tp) < targets[tp]}
        finally:
            self.reader.unsubscribe()
        return states

    def close(self) -> None:
        """Close both clients."""
        self.reader.close()
        self.marks.close()


class Service:
    """One worker. `run()` (once per instance) blocks until `stop()` (or SIGTERM/SIGINT when
    installed); the model, profile and compiled kernels are loaded by the constructor."""

    def __init__(self, cfg: ServiceConfig):
        self.cfg = cfg
        net = load_onnx(cfg.model)
        self.profile = load_profile(cfg.profile)
        check_model(self.profile, net)
        self.policy = cfg.policy or self.profile.policy
        self.znet = plan_for(net, self.profile.verifier)
        self.scorer = Scorer(self.znet, self.profile.verifier, cfg.jobs)
        self.processor = Processor(self.znet, self.profile, self.policy, self.scorer,
                                   limits=Limits(max_payload_bytes=cfg.max_input_bytes),
                                   worker_id=cfg.worker_id)
        self.scorer.score([np.zeros(net.input_size)])  # load the compiled kernels now
        self.metrics = Metrics()
        self.states: dict[tuple[int, str], WindowState] = {}
        self._lock = threading.Lock()
        self._pending: set[int] = set()
        self._owned: set[int] = set()
        self._joined = False
        self._stop = threading.Event()
        self._last_lag = 0.0
        self.metrics_port: int | None = None
        self.sizer = BatchSizer(cfg.jobs, cfg.max_batch)
        self._stage: CommitStage[Batch] | None = None
        self._producer: KafkaProducer | None = None  # used by the commit thread once running

    @property
    def assignment(self) -> list[int]:
        """Input partitions this worker owns right now."""
        with self._lock:
            return sorted(self._owned)

    # ------------------------------------------------------------------ lifecycle

    def stop(self) -> None:
        """Finish the current batch, commit it, leave the group (safe from any thread)."""
        self._stop.set()

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT stop after the current batch; a second signal interrupts at once."""

        def handler(signum, frame) -> None:
            """First signal: a graceful stop; second: KeyboardInterrupt."""
            if self._stop.is_set():
                raise KeyboardInterrupt
            log.info("stopping", signal=signal.Signals(signum).name)
            self.stop()

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, handler)

    def run(self) -> None:
        """Check the topics, join the group and process batches until stopped."""
        cfg = self.cfg
        server = None
        consumer = restorer = None
        try:
            with _naming_connect_failures(cfg):
                self._check_topics()
                if cfg.metrics_port is not None:
                    server = MetricsServer(self.metrics, cfg.metrics_host, cfg.metrics_port)
                    self.metrics_port = server.port
                    log.info("metrics", url=f"http://{cfg.metrics_host}:{server.port}/metrics")
                settings = client_settings(KafkaConsumer, cfg.kafka)
                settings.setdefault("fetch_max_wait_ms", _FETCH_MAX_WAIT_MS)
                consumer = KafkaConsumer(
                    bootstrap_servers=cfg.bootstrap, group_id=cfg.group,
                    client_id=cfg.worker_id, enable_auto_commit=False,
                    auto_offset_reset="earliest", isolation_level="read_committed",
                    max_poll_records=cfg.max_batch, **settings,
                )
                restorer = WindowRestorer(cfg)
                self._producer = self._new_producer()
            self._stage = CommitStage(self._commit_batch, name=f"commit-{cfg.worker_id}")
            consumer.subscribe([cfg.input_topic], listener=_Listener(self))
            log.info("started", worker=cfg.worker_id, group=cfg.group, topic=cfg.input_topic,
                     policy=self.policy, profile=self.profile.name, kafka=cfg.redacted_kafka())
            while not self._stop.is_set():
                polled = consumer.poll(timeout_ms=cfg.poll_timeout_ms,
                                       max_records=self.sizer.size(_queued(consumer)))
                polled_at = time.monotonic()
                records = [
                    Record(tp.topic, tp.partition, m.offset, m.key, m.value, m.timestamp or 0)
                    for tp, msgs in polled.items() for m in msgs
                ]
                if self._recover(consumer, {r.partition for r in records}):
                    continue  # a commit failed: this poll is dropped and re-read with its batch
                if not self._restore_pending(restorer):
                    break  # stopped while restoring: nothing of this poll is processed
                if records:
                    self._process(records, consumer, polled_at)
                self._update_lag(consumer)
        finally:
            self.metrics.alive = False
            self.metrics.ready = False
            if self._stage is not None:
                self._stage.close()  # the batch in flight commits (or aborts) first
                failed = self._stage.failure()
                if failed is not None and not isinstance(failed[1], _Aborted):
                    log.warning("last commit failed", error=repr(failed[1]))
            for client in (consumer, restorer, self._producer):
                if client is not None:
                    try:
                        client.close()  # the consumer leaves the group: partitions move at once
                    except Exception as exc:  # closing must not hide the original error
                        log.warning("close failed", client=type(client).__name__,
                                    error=repr(exc))
            self.scorer.close()
            if server is not None:
                server.close()
            log.info("stopped", worker=cfg.worker_id)

    def _new_producer(self) -> KafkaProducer:
        cfg = self.cfg
        settings = client_settings(KafkaProducer, cfg.kafka)
        settings.setdefault("max_request_size", cfg.max_dead_letter_bytes + _DEAD_LETTER_OVERHEAD)
        producer = KafkaProducer(
            bootstrap_servers=cfg.bootstrap, client_id=cfg.worker_id,
            transactional_id=cfg.transactional_id,
            transaction_timeout_ms=cfg.transaction_timeout_ms, **settings,
        )
        producer.init_transactions()
        return producer

    # ------------------------------------------------------------------ one batch

    def _process(self, records: list[Record], consumer: KafkaConsumer, polled_at: float) -> None:
        """Score a batch (while the previous one commits) and hand it to the commit thread once
        the previous one committed; drop it if that one aborted."""
        with self._lock:  # (restores ran right before: nothing owned is pending here)
            records = [r for r in records if r.partition in self._owned]
        if not records:
            return
        t0 = time.monotonic()
        result = self.processor.process(records, self.states)
        self.sizer.scored(len(records), time.monotonic() - t0)
        self._stage.drain()
        if self._recover(consumer, {r.partition for r in records}):
            return  # built on a batch that did not commit
        self.states.update(result.states)  # the next batch goes on from these windows
        offsets: dict[TopicPartition, OffsetAndMetadata] = {}
        for r in records:
            tp = TopicPartition(r.topic, r.partition)
            if tp not in offsets or offsets[tp].offset <= r.offset:
                offsets[tp] = OffsetAndMetadata(r.offset + 1, "", -1)
        self._stage.submit(Batch(records, result, offsets, consumer.group_metadata(), polled_at))

    def _recover(self, consumer: KafkaConsumer, also: set[int]) -> bool:
        """If the last commit failed: re-raise what cannot be retried, else rewind the aborted
        batch's partitions and `also` (records polled or scored after it) and return True."""
        failed = self._stage.failure()
        if failed is None:
            return False
        batch, exc = failed
        if not isinstance(exc, _Aborted):
            raise exc
        self._rewind(consumer, {r.partition for r in batch.records} | also)
        return True

    def _commit_batch(self, batch: Batch) -> None:
        """On the commit thread: commit a batch in one transaction, or abort it (replacing a
        producer that cannot even abort) and raise _Aborted."""
        t0 = time.monotonic()
        try:
            self._commit(batch, self._producer)
        except ProducerFencedError as exc:
            raise ServiceError(
                f"fenced: another worker uses transactional id {self.cfg.transactional_id!r} "
                "(worker ids must be unique within a group)"
            ) from exc
        except KafkaError as exc:
            self.metrics.aborts.inc()
            log.warning("transaction aborted", error=repr(exc), records=len(batch.records))
            self._producer = self._abort(self._producer)
            raise _Aborted(repr(exc)) from exc
        now = time.monotonic()
        self.sizer.committed(now - t0)
        result = batch.result
        self.metrics.observe_verdicts(result.verdicts)
        self.metrics.dead_letters.inc(len(result.dead_letters))
        self.metrics.batch.observe(len(batch.records))
        self.metrics.latency.observe(now - batch.polled_at)
        log.debug("batch", records=len(batch.records),
                  **Counter(v.verdict for _, v in result.verdicts))

    def _commit(self, batch: Batch, producer: KafkaProducer) -> None:
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
            producer.send(cfg.changelog_topic, key=stream.encode(), value=state.to_bytes(),
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

    def _rewind(self, consumer: KafkaConsumer, partitions: set[int]) -> None:
        """After an aborted transaction: forget the windows, re-read them and the offsets."""
        with self._lock:
            owned = partitions & self._owned
            self._pending |= owned
            for key in [k for k in self.states if k[0] in partitions]:
                del self.states[key]
        for p in owned:
            tp = TopicPartition(self.cfg.input_topic, p)
            try:
                committed = consumer.committed(tp)
                if committed is not None:
                    consumer.seek(tp, committed)
                else:
                    consumer.seek_to_beginning(tp)
            except (KafkaError, AssertionError, ValueError) as exc:
                log.info("rewind skipped", partition=p, error=repr(exc))  # no longer ours

    # ------------------------------------------------------------------ assignment and state

    def _revoke(self, partitions: set[int]) -> None:
        if self._stage is not None:
            self._stage.drain()  # what was processed on these partitions commits first
        with self._lock:
            self._owned -= partitions
            self._pending -= partitions
            for key in [k for k in self.states if k[0] in partitions]:
                del self.states[key]
        log.info("revoked", partitions=sorted(partitions))

    def _assign(self, partitions: set[int]) -> None:
        with self._lock:
            self._owned |= partitions
            self._pending |= partitions
            self._joined = True
        self.metrics.ready = False
        log.info("assigned", partitions=sorted(partitions))

    def _restore_pending(self, restorer: WindowRestorer) -> bool:
        """Restore the windows of newly assigned (or rewound) partitions; False if stopped."""
        with self._lock:
            pending = sorted(self._pending)
        if pending:
            t0 = time.monotonic()
            restored = restorer.restore(pending, self._stop.is_set)
            if restored is None:
                return False
            with self._lock:
                for key in [k for k in self.states if k[0] in pending]:
                    del self.states[key]
                self.states.update({k: v for k, v in restored.items() if k[0] in self._owned})
                self._pending -= set(pending)
            self.metrics.restores.inc(len(pending))
            log.info("restored", partitions=pending, streams=len(restored),
                     seconds=round(time.monotonic() - t0, 3))
        with self._lock:
            self.metrics.ready = self._joined and not self._pending
        return True

    def _update_lag(self, consumer: KafkaConsumer) -> None:
        now = time.monotonic()
        if now - self._last_lag < 5.0:
            return
        self._last_lag = now
        try:
            tps = list(consumer.assignment())
            ends = consumer.end_offsets(tps) if tps else {}
            for tp in tps:
                self.metrics.lag.labels(str(tp.partition)).set(ends[tp] - consumer.position(tp))
        except (KafkaError, AssertionError) as exc:
            log.debug("lag not updated", error=repr(exc))

    def _check_topics(self) -> None:
        """Refuse to start without the input topic; create the changelog, DLQ and output topic
        if missing (as many partitions as the input) and check the changelog's partitions."""
        cfg = self.cfg
        admin = KafkaAdminClient(bootstrap_servers=cfg.bootstrap,
                                 client_id=f"{cfg.worker_id}-admin",
                                 **client_settings(KafkaAdminClient, cfg.kafka))
        try:
            n = _partitions(admin, cfg.input_topic)
            if not n:
                raise ConfigError(
                    f"input topic {cfg.input_topic!r} does not exist on {cfg.bootstrap}; "
                    "create it (partitions = the parallelism you want) and start again"
                )
            wanted = {
                cfg.changelog_topic: {"cleanup.policy": "compact"},
                cfg.dlq_topic: {
                    "max.message.bytes": str(cfg.max_dead_letter_bytes + _DEAD_LETTER_OVERHEAD)
                },
                cfg.output_topic: {},
            }
            for topic, configs in wanted.items():
                if _partitions(admin, topic):
                    continue
                try:
                    admin.create_topics(
                        {topic: {"num_partitions": n, "replication_factor": -1,
                                 "configs": configs}},
                        wait_for_metadata=True,
                    )
                    log.info("created topic", topic=topic, partitions=n)
                except TopicAlreadyExistsError:
                    pass  # another worker was quicker
            m = _partitions(admin, cfg.changelog_topic, wait_s=10)
            if m != n:
                raise ConfigError(
                    f"changelog {cfg.changelog_topic!r} has {m} partitions, the input topic "
                    f"{n}: they must match (a stream's window lives with its input partition)"
                )
        finally:
            admin.close()


def _queued(consumer: KafkaConsumer) -> int | None:
    """Records waiting on the assigned partitions as of the last fetches (high watermark minus
    position, no request), over the partitions whose high watermark is known; None if none is
    (kafka-python learns it when it parses a partition's fetched records)."""
    total, known = 0, False
    try:
        for tp in consumer.assignment():
            high = consumer.highwater(tp)
            pos = consumer.position(tp, timeout_ms=0)
            if high is not None and pos is not None:
                total, known = total + max(0, high - pos), True
    except (KafkaError, AssertionError):
        return None  # assignment changing under us: fall back to the small batch
    return total if known else None


def _partitions(admin: KafkaAdminClient, topic: str, wait_s: float = 0.0) -> int:
    """Number of partitions of a topic, 0 if it does not exist (waits for fresh metadata)."""
    deadline = time.monotonic() + wait_s
    while True:
        info = admin.describe_topics([topic])
        meta = info[0] if info else {}
        n = len(meta.get("partitions") or []) if meta.get("error_code", 0) == 0 else 0
        if n or time.monotonic() >= deadline:
            return n
        time.sleep(0.2)


# ---------------------------------------------------------------------- why a connection failed


class _LoggedErrors(logging.Handler):
    """Keeps the exceptions kafka-python logs while it retries a connection: its final error
    ("Unable to bootstrap from ...") does not say why each attempt failed."""

    def __init__(self) -> None:
        super().__init__()
        self.errors: deque[BaseException] = deque(maxlen=100)

    def emit(self, record: logging.LogRecord) -> None:
        """Remember the exceptions among the record's arguments."""
        args = record.args if isinstance(record.args, tuple) else ()
        self.errors.extend(a for a in args if isinstance(a, BaseException))


@contextmanager
def _naming_connect_failures(cfg: ServiceConfig) -> Iterator[None]:
    """Turn a Kafka error into a ServiceError naming a failed SASL login or TLS handshake, when
    kafka-python logged one meanwhile, so the user learns which setting to fix."""
    seen = _LoggedErrors()
    kafka_log = logging.getLogger("kafka")
    kafka_log.addHandler(seen)
    try:
        yield
    except KafkaError as exc:
        cause = _connect_failure(cfg, [*seen.errors, exc])
        if cause is None:
            raise
        raise ServiceError(cause) from exc
    finally:
        kafka_log.removeHandler(seen)


def _connect_failure(cfg: ServiceConfig, errors: Iterable[BaseException]) -> str | None:
    """One line naming why connecting failed, from the latest error that tells (a TLS handshake
    error, a failed SASL login), else None; it never quotes a password."""
    where = cfg.bootstrap
    protocol = str(cfg.kafka.get("security_protocol", "PLAINTEXT")).upper()
    user = cfg.kafka.get("sasl_plain_username")
    mechanism = cfg.kafka.get("sasl_mechanism")
    who = "SASL user " + (repr(user) if user else "(no sasl_plain_username)") + (
        f" ({mechanism})" if mechanism else "")
    check = "sasl_plain_username/sasl_plain_password" if user else "the sasl_* settings"
    for exc in reversed(list(errors)):
        chain = _chain(exc)
        tls = next((e for e in chain if isinstance(e, ssl.SSLError)), None)
        if isinstance(tls, ssl.SSLCertVerificationError):
            names = tls.verify_code in (62, 64)  # X509_V_ERR_HOSTNAME / IP_ADDRESS_MISMATCH
            hint = "the bootstrap host against the certificate's names" if names else "ssl_cafile"
            return (f"TLS handshake with {where} failed: certificate verify failed: "
                    f"{tls.verify_message} (check {hint})")
        if tls is not None:
            return (f"TLS handshake with {where} failed: {tls.reason or tls} (check that the "
                    f"listener speaks {protocol})")
        if any(isinstance(e, SaslAuthenticationFailedError) for e in chain):
            return f"authentication failed for {who} on {where} (check {check})"
        if (protocol.startswith("SASL_") and isinstance(exc, KafkaConnectionError)
                and "socket disconnected" in str(exc)):
            # How kafka-python 3.0 reports a failed login: Kafka answers it with an error and
            # closes the connection, and the client drops the answer for the closed socket.
            return (f"authentication failed for {who} on {where}: the broker closed the "
                    f"connection before the login completed (check {check}, and that the "
                    f"listener speaks {protocol})")
    return None


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception and those it was raised from or while handling."""
    chain = [exc]
    while (nxt := chain[-1].__cause__ or chain[-1].__context__) is not None and nxt not in chain:
        chain.append(nxt)
    return chain
