"""The commit queue without Kafka: one transaction at a time beside the caller's work, holding
every batch that waited for it; a bounded queue; a failed transaction held, with the batches
put after it, until taken; an interval between transaction starts."""

from __future__ import annotations

import threading
import time

import pytest

from worker.kafka.pipeline import CommitQueue, StageClosed


class Recorder:
    """A commit function that logs its transactions (lists of batches), can be held at a gate
    and fails on request."""

    def __init__(self, fail_on: set[int] = frozenset()):
        self.done: list[list[int]] = []
        self.starts: list[float] = []
        self.running = 0
        self.most_at_once = 0
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()
        self.fail_on = fail_on
        self.lock = threading.Lock()

    def __call__(self, batches: list[int]) -> None:
        with self.lock:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
            self.starts.append(time.monotonic())
        self.started.set()
        try:
            assert self.gate.wait(10)
            if self.fail_on & set(batches):
                raise ValueError(f"batches {batches} failed")
            self.done.append(list(batches))
        finally:
            with self.lock:
                self.running -= 1

    @property
    def committed(self) -> list[int]:
        return [b for t in self.done for b in t]


def _queue(commit: Recorder, limit: int = 100, interval: float = 0.0) -> CommitQueue[int]:
    return CommitQueue(commit, size=lambda b: 1, limit=limit, interval=interval)


def test_batches_commit_in_order_one_transaction_at_a_time() -> None:
    commit = Recorder()
    queue = _queue(commit)
    for batch in range(20):
        queue.put(batch)
    queue.close()
    assert commit.committed == list(range(20))
    assert commit.most_at_once == 1
    assert queue.failure() is None


def test_batches_put_during_a_commit_go_together_in_the_next() -> None:
    commit = Recorder()
    commit.gate.clear()
    queue = _queue(commit)
    queue.put(1)  # returns at once: the caller goes on scoring
    assert commit.started.wait(5)
    assert queue.busy
    for batch in (2, 3, 4):
        queue.put(batch)  # no waiting for the running commit
    assert not queue.drain(timeout=0.2)
    assert commit.done == []
    commit.gate.set()
    assert queue.drain(timeout=5)
    assert commit.done == [[1], [2, 3, 4]]
    queue.close()


def test_put_waits_while_the_queue_is_full() -> None:
    commit = Recorder()
    commit.gate.clear()
    queue = _queue(commit, limit=2)
    queue.put(1)
    assert commit.started.wait(5)
    queue.put(2)
    queue.put(3)
    third = threading.Thread(target=queue.put, args=(4,))
    third.start()
    time.sleep(0.2)
    assert third.is_alive()  # two records wait already: scoring pauses
    commit.gate.set()
    third.join(5)
    assert not third.is_alive()
    queue.close()
    assert commit.committed == [1, 2, 3, 4]


def test_a_failed_transaction_is_held_with_the_batches_put_after_it() -> None:
    commit = Recorder(fail_on={2})
    commit.gate.clear()
    queue = _queue(commit)
    queue.put(1)
    assert commit.started.wait(5)
    queue.put(2)
    commit.gate.set()
    assert queue.drain(timeout=5)
    queue.put(3)  # built on batch 2, which did not commit: held with it, not committed
    time.sleep(0.1)
    failed = queue.failure()
    assert failed is not None
    batches, exc = failed
    assert batches == [2, 3] and isinstance(exc, ValueError)
    assert queue.failure() is None  # taken once
    queue.put(4)
    queue.close()
    assert commit.done == [[1], [4]]


def test_close_commits_what_waits_and_refuses_more() -> None:
    commit = Recorder()
    commit.gate.clear()
    queue = _queue(commit)
    queue.put(7)
    assert commit.started.wait(5)
    queue.put(8)
    threading.Timer(0.2, commit.gate.set).start()
    queue.close()
    assert commit.committed == [7, 8]
    with pytest.raises(StageClosed, match="closed"):
        queue.put(9)


def test_close_after_a_failure_commits_nothing_more() -> None:
    commit = Recorder(fail_on={1})
    queue = _queue(commit)
    queue.put(1)
    assert queue.drain(timeout=5)
    queue.put(2)
    queue.close()
    assert commit.done == []
    failed = queue.failure()
    assert failed is not None and failed[0] == [1, 2]


def test_transactions_start_at_most_once_per_interval() -> None:
    commit = Recorder()
    queue = _queue(commit, interval=0.1)
    for batch in range(6):
        queue.put(batch)
        time.sleep(0.02)
    assert queue.drain(timeout=5)
    queue.close()
    assert commit.committed == list(range(6))
    gaps = [b - a for a, b in zip(commit.starts, commit.starts[1:], strict=False)]
    assert gaps and min(gaps) >= 0.1 - 0.05  # batches waiting meanwhile go together
    assert len(commit.done) < 6


def test_a_full_queue_does_not_wait_out_the_interval() -> None:
    commit = Recorder()
    queue = _queue(commit, limit=3, interval=30.0)
    queue.put(0)
    assert commit.started.wait(5)
    for batch in (1, 2, 3):
        queue.put(batch)
    assert queue.drain(timeout=5)  # not 30 s: the queue was full
    queue.close()
    assert commit.done == [[0], [1, 2, 3]]


@pytest.mark.parametrize(("limit", "interval"), [(0, 0.0), (2, -1.0)])
def test_queue_rejects_bad_settings(limit: int, interval: float) -> None:
    with pytest.raises(ValueError):
        CommitQueue(Recorder(), size=lambda b: 1, limit=limit, interval=interval)
