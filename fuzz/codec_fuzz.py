"""Fuzzing of worker.codec.decode_input against a reference model of wire format v1.

This file is the atheris (libFuzzer) harness for long runs and also holds what
tests/worker/test_fuzz.py shares with it: a structured record generator that knows which fields
it broke (`build_case`), a byte-level mutator (`mutate`, `cases`) and `reference_decode`, the
format's rules restated independently of the codec. A case fails when decode_input raises or
answers "internal decode error", when its reason is empty, or when it disagrees with the
reference or with the generator.

    .venv/bin/pip install atheris==3.0.0
    .venv/bin/python fuzz/codec_fuzz.py -runs=1000000        # or -max_total_time=600, -jobs=2
    .venv/bin/python fuzz/codec_fuzz.py crash-<sha1>         # re-run one saved finding

Other libFuzzer options and corpus folders pass through. A finding stops the run and is saved
as crash-<sha1>; its traceback holds a one-line decode_input call that reproduces it.
worker.formats.codec is imported only inside main(), under atheris's coverage instrumentation.
"""

from __future__ import annotations

import functools
import math
import random
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import msgpack
import numpy as np

__all__ = [
    "EXPECTED_SIZE",
    "Case",
    "Expected",
    "RandomChooser",
    "build_case",
    "cases",
    "check",
    "check_case",
    "mutate",
    "reference_decode",
    "reproducer",
]

DEFAULT_STREAM = "_default"
EXPECTED_SIZE = 6  # input size of the model the fuzzed records are decoded for
MAX_CASE_BYTES = 8192  # mutated values are cut here: hostile sizes are declared, never real
WIRE_DTYPES = {"uint8": np.dtype("u1"), "float32": np.dtype("<f4"), "float64": np.dtype("<f8")}
_LEAVES = (type(None), bool, int, float, str, bytes)
_MISSING = object()

INTERESTING_BYTES = bytes(
    [0x00, 0x01, 0x06, 0x7F, 0x80, 0x81, 0x8F, 0x90, 0x91, 0x9F, 0xA0, 0xA2, 0xBF, 0xC0, 0xC1,
     0xC2, 0xC3, 0xC4, 0xC5, 0xC6, 0xC7, 0xC8, 0xC9, 0xCA, 0xCB, 0xCC, 0xCD, 0xCE, 0xCF, 0xD0,
     0xD3, 0xD4, 0xD8, 0xD9, 0xDA, 0xDB, 0xDC, 0xDD, 0xDE, 0xDF, 0xE0, 0xFF]
)
INTERESTING_INTS = (0, 1, 6, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0xFFFF, 0x10000, 0x7FFFFFFF,
                    0x80000000, 0xFFFFFFFF, 2**63, 2**64 - 1)
# msgpack headers that declare far more than any payload holds (bin/str/array/map/ext 8/16/32).
HUGE_HEADERS = (
    b"\xc4\xff", b"\xc5\xff\xff", b"\xc6\x7f\xff\xff\xff", b"\xc6\xff\xff\xff\xff",
    b"\xd9\xff", b"\xda\xff\xff", b"\xdb\x7f\xff\xff\xff", b"\xdc\xff\xff",
    b"\xdd\xff\xff\xff\xff", b"\xde\xff\xff", b"\xdf\xff\xff\xff\xff", b"\xc9\x7f\xff\xff\xff\x01",
)


class LimitsLike(Protocol):
    """The fields of worker.codec.Limits the rules refer to."""

    max_payload_bytes: int
    max_elements: int
    max_rank: int
    max_meta_bytes: int
    max_depth: int
    max_id_bytes: int
    max_key_bytes: int


# ----------------------------------------------------------------------------- reference


@dataclass(frozen=True)
class Expected:
    """What a correct decoder answers: validity, the id and stream an Invalid keeps, the fields."""

    valid: bool
    id: str | None
    stream: str
    x: np.ndarray | None = None
    shape: tuple[int, ...] | None = None
    ts: int | None = None
    label: int | None = None
    meta: dict | None = None


def reference_decode(
    key: bytes | None, value: Any, limits: LimitsLike, expected_size: int | None
) -> Expected:
    """Decode one record by the rules of the format (module docstring of worker.formats.codec)."""
    stream, key_ok = _stream(key, limits)
    bad = Expected(False, None, stream)
    if not isinstance(value, bytes | bytearray | memoryview):
        return bad
    if not 0 < len(value) <= limits.max_payload_bytes:
        return bad
    try:  # the unpacker's own bounds are part of the contract
        obj = msgpack.unpackb(
            bytes(value), raw=False, strict_map_key=True, max_ext_len=0,
            max_bin_len=limits.max_payload_bytes,
            max_str_len=max(limits.max_meta_bytes, limits.max_id_bytes),
            max_array_len=max(limits.max_meta_bytes, limits.max_rank),
            max_map_len=limits.max_meta_bytes,
        )
    except Exception:
        return bad
    if not isinstance(obj, dict):
        return bad
    rid = obj.get("id")
    if not (isinstance(rid, str) and 1 <= len(rid.encode("utf-8")) <= limits.max_id_bytes):
        return bad
    bad = Expected(False, rid, stream)
    x = obj.get("x")
    if not key_ok or not isinstance(x, dict):
        return bad
    dtype, shape, data = x.get("dtype"), x.get("shape"), x.get("data")
    if not (isinstance(dtype, str) and dtype in WIRE_DTYPES and isinstance(shape, list)):
        return bad
    if not (1 <= len(shape) <= limits.max_rank and all(type(d) is int and d > 0 for d in shape)):
        return bad
    n = math.prod(shape)
    if n > limits.max_elements or (expected_size is not None and n != expected_size):
        return bad
    if type(data) is not bytes or len(data) != n * WIRE_DTYPES[dtype].itemsize:
        return bad
    values = np.frombuffer(data, WIRE_DTYPES[dtype]).astype(np.float64)
    if dtype == "uint8":
        values = values / 255.0
    elif not all(0.0 <= v <= 1.0 for v in values.tolist()):  # NaN compares false
        return bad
    ts, label, meta = obj.get("ts"), obj.get("label"), obj.get("meta")
    if not all(v is None or type(v) is int for v in (ts, label)):
        return bad
    if meta is not None and not (
        isinstance(meta, dict)
        and _meta_ok(meta, 1, limits.max_depth)
        and len(msgpack.packb(meta, use_bin_type=True)) <= limits.max_meta_bytes
    ):
        return bad
    return Expected(True, rid, stream, values.reshape(tuple(shape)), tuple(shape), ts, label, meta)


def _stream(key: bytes | None, limits: LimitsLike) -> tuple[str, bool]:
    """The stream a key names, and whether the key is acceptable."""
    if not key:
        return DEFAULT_STREAM, True
    if len(key) > limits.max_key_bytes:
        return DEFAULT_STREAM, False
    try:
        return bytes(key).decode("utf-8"), True
    except UnicodeDecodeError:
        return bytes(key).decode("utf-8", "replace"), False


def _meta_ok(node: Any, depth: int, max_depth: int) -> bool:
    """Containers no deeper than max_depth (meta itself is level 1), string keys, plain leaves."""
    if isinstance(node, dict):
        return depth <= max_depth and all(
            type(k) is str and _meta_ok(v, depth + 1, max_depth) for k, v in node.items()
        )
    if isinstance(node, list):
        return depth <= max_depth and all(_meta_ok(v, depth + 1, max_depth) for v in node)
    return type(node) in _LEAVES


def check(out: Any, want: Expected, key: bytes | None, value: bytes) -> None:
    """Raise AssertionError with a reproducer unless decode_input's answer `out` is `want`."""
    kind = type(out).__name__
    problem = ""
    if kind == "Invalid":
        if not (isinstance(out.reason, str) and out.reason.strip()):
            problem = f"Invalid without a reason: {out!r}"
        elif out.reason.startswith("internal"):
            problem = f"the decoder raised: {out.reason}"
        elif want.valid:
            problem = f"a valid record was rejected: {out.reason}"
        elif (out.id, out.stream) != (want.id, want.stream):
            problem = f"Invalid carries id/stream {(out.id, out.stream)}, expected " \
                      f"{(want.id, want.stream)} ({out.reason})"
    elif kind == "InputRecord":
        if not want.valid:
            problem = f"an invalid record was accepted: {out!r}"
        else:
            problem = _record_mismatch(out, want)
    else:
        problem = f"decode_input returned {kind}, not InputRecord or Invalid"
    if problem:
        raise AssertionError(f"{problem}\n{reproducer(key, value)}")


def _record_mismatch(out: Any, want: Expected) -> str:
    """What differs between a decoded InputRecord and the expected fields ('' if nothing)."""
    got = (out.id, out.stream, out.shape, out.ts, out.label)
    exp = (want.id, want.stream, want.shape, want.ts, want.label)
    if got != exp:
        return f"fields {got} != expected {exp}"
    if out.x.dtype != np.float64 or out.x.flags.writeable or out.x.shape != want.shape:
        return f"x must be read-only float64 of shape {want.shape}, got {out.x.dtype} {out.x.shape}"
    if not np.array_equal(out.x, want.x):
        return "x values differ from the payload's"
    if msgpack.packb(out.meta, use_bin_type=True) != msgpack.packb(want.meta, use_bin_type=True):
        return f"meta {out.meta!r:.200} != {want.meta!r:.200}"
    return ""


def reproducer(key: bytes | None, value: bytes) -> str:
    """A one-line decode_input call for the case (the value cut to 4 KiB of hex)."""
    hexed = bytes(value).hex()
    cut = "" if len(hexed) <= 8192 else f"  # first 4096 of {len(value)} bytes"
    return (f"reproduce: decode_input({key!r}, bytes.fromhex({hexed[:8192]!r}), Limits(), "
            f"{EXPECTED_SIZE}){cut}")


# ----------------------------------------------------------------------------- generation


class Chooser(Protocol):
    """Where a generated record's choices come from (a PRNG, libFuzzer, hypothesis)."""

    def pick(self, n: int) -> int:
        """An integer in [0, n); 0 is the plainest choice."""
        ...

    def blob(self, n: int) -> bytes:
        """Exactly n bytes."""
        ...


class RandomChooser:
    """Choices from a seeded random.Random (deterministic runs)."""

    def __init__(self, rng: random.Random):
        self.rng = rng

    def pick(self, n: int) -> int:
        """An integer in [0, n)."""
        return int(self.rng.random() * n)

    def blob(self, n: int) -> bytes:
        """n random bytes."""
        return self.rng.randbytes(n)


class FdpChooser:
    """Choices from atheris's FuzzedDataProvider, so libFuzzer steers the structure."""

    def __init__(self, fdp: Any):
        self.fdp = fdp

    def pick(self, n: int) -> int:
        """An integer in [0, n) (0 once the input is used up)."""
        return self.fdp.ConsumeIntInRange(0, n - 1)

    def blob(self, n: int) -> bytes:
        """n bytes, zero-padded once the input is used up."""
        return self.fdp.ConsumeBytes(n).ljust(n, b"\0")


@dataclass(frozen=True)
class Case:
    """A generated record and what a decoder must say: faults are reason needles (one must
    appear; none means valid) and id is the id an Invalid keeps."""

    key: bytes | None
    value: bytes
    faults: tuple[str, ...]
    id: str | None


class _Builder:
    """Collects faults, and raw msgpack fragments spliced in where packb cannot go."""

    def __init__(self, ch: Chooser, odds: int):
        self.ch, self.odds = ch, odds
        self.faults: list[str] = []
        self.before_id = False  # a fault that stops decoding before the id is read
        self.splices: dict[bytes, bytes] = {}

    def broken(self) -> bool:
        """Whether to break the next field (1 in odds; the plain choice keeps it valid)."""
        return self.ch.pick(self.odds) == self.odds - 1

    def one(self, options: Sequence[Any]) -> Any:
        return options[self.ch.pick(len(options))]

    def fault(self, needle: str, before_id: bool = False) -> None:
        self.faults.append(needle)
        self.before_id = self.before_id or before_id

    def raw(self, data: bytes) -> bytes:
        """A placeholder (a bin, usable as a value or a map key) replaced by `data` at the end."""
        marker = b"\x00\xffsplice-%04d\xff\x00" % len(self.splices)
        self.splices[marker] = data
        return marker

    def pack(self, obj: Any) -> bytes:
        out = msgpack.packb(obj, use_bin_type=True)
        for marker, data in self.splices.items():
            out = out.replace(msgpack.packb(marker, use_bin_type=True), data)
        return out


def build_case(
    ch: Chooser, limits: LimitsLike, expected_size: int = EXPECTED_SIZE, odds: int = 8
) -> Case:
    """A record whose every field is valid or broken on purpose (1 in `odds` each)."""
    b = _Builder(ch, odds)
    key = _key(b, limits)
    rid = _id(b, limits)
    rec: dict[Any, Any] = {}
    if rid is not _MISSING:
        rec["id"] = rid
    x = _x(b, limits, expected_size)
    if x is not _MISSING:
        rec["x"] = x
    for name in ("ts", "label"):
        if b.broken():
            rec[name] = b.one([1.5, "1", True, False, [1], b"1", {}])
            b.fault(f"'{name}'")
        else:
            v = b.one([_MISSING, None, 0, 1_700_000_000_000, -(2**63), 2**64 - 1])
            if v is not _MISSING:
                rec[name] = v
    meta = _meta(b, limits)
    if meta is not _MISSING:
        rec["meta"] = meta
    rec.update(b.one([{}, {}, {"extra": [1, 2]}, {"zzz": None}, {b"id": "a bytes key"}]))
    if b.ch.pick(2):
        rec = dict(reversed(list(rec.items())))
    value = _envelope(b, rec, limits)
    rid_known = isinstance(rid, str) and "'id'" not in b.faults and not b.before_id
    return Case(key, value, tuple(b.faults), rid if rid_known else None)


def _key(b: _Builder, limits: LimitsLike) -> bytes | None:
    """The Kafka key: none, empty, up to max_key_bytes of UTF-8, or too long / not UTF-8."""
    if b.broken():
        b.fault("key")
        return b.one([b"k" * (limits.max_key_bytes + 1), b"\xff\xfe", b"\xed\xa0\x80",
                      b"cam\x80", b"\xc3", "é".encode() * (limits.max_key_bytes // 2 + 1)])
    return b.one([None, b"", b"cam-1", "ü".encode() * (limits.max_key_bytes // 2),
                  b"s" * limits.max_key_bytes, "流-7".encode()])


def _id(b: _Builder, limits: LimitsLike) -> Any:
    """The id: 1 to max_id_bytes of UTF-8, or missing, empty, too long or not a string."""
    if b.broken():
        b.fault("'id'")
        return b.one([_MISSING, "", "a" * (limits.max_id_bytes + 1),
                      "é" * (limits.max_id_bytes // 2 + 1), 5, b"id", None, ["a"]])
    return b.one([f"r-{b.ch.pick(1000)}", "é" * (1 + b.ch.pick(limits.max_id_bytes // 2)),
                  "x" * limits.max_id_bytes, "日本-1"])


def _x(b: _Builder, limits: LimitsLike, expected_size: int) -> Any:
    """The x map {dtype, shape, data}, or something else in its place."""
    if b.broken():
        b.fault("'x'")
        return b.one([_MISSING, None, [0.5] * expected_size, "x", 7])
    if b.broken():
        b.fault("'x.dtype'")
        dtype = b.one(["float16", "int32", "FLOAT64", "float64 ", "", 5, None, b"float64",
                       ["uint8"], "uint8\x00", _MISSING])
    else:
        dtype = b.one(list(WIRE_DTYPES))
    shape = _shape(b, limits, expected_size)
    n = expected_size
    if isinstance(shape, list) and all(type(d) is int and d > 0 for d in shape):
        n = math.prod(shape) if math.prod(shape) <= 4096 else expected_size
    out = {"dtype": dtype, "shape": shape, "data": _data(b, dtype, n)}
    return {k: v for k, v in out.items() if v is not _MISSING}


def _factors(b: _Builder, n: int, rank: int) -> list[int]:
    """n as a product of `rank` factors (>= 1) in a chosen order."""
    dims = [1] * rank
    p, rest = 2, n
    while rest > 1:
        while rest % p == 0:
            dims[b.ch.pick(rank)] *= p
            rest //= p
        p += 1
    return dims


def _shape(b: _Builder, limits: LimitsLike, expected_size: int) -> Any:
    """A shape of expected_size elements, of another size, or malformed / overflowing."""
    rank = 1 + b.ch.pick(limits.max_rank)
    if not b.broken():
        return _factors(b, expected_size, rank)
    if b.ch.pick(4) == 0:  # a well-formed shape of the wrong size for the model
        b.fault("the model expects")
        return _factors(b, b.one([m for m in (1, 2, 5, 7, 12, 36, 64) if m != expected_size]), rank)
    b.fault("'x.shape'")
    return b.one([
        [], [1] * limits.max_rank + [expected_size], [0, expected_size], [-expected_size],
        [True] * expected_size, [float(expected_size)], str(expected_size), None, _MISSING,
        {"0": expected_size}, [2**63, 2**63], [2**64 - 1] * limits.max_rank,
        [limits.max_elements + 1], [2**32, 2**32], [expected_size, -1],
    ])


def _data(b: _Builder, dtype: Any, n: int) -> Any:
    """n values in [0, 1] as raw bytes, or a wrong length, type or value (NaN, inf, < 0, > 1)."""
    wire = WIRE_DTYPES[dtype] if isinstance(dtype, str) and dtype in WIRE_DTYPES else None
    np_dtype = wire if wire is not None else WIRE_DTYPES["float64"]
    if np_dtype.kind == "u":
        data = b.ch.blob(n)
    else:
        plain = (0.0, 1.0, -0.0, 0.5, float(np.finfo(np_dtype).smallest_subnormal), 0.25)
        values = [plain[c % len(plain)] for c in b.ch.blob(n)]
        data = np.asarray(values, dtype=np_dtype).tobytes()
    if not b.broken():
        return data
    if np_dtype.kind == "f" and b.ch.pick(2):
        b.fault("[0, 1]")
        arr = np.frombuffer(data, np_dtype).copy()
        tiny = np_dtype.type(np.finfo(np_dtype).smallest_subnormal)
        above_one = np.nextafter(np_dtype.type(1), np_dtype.type(2))
        arr[b.ch.pick(n)] = b.one([np.nan, np.inf, -np.inf, -0.5, 1.5, -tiny, above_one])
        return arr.tobytes()
    b.fault("'x.data'")
    size = np_dtype.itemsize
    return b.one([data[:-1], data + b"\0", data[:-size], data + data[:size], data.hex(),
                  [0.5] * n, None, _MISSING, b""])


def _meta(b: _Builder, limits: LimitsLike) -> Any:
    """meta up to the depth and size limits, or past them, or what the unpacker refuses."""
    if not b.broken():
        return b.one([
            _MISSING, None, {}, {"a": 1, "b": [True, None, -1, 2**64 - 1, 0.5, float("nan"),
                                                 "s", b"b", {"c": []}]},
            {"deep": _nest(limits.max_depth - 1)}, _sized_meta(limits.max_meta_bytes),
        ])
    choice = b.ch.pick(10)
    if choice < 7:
        b.fault("'meta'")
        return [[1], "m", 5, {"deep": _nest(limits.max_depth)}, {"a": {b"k": 1}},
                _sized_meta(limits.max_meta_bytes + 1), {"e": b.raw(b"\xc7\x00\x05")}][choice]
    b.fault("msgpack", before_id=True)  # the unpacker itself refuses these
    return b.one([b.raw(b"\x91" * 2000 + b"\x01"), b.raw(b"\x81\x01\x02"),
                  {"e": b.raw(b"\xd4\x01\x00")}, {b.raw(b"\xa2\xff\xfe"): 1}])


def _nest(levels: int) -> Any:
    """1 inside `levels` nested arrays."""
    node: Any = 1
    for _ in range(levels):
        node = [node]
    return node


def _sized_meta(size: int) -> dict:
    """A meta map whose msgpack encoding takes exactly `size` bytes (size >= 300)."""
    return {"s": _filler(size)}


@functools.lru_cache(maxsize=8)
def _filler(size: int) -> str:
    """The string that makes {"s": string} pack to exactly size bytes."""
    base = len(msgpack.packb({"s": "x" * 300}, use_bin_type=True)) - 300
    return "x" * (size - base)


def _envelope(b: _Builder, rec: dict, limits: LimitsLike) -> bytes:
    """The packed record, or one broken as a whole."""
    if not b.broken():
        return b.pack(rec)
    choice = b.ch.pick(9)
    if choice == 0:
        b.fault("empty", before_id=True)
        return b""
    if choice == 1:
        b.fault("payload", before_id=True)  # refused on its size alone, before unpacking
        value = b.pack(rec)
        return value + b"\0" * (limits.max_payload_bytes + 1 - len(value))
    if choice == 2:
        b.fault("msgpack map", before_id=True)
        return b.pack(b.one([[rec], "s", 5, None, [], 1.5]))
    b.fault("msgpack", before_id=True)
    value = b.pack(rec)
    if choice == 3:
        return value[: 1 + b.ch.pick(len(value) - 1)]
    if choice == 4:
        return value + b.one([b"\x00", b"\xc1", value[:1]])
    if choice == 5:
        return b"\xc1" + value
    if choice == 6:
        return b.pack({**rec, b.raw(b"\xa2\xff\xfe"): 1})
    return b.pack({**rec, "z": b.raw(b.one(HUGE_HEADERS) + b"\0" * 8)})


def mutate(data: bytes, rng: random.Random, others: Sequence[bytes] = ()) -> bytes:
    """1-4 byte-level edits: bit flips, msgpack-significant bytes and lengths, inserts, cuts,
    duplicates, splices with another value, headers declaring huge sizes."""
    buf = bytearray(data)
    for _ in range(1 + rng.randrange(4)):
        op = rng.randrange(10)
        pos = rng.randrange(len(buf) + 1)
        at = min(pos, len(buf) - 1)
        if op == 0 and buf:
            buf[at] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:
            buf[at] = rng.choice(INTERESTING_BYTES)
        elif op == 2:
            width = rng.choice((1, 2, 4, 8))
            buf[pos : pos + width] = rng.choice(INTERESTING_INTS).to_bytes(8, "big")[-width:]
        elif op == 3:
            buf[pos:pos] = rng.randbytes(1 + rng.randrange(8))
        elif op == 4:
            del buf[pos : pos + 1 + rng.randrange(16)]
        elif op == 5:
            del buf[pos:]
        elif op == 6:
            start = rng.randrange(len(buf) + 1)
            buf[pos:pos] = buf[start : start + 1 + rng.randrange(32)]
        elif op == 7 and others:
            other = rng.choice(others)
            buf = buf[:pos] + other[rng.randrange(len(other) + 1) :]
        elif op == 8:
            buf[pos:pos] = rng.choice(HUGE_HEADERS)
        elif buf:
            buf[at] = (buf[at] + rng.choice((1, -1, 16, -16))) % 256
    return bytes(buf[:MAX_CASE_BYTES])


def cases(
    n: int, seed: int, limits: LimitsLike, expected_size: int = EXPECTED_SIZE
) -> Iterator[tuple[bytes | None, bytes, Case | None]]:
    """n deterministic cases: (key, value, the generating Case or None for a mutated value).

    Half are structured records, half are byte-level mutations of a pool of such records.
    """
    rng = random.Random(seed)
    ch = RandomChooser(rng)
    pool = [build_case(ch, limits, expected_size, odds) for odds in (2**20, 8, 3) * 40]
    values = [c.value for c in pool if 0 < len(c.value) <= MAX_CASE_BYTES]
    keys = [c.key for c in pool]
    for _ in range(n):
        if rng.randrange(2):
            case = build_case(ch, limits, expected_size)
            yield case.key, case.value, case
            continue
        key = rng.choice(keys)
        if rng.randrange(16) == 0:
            key = mutate(key or b"", rng)
        yield key, mutate(rng.choice(values), rng, values), None


def check_case(out: Any, case: Case) -> None:
    """Raise AssertionError unless `out` agrees with what the generator broke."""
    kind = type(out).__name__
    if case.faults:
        ok = kind == "Invalid" and any(f in out.reason for f in case.faults) and out.id == case.id
    else:
        ok = kind == "InputRecord" and out.id == case.id
    if not ok:
        raise AssertionError(
            f"faults {case.faults} (id {case.id!r}) but got {out!r:.300}\n"
            + reproducer(case.key, case.value)
        )


# ----------------------------------------------------------------------------- atheris


def main(argv: list[str] | None = None) -> None:
    """Run libFuzzer over decode_input; every input is checked against the reference."""
    import atheris

    with atheris.instrument_imports(include=["worker"]):
        from worker.formats import codec
    limits = codec.Limits()

    def one_input(data: bytes) -> None:
        fdp = atheris.FuzzedDataProvider(data)
        mode = fdp.ConsumeIntInRange(0, 3)
        case = None
        if mode == 0:  # the value as libFuzzer made it
            key, value = None, fdp.ConsumeBytes(fdp.remaining_bytes())
        elif mode == 1:  # a key and a value
            key = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, limits.max_key_bytes + 4)) or None
            value = fdp.ConsumeBytes(fdp.remaining_bytes())
        elif mode == 2:  # a structured record, libFuzzer choosing every field
            case = build_case(FdpChooser(fdp), limits)
            key, value = case.key, case.value
        else:  # a structured record, then byte-level edits
            rng = random.Random(fdp.ConsumeInt(4))
            base = build_case(RandomChooser(rng), limits)
            key, value = base.key, mutate(base.value, rng)
        out = codec.decode_input(key, value, limits, EXPECTED_SIZE)
        check(out, reference_decode(key, value, limits, EXPECTED_SIZE), key, value)
        if case is not None:
            check_case(out, case)

    atheris.Setup(sys.argv if argv is None else argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
