"""Wire format v1: round trips, every rejection path, and decode never raising on garbage."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from worker.formats.codec import (
    DEFAULT_STREAM,
    InputRecord,
    Invalid,
    Limits,
    Verdict,
    decode_input,
    decode_verdict,
    encode_input,
    encode_verdict,
)

LIMITS = Limits()
shapes = hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=5)
unit_floats = st.floats(0.0, 1.0, allow_nan=False, allow_infinity=False)
meta_leaves = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | unit_floats | st.text(
    max_size=20
) | st.binary(max_size=20)
metas = st.dictionaries(
    st.text(max_size=10),
    st.recursive(
        meta_leaves,
        lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=5), kids,
                                                                   max_size=4),
        max_leaves=12,
    ),
    max_size=5,
)
ids = st.text(min_size=1, max_size=40)
streams = st.text(min_size=1, max_size=40)


def _value(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def _record(**fields: object) -> dict:
    base = {"id": "r1", "x": {"dtype": "float64", "shape": [2, 2], "data": np.zeros(4).tobytes()}}
    base.update(fields)
    return base


def _invalid(value: bytes, key: bytes | None = None, **kw: object) -> Invalid:
    out = decode_input(key, value, kw.pop("limits", LIMITS), kw.pop("expected_size", None))
    assert isinstance(out, Invalid), out
    assert not out.reason.startswith("internal")
    return out


# ------------------------------------------------------------------------------ round trips


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    x=hnp.arrays(np.float64, shapes, elements=unit_floats),
    id_=ids,
    stream=streams,
    ts=st.none() | st.integers(0, 2**63 - 1),
    label=st.none() | st.integers(-(2**31), 2**31),
    meta=st.none() | metas,
)
def test_float64_round_trip_is_exact(x, id_, stream, ts, label, meta) -> None:
    key, value = encode_input(id_, x, stream=stream, dtype="float64", ts=ts, label=label, meta=meta)
    rec = decode_input(key, value, LIMITS, x.size)
    assert isinstance(rec, InputRecord), rec
    assert (rec.id, rec.stream, rec.ts, rec.label, rec.meta) == (id_, stream, ts, label, meta)
    assert rec.shape == x.shape and rec.x.dtype == np.float64
    np.testing.assert_array_equal(rec.x, x)
    assert not rec.x.flags.writeable


@settings(max_examples=200, deadline=None)
@given(x=hnp.arrays(np.float32, shapes, elements=st.floats(0.0, 1.0, width=32)))
def test_float32_round_trip(x) -> None:
    rec = decode_input(*encode_input("a", x, dtype="float32"))
    assert isinstance(rec, InputRecord)
    np.testing.assert_array_equal(rec.x, x.astype(np.float64))


@settings(max_examples=200, deadline=None)
@given(x=hnp.arrays(np.uint8, shapes))
def test_uint8_round_trip_scales_by_1_over_255(x) -> None:
    rec = decode_input(*encode_input("a", x, dtype="uint8"))
    assert isinstance(rec, InputRecord)
    np.testing.assert_array_equal(rec.x, x.astype(np.float64) / 255.0)


def test_uint8_encoding_of_floats_rounds_to_nearest_level() -> None:
    x = np.array([0.0, 0.5, 1.0, 3 / 255 + 0.001])
    rec = decode_input(*encode_input("a", x, dtype="uint8"))
    np.testing.assert_array_equal(rec.x * 255, [0, 128, 255, 3])
    with pytest.raises(ValueError):
        encode_input("a", np.array([1.5]), dtype="uint8")
    with pytest.raises(ValueError):
        encode_input("a", np.array([0.5]), dtype="int16")


def test_no_key_and_empty_key_mean_default_stream() -> None:
    _, value = encode_input("a", np.zeros(3))
    assert decode_input(None, value).stream == DEFAULT_STREAM
    assert decode_input(b"", value).stream == DEFAULT_STREAM
    key, _ = encode_input("a", np.zeros(3), stream=None)
    assert key is None


def test_unknown_fields_are_ignored_and_nil_optionals_are_absent() -> None:
    rec = decode_input(None, _value(_record(extra=[1, 2], ts=None, label=None, meta=None)))
    assert isinstance(rec, InputRecord)
    assert (rec.ts, rec.label, rec.meta) == (None, None, None)


def test_expected_size_ignores_shape_but_not_element_count() -> None:
    value = encode_input("a", np.zeros((1, 4, 4)))[1]
    assert isinstance(decode_input(None, value, LIMITS, 16), InputRecord)
    assert "model expects 15" in _invalid(value, expected_size=15).reason


# ------------------------------------------------------------------------------ rejections


@pytest.mark.parametrize(
    ("record", "needle"),
    [
        (_record(x={"dtype": "int32", "shape": [1], "data": b"\0" * 4}), "x.dtype"),
        (_record(x={"dtype": "float64", "shape": [], "data": b""}), "rank"),
        (_record(x={"dtype": "uint8", "shape": [1, 1, 1, 1, 1], "data": b"\0"}), "rank"),
        (_record(x={"dtype": "uint8", "shape": [0], "data": b""}), ">= 1"),
        (_record(x={"dtype": "uint8", "shape": [-1], "data": b""}), ">= 1"),
        (_record(x={"dtype": "uint8", "shape": [True], "data": b"\0"}), ">= 1"),
        (_record(x={"dtype": "uint8", "shape": [1.0], "data": b"\0"}), ">= 1"),
        (_record(x={"dtype": "uint8", "shape": "4", "data": b"\0"}), "x.shape"),
        (_record(x={"dtype": "uint8", "shape": [3], "data": b"\0\0"}), "needs 3"),
        (_record(x={"dtype": "float32", "shape": [3], "data": b"\0" * 8}), "needs 12"),
        (_record(x={"dtype": "uint8", "shape": [1], "data": "a"}), "binary"),
        (_record(x={"dtype": "uint8", "shape": [2**31, 2**31], "data": b""}), "limit"),
        (_record(x={"dtype": "uint8", "shape": [2**64 - 1] * 4, "data": b""}), "limit"),
        (_record(x=[0.5, 0.5]), "'x' must be a map"),
        (_record(x=None), "missing field 'x'"),
        (_record(ts="now"), "'ts'"),
        (_record(ts=1.5), "'ts'"),
        (_record(label=True), "'label'"),
        (_record(meta=[1]), "'meta' must be a map"),
        (_record(meta={"a": msgpack.Timestamp(0)}), "msgpack"),
    ],
)
def test_malformed_fields_are_invalid_with_reason(record: dict, needle: str) -> None:
    out = _invalid(_value(record))
    assert needle in out.reason
    if "msgpack" not in needle:
        assert out.id == "r1"


@pytest.mark.parametrize(
    "values",
    [[np.nan], [np.inf], [-np.inf], [-0.001], [1.0001], [0.5, 0.2, 7.0]],
)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_floats_must_be_finite_and_in_unit_interval(values: list, dtype: str) -> None:
    x = np.array(values, dtype=dtype)
    value = _value(_record(x={"dtype": dtype, "shape": [x.size], "data": x.tobytes()}))
    assert "[0, 1]" in _invalid(value).reason


def test_id_is_required_and_a_nonempty_bounded_string() -> None:
    assert _invalid(_value({"x": _record()["x"]})).id is None
    assert "'id' must be a string" in _invalid(_value(_record(id=5))).reason
    assert "1 to" in _invalid(_value(_record(id=""))).reason
    assert "1 to" in _invalid(_value(_record(id="a" * (LIMITS.max_id_bytes + 1)))).reason


def test_bad_keys_are_invalid_but_keep_the_id() -> None:
    value = _value(_record())
    out = _invalid(value, key=b"\xff\xfe")
    assert out.id == "r1" and "UTF-8" in out.reason
    assert "key of" in _invalid(value, key=b"k" * (LIMITS.max_key_bytes + 1)).reason


def test_payload_limit_is_checked_before_unpacking() -> None:
    small = Limits(max_payload_bytes=100)
    value = encode_input("a", np.zeros(50))[1]
    assert "payload of" in _invalid(value, limits=small).reason
    assert "empty" in _invalid(b"").reason


def test_element_limit_applies_before_the_data_is_touched() -> None:
    small = Limits(max_elements=10)
    value = encode_input("a", np.zeros(11))[1]
    assert "limit of 10 elements" in _invalid(value, limits=small).reason


@pytest.mark.parametrize(
    "value",
    [
        b"\xdd\xff\xff\xff\xff",  # array header claiming 2**32 - 1 items
        b"\xdf\xff\xff\xff\xff",  # map header claiming 2**32 - 1 pairs
        b"\xc6\xff\xff\xff\xff",  # bin header claiming 4 GiB
        b"\xdb\xff\xff\xff\xff",  # str header claiming 4 GiB
        b"\x91" * 5000 + b"\x01",  # nesting far past the unpacker's stack
        b"\x81\x01\x02",  # integer map key
        b"\xc1",  # never-used byte
        _value(_record()) + b"\x00",  # trailing data
        b"\x81\xa2id",  # truncated
    ],
)
def test_hostile_msgpack_is_invalid(value: bytes) -> None:
    assert _invalid(value).id is None


def test_top_level_must_be_a_map() -> None:
    assert "must be a msgpack map" in _invalid(_value([1, 2])).reason


def test_meta_depth_size_and_key_limits() -> None:
    deep: object = 1
    for _ in range(LIMITS.max_depth):
        deep = [deep]
    assert "nested deeper" in _invalid(_value(_record(meta={"a": deep}))).reason
    ok: object = 1
    for _ in range(LIMITS.max_depth - 1):
        ok = [ok]
    assert isinstance(decode_input(None, _value(_record(meta={"a": ok}))), InputRecord)
    big = {"a": "x" * (LIMITS.max_meta_bytes - 10), "b": "y" * 20}
    assert "'meta' takes" in _invalid(_value(_record(meta=big))).reason
    assert "keys must be strings" in _invalid(_value(_record(meta={"a": {b"k": 1}}))).reason


# ------------------------------------------------------------------------------ robustness


@settings(max_examples=2500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600), st.none() | st.binary(max_size=20))
def test_random_bytes_never_raise(value: bytes, key: bytes | None) -> None:
    out = decode_input(key, value, LIMITS, 4)
    assert isinstance(out, InputRecord | Invalid)
    if isinstance(out, Invalid):
        assert out.reason and not out.reason.startswith("internal")


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(
        max_size=8
    ) | st.binary(max_size=40),
    lambda kids: st.lists(kids, max_size=5) | st.dictionaries(
        st.sampled_from(["id", "x", "dtype", "shape", "data", "ts", "label", "meta", "k"]),
        kids,
        max_size=6,
    ),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(msgpack_values)
def test_random_msgpack_structures_never_raise(obj: object) -> None:
    out = decode_input(None, _value(obj), LIMITS, None)
    assert isinstance(out, InputRecord | Invalid)
    if isinstance(out, Invalid):
        assert not out.reason.startswith("internal")


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_corrupted_valid_records_never_raise(data: st.DataObject) -> None:
    value = bytearray(encode_input("id-1", np.full((2, 3), 0.25), label=3, meta={"m": [1]})[1])
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(value) - 1))
        value[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(1, len(value)))
    out = decode_input(None, bytes(value[:cut]), LIMITS, 6)
    assert isinstance(out, InputRecord | Invalid)
    if isinstance(out, InputRecord):
        assert out.x.size == 6 and np.all((out.x >= 0) & (out.x <= 1))
    else:
        assert not out.reason.startswith("internal")


# ------------------------------------------------------------------------------ verdicts


def _verdict(**kw: object) -> Verdict:
    fields = dict(
        id="r1", stream="s", verdict="accept", predicted=np.int64(7), radius=np.float64(0.0125),
        rule="threshold", reason="radius 0.0125 >= 0.01", pvalue=None, model="ab" * 32,
        profile="p", source={"topic": "radiusguard.inputs", "partition": 2, "offset": 41},
        latency_ms=1.5, worker="w-1",
    )
    fields.update(kw)
    return Verdict(**fields)


def test_verdict_round_trip_has_exactly_the_wire_fields() -> None:
    out = decode_verdict(encode_verdict(_verdict()))
    assert list(out) == [
        "id", "stream", "verdict", "predicted", "radius", "rule", "reason", "pvalue", "model",
        "profile", "source", "latency_ms", "worker", "format", "certificate",
    ]
    assert out["format"] == 2 and out["certificate"] is None
    assert out["predicted"] == 7 and type(out["predicted"]) is int
    assert out["radius"] == 0.0125
    assert out["source"] == {"topic": "radiusguard.inputs", "partition": 2, "offset": 41}


def test_verdict_echoes_label_and_meta_when_given() -> None:
    out = decode_verdict(encode_verdict(_verdict(label=3, meta={"a": [1, "b"]}, pvalue=0.25)))
    assert (out["label"], out["meta"], out["pvalue"]) == (3, {"a": [1, "b"]}, 0.25)


def test_invalid_verdict_has_no_radius() -> None:
    v = _verdict(verdict="invalid", predicted=None, radius=None, rule="decode", reason="bad")
    out = decode_verdict(encode_verdict(v))
    assert (out["verdict"], out["predicted"], out["radius"]) == ("invalid", None, None)


def test_verdict_checks_its_verdict_and_decoding_checks_the_map() -> None:
    with pytest.raises(ValueError):
        _verdict(verdict="maybe")
    with pytest.raises(ValueError):
        decode_verdict(b"\xc1")
    with pytest.raises(ValueError):
        decode_verdict(_value([1]))
    with pytest.raises(ValueError):
        decode_verdict(_value({"id": "a"}))


def test_limits_must_be_positive_integers() -> None:
    with pytest.raises(ValueError):
        Limits(max_rank=0)
    with pytest.raises(ValueError):
        Limits(max_elements=1.5)  # type: ignore[arg-type]
