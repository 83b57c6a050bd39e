"""Fuzzing the codec and the processor: 100 000 generated and mutated records per run, each
checked against a reference decoder and answered by exactly one verdict; hostile structures,
declared sizes and memory bounds; hypothesis for structure and round trips."""

from __future__ import annotations

import os
import tracemalloc
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fuzz.codec_fuzz import (
    EXPECTED_SIZE,
    Expected,
    build_case,
    cases,
    check,
    check_case,
    reference_decode,
)
from verifier.network import Dense, Network, Relu
from verifier.score import plan_for
from verifier.walk import Plan
from worker.formats.codec import (
    DEFAULT_STREAM,
    InputRecord,
    Invalid,
    Limits,
    decode_input,
    encode_input,
)
from worker.processor import BatchResult, Processor, Record, Scorer, process_all
from worker.profile import CalibrationStats, Profile, VerifierSettings

LIMITS = Limits()
N_CASES = int(os.environ.get("RADIUSGUARD_FUZZ_CASES", "100000"))
SEED = int(os.environ.get("RADIUSGUARD_FUZZ_SEED", "20240611"))
PARTITIONS = 4
# Every rejection path of decode_input; the generated cases must reach each one.
REASONS = (
    "payload of", "empty record value", "not valid msgpack", "must be a msgpack map",
    "missing field 'id'", "'id' must be a string", "'id' must have", "key of",
    "key is not valid UTF-8", "missing field 'x'", "'x' must be a map", "'x.dtype'",
    "must have rank", "entries must be integers",
    f"exceeds the limit of {LIMITS.max_elements} elements", "'x.data' must be binary",
    "'x.data' has", "the model expects", "not finite numbers in [0, 1]", "'ts'", "'label'",
    "'meta' must be a map", "nested deeper", "'meta' map keys", "'meta' takes",
    "unsupported value",
)


# ------------------------------------------------------------------------------ the model


@pytest.fixture(scope="module")
def tiny() -> Iterator[tuple[Plan, Profile, Scorer]]:
    """A random 6-8-3 ReLU network, a profile built for it, and a coarse (fast) scorer."""
    rng = np.random.default_rng(11)
    net = Network(
        layers=(Dense(rng.normal(size=(8, 6)), rng.normal(size=8) * 0.1), Relu(),
                Dense(rng.normal(size=(3, 8)), rng.normal(size=3) * 0.1)),
        input_shape=(EXPECTED_SIZE,), n_outputs=3, sha256="f" * 64, name="tiny",
    )
    znet = plan_for(net)
    verifier = VerifierSettings(up=0.256, tol=0.05, search="bisect")
    scorer = Scorer(znet, verifier, jobs=2)
    radii = sorted(r.radius for r in scorer.score(list(rng.uniform(0, 1, (40, EXPECTED_SIZE)))))
    threshold = radii[len(radii) // 2]
    assert radii[0] < threshold, "the profile must both accept and reject"
    profile = Profile(
        name="tiny", model_sha256=net.sha256, policy="threshold", threshold=threshold,
        sigma0=threshold, sigma1=0.05, window_size=8, seed_window=tuple(radii[::5]),
        verifier=verifier,
        calibration=CalibrationStats(
            n=40, n_inputs=40, accuracy=1.0, mean_radius=float(np.mean(radii)),
            normality_pvalue=None, false_alarm_target=0.03, false_alarm_measured=0.0,
        ),
    )
    try:
        yield znet, profile, scorer
    finally:
        scorer.close()


def _processor(tiny: tuple[Plan, Profile, Scorer], policy: str) -> Processor:
    znet, profile, scorer = tiny
    return Processor(znet, profile, policy, scorer, LIMITS, worker_id="fuzz")


def _check_result(
    records: Sequence[Record], result: BatchResult, wants: Sequence[Expected] | None = None
) -> Counter:
    """Each record has exactly one verdict: valid ones accept/reject, the others invalid with
    one dead letter holding their exact bytes; verdicts in offset order per partition."""
    assert len(result.verdicts) == len(records), "a record was lost or answered twice"
    if wants is None:
        wants = [reference_decode(r.key, r.value or b"", LIMITS, EXPECTED_SIZE) for r in records]
    want_of = {(r.partition, r.offset): w for r, w in zip(records, wants, strict=True)}
    by_source = {(r.partition, r.offset): r for r in records}
    assert len(by_source) == len(records)
    sources = [(v.source["partition"], v.source["offset"]) for _, v in result.verdicts]
    assert sorted(sources) == sorted(by_source), "verdicts do not match the records one to one"
    for p in range(PARTITIONS):
        mine = [o for q, o in sources if q == p]
        assert mine == sorted(mine), f"partition {p}: verdicts out of offset order"
    letters = {(d.source.partition, d.source.offset): d for d in result.dead_letters}
    assert len(letters) == len(result.dead_letters), "two dead letters for one record"
    seen: Counter = Counter()
    for key, v in result.verdicts:
        rec = by_source[(v.source["partition"], v.source["offset"])]
        want = want_of[(rec.partition, rec.offset)]
        assert key in (rec.key, v.stream.encode()), "verdict keyed by neither key nor stream"
        assert (v.id, v.stream) == (want.id, want.stream)
        if want.valid:
            assert v.verdict in ("accept", "reject"), (v, rec)
            cert = v.certificate
            assert cert is not None and cert["eps"] >= 0 and v.predicted == cert["label"]
            assert v.predicted in (0, 1, 2) and (v.radius is None or v.radius >= 0)
            assert v.label == want.label and _packed(v.meta) == _packed(want.meta)
            assert (rec.partition, rec.offset) not in letters
        else:
            assert (v.verdict, v.rule, v.radius, v.certificate) == ("invalid", "decode", None,
                                                                      None), v
            dl = letters[(rec.partition, rec.offset)]
            assert dl.source is rec and dl.error == v.reason and v.reason
            assert dl.value is rec.value and dl.key is rec.key, "dead letter not byte for byte"
        seen[v.verdict] += 1
    assert len(letters) == seen["invalid"]
    return seen


def _packed(obj: object) -> bytes:
    """msgpack bytes: equality that holds for NaN inside meta."""
    return msgpack.packb(obj, use_bin_type=True)


# ------------------------------------------------------------------------------ 100 000 cases


def test_generated_and_mutated_records_through_codec_and_processor(tiny) -> None:
    """N_CASES deterministic cases: decode_input agrees with the reference on every one (and
    with the generator on structured ones); the processor answers every one exactly once."""
    processor = _processor(tiny, "threshold")
    offsets = [0] * PARTITIONS
    batch: list[Record] = []
    wants: list[Expected] = []
    tally: Counter = Counter()
    reasons: set[str] = set()
    for i, (key, value, case) in enumerate(cases(N_CASES, SEED, LIMITS)):
        out = decode_input(key, value, LIMITS, EXPECTED_SIZE)
        want = reference_decode(key, value, LIMITS, EXPECTED_SIZE)
        check(out, want, key, value)
        if case is not None:
            check_case(out, case)
        tally["structured" if case is not None else "mutated"] += 1
        if isinstance(out, Invalid):
            reasons.update(r for r in REASONS if r in out.reason)
        p = i % PARTITIONS
        batch.append(Record("fuzz", p, offsets[p], key, None if not value and i % 2 else value))
        wants.append(want)
        offsets[p] += 1
        if len(batch) == 250 or i == N_CASES - 1:
            tally.update(_check_result(batch, processor.process(batch, {}), wants))
            batch, wants = [], []
    assert tally["structured"] + tally["mutated"] == N_CASES
    assert tally["accept"] + tally["reject"] + tally["invalid"] == N_CASES
    assert min(tally["accept"], tally["reject"]) > N_CASES // 100, tally
    assert tally["invalid"] > N_CASES // 2, tally
    assert not set(REASONS) - reasons, f"rejection paths never reached: {set(REASONS) - reasons}"


# ------------------------------------------------------------------------------ hypothesis


class _DrawChooser:
    """The generator's choices drawn by hypothesis, so failures shrink to plain records."""

    def __init__(self, draw: Callable[[st.SearchStrategy], Any]):
        self.draw = draw

    def pick(self, n: int) -> int:
        return self.draw(st.integers(0, n - 1))

    def blob(self, n: int) -> bytes:
        return self.draw(st.binary(min_size=n, max_size=n))


@settings(max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_structured_records_decode_as_generated(data: st.DataObject) -> None:
    """Field-by-field records, each field valid or broken: the reason names a broken field."""
    case = build_case(_DrawChooser(data.draw), LIMITS, odds=data.draw(st.sampled_from([8, 3])))
    out = decode_input(case.key, case.value, LIMITS, EXPECTED_SIZE)
    check(out, reference_decode(case.key, case.value, LIMITS, EXPECTED_SIZE), case.key, case.value)
    check_case(out, case)


ids = st.text(min_size=1, max_size=64).filter(lambda s: len(s.encode()) <= LIMITS.max_id_bytes)
streams = st.text(min_size=1, max_size=64).filter(lambda s: len(s.encode()) <= LIMITS.max_key_bytes)
metas = st.none() | st.dictionaries(
    st.text(max_size=8),
    st.recursive(
        st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
        | st.text(max_size=8) | st.binary(max_size=8),
        lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=4), kids,
                                                                   max_size=3),
        max_leaves=10,
    ),
    max_size=4,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    x=hnp.arrays(np.float64, hnp.array_shapes(min_dims=1, max_dims=4, max_side=4),
                 elements=st.floats(0.0, 1.0)),
    dtype=st.sampled_from(["uint8", "float32", "float64"]),
    id_=ids, stream=st.none() | streams, ts=st.none() | st.integers(-(2**63), 2**64 - 1),
    label=st.none() | st.integers(-(2**63), 2**64 - 1), meta=metas,
)
def test_valid_inputs_round_trip_through_encode_input(x, dtype, id_, stream, ts, label, meta):
    """Whatever encode_input writes decodes to the same fields and (dtype-rounded) values."""
    key, value = encode_input(id_, x, stream=stream, dtype=dtype, ts=ts, label=label, meta=meta)
    out = decode_input(key, value, LIMITS, x.size)
    check(out, reference_decode(key, value, LIMITS, x.size), key, value)
    assert isinstance(out, InputRecord)
    assert (out.id, out.stream, out.shape, out.ts, out.label) == (
        id_, stream or DEFAULT_STREAM, x.shape, ts, label)
    if dtype == "uint8":
        expected = np.rint(x * 255.0) / 255.0
    else:
        expected = x.astype(dtype).astype(np.float64)
    np.testing.assert_array_equal(out.x, expected)


@st.composite
def _batches(draw: st.DrawFn) -> list[Record]:
    """Up to 24 records on 4 partitions: valid, generated-hostile, raw bytes and tombstones."""
    records, offsets = [], [draw(st.integers(0, 2**40)) for _ in range(PARTITIONS)]
    for _ in range(draw(st.integers(1, 24))):
        kind = draw(st.sampled_from(["case", "case", "valid", "bytes", "none"]))
        if kind == "bytes":
            key, value = draw(st.none() | st.binary(max_size=12)), draw(st.binary(max_size=300))
        elif kind == "none":
            key, value = draw(st.none() | st.just(b"cam-1")), None
        else:
            odds = 2**20 if kind == "valid" else 4
            case = build_case(_DrawChooser(draw), LIMITS, odds=odds)
            key, value = case.key, case.value
        p = draw(st.integers(0, PARTITIONS - 1))
        records.append(Record("in", p, offsets[p], key, value))
        offsets[p] += draw(st.integers(1, 3))
    return draw(st.permutations(records))


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(records=_batches(), policy=st.sampled_from(["threshold", "distribution"]),
       batch=st.integers(1, 8))
def test_mixed_batches_get_exactly_one_verdict_per_record(tiny, records, policy, batch) -> None:
    """Valid, hostile and tombstone records mixed: one verdict each, dead letters verbatim."""
    processor = _processor(tiny, policy)
    result = process_all(processor, records, batch=batch)
    # process_all orders within each batch only; check per batch-sized slice of the input.
    assert len(result.verdicts) == len(records)
    done = 0
    for start in range(0, len(records), batch):
        part = records[start : start + batch]
        sub = BatchResult(result.verdicts[done : done + len(part)],
                          [d for d in result.dead_letters if any(d.source is r for r in part)])
        _check_result(part, sub)
        done += len(part)
    for (partition, stream), state in result.states.items():
        assert policy == "distribution" and len(state.radii) == 8
        assert any(r.partition == partition for r in records) and stream


# ------------------------------------------------------------------------------ hostile shapes


def _peak(fn) -> tuple[object, int]:
    """fn()'s result and the peak bytes traced while it ran."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        out = fn()
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _pad(record: dict, marker: bytes, raw: bytes, size: int) -> bytes:
    """record packed with the bin `marker` replaced by raw bytes, padded to at most size bytes."""
    for n in range(size, 0, -1):
        value = msgpack.packb({**record, "pad": "p" * n}, use_bin_type=True)
        value = value.replace(msgpack.packb(marker, use_bin_type=True), raw)
        if len(value) <= size:
            return value
    raise AssertionError("record too large to pad")


GB2 = (2**31 - 1).to_bytes(4, "big")
CLAIMS = {
    "bin32 2 GB": b"\xc6" + GB2, "str32 2 GB": b"\xdb" + GB2, "ext32 2 GB": b"\xc9" + GB2 + b"\1",
    "array32 2**32-1": b"\xdd\xff\xff\xff\xff", "map32 2**32-1": b"\xdf\xff\xff\xff\xff",
    "bin16": b"\xc5\xff\xff", "str8": b"\xd9\xff",
}


@pytest.mark.parametrize("where", ["x.data", "id", "meta", "unknown field", "map key"])
@pytest.mark.parametrize("claim", list(CLAIMS))
@pytest.mark.parametrize("limits", [LIMITS, Limits(max_payload_bytes=2**32)],
                         ids=["default", "4GB"])
def test_declared_sizes_beyond_the_payload_allocate_nothing(where, claim, limits) -> None:
    """A ~200-byte value whose header claims up to 2 GB: refused, and < 1 MB traced."""
    marker = b"\x00marker\x00"
    x = {"dtype": "uint8", "shape": [6], "data": bytes(6)}
    record: dict = {"id": "r", "x": x}
    if where == "x.data":
        record["x"] = {**x, "data": marker}
    elif where == "id":
        record["id"] = marker
    elif where == "meta":
        record["meta"] = {"m": marker}
    elif where == "unknown field":
        record["other"] = marker
    else:
        record["meta"] = {marker: 1}
    value = _pad(record, marker, CLAIMS[claim] + b"\0" * 8, 200)
    assert len(value) <= 200
    out, peak = _peak(lambda: decode_input(None, value, limits, EXPECTED_SIZE))
    assert isinstance(out, Invalid) and "not valid msgpack" in out.reason, out
    assert peak < 1 << 20, f"decoding {len(value)} bytes allocated {peak} bytes"


@pytest.mark.parametrize("shape", [[2**31, 2**31], [2**63] * 4, [2**64 - 1] * 4,
                                   [LIMITS.max_elements + 1], [512, 513], [2**32, 1, 1, 2**32]])
@pytest.mark.parametrize("dtype", ["uint8", "float64"])
def test_huge_shapes_are_refused_before_allocation(shape, dtype) -> None:
    """Shapes whose product overflows 64 bits or passes max_elements: refused, < 1 MB traced."""
    value = msgpack.packb({"id": "r", "x": {"dtype": dtype, "shape": shape, "data": b"\0" * 48}},
                          use_bin_type=True)
    out, peak = _peak(lambda: decode_input(b"k", value, LIMITS, None))
    assert isinstance(out, Invalid) and "exceeds the limit" in out.reason and out.id == "r"
    assert peak < 1 << 20


@pytest.mark.parametrize("levels", [LIMITS.max_depth, 100, 1000, 5000, 200_000])
@pytest.mark.parametrize("container", [b"\x91", b"\x81\xa1k"])
def test_deeply_nested_meta_is_invalid_without_recursion(levels, container) -> None:
    """Nesting past max_depth, or past the unpacker's stack, is invalid; nothing recurses."""
    head = msgpack.packb({"id": "r", "x": {"dtype": "uint8", "shape": [6], "data": bytes(6)}},
                         use_bin_type=True)
    value = bytes([head[0] + 1]) + head[1:] + b"\xa4meta\x81\xa1m" + container * levels + b"\x01"
    out = decode_input(None, value, LIMITS, EXPECTED_SIZE)
    assert isinstance(out, Invalid) and not out.reason.startswith("internal"), out
    assert ("nested deeper" in out.reason) if levels <= 1000 else ("msgpack" in out.reason)
    check(out, reference_decode(None, value, LIMITS, EXPECTED_SIZE), None, value)


def test_reference_agrees_with_the_codec_on_the_limits_boundaries() -> None:
    """Ids and keys of exactly max bytes (multi-byte characters) pass; one byte more fails."""
    x = np.linspace(0, 1, EXPECTED_SIZE)
    for id_, stream in [("é" * 128, "ü" * 128), ("a" * 256, "s" * 256)]:
        key, value = encode_input(id_, x, stream=stream)
        out = decode_input(key, value, LIMITS, EXPECTED_SIZE)
        assert isinstance(out, InputRecord) and out.id == id_ and out.stream == stream
        check(out, reference_decode(key, value, LIMITS, EXPECTED_SIZE), key, value)
    for id_, stream in [("é" * 128 + "a", "s"), ("a", "ü" * 128 + "s")]:
        key, value = encode_input(id_, x, stream=stream)
        out = decode_input(key, value, LIMITS, EXPECTED_SIZE)
        want = reference_decode(key, value, LIMITS, EXPECTED_SIZE)
        assert isinstance(out, Invalid) and want == Expected(False, want.id, want.stream)
        check(out, want, key, value)


def _bloated(field: str, payload_bytes: int) -> bytes:
    """A record whose `field` holds nested arrays of empty maps (one byte each on the wire)."""
    head = msgpack.packb({"id": "r", "x": {"dtype": "uint8", "shape": [6], "data": bytes(6)}},
                         use_bin_type=True)
    rows = max(1, payload_bytes // 4099)
    body = b"\xdc" + rows.to_bytes(2, "big") + (b"\xdc\x10\x00" + b"\x80" * 4096) * rows
    inner = b"\x81\xa1m" + body if field == "meta" else body
    return bytes([head[0] + 1]) + head[1:] + msgpack.packb(field) + inner


@pytest.mark.parametrize("field", ["meta", "unknown"])
def test_memory_is_bounded_by_the_payload_for_every_field(field) -> None:
    """64 KiB of one-byte empty maps in meta or an ignored field must not cost ~5 MB: the
    record is refused before it is built."""
    value = _bloated(field, 64 << 10)
    out, peak = _peak(lambda: decode_input(None, value, LIMITS, EXPECTED_SIZE))
    assert isinstance(out, Invalid)
    assert peak < (1 << 20) + 4 * len(value), f"{len(value)} bytes took {peak} bytes"
