"""The worker's commit queue, without Kafka: scored batches wait here for one background thread
that commits all of them as one transaction as soon as the previous transaction is done.

So a record waits for at most the commit running when it was scored (or the rest of the
interval between transaction starts), then its own; each transaction holds what was scored
since the one before (a record or two at low load, many under a backlog: its size follows the
arrival rate, no batch waits to fill), and scoring goes on during commits, stopping only when
`limit` records are waiting (a bounded pipeline). The interval bounds the transactions per
second, whose fixed cost (a few requests, a few ms of CPU) would otherwise be paid per record
at low load.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["CommitQueue", "StageClosed"]

T = TypeVar("T")


class StageClosed(RuntimeError):
    """A batch was handed to a closed commit queue."""


class CommitQueue(Generic[T]):
    """Runs `commit(batches)` on one background thread, one transaction at a time, with every
    batch waiting when the previous transaction is done (and at least `interval` seconds after
    it started), in the order they were put.

    A failed commit stops the thread: the batches of the failed transaction and every batch put
    after them (they were built on windows and offsets that never committed) are held until the
    caller takes them with `failure()`; then the queue goes on with batches put afterwards.
    """

    def __init__(self, commit: Callable[[list[T]], None], size: Callable[[T], int], limit: int,
                 interval: float = 0.0, name: str = "commit"):
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        if not interval >= 0:
            raise ValueError(f"interval must be >= 0 seconds, got {interval}")
        self._commit = commit
        self._size = size
        self.limit = limit
        self.interval = interval
        self._cond = threading.Condition()
        self._waiting: list[T] = []
        self._waiting_records = 0
        self._committing = False
        self._closed = False
        self._failed: tuple[list[T], BaseException] | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def busy(self) -> bool:
        """A transaction is being committed right now."""
        with self._cond:
            return self._committing

    def put(self, batch: T) -> None:
        """Queue a batch for the next transaction; waits while `limit` records are waiting
        (never after a failure: the batch then joins the failed ones)."""
        with self._cond:
            self._cond.wait_for(lambda: self._closed or self._failed is not None
                                or self._waiting_records < self.limit)
            if self._closed:
                raise StageClosed("the commit queue is closed")
            self._waiting.append(batch)
            self._waiting_records += self._size(batch)
            self._cond.notify_all()

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every batch put so far is committed or failed; False if `timeout`
        seconds passed first."""
        with self._cond:
            return self._cond.wait_for(
                lambda: self._failed is not None or not (self._waiting or self._committing),
                timeout)

    def failure(self) -> tuple[list[T], BaseException] | None:
        """The batches of the last failed transaction and those put after it, with the error;
        None if no commit failed. Taking them clears them. Does not wait: call `drain()` first
        to learn the outcome of the running commit."""
        with self._cond:
            if self._failed is None:
                return None
            batches, exc = self._failed
            dropped = batches + self._waiting
            self._failed, self._waiting, self._waiting_records = None, [], 0
            self._cond.notify_all()
            return dropped, exc

    def close(self) -> None:
        """Commit what is waiting (unless a commit failed), then stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join()

    def _run(self) -> None:
        last = -math.inf  # when the previous transaction started
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._failed is None and self._waiting
                                    or self._closed)
                if self._failed is not None or not self._waiting:
                    return  # closed, with nothing (or nothing committable) left
                # closing (or a full queue) does not wait out the interval
                self._cond.wait_for(lambda: self._closed
                                    or self._waiting_records >= self.limit,
                                    last + self.interval - time.monotonic())
                last = time.monotonic()
                batches, self._waiting, self._waiting_records = self._waiting, [], 0
                self._committing = True
                self._cond.notify_all()  # a put waiting for room goes on
            failed = None
            try:
                self._commit(batches)
            except BaseException as exc:  # handed to the caller, who decides what it means
                failed = (batches, exc)
            with self._cond:
                self._failed = failed
                self._committing = False
                self._cond.notify_all()
