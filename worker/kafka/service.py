"""`radiusguard serve`: a consumer-group member that turns input records into verdicts.

Every verdict commits in a Kafka transaction with its dead letters, the changed windows (to a
compacted changelog co-partitioned with the inputs) and the consumed offsets, all or nothing,
so every input gets exactly one committed verdict and a window always matches the offset it
was committed with (worker.kafka.transactions; windows and ownership: worker.kafka.assignment).

The poll loop is a bounded pipeline. A poll's records go to the scoring threads at once, with
no waiting for a batch to fill (at low load a batch is the record or two that came), and are
validated (Algorithm 2, in offset order per partition) as their radii come in; under a backlog
the next poll's records are handed over before the previous batch is validated, so the threads
never idle. Validated batches go to the commit queue (worker.kafka.pipeline), whose thread
commits all that wait as one transaction when the previous one is done, at most once per
commit interval: scoring never waits for a commit, and a record waits for at most the running
commit (or the rest of the interval), then its own. If a transaction aborts, everything scored
after it is dropped and the partitions of both are re-read from their committed offsets and
windows. A revocation validates the batch being scored and waits for the queue to commit, so
a partition changes owner only with everything processed on it committed.
"""

from __future__ import annotations

import signal
import threading
import time

import numpy as np
import structlog
from kafka import KafkaConsumer
from kafka.errors import KafkaError

from verifier.onnx.importer import load_onnx
from verifier.score import plan_for
from worker.formats.codec import Limits
from worker.kafka.assignment import Listener, Partitions, WindowRestorer
from worker.kafka.config import ServiceConfig, client_settings
from worker.kafka.errors import RestoreError, ServiceError, naming_connect_failures
from worker.kafka.pipeline import CommitQueue
from worker.kafka.topics import check_topics
from worker.kafka.transactions import Aborted, Batch, Transactions, batch_of
from worker.metrics import Metrics, MetricsServer
from worker.processor import Processor, Record, Scorer, Started
from worker.profile import check_model, load_profile

__all__ = ["RestoreError", "Service", "ServiceError", "WindowRestorer"]

log = structlog.get_logger("radiusguard.worker")

# How long the broker may hold an empty fetch. The client keeps one fetch per broker in flight
# and leaves out partitions whose records it still buffers, so a record arriving on such a
# partition waits for that fetch to return: up to kafka-python's default 500 ms without this.
_FETCH_MAX_WAIT_MS = 20

# Batches (of up to max_batch records) that may wait for the commit thread before scoring
# pauses: enough to cover a slow commit, few enough that an abort redoes little.
_QUEUED_BATCHES = 4


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
        self.partitions = Partitions(self.metrics)
        self.transactions = Transactions(cfg, self.metrics)
        self.metrics_port: int | None = None
        self._stop = threading.Event()
        self._last_lag = 0.0
        self._queue: CommitQueue[Batch] | None = None
        self._consumer: KafkaConsumer | None = None
        self._scoring: Started | None = None  # handed to the scoring threads, not validated

    @property
    def assignment(self) -> list[int]:
        """Input partitions this worker owns right now."""
        return self.partitions.owned

    # ------------------------------------------------------------------ lifecycle

    def stop(self) -> None:
        """Finish the batch being scored, commit, leave the group (safe from any thread)."""
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
        """Check the topics, join the group and process records until stopped."""
        cfg = self.cfg
        server = None
        restorer = None
        try:
            with naming_connect_failures(cfg):
                check_topics(cfg)
                if cfg.metrics_port is not None:
                    server = MetricsServer(self.metrics, cfg.metrics_host, cfg.metrics_port)
                    self.metrics_port = server.port
                    log.info("metrics", url=f"http://{cfg.metrics_host}:{server.port}/metrics")
                self._consumer = self._new_consumer()
                restorer = WindowRestorer(cfg)
                self.transactions.open()
            self._queue = CommitQueue(self.transactions.commit, lambda b: len(b.records),
                                      cfg.max_batch * _QUEUED_BATCHES,
                                      cfg.commit_interval_ms / 1000.0,
                                      name=f"commit-{cfg.worker_id}")
            self._consumer.subscribe([cfg.input_topic],
                                     listener=Listener(self._revoke, self.partitions.assign))
            log.info("started", worker=cfg.worker_id, group=cfg.group, topic=cfg.input_topic,
                     policy=self.policy, profile=self.profile.name, kafka=cfg.redacted_kafka())
            self._loop(self._consumer, restorer)
        finally:
            self._close(server, restorer)

    def _loop(self, consumer: KafkaConsumer, restorer: WindowRestorer) -> None:
        """Poll, start scoring what came, validate what was being scored; until stopped. A
        batch stays with the scoring threads over the next poll only under a backlog (a full
        poll): then that poll has records to start meanwhile, and the threads never idle."""
        while not self._stop.is_set():
            # with a batch being scored, only take what is there: the batch must not wait
            wait_ms = 0 if self._scoring is not None else self.cfg.poll_timeout_ms
            polled = consumer.poll(timeout_ms=wait_ms, max_records=self.cfg.max_batch)
            records = [
                Record(tp.topic, tp.partition, m.offset, m.key, m.value, m.timestamp or 0)
                for tp, msgs in polled.items() for m in msgs
            ]
            if self._recover(consumer, {r.partition for r in records}):
                continue  # a commit failed: this poll is dropped and re-read with its batch
            if not self.partitions.restore_pending(restorer, self._stop.is_set):
                break  # stopped while restoring: nothing of this poll is processed
            scoring, self._scoring = self._scoring, self._start(records)
            if scoring is not None:
                self._finish(scoring, consumer)
            if len(records) < self.cfg.max_batch:
                # no backlog: a poll now would most likely come back empty (and a poll costs a
                # round trip to the client's network thread), so validate at once
                self._finish_scoring(consumer)
            self._update_lag(consumer)
        self._finish_scoring(consumer)

    def _close(self, server: MetricsServer | None, restorer: WindowRestorer | None) -> None:
        """Commit what is queued (or abort it), close every client, stop serving metrics."""
        self.metrics.alive = False
        self.metrics.ready = False
        self._scoring = None  # a batch left by an error is re-read by the next owner
        if self._queue is not None:
            self._queue.close()  # what is queued commits (or aborts) first
            failed = self._queue.failure()
            if failed is not None and not isinstance(failed[1], Aborted):
                log.warning("last commit failed", error=repr(failed[1]))
        for client in (self._consumer, restorer, self.transactions):
            if client is not None:
                try:
                    client.close()  # the consumer leaves the group: partitions move at once
                except Exception as exc:  # closing must not hide the original error
                    log.warning("close failed", client=type(client).__name__, error=repr(exc))
        self.scorer.close()
        if server is not None:
            server.close()
        log.info("stopped", worker=self.cfg.worker_id)

    def _new_consumer(self) -> KafkaConsumer:
        cfg = self.cfg
        settings = client_settings(KafkaConsumer, cfg.kafka)
        settings.setdefault("fetch_max_wait_ms", _FETCH_MAX_WAIT_MS)
        return KafkaConsumer(
            bootstrap_servers=cfg.bootstrap, group_id=cfg.group, client_id=cfg.worker_id,
            enable_auto_commit=False, auto_offset_reset="earliest",
            isolation_level="read_committed", max_poll_records=cfg.max_batch, **settings,
        )

    # ------------------------------------------------------------------ the pipeline

    def _start(self, records: list[Record]) -> Started | None:
        """Hand the records of owned, restored partitions to the scoring threads."""
        mine = self.partitions.mine({r.partition for r in records})
        records = [r for r in records if r.partition in mine]
        return self.processor.start(records) if records else None

    def _finish(self, scoring: Started, consumer: KafkaConsumer) -> None:
        """Validate a scored batch from the current windows and queue it for commit; the next
        batch goes on from the windows it leaves (dropped with it if its transaction aborts)."""
        result = self.processor.finish(scoring, self.partitions.states)
        self.partitions.states.update(result.states)
        self._queue.put(batch_of(scoring.records, result, consumer.group_metadata(),
                                 scoring.at))

    def _finish_scoring(self, consumer: KafkaConsumer) -> None:
        """Validate and queue the batch being scored, if any."""
        scoring, self._scoring = self._scoring, None
        if scoring is not None:
            self._finish(scoring, consumer)

    def _recover(self, consumer: KafkaConsumer, also: set[int]) -> bool:
        """If a commit failed: re-raise what cannot be retried, else rewind the partitions of
        the dropped batches, of the batch being scored and `also` (records polled after them)
        and return True."""
        failed = self._queue.failure()
        if failed is None:
            return False
        batches, exc = failed
        if not isinstance(exc, Aborted):
            raise exc
        dropped = {r.partition for b in batches for r in b.records} | also
        if self._scoring is not None:
            dropped |= self._scoring.partitions
            self._scoring = None
        self.partitions.rewind(consumer, self.cfg.input_topic, dropped)
        return True

    def _revoke(self, partitions: set[int]) -> None:
        """Inside the poll, before a rebalance: what was scored commits, then these partitions
        are forgotten (their new owner reads on from the committed offsets and windows)."""
        if self._queue is not None and self._consumer is not None:
            self._finish_scoring(self._consumer)
            self._queue.drain()
        self.partitions.revoke(partitions)

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
