"""`radiusguard serve`: a consumer-group member that turns input records into verdicts.

Each batch is one Kafka transaction: the verdicts, the dead letters, the changed windows (to a
compacted changelog co-partitioned with the inputs) and the consumed offsets commit together
or not at all, so every input gets exactly one committed verdict and a window always matches
the offset it was committed with. Windows are restored from the changelog when a partition
is assigned, in the poll loop (never inside the rebalance callback, which shares the client's
network thread with the heartbeats).
"""

from __future__ import annotations

import signal
import threading
import time
from collections import defaultdict

import structlog
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import KafkaError, TopicAlreadyExistsError
from kafka.structs import OffsetAndMetadata

from verifier.network import load_onnx
from verifier.zonotope import ZonoNet
from worker.codec import encode_verdict
from worker.config import ConfigError, ServiceConfig
from worker.metrics import Metrics, MetricsServer
from worker.processor import Processor, Record, Scorer
from worker.profile import check_model, load_profile
from worker.validate import WindowState

log = structlog.get_logger("radiusguard.worker")


class _Listener(ConsumerRebalanceListener):
    """Records assignment changes; the poll loop does the work they imply."""

    def __init__(self, service: Service):
        self.service = service

    def on_partitions_revoked(self, revoked) -> None:
        self.service._revoke({tp.partition for tp in revoked})

    def on_partitions_assigned(self, assigned) -> None:
        self.service._assign({tp.partition for tp in assigned})


class Service:
    """One worker. `run()` blocks until `stop()` (or SIGTERM/SIGINT when installed)."""

    def __init__(self, cfg: ServiceConfig):
        if cfg.policy not in ("threshold", "distribution"):
            raise ConfigError(f"--policy must be threshold or distribution, got {cfg.policy!r}")
        self.cfg = cfg
        net = load_onnx(cfg.model)
        self.profile = load_profile(cfg.profile)
        check_model(self.profile, net)
        self.znet = ZonoNet.of(net)
        v = self.profile.verifier
        self.scorer = Scorer(self.znet, v["up"], v["tol"], v["search"], cfg.jobs)
        self.processor = Processor(self.znet, self.profile, cfg.policy, self.scorer,
                                   worker_id=cfg.worker_id)
        self.metrics = Metrics()
        self.states: dict[tuple[int, str], WindowState] = {}
        self._lock = threading.Lock()
        self._pending: set[int] = set()
        self._owned: set[int] = set()
        self._stop = threading.Event()
        self._last_lag = 0.0

    # ------------------------------------------------------------------ lifecycle

    def stop(self) -> None:
        """Finish the current batch, commit it, leave the group."""
        self._stop.set()

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop())

    def run(self) -> None:
        cfg = self.cfg
        self._check_topics()
        server = None
        if cfg.metrics_port is not None:
            server = MetricsServer(self.metrics, cfg.metrics_host, cfg.metrics_port)
            log.info("metrics", url=f"http://{cfg.metrics_host}:{server.port}/metrics")
        consumer = KafkaConsumer(
            bootstrap_servers=cfg.bootstrap, group_id=cfg.group, client_id=cfg.worker_id,
            enable_auto_commit=False, auto_offset_reset="earliest",
            isolation_level="read_committed", max_poll_records=cfg.max_batch, **cfg.kafka,
        )
        producer = KafkaProducer(
            bootstrap_servers=cfg.bootstrap, client_id=cfg.worker_id,
            transactional_id=cfg.transactional_id,
            transaction_timeout_ms=cfg.transaction_timeout_ms, **cfg.kafka,
        )
        try:
            producer.init_transactions()
            consumer.subscribe([cfg.input_topic], listener=_Listener(self))
            log.info("started", worker=cfg.worker_id, group=cfg.group, topic=cfg.input_topic,
                     policy=cfg.policy, profile=self.profile.name, kafka=cfg.redacted_kafka())
            while not self._stop.is_set():
                polled = consumer.poll(timeout_ms=cfg.poll_timeout_ms, max_records=cfg.max_batch)
                self._restore_pending(consumer)
                records = [
                    Record(tp.topic, tp.partition, m.offset, m.key, m.value, m.timestamp or 0)
                    for tp, msgs in polled.items() for m in msgs
                ]
                if records:
                    self._process(records, consumer, producer)
                self._update_lag(consumer)
        finally:
            self.metrics.alive = False
            self.metrics.ready = False
            consumer.close()  # leaves the group, so the partitions move at once
            producer.close()
            self.scorer.close()
            if server is not None:
                server.close()
            log.info("stopped", worker=cfg.worker_id)

    # ------------------------------------------------------------------ one batch

    def _process(self, records: list[Record], consumer, producer) -> None:
        t0 = time.monotonic()
        owned = {r.partition for r in records}
        with self._lock:
            if owned - self._owned:  # revoked while polling: let the new owner take them
                records = [r for r in records if r.partition in self._owned]
                if not records:
                    return
        result = self.processor.process(records, self.states)
        try:
            producer.begin_transaction()
            for key, verdict in result.verdicts:
                producer.send(self.cfg.output_topic, key=key, value=encode_verdict(verdict))
            for dl in result.dead_letters:
                src = dl.source
                headers = [
                    ("error", dl.error.encode()),
                    ("source", f"{src.topic}/{src.partition}/{src.offset}".encode()),
                ]
                producer.send(self.cfg.dlq_topic, key=dl.key, value=dl.value, headers=headers)
            for (partition, stream), state in result.states.items():
                producer.send(self.cfg.changelog_topic, key=stream.encode(),
                              value=state.to_bytes(), partition=partition)
            offsets: dict[TopicPartition, OffsetAndMetadata] = {}
            for r in records:
                tp = TopicPartition(r.topic, r.partition)
                if tp not in offsets or offsets[tp].offset <= r.offset:
                    offsets[tp] = OffsetAndMetadata(r.offset + 1, "", -1)
            producer.send_offsets_to_transaction(offsets, consumer.group_metadata())
            producer.commit_transaction()
        except KafkaError as exc:
            log.warning("transaction aborted", error=repr(exc), records=len(records))
            try:
                producer.abort_transaction()
            except KafkaError:
                pass
            self._rewind(consumer, {r.partition for r in records})
            return
        self.states.update(result.states)
        self.metrics.observe_verdicts(result.verdicts)
        self.metrics.dead_letters.inc(len(result.dead_letters))
        self.metrics.batch.observe(len(records))
        self.metrics.latency.observe(time.monotonic() - t0)
        counts = defaultdict(int)
        for _, v in result.verdicts:
            counts[v.verdict] += 1
        log.debug("batch", records=len(records), **counts)

    def _rewind(self, consumer, partitions: set[int]) -> None:
        """After an aborted transaction: forget the windows, re-read them and the offsets."""
        with self._lock:
            self._pending |= partitions & self._owned
        for p in partitions:
            for key in [k for k in self.states if k[0] == p]:
                del self.states[key]
            tp = TopicPartition(self.cfg.input_topic, p)
            try:
                committed = consumer.committed(tp)
                if committed is not None:
                    consumer.seek(tp, committed)
                else:
                    consumer.seek_to_beginning(tp)
            except (KafkaError, AssertionError, ValueError):
                pass  # not ours any more

    # ------------------------------------------------------------------ assignment and state

    def _revoke(self, partitions: set[int]) -> None:
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
        self.metrics.ready = False
        log.info("assigned", partitions=sorted(partitions))

    def _restore_pending(self, consumer: KafkaConsumer) -> None:
        with self._lock:
            pending = sorted(self._pending)
            self._pending.clear()
        if pending:
            restored = restore_windows(self.cfg, pending)
            with self._lock:
                for key in [k for k in self.states if k[0] in pending]:
                    del self.states[key]
                self.states.update({k: v for k, v in restored.items() if k[0] in self._owned})
            self.metrics.restores.inc(len(pending))
            log.info("restored", partitions=pending, streams=len(restored))
        self.metrics.ready = True

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
        except (KafkaError, AssertionError):
            pass

    def _check_topics(self) -> None:
        """Refuse to start without the input topic; create the changelog and DLQ if missing."""
        cfg = self.cfg
        admin = KafkaAdminClient(bootstrap_servers=cfg.bootstrap, client_id=cfg.worker_id,
                                 **cfg.kafka)
        try:
            topics = admin.describe_topics([cfg.input_topic])
            info = topics[0] if topics else None
            if not info or info.get("error_code", 0) != 0 or not info.get("partitions"):
                raise ConfigError(
                    f"input topic {cfg.input_topic!r} does not exist on {cfg.bootstrap}; "
                    "create it (partitions = the parallelism you want) and start again"
                )
            n = len(info["partitions"])
            wanted = [
                NewTopic(cfg.changelog_topic, n, 1, topic_configs={"cleanup.policy": "compact"}),
                NewTopic(cfg.dlq_topic, n, 1),
                NewTopic(cfg.output_topic, n, 1),
            ]
            for topic in wanted:
                try:
                    admin.create_topics([topic])
                except TopicAlreadyExistsError:
                    pass
            log_topics = admin.describe_topics([cfg.changelog_topic])
            if log_topics and len(log_topics[0].get("partitions", [])) != n:
                raise ConfigError(
                    f"changelog {cfg.changelog_topic!r} must have {n} partitions like the input "
                    "topic (windows live with the partition of their stream)"
                )
        finally:
            admin.close()


def restore_windows(
    cfg: ServiceConfig, partitions: list[int]
) -> dict[tuple[int, str], WindowState]:
    """The committed windows of the given partitions, read from the changelog to its end."""
    consumer = KafkaConsumer(
        bootstrap_servers=cfg.bootstrap, group_id=None, enable_auto_commit=False,
        isolation_level="read_committed", client_id=f"{cfg.worker_id}-restore", **cfg.kafka,
    )
    try:
        tps = [TopicPartition(cfg.changelog_topic, p) for p in partitions]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        states: dict[tuple[int, str], WindowState] = {}
        remaining = {tp for tp in tps if ends[tp] > consumer.position(tp)}
        deadline = time.monotonic() + 120
        while remaining and time.monotonic() < deadline:
            for tp, msgs in consumer.poll(timeout_ms=500).items():
                for m in msgs:
                    if m.key is None or m.value is None:
                        continue
                    states[(tp.partition, m.key.decode("utf-8", "replace"))] = (
                        WindowState.from_bytes(m.value)
                    )
            remaining = {tp for tp in remaining if consumer.position(tp) < ends[tp]}
        if remaining:
            raise KafkaError(f"changelog restore did not reach the end of {sorted(remaining)}")
        return states
    finally:
        consumer.close()
