"""Wire format version 2: msgpack input records in, msgpack verdict records out.

Version 2 adds to each verdict ``format`` (2) and ``certificate``: what was proved, so a
decision can be re-checked offline; readers take version 1 verdicts (no such fields) as well.

An input record's key is its stream id (UTF-8; no key means stream ``_default``) and its value
a msgpack map with ``id``, ``x`` ({dtype, shape, data}: C-order little-endian raw bytes, no
batch dimension), and optional ``ts``, ``label`` and ``meta``; other fields are ignored, and
an optional field set to nil counts as absent. Decoding never raises: a record
that breaks the format or a limit comes back as `Invalid` with a reason, and every size limit
is checked before anything proportional to the claimed size is allocated. No pickle is used.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

from worker.layout import AS_IS, CHANNELS_LAST, describe, layout_of, to_model_layout

__all__ = [
    "DEFAULT_STREAM",
    "DTYPES",
    "VERDICTS",
    "VERDICT_FORMAT",
    "InputRecord",
    "Invalid",
    "Limits",
    "Verdict",
    "decode_input",
    "decode_verdict",
    "encode_input",
    "encode_verdict",
]

DEFAULT_STREAM = "_default"
# Wire dtype names and their little-endian numpy dtypes.
DTYPES: dict[str, np.dtype] = {
    "uint8": np.dtype("u1"),
    "float32": np.dtype("<f4"),
    "float64": np.dtype("<f8"),
}
VERDICTS = ("accept", "reject", "invalid")
VERDICT_FORMAT = 2  # the version this module writes; decode_verdict reads 1 and 2
VERDICT_FORMATS = (1, 2)
_META_LEAVES = (type(None), bool, int, float, str, bytes)


@dataclass(frozen=True)
class Limits:
    """Bounds on one input record, enforced before decoding allocates anything they bound."""

    max_payload_bytes: int = 1 << 20
    max_elements: int = 1 << 18
    max_rank: int = 4
    max_meta_bytes: int = 16384
    max_depth: int = 8
    max_containers: int = 1024
    max_id_bytes: int = 256
    max_key_bytes: int = 256

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"Limits.{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True, eq=False)
class InputRecord:
    """A decoded input: x is read-only float64 in [0, 1] with the record's shape."""

    id: str
    stream: str
    x: np.ndarray
    shape: tuple[int, ...]
    ts: int | None = None
    label: int | None = None
    meta: dict | None = None
    preprocessing: str = "float64"  # how the wire values became x: "uint8/255", layout moves


@dataclass(frozen=True)
class Invalid:
    """A record that cannot be scored, with a human-readable reason and its id when known."""

    reason: str
    id: str | None = None
    stream: str = DEFAULT_STREAM


@dataclass(frozen=True)
class Verdict:
    """One output record; `source` is {topic, partition, offset} of the input record."""

    id: str | None
    stream: str
    verdict: str
    predicted: int | None
    radius: float | None
    rule: str
    reason: str
    pvalue: float | None
    model: str
    profile: str
    source: Mapping[str, Any]
    latency_ms: float
    worker: str
    label: int | None = None
    meta: dict | None = None
    certificate: Mapping[str, Any] | None = None  # what was proved (None: nothing, invalid)

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")

    def to_dict(self) -> dict[str, Any]:
        """The verdict as plain Python data in wire order; label and meta only when given."""
        out: dict[str, Any] = {
            "id": self.id,
            "stream": self.stream,
            "verdict": self.verdict,
            "predicted": None if self.predicted is None else int(self.predicted),
            "radius": None if self.radius is None else float(self.radius),
            "rule": self.rule,
            "reason": self.reason,
            "pvalue": None if self.pvalue is None else float(self.pvalue),
            "model": self.model,
            "profile": self.profile,
            "source": {
                "topic": str(self.source["topic"]),
                "partition": int(self.source["partition"]),
                "offset": int(self.source["offset"]),
            },
            "latency_ms": float(self.latency_ms),
            "worker": self.worker,
        }
        if self.label is not None:
            out["label"] = int(self.label)
        if self.meta is not None:
            out["meta"] = self.meta
        out["format"] = VERDICT_FORMAT
        out["certificate"] = None if self.certificate is None else dict(self.certificate)
        return out


def encode_verdict(v: Verdict) -> bytes:
    """The msgpack value of a verdict record."""
    return msgpack.packb(v.to_dict(), use_bin_type=True)


def decode_verdict(data: bytes) -> dict[str, Any]:
    """A verdict record's value as a dict; ValueError if it is not a verdict map."""
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:
        raise ValueError(f"not a msgpack verdict: {exc}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"a verdict must be a map, got {type(obj).__name__}")
    missing = [k for k in ("id", "stream", "verdict", "rule", "reason") if k not in obj]
    if missing:
        raise ValueError(f"verdict lacks fields {missing}")
    obj.setdefault("format", 1)
    if obj["format"] not in VERDICT_FORMATS:
        raise ValueError(f"verdict format {obj['format']!r} is not one of {VERDICT_FORMATS}")
    obj.setdefault("certificate", None)
    return obj


def encode_input(
    id: str,
    x: np.ndarray,
    stream: str | None = DEFAULT_STREAM,
    dtype: str = "float64",
    ts: int | None = None,
    label: int | None = None,
    meta: dict | None = None,
) -> tuple[bytes | None, bytes]:
    """(key, value) of an input record; x keeps its shape. float64 is lossless; uint8 takes
    either uint8 pixels as they are or values in [0, 1], rounded to the nearest 1/255.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    arr = np.asarray(x)
    if dtype == "uint8" and arr.dtype != np.uint8:
        f = arr.astype(np.float64)
        if not (np.isfinite(f).all() and (f >= 0).all() and (f <= 1).all()):
            raise ValueError("uint8 encoding needs values in [0, 1]")
        arr = np.rint(f * 255.0)
    data = np.ascontiguousarray(arr, dtype=DTYPES[dtype]).tobytes()
    shape = [int(d) for d in arr.shape] or [1]
    value: dict[str, Any] = {"id": id, "x": {"dtype": dtype, "shape": shape, "data": data}}
    if ts is not None:
        value["ts"] = int(ts)
    if label is not None:
        value["label"] = int(label)
    if meta is not None:
        value["meta"] = meta
    key = None if stream is None else stream.encode("utf-8")
    return key, msgpack.packb(value, use_bin_type=True)


def decode_input(
    key: bytes | None,
    value: bytes,
    limits: Limits | None = None,
    expected_size: int | tuple[int, ...] | None = None,
) -> InputRecord | Invalid:
    """Decode and check one input record; never raises (problems come back as Invalid).

    `expected_size` is the model's input size, or its input shape: then x must have that
    shape (axes of size 1 aside), be flat, or be channels last ([H, W, C] for a [C, H, W]
    model, transposed here to [C, H, W]; see worker.layout).
    """
    limits = limits or Limits()
    try:
        return _decode(key, value, limits, expected_size)
    except Exception as exc:  # a safety net: the checks below are meant to catch everything
        return Invalid(f"internal decode error: {type(exc).__name__}: {exc}")


class _Reject(Exception):
    """Internal: carries the reason for an Invalid out of nested checks."""


def _decode(
    key: bytes | None, value: bytes, limits: Limits, expected_size: int | tuple[int, ...] | None
) -> InputRecord | Invalid:
    stream, key_error = _stream(key, limits)
    if not isinstance(value, bytes | bytearray | memoryview):
        return Invalid(f"record value must be bytes, got {type(value).__name__}", None, stream)
    if len(value) > limits.max_payload_bytes:
        return Invalid(
            f"payload of {len(value)} bytes exceeds the limit of {limits.max_payload_bytes}",
            None,
            stream,
        )
    if len(value) == 0:
        return Invalid("empty record value", None, stream)
    try:
        obj = _unpack_fields(bytes(value), limits)
    except _Reject as exc:
        return Invalid(str(exc), None, stream)
    except Exception as exc:  # msgpack raises ValueError, FormatError, StackError, ExtraData...
        return Invalid(f"value is not valid msgpack: {_short(exc)}", None, stream)
    if not isinstance(obj, dict):
        return Invalid(f"value must be a msgpack map, got {_kind(obj)}", None, stream)
    rid = obj.get("id")
    if not isinstance(rid, str):
        reason = "missing field 'id'" if rid is None else f"'id' must be a string, got {_kind(rid)}"
        return Invalid(reason, None, stream)
    if not rid or len(rid.encode("utf-8", "surrogatepass")) > limits.max_id_bytes:
        return Invalid(f"'id' must have 1 to {limits.max_id_bytes} bytes", None, stream)
    if key_error:
        return Invalid(key_error, rid, stream)
    try:
        x, shape, prep = _decode_x(obj.get("x"), limits, expected_size)
        ts = _optional_int(obj, "ts")
        label = _optional_int(obj, "label")
        meta = _meta(obj.get("meta"), limits)
    except _Reject as exc:
        return Invalid(str(exc), rid, stream)
    return InputRecord(rid, stream, x, shape, ts, label, meta, prep)


_KNOWN_FIELDS = ("id", "x", "ts", "label", "meta")
_MAP_HEADERS = frozenset(range(0x80, 0x90)) | {0xDE, 0xDF}


@dataclass(frozen=True)
class _Oversize:
    """A field too large to build, by its encoded size."""

    size: int


def _unpacker(data: bytes, limits: Limits) -> msgpack.Unpacker:
    up = msgpack.Unpacker(
        raw=False,
        strict_map_key=True,
        max_buffer_size=max(len(data), 1),
        max_bin_len=limits.max_payload_bytes,
        max_str_len=max(limits.max_meta_bytes, limits.max_id_bytes),
        max_array_len=max(limits.max_meta_bytes, limits.max_rank),
        max_map_len=limits.max_meta_bytes,
        max_ext_len=0,
    )
    up.feed(data)
    return up


def _unpack_fields(value: bytes, limits: Limits) -> Any:
    """The top-level map, each field built under one budget of maps and arrays.

    msgpack can encode an empty map in one byte, so a payload within the byte limit could
    still ask for millions of Python objects; the budget refuses that before it happens, and
    an oversized `meta` is measured and refused without being built at all.
    """
    budget = [limits.max_containers]
    if value[0] not in _MAP_HEADERS:
        return _unpack_small(value, limits, "value", budget)
    up = _unpacker(value, limits)
    n = up.read_map_header()
    obj: dict[str, Any] = {}
    for _ in range(n):
        key = up.unpack()
        if not isinstance(key, str | bytes):
            raise _Reject(f"value is not valid msgpack: a map key is {_kind(key)}")
        start = up.tell()
        up.skip()
        end = up.tell()
        if key == "meta" and end - start > limits.max_meta_bytes:
            obj[key] = _Oversize(end - start)  # refused later, once the id is known
            continue
        field = _unpack_small(value[start:end], limits, repr(key), budget)
        if isinstance(key, str) and key in _KNOWN_FIELDS:
            obj[key] = field
    if up.tell() != len(value):
        raise _Reject(f"value is not valid msgpack: {len(value) - up.tell()} bytes after its map")
    return obj


def _unpack_small(data: bytes, limits: Limits, what: str, budget: list[int]) -> Any:
    """Unpack one object, spending one unit of `budget` per map or array built."""

    def count(obj: Any) -> Any:
        budget[0] -= 1
        if budget[0] < 0:
            raise _Reject(f"{what} takes the record past {limits.max_containers} maps and arrays")
        return obj

    return msgpack.unpackb(
        data,
        raw=False,
        strict_map_key=True,
        max_bin_len=limits.max_payload_bytes,
        max_str_len=max(limits.max_meta_bytes, limits.max_id_bytes),
        max_array_len=max(limits.max_meta_bytes, limits.max_rank),
        max_map_len=limits.max_meta_bytes,
        max_ext_len=0,
        object_hook=count,
        list_hook=count,
    )


def _stream(key: bytes | None, limits: Limits) -> tuple[str, str | None]:
    """The stream id of a key and, if the key is unusable, why."""
    if key is None or len(key) == 0:
        return DEFAULT_STREAM, None
    if len(key) > limits.max_key_bytes:
        reason = f"key of {len(key)} bytes exceeds the limit of {limits.max_key_bytes}"
        return DEFAULT_STREAM, reason
    try:
        return bytes(key).decode("utf-8"), None
    except UnicodeDecodeError:
        return bytes(key).decode("utf-8", errors="replace"), "key is not valid UTF-8"


def _decode_x(
    x: Any, limits: Limits, expected: int | tuple[int, ...] | None
) -> tuple[np.ndarray, tuple, str]:
    if x is None:
        raise _Reject("missing field 'x'")
    if not isinstance(x, dict):
        raise _Reject(f"'x' must be a map {{dtype, shape, data}}, got {_kind(x)}")
    dtype, shape, data = x.get("dtype"), x.get("shape"), x.get("data")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise _Reject(f"'x.dtype' must be one of {sorted(DTYPES)}, got {dtype!r:.40}")
    if not isinstance(shape, list):
        raise _Reject(f"'x.shape' must be an array of integers, got {_kind(shape)}")
    if not 1 <= len(shape) <= limits.max_rank:
        raise _Reject(f"'x.shape' must have rank 1 to {limits.max_rank}, got {len(shape)}")
    elements = 1
    for d in shape:
        if not isinstance(d, int) or isinstance(d, bool) or d < 1:
            raise _Reject(f"'x.shape' entries must be integers >= 1, got {d!r:.40}")
        elements *= d
        if elements > limits.max_elements:
            raise _Reject(f"'x.shape' {shape} exceeds the limit of {limits.max_elements} elements")
    if not isinstance(data, bytes):
        raise _Reject(f"'x.data' must be binary, got {_kind(data)}")
    itemsize = DTYPES[dtype].itemsize
    if len(data) != elements * itemsize:
        raise _Reject(
            f"'x.data' has {len(data)} bytes, shape {shape} of {dtype} needs {elements * itemsize}"
        )
    model_shape = expected if isinstance(expected, tuple) else None
    expected_size = math.prod(expected) if model_shape else expected
    if expected_size is not None and elements != expected_size:
        raise _Reject(f"x has {elements} elements, the model expects {expected_size}")
    layout = layout_of(tuple(shape), model_shape) if model_shape else AS_IS
    if layout is None:
        raise _Reject(f"x has shape {shape}, the model expects {describe(model_shape)}")
    raw = np.frombuffer(data, dtype=DTYPES[dtype])
    if dtype == "uint8":
        arr = raw.astype(np.float64) / 255.0
    else:
        arr = raw.astype(np.float64)
        bad = ~(np.isfinite(arr) & (arr >= 0.0) & (arr <= 1.0))
        if bad.any():
            i = int(np.argmax(bad))
            raise _Reject(
                f"x has {int(bad.sum())} values that are not finite numbers in [0, 1] "
                f"(first at index {i}: {arr[i]!r})"
            )
    prep = "uint8/255" if dtype == "uint8" else dtype
    if layout == CHANNELS_LAST:
        shape = list(model_shape)
        arr = to_model_layout(arr[None], model_shape, layout)
        prep += "; channels last to channels first"
    arr = arr.reshape(tuple(shape))
    arr.flags.writeable = False
    return arr, tuple(shape), prep


def _optional_int(obj: dict, name: str) -> int | None:
    v = obj.get(name)
    if v is None:
        return None
    if not isinstance(v, int) or isinstance(v, bool):
        raise _Reject(f"'{name}' must be an integer, got {_kind(v)}")
    return v


def _meta(meta: Any, limits: Limits) -> dict | None:
    """Check meta's types and nesting depth iteratively, then its re-encoded size."""
    if meta is None:
        return None
    if isinstance(meta, _Oversize):
        raise _Reject(f"'meta' takes {meta.size} bytes, the limit is {limits.max_meta_bytes}")
    if not isinstance(meta, dict):
        raise _Reject(f"'meta' must be a map, got {_kind(meta)}")
    stack: list[tuple[Any, int]] = [(meta, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            if depth > limits.max_depth:
                raise _Reject(f"'meta' is nested deeper than {limits.max_depth} levels")
            if isinstance(node, dict):
                for k, v in node.items():
                    if not isinstance(k, str):
                        raise _Reject("'meta' map keys must be strings")
                    stack.append((v, depth + 1))
            else:
                stack.extend((v, depth + 1) for v in node)
        elif not isinstance(node, _META_LEAVES):
            raise _Reject(f"'meta' holds an unsupported value of type {type(node).__name__}")
    size = len(msgpack.packb(meta, use_bin_type=True))
    if size > limits.max_meta_bytes:
        raise _Reject(f"'meta' takes {size} bytes, the limit is {limits.max_meta_bytes}")
    return meta


def _kind(v: Any) -> str:
    """A msgpack-level name for a decoded value's type, for reasons."""
    names = {
        type(None): "nil", bool: "bool", int: "integer", float: "float", str: "string",
        bytes: "binary", list: "array", dict: "map",
    }
    return names.get(type(v), type(v).__name__)


def _short(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 120 else text[:117] + "..."
