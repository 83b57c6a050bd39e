"""The batch pipeline without Kafka: one commit at a time beside the caller's work, a failed
commit held until taken, and batch sizes that follow the stage times and the queue."""

from __future__ import annotations

import threading
import time

import pytest

from worker.kafka.pipeline import BatchSizer, CommitStage, StageClosed


class Recorder:
    """A commit function that logs its batches, can be held at a gate and fails on request."""

    def __init__(self, fail_on: set[int] = frozenset()):
        self.done: list[int] = []
        self.running = 0
        self.most_at_once = 0
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()
        self.fail_on = fail_on
        self.lock = threading.Lock()

    def __call__(self, batch: int) -> None:
        with self.lock:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        self.started.set()
        try:
            assert self.gate.wait(10)
            if batch in self.fail_on:
                raise ValueError(f"batch {batch} failed")
            self.done.append(batch)
        finally:
            with self.lock:
                self.running -= 1


def test_batches_commit_in_order_one_at_a_time() -> None:
    commit = Recorder()
    stage = CommitStage(commit)
    for batch in range(20):
        stage.submit(batch)
    stage.close()
    assert commit.done == list(range(20))
    assert commit.most_at_once == 1
    assert stage.failure() is None


def test_submit_returns_while_the_commit_runs_and_the_next_waits_for_it() -> None:
    commit = Recorder()
    commit.gate.clear()
    stage = CommitStage(commit)
    stage.submit(1)  # returns at once: the caller goes on scoring the next batch
    assert commit.started.wait(5)
    assert stage.busy
    assert not stage.drain(timeout=0.2)
    second = threading.Thread(target=stage.submit, args=(2,))
    second.start()
    time.sleep(0.2)
    assert second.is_alive()  # one transaction at a time: batch 2 waits for batch 1
    assert commit.done == []
    commit.gate.set()
    second.join(5)
    assert not second.is_alive()
    stage.close()
    assert commit.done == [1, 2]


def test_a_failed_batch_is_held_until_taken() -> None:
    commit = Recorder(fail_on={2})
    stage = CommitStage(commit)
    stage.submit(1)
    stage.submit(2)
    assert stage.drain(timeout=5)
    with pytest.raises(StageClosed, match="not taken"):
        stage.submit(3)  # built on batch 2, which did not commit
    failed = stage.failure()
    assert failed is not None
    batch, exc = failed
    assert batch == 2 and isinstance(exc, ValueError)
    assert stage.failure() is None  # taken once
    stage.submit(4)
    stage.close()
    assert commit.done == [1, 4]


def test_close_lets_the_running_commit_finish_and_refuses_more() -> None:
    commit = Recorder()
    commit.gate.clear()
    stage = CommitStage(commit)
    stage.submit(7)
    assert commit.started.wait(5)
    threading.Timer(0.2, commit.gate.set).start()
    stage.close()
    assert commit.done == [7]
    with pytest.raises(StageClosed, match="closed"):
        stage.submit(8)


def test_sizer_starts_with_one_record_per_thread() -> None:
    sizer = BatchSizer(jobs=2, max_batch=32)
    assert sizer.size(None) == 2
    assert sizer.size(0) == 2
    assert sizer.size(4) == 2  # a short queue: small batches, low latency


def test_sizer_scores_about_one_commit_time_per_batch() -> None:
    sizer = BatchSizer(jobs=2, max_batch=32, smoothing=1.0)
    sizer.scored(records=4, seconds=0.012)  # 3 ms per record
    sizer.committed(0.020)
    assert sizer.small() == 7  # ceil(20 / 3)
    sizer.committed(0.002)  # commits got cheaper than a record
    assert sizer.small() == 2  # never fewer than one per thread
    sizer.committed(1.0)
    assert sizer.small() == 32  # never more than max_batch


def test_sizer_takes_a_backlog_whole_up_to_max_batch() -> None:
    sizer = BatchSizer(jobs=2, max_batch=32, smoothing=1.0)
    sizer.scored(records=2, seconds=0.030)
    sizer.committed(0.010)
    assert sizer.size(4) == 2
    assert sizer.size(5) == 5
    assert sizer.size(500) == 32


def test_sizer_smooths_stage_times() -> None:
    sizer = BatchSizer(jobs=1, max_batch=64, smoothing=0.5)
    sizer.scored(records=1, seconds=0.010)
    sizer.scored(records=1, seconds=0.030)
    assert sizer.record_s == pytest.approx(0.020)
    sizer.scored(records=0, seconds=1.0)  # nothing scored: no information
    assert sizer.record_s == pytest.approx(0.020)


@pytest.mark.parametrize(("jobs", "max_batch", "smoothing"), [(0, 8, 0.2), (2, 0, 0.2),
                                                               (2, 8, 0.0), (2, 8, 1.5)])
def test_sizer_rejects_bad_settings(jobs: int, max_batch: int, smoothing: float) -> None:
    with pytest.raises(ValueError):
        BatchSizer(jobs, max_batch, smoothing)
