"""exact_radius (complete MILP verification) against closed forms, DeepZono and attacks.

A sound certified radius never exceeds the exact one, so these tests check the verifier
(certified <= exact) and the MILP (closed forms, forward-checked adversarial points).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from verifier import VerifierSettings, certified_radius
from verifier.exact import ExactResult, exact_radius
from verifier.network import Conv, Dense, MaxPool, Network, Relu, Sigmoid, UnsupportedModelError
from verifier.onnx.importer import load_onnx

MODELS_DIR = Path(__file__).resolve().parents[2] / "models"
FNN_PATH = MODELS_DIR / "fnn-3x30-relu.onnx"
SLICE_PATH = MODELS_DIR / "mnist_test_1000.npz"
UP, TOL = 0.256, 0.001
WITNESS_SLACK = 1e-6  # the adversarial point may lie up to 1e-6 beyond radius (see exact.py)


def check_witness(net: Network, x: np.ndarray, label: int, res: ExactResult) -> None:
    """The adversarial point is in the input range, within radius + 1e-6, and misclassified."""
    assert res.adversarial is not None and res.target is not None
    y = res.adversarial.reshape(-1)
    assert np.all((y >= net.input_lower) & (y <= net.input_upper))
    assert np.max(np.abs(y - x.reshape(-1))) <= res.radius + WITNESS_SLACK
    assert int(np.argmax(net.forward(y))) != label


def certified_pair(net: Network, x: np.ndarray, label: int) -> tuple[float, float]:
    """Certified radii by bisection and by the secant search."""
    bisect = certified_radius(net, x, VerifierSettings(search="bisect", up=UP, tol=TOL), label)
    secant = certified_radius(net, x, VerifierSettings(search="secant", up=UP, tol=TOL), label)
    return bisect, secant


# ----------------------------------------------------------------------------- (a) closed form


def tiny_net(c: float) -> Network:
    """z0 = c, z1 = relu(y0 - 0.5) + relu(y1 - 0.5): class 1 iff the ReLU sum exceeds c."""
    hidden = Dense(np.eye(2), np.array([-0.5, -0.5]))
    out = Dense(np.array([[0.0, 0.0], [1.0, 1.0]]), np.array([c, 0.0]))
    return Network((hidden, Relu(), out), (2,), 2)


# (x, c, eps*): moving both coordinates up by eps (clipped at 1) is optimal, so eps* solves
# relu(min(x0 + e, 1) - .5) + relu(min(x1 + e, 1) - .5) = c.
CLOSED_FORM = [
    ((0.3, 0.3), 0.1, 0.25),  # 2 (e - 0.2) = 0.1
    ((0.55, 0.2), 0.1, 0.05),  # only y0 matters: 0.05 + e = 0.1
    ((0.5, 0.5), 0.1, 0.05),  # 2 e = 0.1
    ((0.95, 0.3), 0.6, 0.3),  # y0 clips at 1 (0.5), then e - 0.2 = 0.1; unclipped: 0.15
]


@pytest.mark.parametrize(("x", "c", "eps"), CLOSED_FORM)
def test_closed_form_radius(x: tuple[float, float], c: float, eps: float) -> None:
    """The MILP finds the hand-computed eps*, and DeepZono stays below it."""
    net = tiny_net(c)
    xv = np.array(x)
    res = exact_radius(net, xv, max_eps=0.5)
    assert res.status == "optimal" and res.target == 1
    assert res.radius == pytest.approx(eps, abs=1e-6)
    check_witness(net, xv, 0, res)
    for search in ("bisect", "secant"):
        assert certified_radius(net, xv, VerifierSettings(search=search)) <= res.radius


def test_closed_form_beyond_max_eps_and_misclassified() -> None:
    """A constant classifier has no adversarial point; a wrong label gives radius 0."""
    net = tiny_net(1.5)  # the ReLU sum is at most 1 < 1.5: class 0 everywhere
    res = exact_radius(net, np.array([0.9, 0.9]), max_eps=0.2)
    assert res == ExactResult(0.2, None, None, "beyond_max_eps")
    wrong = exact_radius(tiny_net(0.1), np.array([0.3, 0.3]), label=1)
    assert wrong.status == "misclassified" and wrong.radius == 0.0 and wrong.target == 0


def test_brackets_do_not_change_the_answer() -> None:
    """Brackets only prune: right, refuted or too small, the radius stays eps* = 0.25."""
    net, x = tiny_net(0.1), np.array([0.3, 0.3])
    for kwargs in (
        {"lower_bracket": 0.2},  # a true lower bound
        {"lower_bracket": 0.4},  # wrong: refuted by the attack point at 0.25
        {"upper_bracket": 0.1},  # too small: nothing inside, retried with max_eps
        {"upper_bracket": 0.256},
    ):
        res = exact_radius(net, x, **kwargs)
        assert res.status == "optimal" and res.radius == pytest.approx(0.25, abs=1e-6), kwargs


def test_unsupported_layer_is_named() -> None:
    """Smooth activations have no exact MILP encoding; the error says which layer."""
    net = Network(
        (Dense(np.eye(2), np.zeros(2)), Sigmoid(), Dense(np.eye(2), np.zeros(2))), (2,), 2
    )
    with pytest.raises(UnsupportedModelError, match="layer 1 is Sigmoid"):
        exact_radius(net, np.array([0.2, 0.4]))


# ----------------------------------------------------------------------------- (b) random nets


def random_net(seed: int, sizes: tuple[int, ...] = (20, 10, 8, 8, 3)) -> Network:
    """A dense ReLU net with He-scaled Gaussian weights."""
    rng = np.random.default_rng(seed)
    layers: list = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [
            Dense(
                rng.normal(0, 1 / np.sqrt(fan_in), (fan_out, fan_in)), rng.normal(0, 0.1, fan_out)
            ),
            Relu(),
        ]
    return Network(tuple(layers[:-1]), (sizes[0],), sizes[-1])


def random_conv_net(seed: int) -> Network:
    """1x6x6 input, 3x3 conv to 2 channels, ReLU, 2x2 max-pool, dense to 3 logits."""
    rng = np.random.default_rng(seed)
    conv = Conv(
        rng.normal(0, 0.5, (2, 1, 3, 3)),
        rng.normal(0, 0.1, 2),
        (1, 6, 6),
        (2, 4, 4),
        (1, 1),
        (0, 0, 0, 0),
    )
    pool = MaxPool((2, 4, 4), (2, 2, 2), (2, 2), (2, 2), (0, 0, 0, 0))
    dense = Dense(rng.normal(0, 0.7, (3, 8)), rng.normal(0, 0.1, 3))
    return Network((conv, Relu(), pool, dense), (1, 6, 6), 3)


def numpy_pgd(net: Network, x: np.ndarray, label: int, eps: float, seed: int = 0) -> bool:
    """10 restarts x 100 steps of L-inf PGD on a dense ReLU net; True if it misclassifies."""
    rng = np.random.default_rng(seed)
    lo, hi = np.clip(x - eps, 0, 1), np.clip(x + eps, 0, 1)
    for restart in range(10):
        y = x.copy() if restart == 0 else rng.uniform(lo, hi)
        for _ in range(100):
            acts, masks = y, []
            for layer in net.layers:
                if isinstance(layer, Dense):
                    acts = layer.weight @ acts + layer.bias
                else:
                    masks.append(acts > 0)
                    acts = np.maximum(acts, 0)
            if int(np.argmax(acts)) != label:
                return True
            other = int(np.argmax(np.where(np.arange(acts.size) == label, -np.inf, acts)))
            g = np.zeros(acts.size)
            g[other], g[label] = 1.0, -1.0
            for layer in reversed(net.layers):
                g = layer.weight.T @ g if isinstance(layer, Dense) else g * masks.pop()
            y = np.clip(y + eps / 10 * np.sign(g), lo, hi)
    return False


@pytest.mark.parametrize("seed", [0, 1, 3, 4])
def test_random_dense_nets_certified_below_exact(seed: int) -> None:
    """certified (both searches) <= exact on 6 inputs; PGD finds nothing just below exact."""
    net = random_net(seed)
    rng = np.random.default_rng(100 + seed)
    statuses = []
    for _ in range(6):
        x = rng.uniform(0, 1, 20)
        label = net.predict(x)
        res = exact_radius(net, x, max_eps=UP)
        statuses.append(res.status)
        assert res.status in ("optimal", "beyond_max_eps")
        for cert in certified_pair(net, x, label):
            assert cert <= res.radius, (seed, x.tolist(), cert, res)
        if res.status == "optimal":
            check_witness(net, x, label, res)
            assert not numpy_pgd(net, x, label, res.radius * (1 - 1e-3))
    assert statuses.count("optimal") >= 4


@pytest.mark.parametrize("seed", [0, 1])
def test_random_conv_nets_certified_below_exact(seed: int) -> None:
    """The Conv and MaxPool encodings: certified <= exact, witnesses confirmed by forward."""
    net = random_conv_net(seed)
    rng = np.random.default_rng(200 + seed)
    optimal = 0
    for _ in range(4):
        x = rng.uniform(0, 1, 36)
        label = net.predict(x)
        res = exact_radius(net, x, max_eps=UP)
        assert res.status in ("optimal", "beyond_max_eps")
        for cert in certified_pair(net, x, label):
            assert cert <= res.radius, (seed, x.tolist(), cert, res)
        if res.status == "optimal":
            optimal += 1
            check_witness(net, x, label, res)
    assert optimal >= 2


# ----------------------------------------------------------------------------- (c) MNIST FNN

N_FNN = 50


@pytest.fixture(scope="module")
def fnn_cases() -> tuple[Network, list[tuple[int, np.ndarray, int, float, float]]]:
    """The shipped fnn-3x30-relu net and its first 50 correctly classified test images, each
    with (slice index, image, label, bisect radius, secant radius)."""
    if not (FNN_PATH.is_file() and SLICE_PATH.is_file()):
        pytest.skip("models/fnn-3x30-relu.onnx or the MNIST test slice is not shipped")
    net = load_onnx(FNN_PATH)
    with np.load(SLICE_PATH, allow_pickle=False) as z:
        images = z["x"].reshape(len(z["x"]), -1).astype(np.float64) / 255.0
        labels = z["y"].astype(int)
    cases = []
    for i, (x, y) in enumerate(zip(images, labels, strict=True)):
        if net.predict(x) == y:
            cases.append((i, x, int(y), *certified_pair(net, x, int(y))))
        if len(cases) == N_FNN:
            break
    return net, cases


def test_fnn_no_adversarial_within_certified_radius(fnn_cases) -> None:
    """The MILP decides, for each of 50 images, that no point within the larger of the two
    certified radii changes the class: eps* >= certified (bisect and secant)."""
    net, cases = fnn_cases
    assert len(cases) == N_FNN
    for i, x, label, r_bisect, r_secant in cases:
        cert = max(r_bisect, r_secant)
        assert cert > 0, i
        res = exact_radius(net, x, max_eps=cert, label=label)
        if res.adversarial is not None:
            check_witness(net, x, label, res)
        assert res.status == "beyond_max_eps", (
            f"fnn-3x30-relu test index {i}: certified {r_bisect} (bisect) / {r_secant} (secant) "
            f"but an adversarial point of class {res.target} lies at {res.radius}"
        )


def test_fnn_witnesses_above_certified_radius(fnn_cases) -> None:
    """With a short time limit exact_radius still returns a forward-checked adversarial
    point (attack or MILP incumbent) for each of the 50 images: certified <= its distance."""
    net, cases = fnn_cases
    for i, x, label, r_bisect, r_secant in cases:
        res = exact_radius(net, x, max_eps=UP, label=label, time_limit=0.3)
        assert res.status in ("optimal", "time_limit"), (i, res.status)
        check_witness(net, x, label, res)
        assert max(r_bisect, r_secant) <= res.radius, (i, r_bisect, r_secant, res.radius)


def test_fnn_exact_radius_of_the_least_robust_images(fnn_cases) -> None:
    """Full exact radius of the two images with the smallest certified radii (their MILPs
    are the smallest; others take up to minutes): certified <= exact, witness checked."""
    net, cases = fnn_cases
    for i, x, label, r_bisect, r_secant in sorted(cases, key=lambda c: max(c[3], c[4]))[:2]:
        res = exact_radius(net, x, max_eps=UP, label=label, time_limit=120.0)
        assert res.status == "optimal", (i, res.status)
        check_witness(net, x, label, res)
        assert max(r_bisect, r_secant) <= res.radius, (i, r_bisect, r_secant, res.radius)


def test_cnn_no_adversarial_within_certified_radius() -> None:
    """On the MNIST CNN the full minimum is out of reach (minutes), but deciding that no
    adversarial point lies within the certified radius takes seconds: check 3 images."""
    path = MODELS_DIR / "cnn-6-16-128-relu.onnx"
    if not (path.is_file() and SLICE_PATH.is_file()):
        pytest.skip("models/cnn-6-16-128-relu.onnx or the MNIST test slice is not shipped")
    net = load_onnx(path)
    with np.load(SLICE_PATH, allow_pickle=False) as z:
        images = z["x"][:3].reshape(3, -1).astype(np.float64) / 255.0
    for i, x in enumerate(images):
        label = net.predict(x)
        cert = max(certified_pair(net, x, label))
        res = exact_radius(net, x, max_eps=cert, label=label, time_limit=60.0)
        assert res.status == "beyond_max_eps", (i, cert, res)
