"""The broker-free batch logic: verdicts equal the validators', whatever the batching, order
or restored windows; bad records and failing verifications become invalid verdicts."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from verifier.decide import decide_many
from verifier.onnx.importer import load_onnx
from verifier.score import RadiusResult, plan_for, score_many
from verifier.walk import Plan
from worker.formats.codec import encode_input
from worker.formats.windows import decode_window, encode_window
from worker.policy import make_validator
from worker.processor import Processor, Record, Scorer, process_all
from worker.profile import CalibrationStats, Profile, VerifierSettings

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

ROOT = Path(__file__).resolve().parents[2]
FNN = ROOT / "models" / "fnn-3x30-relu.onnx"
MNIST = ROOT / "models" / "mnist_test_1000.npz"
WINDOW = 10


@pytest.fixture(scope="module")
def znet() -> Plan:
    return plan_for(load_onnx(FNN))


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    """40 digits and 8 noise images, uint8, in a fixed mixed order."""
    rng = np.random.default_rng(3)
    digits = np.load(MNIST)["x"][200:240]
    noise = rng.integers(0, 256, size=(8, 28, 28), dtype=np.uint8)
    return np.concatenate([digits, noise])[rng.permutation(48)]


@pytest.fixture(scope="module")
def profile(znet: Plan) -> Profile:
    """A profile built directly: the seed window is the radii of ten other digits."""
    xs = np.load(MNIST)["x"][300:310].reshape(10, -1) / 255.0
    seed = [r.radius for r in score_many(znet, xs, jobs=2)]
    threshold = float(np.quantile(seed, 0.2))
    stats = CalibrationStats(n=10, n_inputs=10, accuracy=1.0, mean_radius=float(np.mean(seed)),
                             normality_pvalue=None, false_alarm_target=0.1,
                             false_alarm_measured=0.1)
    return Profile(name="fnn-test", model_sha256=znet.net.sha256, policy="distribution",
                   threshold=threshold, sigma0=threshold, sigma1=0.01, window_size=WINDOW,
                   seed_window=tuple(seed), verifier=VerifierSettings(), calibration=stats)


@pytest.fixture(scope="module")
def scorer(znet: Plan):
    s = Scorer(znet, VerifierSettings(), jobs=2)
    yield s
    s.close()


def _records(images: np.ndarray, streams: tuple[str, ...] = ("a", "b")) -> list[Record]:
    """Each stream gets every image, in order; stream i lives on partition i."""
    out = []
    for p, stream in enumerate(streams):
        for i, x in enumerate(images):
            key, value = encode_input(f"{stream}-{i}", x, stream=stream, dtype="uint8")
            out.append(Record("in", p, i, key, value))
    return out


def _key(v) -> tuple:
    p = v.pvalue
    return (v.id, v.verdict, v.radius, v.rule, "nan" if p is not None and math.isnan(p) else p)


def _per_stream(verdicts) -> dict[str, list[tuple]]:
    out: dict[str, list[tuple]] = {}
    for _, v in verdicts:
        out.setdefault(v.stream, []).append(_key(v))
    return out


def _expected(znet: Plan, profile: Profile, images: np.ndarray, policy: str,
              stream: str) -> list[tuple]:
    xs = images.reshape(len(images), -1) / 255.0
    if policy == "threshold":  # a decision at the budget by the profile's stages, no radius
        budget = make_validator(profile, policy).rule.budget  # no guaranteed_budget: the threshold
        proofs = decide_many(znet.net, xs, budget, profile.verifier, jobs=2)
        return [(f"{stream}-{i}", "accept" if p.proved else "reject", None, "threshold", None)
                for i, p in enumerate(proofs)]
    radii = score_many(znet, xs, jobs=2)
    validator = make_validator(profile, policy).rule
    state = profile.initial_state()
    out = []
    for i, res in enumerate(radii):
        d, state = validator.step(state, res.radius)
        p = d.pvalue
        out.append((f"{stream}-{i}", d.verdict, res.radius, d.rule,
                    "nan" if p is not None and math.isnan(p) else p))
    return out


@pytest.mark.parametrize("policy", ["threshold", "distribution"])
def test_verdicts_equal_the_validators(znet, profile, scorer, images, policy) -> None:
    proc = Processor(znet, profile, policy, scorer)
    result = process_all(proc, _records(images), batch=16)
    expected = _expected(znet, profile, images, policy, "a")
    assert _per_stream(result.verdicts) == {"a": expected,
                                            "b": [("b" + k[0][1:], *k[1:]) for k in expected]}
    verdicts = {v.verdict for _, v in result.verdicts}
    assert verdicts == {"accept", "reject"}
    assert not result.dead_letters
    assert (result.states != {}) == (policy == "distribution")
    assert all(v.model == znet.net.sha256 and v.profile == "fnn-test"
               for _, v in result.verdicts)


def test_batching_order_and_restored_windows_change_nothing(znet, profile, scorer,
                                                            images) -> None:
    proc = Processor(znet, profile, "distribution", scorer)
    records = _records(images)
    reference = _per_stream(process_all(proc, records, batch=len(records)).verdicts)
    assert _per_stream(process_all(proc, records, batch=1).verdicts) == reference
    assert _per_stream(process_all(proc, records, batch=7).verdicts) == reference

    shuffled = [records[i] for i in np.random.default_rng(0).permutation(len(records))]
    assert _per_stream(proc.process(shuffled, {}).verdicts) == reference  # offset order

    # a failover: the first half by one worker, its windows through the changelog encoding,
    # the second half by another
    half = len(images) // 2
    first = [r for r in records if r.offset < half]
    second = [r for r in records if r.offset >= half]
    part1 = process_all(proc, first, batch=5)
    restored = {k: decode_window(encode_window(s)) for k, s in part1.states.items()}
    before = dict(restored)
    part2 = proc.process(second, restored)
    assert restored == before  # the caller's windows are not modified
    assert _per_stream(part1.verdicts + part2.verdicts) == reference
    assert all(s.last_offset == len(images) - 1 for s in part2.states.values())


def test_batches_started_before_the_previous_one_finished_change_nothing(
    znet, profile, scorer, images
) -> None:
    """The service's pipeline: batch k+1 is handed to the scoring threads before batch k is
    validated, each batch validated from the windows the previous one left."""
    proc = Processor(znet, profile, "distribution", scorer)
    records = _records(images)
    reference = _per_stream(process_all(proc, records, batch=len(records)).verdicts)
    states: dict = {}
    verdicts: list = []
    running = None
    for start in range(0, len(records), 6):
        started = proc.start(records[start : start + 6])
        if running is not None:
            part = proc.finish(running, states)
            states.update(part.states)
            verdicts += part.verdicts
        running = started
    part = proc.finish(running, states)
    assert _per_stream(verdicts + part.verdicts) == reference
    assert running.partitions == {1}  # the last records are stream b's, on partition 1


def test_bad_records_become_invalid_verdicts_and_dead_letters(znet, profile, scorer,
                                                              images) -> None:
    proc = Processor(znet, profile, "distribution", scorer)
    good = _records(images[:12], streams=("a",))
    bad_values = [b"\xc1 not msgpack", None, encode_input("wrong", np.zeros(5))[1]]
    records = []
    offset = 0
    for i, r in enumerate(good):
        records.append(Record("in", 0, offset, r.key, r.value))
        offset += 1
        if i % 4 == 1 and bad_values:
            records.append(Record("in", 0, offset, b"a", bad_values.pop(0)))
            offset += 1
    records.append(Record("in", 1, 0, None, b"\x00"))  # no key: the default stream
    result = proc.process(records, {})
    assert len(result.verdicts) == len(records)
    invalid = [(k, v) for k, v in result.verdicts if v.verdict == "invalid"]
    assert len(invalid) == len(result.dead_letters) == 4
    assert {k for k, _ in invalid} == {b"a", b"_default"}
    assert all(v.rule == "decode" and v.radius is None for _, v in invalid)
    by_value = {dl.value: dl for dl in result.dead_letters}
    assert set(by_value) == {b"\xc1 not msgpack", None, encode_input("wrong", np.zeros(5))[1],
                             b"\x00"}
    assert all(dl.error for dl in result.dead_letters)
    valid = [(k, v) for k, v in result.verdicts if v.verdict != "invalid"]
    expected = _expected(znet, profile, images[:12], "distribution", "a")
    assert [_key(v) for _, v in valid] == expected  # invalid records leave the window alone
    assert result.states[(0, "a")].last_offset == offset - 1


class _FailingScorer:
    """Scores like the real one, but the verifier fails on inputs whose first pixel is 1."""

    def __init__(self, real: Scorer):
        self.real = real

    settings = property(lambda self: self.real.settings)

    def iter_score(self, xs, budget=None):
        for x, res in zip(xs, self.real.score(xs, budget), strict=True):
            yield RuntimeError("kernel failure") if x.reshape(-1)[0] == 1.0 else res


def test_a_failing_verification_does_not_take_the_batch_down(znet, profile, scorer,
                                                             images) -> None:
    xs = images[:6].copy()
    xs[2, 0, 0] = 255
    proc = Processor(znet, profile, "threshold", _FailingScorer(scorer))
    result = proc.process(_records(xs, streams=("s",)), {})
    kinds = [v.verdict for _, v in result.verdicts]
    assert kinds[2] == "invalid" and "invalid" not in kinds[:2] + kinds[3:]
    assert result.verdicts[2][1].rule == "verify"
    assert "kernel failure" in result.dead_letters[0].error


def test_scorer_returns_errors_in_place(znet) -> None:
    s = Scorer(znet, VerifierSettings(), jobs=1)
    try:
        out = s.score([np.zeros(784), np.zeros(3)])
    finally:
        s.close()
    assert isinstance(out[0], RadiusResult) and isinstance(out[1], Exception)


def test_unknown_policy_is_refused(znet, profile, scorer) -> None:
    with pytest.raises(ValueError, match="policy"):
        Processor(znet, profile, "majority", scorer)


def test_kafka_settings_the_worker_owns_are_refused() -> None:
    """A kafka config that would clash with the worker's own client arguments fails clearly."""
    from pathlib import Path

    from worker.kafka.config import ConfigError, ServiceConfig

    for key in ("transaction_timeout_ms", "isolation_level", "group_id"):
        with pytest.raises(ConfigError, match=key):
            ServiceConfig(bootstrap="127.0.0.1:9092", model=Path("m.onnx"),
                          profile=Path("p.json"), kafka={key: 1})


def test_consistency_policy_runs_in_the_processor(znet, scorer, images) -> None:
    from worker.policy import logit_margins
    from worker.profile import load_profile

    prof = load_profile(ROOT / "models" / "fnn-3x30-relu.profile.json")
    proc = Processor(znet, prof, "consistency", scorer)
    result = process_all(proc, _records(images, ("a",)), batch=16)
    xs = images.reshape(len(images), -1) / 255.0
    radii = [r.radius for r in score_many(znet, xs, jobs=2)]
    margins = logit_margins(znet.net.forward(xs))
    want = [prof.consistency.check(r, float(m)) for r, m in zip(radii, margins, strict=True)]
    got = [v for _, v in result.verdicts]
    assert [(v.verdict, v.rule) for v in got] == [(d.verdict, d.rule) for d in want]
    assert {v.verdict for v in got} == {"accept", "reject"}  # the noise images are rejected
    assert result.states == {}
