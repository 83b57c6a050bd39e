"""What one transaction holds when several scored batches waited for it (no broker needed)."""

from __future__ import annotations

from kafka import TopicPartition

from worker.formats.codec import Verdict
from worker.kafka.transactions import batch_of, merged
from worker.processor import BatchResult, DeadLetter, Record
from worker.validate import WindowState


def _verdict(rid: str) -> Verdict:
    return Verdict(id=rid, stream="s", verdict="accept", predicted=1, radius=0.01, rule="r",
                   reason="", pvalue=None, model="m", profile="p", source={}, latency_ms=1.0,
                   worker="w", label=None, meta=None)


def _window(last: int) -> WindowState:
    return WindowState(radii=(0.01, 0.02), count=2, last_offset=last)


def _batch(offsets: list[tuple[int, int]], polled_at: float, group: str):
    records = [Record("in", p, o, b"s", b"") for p, o in offsets]
    result = BatchResult(
        verdicts=[(b"s", _verdict(f"{p}-{o}")) for p, o in offsets],
        dead_letters=[DeadLetter(b"s", b"", "bad", records[0])],
        states={(p, "s"): _window(o) for p, o in offsets},
    )
    return batch_of(records, result, group, polled_at)


def test_a_batch_commits_the_offsets_past_its_records() -> None:
    b = _batch([(0, 5), (1, 9), (0, 7), (0, 6)], 1.0, "g1")
    assert {tp: m.offset for tp, m in b.offsets.items()} == {TopicPartition("in", 0): 8,
                                                             TopicPartition("in", 1): 10}


def test_merged_batches_keep_order_and_the_last_window_and_offset() -> None:
    first = _batch([(0, 5), (1, 9)], 2.0, "g1")
    second = _batch([(0, 6), (0, 7)], 1.0, "g2")
    one = merged([first, second])
    assert [v.id for _, v in one.result.verdicts] == ["0-5", "1-9", "0-6", "0-7"]
    assert len(one.result.dead_letters) == 2
    assert one.result.states == {(0, "s"): _window(7), (1, "s"): _window(9)}
    assert {tp: m.offset for tp, m in one.offsets.items()} == {TopicPartition("in", 0): 8,
                                                               TopicPartition("in", 1): 10}
    assert [r.offset for r in one.records] == [5, 9, 6, 7]
    assert one.group == "g2" and one.polled_at == 1.0
    assert merged([first]) is first
