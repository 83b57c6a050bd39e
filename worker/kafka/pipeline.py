"""The worker's two-stage batch pipeline, without Kafka: a commit stage that commits one batch on
its own thread while the caller polls and scores the next, and the batch size chosen from the
measured stage times and the queue. The service wires both to its consumer and producer.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["BatchSizer", "CommitStage", "StageClosed"]

T = TypeVar("T")


class StageClosed(RuntimeError):
    """A batch was handed to a closed commit stage, or before its last failure was taken."""


class CommitStage(Generic[T]):
    """Runs `commit(batch)` on one background thread, one batch at a time: `submit` waits until
    the previous batch is done, so at most one batch commits while the caller scores the next.

    A batch whose commit raised is kept, with its error, until the caller takes it with
    `failure()`; no further batch is accepted before, because a batch scored after a failed one
    was built on windows and offsets that never committed.
    """

    def __init__(self, commit: Callable[[T], None], name: str = "commit"):
        self._commit = commit
        self._cond = threading.Condition()
        self._batch: T | None = None
        self._busy = False
        self._closed = False
        self._failed: tuple[T, BaseException] | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def busy(self) -> bool:
        """A batch is being committed right now."""
        with self._cond:
            return self._busy

    def submit(self, batch: T) -> None:
        """Hand a batch to the commit thread once the previous one is done."""
        with self._cond:
            self._cond.wait_for(lambda: not self._busy)
            if self._closed:
                raise StageClosed("the commit stage is closed")
            if self._failed is not None:
                raise StageClosed("the previous batch failed and its failure was not taken")
            self._batch, self._busy = batch, True
            self._cond.notify_all()

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until no batch is being committed; False if `timeout` seconds passed first."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._busy, timeout)

    def failure(self) -> tuple[T, BaseException] | None:
        """The last batch whose commit raised, and the error; None if there is none. Taking it
        clears it. Does not wait: call `drain()` first to learn the outcome of a running commit."""
        with self._cond:
            failed, self._failed = self._failed, None
            return failed

    def close(self) -> None:
        """Let the running commit finish, then stop the thread."""
        with self._cond:
            self._cond.wait_for(lambda: not self._busy)
            self._closed = True
            self._cond.notify_all()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._busy or self._closed)
                if not self._busy:
                    return
                batch = self._batch
            failed = None
            try:
                self._commit(batch)  # type: ignore[arg-type]
            except BaseException as exc:  # handed to the caller, who decides what it means
                failed = (batch, exc)
            with self._cond:
                self._failed = failed
                self._batch, self._busy = None, False
                self._cond.notify_all()


class BatchSizer:
    """How many records the next batch takes.

    With the queue short, the smallest batch whose scoring lasts as long as a commit (so the
    commit of one batch hides behind the scoring of the next) and at least one record per
    scoring thread: a record then waits about one batch, not thirty-two. Under a backlog (more
    queued than two such batches) the queue is taken whole, up to `max_batch`, so that each
    transaction's fixed cost is spread over many records when throughput is what counts.
    Stage times are exponentially smoothed; updates from two threads are single assignments.
    """

    def __init__(self, jobs: int, max_batch: int, smoothing: float = 0.2):
        if jobs < 1 or max_batch < 1:
            raise ValueError(f"jobs and max_batch must be >= 1, got {jobs} and {max_batch}")
        if not 0.0 < smoothing <= 1.0:
            raise ValueError(f"smoothing must be in (0, 1], got {smoothing}")
        self.jobs = jobs
        self.max_batch = max_batch
        self.smoothing = smoothing
        self.record_s: float | None = None  # wall seconds of scoring per record in a batch
        self.commit_s: float | None = None  # wall seconds of one batch's commit

    def scored(self, records: int, seconds: float) -> None:
        """A batch of `records` was scored in `seconds` (wall clock)."""
        if records > 0:
            self.record_s = self._smooth(self.record_s, seconds / records)

    def committed(self, seconds: float) -> None:
        """A batch committed in `seconds` (wall clock)."""
        self.commit_s = self._smooth(self.commit_s, seconds)

    def small(self) -> int:
        """The batch size for a short queue."""
        n = self.jobs
        if self.record_s and self.commit_s is not None:
            n = max(n, math.ceil(self.commit_s / self.record_s))
        return min(n, self.max_batch)

    def size(self, queued: int | None) -> int:
        """Records to take now, given how many are known to be waiting (None: not known)."""
        n = self.small()
        if queued is not None and queued > 2 * n:
            return min(queued, self.max_batch)
        return n

    def _smooth(self, old: float | None, new: float) -> float:
        return new if old is None else old + self.smoothing * (new - old)
