"""Which input partitions this worker owns, and their windows: the rebalance listener, the
restore of committed windows from the changelog, and the rewind of partitions whose records
must be read again (an aborted transaction).

Windows are restored in the poll loop (never inside the rebalance callback, which shares the
client's network thread with the heartbeats), and only once every transaction that wrote to the
changelog partition has completed, so a restored window is the last committed one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

import structlog
from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import KafkaError

from worker.formats.windows import decode_window
from worker.kafka.config import ServiceConfig, client_settings
from worker.kafka.errors import RestoreError
from worker.metrics import Metrics
from worker.validate import WindowState

__all__ = ["Listener", "Partitions", "WindowRestorer"]

log = structlog.get_logger("radiusguard.worker")


class Listener(ConsumerRebalanceListener):
    """Hands assignment changes (sets of input partitions) to the service, inside the poll."""

    def __init__(self, revoked: Callable[[set[int]], None], assigned: Callable[[set[int]], None]):
        self.revoked, self.assigned = revoked, assigned

    def on_partitions_revoked(self, revoked) -> None:
        """Before a rebalance: what was scored on these partitions commits first."""
        self.revoked({tp.partition for tp in revoked})

    def on_partitions_assigned(self, assigned) -> None:
        """After a rebalance: these partitions' windows are restored before they are processed."""
        self.assigned({tp.partition for tp in assigned})


class Partitions:
    """The partitions owned, those whose windows are still to be restored, and the windows
    (keyed (partition, stream)). Changed on the poll loop's thread (the rebalance callbacks run
    inside its poll); `owned` and `ready` may be read from any thread."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics
        self.states: dict[tuple[int, str], WindowState] = {}
        self._lock = threading.Lock()
        self._owned: set[int] = set()
        self._pending: set[int] = set()
        self._joined = False

    @property
    def owned(self) -> list[int]:
        """Input partitions owned right now."""
        with self._lock:
            return sorted(self._owned)

    def assign(self, partitions: set[int]) -> None:
        """Newly owned partitions: their windows are to be restored."""
        with self._lock:
            self._owned |= partitions
            self._pending |= partitions
            self._joined = True
        self.metrics.ready = False
        log.info("assigned", partitions=sorted(partitions))

    def revoke(self, partitions: set[int]) -> None:
        """Partitions no longer owned: forget their windows."""
        with self._lock:
            self._owned -= partitions
            self._pending -= partitions
            self._drop(partitions)
        log.info("revoked", partitions=sorted(partitions))

    def rewind(self, consumer: KafkaConsumer, topic: str, partitions: set[int]) -> None:
        """Read the owned ones of these partitions again from their committed offsets and
        windows (after an aborted transaction)."""
        with self._lock:
            owned = partitions & self._owned
            self._pending |= owned
            self._drop(partitions)
        for p in owned:
            tp = TopicPartition(topic, p)
            try:
                committed = consumer.committed(tp)
                if committed is not None:
                    consumer.seek(tp, committed)
                else:
                    consumer.seek_to_beginning(tp)
            except (KafkaError, AssertionError, ValueError) as exc:
                log.info("rewind skipped", partition=p, error=repr(exc))  # no longer ours

    def mine(self, partitions: Iterable[int]) -> set[int]:
        """Those of `partitions` owned and restored."""
        with self._lock:
            return (set(partitions) & self._owned) - self._pending

    def restore_pending(self, restorer: WindowRestorer, cancelled: Callable[[], bool]) -> bool:
        """Restore the windows of newly assigned (or rewound) partitions; False if cancelled."""
        with self._lock:
            pending = sorted(self._pending)
        if pending:
            t0 = time.monotonic()
            restored = restorer.restore(pending, cancelled)
            if restored is None:
                return False
            with self._lock:
                self._drop(set(pending))
                self.states.update({k: v for k, v in restored.items() if k[0] in self._owned})
                self._pending -= set(pending)
            self.metrics.restores.inc(len(pending))
            log.info("restored", partitions=pending, streams=len(restored),
                     seconds=round(time.monotonic() - t0, 3))
        with self._lock:
            self.metrics.ready = self._joined and not self._pending
        return True

    def _drop(self, partitions: set[int]) -> None:
        for key in [k for k in self.states if k[0] in partitions]:
            del self.states[key]


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
                            states[(tp.partition, stream)] = decode_window(m.value)
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
