"""The policy registry and the consistency policy: built from a profile, fitted on valid
inputs alone, and its false-alarm rate on held-out valid inputs near the target."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from verifier.decide import Proof
from verifier.onnx.importer import load_onnx
from verifier.score import score_many
from worker.calibrate import calibrate, fit_consistency
from worker.policy import POLICIES, Signals, logit_margins, make_validator
from worker.profile import ProfileError, profile_from_dict
from worker.validate import ConsistencyValidator

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

ROOT = Path(__file__).resolve().parents[2]
FNN = ROOT / "models" / "fnn-3x30-relu.onnx"
MNIST = ROOT / "models" / "mnist_test_1000.npz"
TARGET = 0.03


@pytest.fixture(scope="module")
def fnn():
    return load_onnx(FNN)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    z = np.load(MNIST)
    return z["x"], z["y"].astype(np.int64)


@pytest.fixture(scope="module")
def profile(fnn, data):
    """Calibrated on images 500..999 (valid inputs only)."""
    x, y = data
    return calibrate(fnn, x[500:], y[500:], TARGET, 50, jobs=2)


def _valid_signals(net, x, y) -> tuple[np.ndarray, np.ndarray]:
    xs = x.reshape(len(x), -1) / 255.0
    res = score_many(net, xs, jobs=2)
    ok = np.array([r.predicted for r in res]) == y
    return np.array([r.radius for r in res])[ok], logit_margins(net.forward(xs))[ok]


def test_every_policy_is_built_from_the_profile(profile) -> None:
    for name in POLICIES:
        v = make_validator(profile, name)
        assert v.name == name
        proof = None if v.budget is None else Proof(v.budget, 0, True, "deepzono", 1.0, 1)
        decision, _ = v.step(v.initial_state(), Signals(profile.threshold * 2, 8.0, proof))
        assert decision.verdict in ("accept", "reject")
        assert v.step(v.initial_state(), Signals(None))[0].verdict == "invalid"
    assert make_validator(profile).name == profile.policy
    with pytest.raises(ValueError, match="policy must be one of"):
        make_validator(profile, "vibes")


def test_the_threshold_policy_decides_at_the_guaranteed_budget(profile) -> None:
    v = make_validator(profile, "threshold")
    assert v.budget == profile.guaranteed_budget is not None
    proved = Proof(v.budget, 3, True, "interval", 0.5, 1)
    assert v.step(None, Signals(None, None, proved))[0].verdict == "accept"
    failed = Proof(v.budget, 3, False, None, -0.2, 2)
    decision = v.step(None, Signals(None, None, failed))[0]
    assert decision.verdict == "reject" and "not proved" in decision.reason
    with pytest.raises(ValueError, match="cannot decide"):  # a proof of another ball
        v.step(None, Signals(None, None, Proof(v.budget * 0.9, 3, True, "interval", 0.5, 1)))


def test_consistency_false_alarms_on_held_out_valid_inputs(fnn, data, profile) -> None:
    x, y = data
    radii, margins = _valid_signals(fnn, x[:500], y[:500])  # never seen by calibration
    v = make_validator(profile, "consistency")
    rejected = [v.step(None, Signals(r, m))[0].verdict == "reject"
                for r, m in zip(radii, margins, strict=True)]
    assert profile.calibration.false_alarm_consistency <= TARGET
    assert 0.005 <= np.mean(rejected) <= 0.06, np.mean(rejected)


def test_consistency_is_fitted_on_valid_inputs_alone(fnn, data, profile) -> None:
    x, y = data
    noise = np.random.default_rng(0).integers(0, 256, size=(30, 28, 28), dtype=np.uint8)
    with_attacks = calibrate(fnn, x[500:], y[500:], TARGET, 50, {"noise": noise}, jobs=2)
    assert with_attacks.consistency == profile.consistency
    radii, margins = _valid_signals(fnn, x[500:], y[500:])
    assert fit_consistency(radii, margins, TARGET) == profile.consistency
    scores = profile.consistency.scores(radii, margins)
    assert np.mean(scores > profile.consistency.cutoff) <= TARGET
    assert np.mean(scores >= profile.consistency.cutoff) > TARGET  # the largest such cutoff


def test_consistency_rejects_a_confident_input_with_a_small_radius(profile) -> None:
    c = profile.consistency
    r_mean = float(np.exp(c.mean[1]) - ConsistencyValidator.FLOOR)
    m_mean = float(np.exp(c.mean[0]))
    assert c.check(r_mean, m_mean).verdict == "accept"
    assert c.check(r_mean, m_mean).score == pytest.approx(0.0, abs=1e-9)
    confident_but_fragile = c.check(r_mean / 3, m_mean * 1.5)
    assert confident_but_fragile.verdict == "reject"
    assert confident_but_fragile.rule == "consistency" and "distance" in confident_but_fragile.reason
    with pytest.raises(ValueError, match="logit margin"):
        c.check(r_mean, None)


def test_profiles_without_consistency_still_load(profile) -> None:
    data = json.loads(json.dumps(profile.to_dict()))
    assert profile_from_dict(data) == profile
    del data["consistency"]
    old = profile_from_dict(data)
    assert old.consistency is None and old.threshold == profile.threshold
    with pytest.raises(ValueError, match="no consistency parameters"):
        make_validator(old, "consistency")
    data["policy"] = "consistency"
    with pytest.raises(ProfileError, match="consistency parameters"):
        profile_from_dict(data)
    with pytest.raises(ValueError, match="finite"):
        replace(profile.consistency, cutoff=float("nan"))
