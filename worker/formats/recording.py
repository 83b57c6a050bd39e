"""Recorded streams: produce arrays as input records, record a topic to a file, replay a file.

File format (`.rgr`, version 1): a msgpack stream. The first object is the header
{"format": "radiusguard-replay", "version": 1}; each further object is one record
{"key": bin|nil, "value": bin|nil, "headers": [[str, bin], ...], "ts": int (ms since epoch)}.
Records are in time order; records of one key keep their topic order.
"""

from __future__ import annotations

import heapq
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import msgpack
import numpy as np

from worker.formats.codec import encode_input

FORMAT = "radiusguard-replay"
VERSION = 1


class ReplayFileError(ValueError):
    """A replay file is missing or not in the documented format."""


@dataclass(frozen=True)
class Recorded:
    """One record of a recording."""

    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()
    ts: int = 0


def write_recording(path: str | Path, records: Iterable[Recorded]) -> int:
    """Write records to a replay file; returns how many."""
    n = 0
    with open(path, "wb") as f:
        f.write(msgpack.packb({"format": FORMAT, "version": VERSION}))
        for r in records:
            f.write(msgpack.packb(
                {"key": r.key, "value": r.value, "headers": [list(h) for h in r.headers],
                 "ts": int(r.ts)},
                use_bin_type=True,
            ))
            n += 1
    return n


def read_recording(path: str | Path) -> Iterator[Recorded]:
    """Records of a replay file, in order. The header is checked at once, records as they are
    read; ReplayFileError on a bad file."""
    path = Path(path)
    if not path.is_file():
        raise ReplayFileError(f"{path}: no such replay file")
    f = open(path, "rb")  # closed by _records once read (or on an early error here)
    unpacker = msgpack.Unpacker(f, raw=False, max_buffer_size=64 << 20)
    try:
        head = next(unpacker)
    except (StopIteration, ValueError, msgpack.UnpackException) as exc:
        f.close()
        raise ReplayFileError(f"{path}: empty or not msgpack ({exc!r})") from None
    if not isinstance(head, dict) or head.get("format") != FORMAT:
        f.close()
        raise ReplayFileError(f"{path}: not a {FORMAT} file")
    if head.get("version") != VERSION:
        f.close()
        raise ReplayFileError(f"{path}: version {head.get('version')}, expected {VERSION}")
    return _records(path, f, unpacker)


def check_recording(path: str | Path) -> int:
    """Read a replay file to its end without sending anything: the number of records, or
    ReplayFileError if it is malformed or truncated (so nothing of a bad file is replayed)."""
    return sum(1 for _ in read_recording(path))


def _records(path: Path, f, unpacker) -> Iterator[Recorded]:
    n = 0
    with f:
        size = os.fstat(f.fileno()).st_size
        try:
            for n, obj in enumerate(unpacker, 1):
                key, value = obj.get("key"), obj["value"]
                if not isinstance(key, bytes | None) or not isinstance(value, bytes | None):
                    raise TypeError(f"record {n - 1}: key and value must be binary or nil")
                yield Recorded(key, value,
                               tuple((str(k), bytes(v)) for k, v in obj.get("headers", [])),
                               int(obj.get("ts", 0)))
        except (KeyError, TypeError, AttributeError, ValueError, msgpack.UnpackException) as exc:
            raise ReplayFileError(f"{path}: malformed record ({exc!r})") from None
        if unpacker.tell() < size:  # msgpack stops quietly before an incomplete object
            raise ReplayFileError(
                f"{path}: truncated: {n} complete records, then {size - unpacker.tell()} bytes "
                "of an incomplete one"
            )


def records_from_arrays(
    xs: np.ndarray, stream: str, labels: np.ndarray | None = None, dtype: str = "uint8",
    start_ts: int | None = None, period_ms: int = 0, id_prefix: str | None = None,
    meta: list[dict] | None = None,
) -> list[Recorded]:
    """Input records for a batch of arrays in [0, 1] (shape [N, ...])."""
    start = int(time.time() * 1000) if start_ts is None else start_ts
    prefix = id_prefix if id_prefix is not None else stream
    out = []
    for i, x in enumerate(xs):
        label = None if labels is None else int(labels[i])
        key, value = encode_input(
            f"{prefix}-{i}", x, stream=stream, dtype=dtype, ts=start + i * period_ms,
            label=label, meta=None if meta is None else meta[i],
        )
        out.append(Recorded(key, value, (), start + i * period_ms))
    return out


def produce(
    producer,
    topic: str,
    records: Iterable[Recorded],
    rate: float | None = None,
    speed: float | None = None,
    streams: int = 1,
    on_send: Callable[[bytes | None, bytes | None], None] | None = None,
) -> int:
    """Send records and flush; returns how many were sent. rate = input records per second,
    speed = multiple of the recorded pace (record ts), neither = as fast as possible.
    streams > 1 fans each record out to N streams (key suffixed with -i); on_send(key, value)
    is called right after each send (for latency bookkeeping)."""
    if streams < 1:
        raise ValueError(f"streams must be >= 1, got {streams}")
    sent = 0
    t0 = time.monotonic()
    first_ts = None
    for n, r in enumerate(records):
        if rate:
            _sleep_until(t0 + n / rate)
        elif speed:
            first_ts = r.ts if first_ts is None else first_ts
            _sleep_until(t0 + (r.ts - first_ts) / 1000.0 / speed)
        for i in range(streams):
            key = r.key if streams == 1 else (r.key or b"_default") + f"-{i}".encode()
            producer.send(topic, key=key, value=r.value, headers=list(r.headers) or None)
            if on_send is not None:
                on_send(key, r.value)
            sent += 1
    producer.flush()
    return sent


def record_topic(consumer, idle_s: float = 5.0, limit: int | None = None) -> list[Recorded]:
    """Everything an assigned consumer reads until it is idle for idle_s (or limit records),
    merged across partitions by timestamp while keeping each partition's order."""
    parts: dict[int, list[Recorded]] = {}
    total = 0
    last = time.monotonic()
    while time.monotonic() - last < idle_s and (limit is None or total < limit):
        polled = consumer.poll(timeout_ms=min(500, max(50, int(idle_s * 1000))))
        for tp, msgs in polled.items():
            for m in msgs:
                headers = tuple((k, v or b"") for k, v in (m.headers or []))
                parts.setdefault(tp.partition, []).append(
                    Recorded(m.key, m.value, headers, m.timestamp or 0)
                )
                total += 1
            last = time.monotonic()
    merged = list(heapq.merge(*parts.values(), key=lambda r: r.ts))
    return merged[:limit] if limit is not None else merged


def _sleep_until(t: float) -> None:
    delay = t - time.monotonic()
    if delay > 0:
        time.sleep(delay)
