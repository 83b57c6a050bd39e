"""Profiles: the threshold quantile rule, ROC, calibration, JSON round trip and model checks."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from verifier.network import Dense, Network, Relu
from verifier.onnx.importer import load_onnx
from verifier.score import score_many
from verifier.settings import VerifierSettings
from worker.calibrate import SIGMA0_FACTORS, calibrate, roc_curve
from worker.guarantee import false_alarm_threshold
from worker.policy import make_validator
from worker.profile import Profile, ProfileError, check_model, load_profile, save_profile
from worker.validate import BudgetValidator, DistributionValidator, replay

MODELS = Path(__file__).resolve().parents[2] / "models"
ONNX = MODELS / "fnn-3x30-relu.onnx"
MNIST = MODELS / "mnist_test_1000.npz"
SETTINGS = {"settings": VerifierSettings(up=0.256, tol=0.001, search="secant"), "jobs": 2}


def tiny_net(seed: int = 1) -> Network:
    """A random 12-16-16-3 ReLU network: radii in milliseconds, spread over (0, 0.15)."""
    rng = np.random.default_rng(seed)
    sizes = [12, 16, 16, 3]
    layers: list = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(Dense(rng.normal(size=(b, a)) / np.sqrt(a), rng.normal(size=b) * 0.1))
        if i < len(sizes) - 2:
            layers.append(Relu())
    return Network(tuple(layers), (12,), 3, sha256="ab" * 32, name="tiny")


@pytest.fixture(scope="module")
def tiny() -> tuple[Network, np.ndarray, np.ndarray]:
    net = tiny_net()
    x = np.random.default_rng(2).uniform(size=(240, 12))
    labels = np.array([net.predict(v) for v in x])
    labels[::20] = (labels[::20] + 1) % 3  # 12 misclassified inputs to leave out
    return net, x, labels


@pytest.fixture(scope="module")
def tiny_profile(tiny) -> Profile:
    net, x, labels = tiny
    adv = np.clip(x[:60] + np.random.default_rng(3).uniform(-0.4, 0.4, size=(60, 12)), 0, 1)
    return calibrate(net, x, labels, 0.05, 20, {"noise": adv}, **SETTINGS)


def _valid_radii(net: Network, x: np.ndarray, labels: np.ndarray) -> np.ndarray:
    res = score_many(net, x, **SETTINGS)
    return np.array([r.radius for r, y in zip(res, labels, strict=True) if r.predicted == y])


# ------------------------------------------------------------------------------ threshold rule


@settings(max_examples=300, deadline=None)
@given(
    radii=st.lists(st.integers(0, 30).map(lambda k: k * 0.0005), min_size=1, max_size=200),
    alpha=st.floats(0.0, 0.99),
)
def test_threshold_is_the_largest_value_within_the_false_alarm(radii, alpha) -> None:
    t = false_alarm_threshold(radii, alpha)
    r = np.array(radii)
    assert np.mean(r < t) <= alpha
    above = r[r > t]
    if above.size:  # any larger candidate rejects more than alpha
        assert np.mean(r < above.min()) > alpha
    assert t in radii


@pytest.mark.parametrize(
    ("alpha", "expected"), [(0.0, 0.0), (0.03, 3.0), (0.029, 2.0), (0.29, 29.0), (0.5, 50.0)]
)
def test_threshold_quantile_on_exact_fractions(alpha: float, expected: float) -> None:
    # 0.29 * 100 is 28.999999999999996 in floating point; the rule still counts 29 of 100.
    assert false_alarm_threshold(np.arange(100.0)[::-1], alpha) == expected


def test_threshold_with_ties() -> None:
    radii = [0.0, 0.0, 0.0, 0.01, 0.02]
    assert false_alarm_threshold(radii, 0.2) == 0.0  # 0.01 would reject 3 of 5
    assert false_alarm_threshold(radii, 0.6) == 0.01
    with pytest.raises(ValueError):
        false_alarm_threshold(radii, 1.0)
    with pytest.raises(ValueError):
        false_alarm_threshold([], 0.1)


# ------------------------------------------------------------------------------ ROC


def test_roc_endpoints_monotone_and_auc() -> None:
    valid = [0.02, 0.03, 0.03, 0.05]
    adv = [0.0, 0.01, 0.03]
    roc, auc = roc_curve(valid, adv)
    assert roc[0][1:] == (0.0, 0.0) and roc[-1][1:] == (1.0, 1.0)
    fpr = [p[1] for p in roc]
    tpr = [p[2] for p in roc]
    assert fpr == sorted(fpr) and tpr == sorted(tpr)
    # AUC = P(adv < valid) + P(tie) / 2 for the "reject below t" rule
    pairs = [(a < v) + 0.5 * (a == v) for a in adv for v in valid]
    assert auc == pytest.approx(np.mean(pairs))
    assert roc_curve([0.1, 0.2], [0.0, 0.05])[1] == 1.0
    assert roc_curve([0.1, 0.2], [0.1, 0.2])[1] == 0.5


# ------------------------------------------------------------------------------ calibrate


def test_calibrate_follows_its_documented_rules(tiny, tiny_profile) -> None:
    net, x, labels = tiny
    p = tiny_profile
    radii = _valid_radii(net, x, labels)
    cal = p.calibration
    assert (cal.n, cal.n_inputs) == (228, 240) and cal.accuracy == 228 / 240
    assert p.threshold == false_alarm_threshold(radii, 0.05)
    candidates = {false_alarm_threshold(radii, min(0.5, f * 0.05)) for f in SIGMA0_FACTORS}
    assert p.sigma0 in candidates  # fitted on the attack sets
    assert cal.false_alarm_measured == np.mean(radii < p.threshold) <= 0.05
    assert p.seed_window == tuple(radii[:20])
    assert p.window_size == 20 and p.model_sha256 == "ab" * 32 and p.name == "tiny"
    assert cal.mean_radius == pytest.approx(radii.mean())
    # sigma1 is the smallest grid value whose replay keeps the false alarm within the target
    v = DistributionValidator(p.sigma0, p.sigma1, 20)
    decisions, _ = replay(v, v.initial_state(p.seed_window), radii[20:].tolist())
    fa = sum(d.verdict == "reject" for d in decisions) / len(decisions)
    assert cal.false_alarm_distribution == fa <= 0.05


def test_calibrate_picks_the_smallest_sufficient_sigma1(tiny) -> None:
    net, x, labels = tiny
    radii = _valid_radii(net, x, labels)
    sigma0 = float(np.quantile(radii, 0.5))  # a high sigma0 makes the p-value test matter
    grid = (0.0, 0.05, 0.2, 0.5, 1.0)
    p = calibrate(net, x, labels, 0.05, 20, sigma0=sigma0, sigma1_grid=grid, **SETTINGS)
    assert p.sigma0 == sigma0

    def false_alarm(s1: float) -> float:
        v = DistributionValidator(sigma0, s1, 20)
        decisions, _ = replay(v, v.initial_state(p.seed_window), radii[20:].tolist())
        return sum(d.verdict == "reject" for d in decisions) / len(decisions)

    assert false_alarm(p.sigma1) <= 0.05
    assert p.calibration.false_alarm_distribution == false_alarm(p.sigma1)
    smaller = [g for g in grid if g < p.sigma1]
    assert smaller, "the test should exercise a non-trivial choice"
    assert all(false_alarm(g) > 0.05 for g in smaller)


def test_calibrate_scores_attacks(tiny, tiny_profile) -> None:
    net = tiny[0]
    adv_x = np.clip(
        tiny[1][:60] + np.random.default_rng(3).uniform(-0.4, 0.4, size=(60, 12)), 0, 1
    )
    adv = np.array([r.radius for r in score_many(net, adv_x, **SETTINGS)])
    a = tiny_profile.attacks["noise"]
    assert a.n == 60 and a.mean_radius == pytest.approx(adv.mean())
    assert a.rejection_rate == np.mean(adv < tiny_profile.threshold)
    radii = _valid_radii(net, *tiny[1:])
    roc, auc = roc_curve(radii, adv)
    assert a.roc == roc and a.auc == auc
    v = make_validator(tiny_profile, "distribution").rule
    decisions, _ = replay(v, tiny_profile.initial_state(), adv.tolist())
    assert a.rejection_rate_distribution == np.mean([d.verdict == "reject" for d in decisions])


def test_calibrate_rejects_bad_inputs(tiny) -> None:
    net, x, labels = tiny
    with pytest.raises(ValueError, match="labels"):
        calibrate(net, x, labels[:-1], **SETTINGS)
    with pytest.raises(ValueError, match="window_size"):
        calibrate(net, x[:30], labels[:30], window_size=50, **SETTINGS)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        calibrate(net, x * 2, labels, **SETTINGS)
    with pytest.raises(ValueError, match="12-value"):
        calibrate(net, x[:, :11], labels, **SETTINGS)


def test_calibrate_takes_uint8_like_the_wire(tiny) -> None:
    net, x, _ = tiny
    pixels = np.round(x[:60] * 255).astype(np.uint8)
    labels = np.array([net.predict(v / 255.0) for v in pixels])
    p = calibrate(net, pixels, labels, window_size=20, **SETTINGS)
    radii = _valid_radii(net, pixels / 255.0, labels)
    assert p.seed_window == tuple(radii[:20])


# ------------------------------------------------------------------------------ JSON


def test_save_load_round_trip(tmp_path: Path, tiny_profile: Profile) -> None:
    path = tmp_path / "p.json"
    save_profile(tiny_profile, path)
    assert load_profile(path) == tiny_profile
    data = json.loads(path.read_text())
    assert data["format"] == 1 and data["verifier"] == {
        "domain": "deepzono", "search": "secant", "up": 0.256, "tol": 0.001,
        "input_lower": None, "input_upper": None,
        "stages": list(tiny_profile.verifier.stages)}  # calibration's cheapest order
    stages = data["verifier"]["stages"]  # the stages that proved a calibration input
    assert stages and set(stages) <= {"deeppoly", "deepzono", "interval"}
    assert all(data["calibration"]["proved_by"][s] for s in stages[1:])
    assert list(tmp_path.iterdir()) == [path]


def test_profile_validators_use_its_parameters(tiny_profile: Profile) -> None:
    budget = tiny_profile.guaranteed_budget
    assert make_validator(tiny_profile).rule == BudgetValidator(
        tiny_profile.threshold if budget is None else budget)
    d = make_validator(tiny_profile, "distribution").rule
    assert d == DistributionValidator(tiny_profile.sigma0, tiny_profile.sigma1, 20)
    assert tiny_profile.initial_state().radii == tiny_profile.seed_window
    with pytest.raises(ValueError):
        make_validator(tiny_profile, "vibes")


def _write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "p.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    "field",
    ["name", "model_sha256", "policy", "threshold", "sigma0", "sigma1", "window_size",
     "seed_window", "verifier", "calibration"],
)
def test_missing_fields_are_named(tmp_path: Path, tiny_profile: Profile, field: str) -> None:
    data = tiny_profile.to_dict()
    del data[field]
    with pytest.raises(ProfileError, match=f"missing field '{field}'"):
        load_profile(_write(tmp_path, data))


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("threshold",), "0.1", "'threshold' must be a number"),
        (("window_size",), 20.5, "'window_size' must be an integer"),
        (("window_size",), True, "'window_size' must be an integer"),
        (("seed_window",), [0.1, "x"], "seed_window"),
        (("seed_window",), [0.1] * 19, "19 radii"),
        (("policy",), "vibes", "policy"),
        (("verifier", "search"), "linear", "search"),
        (("calibration", "n"), None, "'calibration.n' must be an integer"),
        (("format",), 2, "format"),
        (("attacks",), {"a": {"n": 1}}, "missing field 'attacks.a.mean_radius'"),
    ],
)
def test_malformed_fields_are_explained(
    tmp_path: Path, tiny_profile: Profile, path: tuple, value: object, message: str
) -> None:
    data = tiny_profile.to_dict()
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(ProfileError, match=message):
        load_profile(_write(tmp_path, data))


def test_unreadable_profiles(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ProfileError, match="not valid JSON"):
        load_profile(bad)
    with pytest.raises(ProfileError, match="cannot read"):
        load_profile(tmp_path / "absent.json")
    with pytest.raises(ProfileError, match="must be a JSON object"):
        load_profile(_write(tmp_path, [1, 2]))


def test_undefined_normality_is_saved_as_null(tmp_path: Path, tiny_profile: Profile) -> None:
    p = replace(tiny_profile, calibration=replace(tiny_profile.calibration, normality_pvalue=None))
    save_profile(p, tmp_path / "p.json")
    assert load_profile(tmp_path / "p.json").calibration.normality_pvalue is None


def test_check_model(tiny_profile: Profile) -> None:
    check_model(tiny_profile, tiny_net())
    other = replace(tiny_net(), sha256="cd" * 32)
    with pytest.raises(ProfileError) as err:
        check_model(tiny_profile, other)
    assert str(err.value) == (
        "profile tiny was calibrated for model sha256 abababababab…, "
        "but the model given has cdcdcdcdcdcd…"
    )


# ------------------------------------------------------------------------------ shipped model


def fgsm(net: Network, x: np.ndarray, y: np.ndarray, eps: float) -> np.ndarray:
    """One signed-gradient step on the cross-entropy, for a Dense/ReLU chain."""
    out = []
    for v, label in zip(x, y, strict=True):
        acts, h = [], v
        for layer in net.layers:
            acts.append(h)
            h = layer.weight @ h + layer.bias if isinstance(layer, Dense) else np.maximum(h, 0)
        p = np.exp(h - h.max())
        g = p / p.sum()
        g[label] -= 1.0
        for layer, a in zip(reversed(net.layers), reversed(acts), strict=True):
            g = layer.weight.T @ g if isinstance(layer, Dense) else g * (a > 0)
        out.append(np.clip(v + eps * np.sign(g), 0.0, 1.0))
    return np.array(out)


@pytest.mark.skipif(not (ONNX.exists() and MNIST.exists()), reason="shipped MNIST files absent")
def test_calibrate_shipped_mnist_model(tmp_path: Path) -> None:
    net = load_onnx(ONNX)
    with np.load(MNIST, allow_pickle=False) as z:
        x, y = z["x"], z["y"].astype(int)
    adv = fgsm(net, x[:400].reshape(400, -1) / 255.0, y[:400], eps=0.02)
    adv = adv[[net.predict(v) != label for v, label in zip(adv, y[:400], strict=True)]]
    assert len(adv) > 50  # successful adversarial examples only
    p = calibrate(net, x, y, 0.03, 50, {"fgsm-0.02": adv}, name="mnist", **SETTINGS)
    check_model(p, net)
    cal = p.calibration
    assert cal.n_inputs == 1000 and cal.accuracy > 0.95
    assert cal.false_alarm_measured <= 0.03 and cal.false_alarm_distribution <= 0.03
    attack = p.attacks["fgsm-0.02"]
    assert attack.rejection_rate > 0.4 and attack.auc > 0.9
    save_profile(p, tmp_path / "mnist.json")
    assert load_profile(tmp_path / "mnist.json") == p


def test_profile_without_domain_is_deepzono_and_serve_checks_it(tmp_path: Path,
                                                                tiny_profile: Profile) -> None:
    from worker.profile import check_settings

    data = tiny_profile.to_dict()
    del data["verifier"]["domain"]
    loaded = load_profile(_write(tmp_path, data))
    assert loaded.verifier.domain == "deepzono"
    check_settings(loaded, domain="deepzono", search="secant")
    with pytest.raises(ProfileError, match="calibrated with domain deepzono, not deeppoly"):
        check_settings(loaded, domain="deeppoly")
    with pytest.raises(ProfileError, match="calibrated with search secant, not bisect"):
        check_settings(loaded, search="bisect")
