"""Threshold validation, and Algorithm 2 checked step by step against a literal transcription."""

from __future__ import annotations

import math

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker import validate
from worker.formats.windows import decode_window, encode_window
from worker.validate import (
    Decision,
    DistributionValidator,
    ThresholdValidator,
    WindowState,
    normality_pvalue,
    replay,
)

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def paper_step(q: list[float], r: float, s: int, sigma0: float, sigma1: float):
    """Algorithm 2 as printed: Q' = Q + [r]; test(Q'); accept drops Q'[0], reject drops Q'[s]."""
    qp = q + [r]

    def pvalue(window: list[float]) -> float:
        return normality_pvalue(window)

    if qp[s] >= sigma0 or pvalue(qp[0:s]) - pvalue(qp[1 : s + 1]) <= sigma1:
        return True, qp[1:]
    return False, qp[:s]


# ------------------------------------------------------------------------------ threshold


def test_threshold_accepts_at_and_above_the_threshold() -> None:
    v = ThresholdValidator(0.01)
    assert v.check(0.01).verdict == "accept"
    assert v.check(0.25).verdict == "accept"
    low = v.check(0.0095)
    assert (low.verdict, low.rule, low.pvalue) == ("reject", "threshold", None)
    assert "0.0095 < 0.01" in low.reason
    assert v.check(None).verdict == "invalid"
    with pytest.raises(ValueError):
        v.check(math.nan)
    with pytest.raises(ValueError):
        ThresholdValidator(math.inf)


def test_threshold_step_passes_any_state_through() -> None:
    state = WindowState((0.1,) * 8)
    decision, out = ThresholdValidator(0.05).step(state, 0.01, offset=3)
    assert decision.verdict == "reject" and out is state


# ------------------------------------------------------------------------------ Algorithm 2

SEED = (0.010, 0.012, 0.011, 0.013, 0.009, 0.012, 0.010, 0.011)
HAND = [0.015, 0.011, 0.001, 0.0105, 0.002, 0.012, 0.0095, 0.004, 0.0115, 0.0]
# Worked out with scipy.stats.normaltest (which normality_pvalue reproduces) for s=8, sigma0=0.012, sigma1=0.25.
HAND_EXPECTED = [
    ("accept", "sigma0"),  # 0.015 >= sigma0
    ("accept", "pvalue"),  # p 0.6346 -> 0.4152: drop 0.2194 <= 0.25
    ("reject", "pvalue-drop"),  # p 0.4152 -> 0.0074: drop 0.4078
    ("accept", "pvalue"),  # drop 0.0250
    ("reject", "pvalue-drop"),  # p 0.3901 -> 0.0171: drop 0.3730
    ("accept", "sigma0"),  # 0.012 >= sigma0 although the p-value drops by 0.2914
    ("accept", "pvalue"),  # drop 0.0600
    ("accept", "pvalue"),  # p rises: drop -0.0371
    ("accept", "pvalue"),  # drop 0.0352
    ("accept", "pvalue"),  # the drifted window makes even 0.0 look normal: drop -0.2049
]
HAND_FINAL = (0.015, 0.011, 0.0105, 0.012, 0.0095, 0.004, 0.0115, 0.0)


def test_hand_made_sequence_reproduces_the_paper_rule() -> None:
    v = DistributionValidator(sigma0=0.012, sigma1=0.25, s=8)
    state = v.initial_state(SEED)
    window = list(SEED)
    for i, r in enumerate(HAND):
        decision, state = v.step(state, r, offset=100 + i)
        accepted, window = paper_step(window, r, 8, 0.012, 0.25)
        assert (decision.verdict, decision.rule) == HAND_EXPECTED[i], i
        assert accepted == (decision.verdict == "accept")
        assert list(state.radii) == window
        assert state.pvalue == normality_pvalue(window)
        assert decision.pvalue == normality_pvalue(window if accepted else window[1:] + [r])
    assert state.radii == HAND_FINAL
    assert (state.count, state.last_offset) == (10, 109)


def test_rejection_keeps_the_window_and_acceptance_slides_it() -> None:
    v = DistributionValidator(sigma0=0.012, sigma1=0.25, s=8)
    state = v.initial_state(SEED)
    d, after = v.step(state, 0.001, offset=5)
    assert d.verdict == "reject" and after.radii == SEED
    assert after.count == 1 and after.last_offset == 5 and after.pvalue == state.pvalue
    d, after = v.step(state, 0.2)
    assert d.verdict == "accept" and after.radii == SEED[1:] + (0.2,)
    assert after.last_offset == -1


def test_decision_reports_drop_and_reason() -> None:
    v = DistributionValidator(sigma0=0.012, sigma1=0.25, s=8)
    d, _ = v.step(v.initial_state(SEED), 0.001)
    p_old, p_new = normality_pvalue(SEED), normality_pvalue(SEED[1:] + (0.001,))
    assert d.drop == p_old - p_new and d.pvalue == p_new
    assert "sigma1" in d.reason and "0.001" in d.reason


def test_invalid_inputs_never_touch_the_window() -> None:
    v = DistributionValidator(sigma0=0.012, sigma1=0.25, s=8)
    state = v.initial_state(SEED)
    decision, after = v.step(state, None, offset=9)
    assert decision.verdict == "invalid" and after is state


radius_grid = st.integers(0, 40).map(lambda k: k * 0.0005)  # radii live on the search grid


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    s=st.integers(8, 12),
    data=st.data(),
    sigma0=radius_grid,
    sigma1=st.floats(-0.2, 0.6),
)
def test_validator_matches_the_literal_algorithm(s, data, sigma0, sigma1) -> None:
    seed = data.draw(st.lists(radius_grid, min_size=s, max_size=s))
    seq = data.draw(st.lists(radius_grid, max_size=25))
    v = DistributionValidator(sigma0, sigma1, s)
    state = v.initial_state(seed)
    window = list(seed)
    for r in seq:
        accepted, window = paper_step(window, r, s, sigma0, sigma1)
        # Going through bytes at every step is what the changelog does; it changes nothing.
        decision, state = v.step(decode_window(encode_window(state)), r)
        assert accepted == (decision.verdict == "accept")
        assert list(state.radii) == window
        expected_rule = "sigma0" if r >= sigma0 else ("pvalue" if accepted else "pvalue-drop")
        assert decision.rule == expected_rule
        cached = state.pvalue
        fresh = normality_pvalue(window)
        assert cached == fresh or (math.isnan(cached) and math.isnan(fresh))


def test_one_normality_test_per_step(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = validate.normality_pvalue

    def counting(a):
        calls.append(len(a))
        return real(a)

    v = DistributionValidator(sigma0=0.012, sigma1=0.25, s=8)
    state = v.initial_state(SEED)
    monkeypatch.setattr(validate, "normality_pvalue", counting)
    _, state = replay(v, state, HAND)
    assert len(calls) == len(HAND)
    # A state without the cache (e.g. written by hand) is computed once, then cached.
    calls.clear()
    v.step(WindowState(SEED), 0.011)
    assert len(calls) == 2


def test_constant_window_has_undefined_pvalue_and_rejects_low_radii() -> None:
    v = DistributionValidator(sigma0=0.02, sigma1=1.0, s=8)
    state = v.initial_state((0.01,) * 8)
    assert math.isnan(state.pvalue)
    d, after = v.step(state, 0.005)
    accepted, _ = paper_step([0.01] * 8, 0.005, 8, 0.02, 1.0)
    assert not accepted and d.verdict == "reject" and "undefined" in d.reason
    assert after.radii == state.radii


def test_replay_returns_decisions_in_order() -> None:
    v = DistributionValidator(sigma0=0.012, sigma1=0.25, s=8)
    decisions, state = replay(v, v.initial_state(SEED), HAND)
    assert [(d.verdict, d.rule) for d in decisions] == HAND_EXPECTED
    assert state.radii == HAND_FINAL
    assert all(isinstance(d, Decision) for d in decisions)


def test_parameter_and_window_checks() -> None:
    with pytest.raises(ValueError):
        DistributionValidator(0.01, 0.1, 7)
    with pytest.raises(ValueError):
        DistributionValidator(math.nan, 0.1, 8)
    v = DistributionValidator(0.01, 0.1, 8)
    with pytest.raises(ValueError):
        v.initial_state(SEED[:7])
    with pytest.raises(ValueError):
        v.step(WindowState(SEED[:7]), 0.01)
    with pytest.raises(ValueError):
        v.step(v.initial_state(SEED), -0.01)
    with pytest.raises(ValueError):
        normality_pvalue([0.1] * 7)


# ------------------------------------------------------------------------------ state bytes


@settings(max_examples=300, deadline=None)
@given(
    radii=st.lists(st.floats(allow_nan=False, allow_infinity=False), max_size=60),
    count=st.integers(0, 2**63 - 1),
    last=st.integers(-1, 2**63 - 1),
    pvalue=st.none() | st.floats(),
)
def test_window_state_bytes_round_trip_exactly(radii, count, last, pvalue) -> None:
    state = WindowState(tuple(radii), count, last, pvalue)
    back = decode_window(encode_window(state))
    assert back.radii == state.radii and (back.count, back.last_offset) == (count, last)
    assert [math.copysign(1, r) for r in back.radii] == [math.copysign(1, r) for r in radii]
    assert back.pvalue == pvalue or (math.isnan(back.pvalue) and math.isnan(pvalue))


@pytest.mark.parametrize(
    "data",
    [
        b"\xc1",
        b"\x90",
        encode_window(WindowState((0.1,))).replace(b"\xa1v\x01", b"\xa1v\x02"),
        msgpack.packb({"v": 1, "radii": ["a"], "count": 0, "last_offset": -1, "pvalue": None}),
        msgpack.packb({"v": 1, "radii": [0.1], "count": 1.0, "last_offset": -1, "pvalue": None}),
        msgpack.packb({"v": 1, "radii": [0.1], "count": 1, "last_offset": -1, "pvalue": "x"}),
    ],
)
def test_window_state_from_bytes_rejects_garbage(data: bytes) -> None:
    with pytest.raises(ValueError):
        decode_window(data)


def test_normality_pvalue_is_scipys() -> None:
    from scipy.stats import normaltest

    x = np.random.default_rng(0).normal(size=50)
    assert normality_pvalue(x) == pytest.approx(normaltest(x).pvalue, rel=1e-13)


def test_normality_pvalue_matches_scipy_normaltest() -> None:
    """The numpy D'Agostino-Pearson test gives scipy's p-values (to rounding) on many samples."""
    from scipy import stats as scipy_stats

    rng = np.random.default_rng(7)
    for i in range(400):
        n = int(rng.integers(8, 120))
        sample = [rng.normal(size=n), rng.exponential(size=n), np.round(rng.uniform(size=n), 3),
                  np.r_[rng.normal(size=n - 1) * 0.003 + 0.02, 0.001]][i % 4]
        ours = normality_pvalue(sample)
        theirs = float(scipy_stats.normaltest(sample).pvalue)
        assert ours == pytest.approx(theirs, rel=1e-12, abs=1e-300)
