"""DeepPoly transformers: exact numbers on hand-checkable cases, soundness on random ones,
and against DeepZono, intervals, PGD and the exact MILP radius on the shipped MNIST nets."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from verifier.box import InputBox
from verifier.domains.deeppoly.transfers import DEEPPOLY
from verifier.domains.deepzono.transfers import DEEPZONO
from verifier.network import Conv, Dense, MaxPool, Network, Relu, Scale, Sigmoid, Tanh, apply_layer
from verifier.onnx.importer import load_onnx
from verifier.score import certified_radius
from verifier.settings import VerifierSettings
from verifier.walk import Plan, analyse, margins, output_bounds

MODELS = Path(__file__).resolve().parents[2] / "models"
SLICE = MODELS / "mnist_test_1000.npz"


def _plan(layers, in_shape, n_out) -> Plan:
    return Plan.of(Network(tuple(layers), in_shape, n_out), DEEPPOLY)


def _box(lo, hi) -> InputBox:
    return InputBox(np.array(lo, dtype=float), np.array(hi, dtype=float))


def _lower(plan: Plan, box: InputBox, row) -> float:
    """DeepPoly's lower bound of row . y over the network's outputs y."""
    C = np.array([row], dtype=float)
    return float(DEEPPOLY.linear_lower(analyse(plan, box), C, np.zeros(1))[0])


def _radius(plan: Plan, x: np.ndarray, label: int) -> float:
    """Bisection (Algorithm 1) on [0, 0.256] to 0.001 in the plan's domain."""
    settings = VerifierSettings(domain=plan.domain.name, search="bisect")
    return certified_radius(plan, x, settings, label)


# ----------------------------------------------------------------------------- by hand


def test_affine_is_exact():
    plan = _plan([Dense(np.array([[1.0, -1.0, 2.0]]), np.array([0.5]))], (3,), 1)
    lo, hi = output_bounds(plan, _box([0, 1, 2], [2, 3, 4]))  # [1, 2, 3] +/- 1
    assert lo[0] == pytest.approx(1.5, abs=1e-12) and hi[0] == pytest.approx(9.5, abs=1e-12)
    assert lo[0] <= 1.5 and hi[0] >= 9.5  # rounded outward, never inward


def _relu_net(shift: float) -> Plan:
    """y1 = relu(x + shift), y2 = relu(x + 2) = x + 2 on x in [-1, 1]; out = y1 - y2 + 2."""
    hidden = Dense(np.array([[1.0], [1.0]]), np.array([shift, 2.0]))
    out = Dense(np.array([[1.0, -1.0]]), np.array([2.0]))
    return _plan([hidden, Relu(), out], (1,), 1)


def test_relu_lower_line_x_when_upper_exceeds_minus_lower():
    # z1 in [-0.5, 1.5]: lower y1 >= z1 (1.5 > 0.5), upper y1 <= 0.75 z1 + 0.375, so
    # out = relu(x + 0.5) - x lies in [0.5, 1.0] (exactly its range); intervals give [-1, 2.5]
    lo, hi = output_bounds(_relu_net(0.5), _box([-1], [1]))
    assert lo[0] == pytest.approx(0.5, abs=1e-12) and hi[0] == pytest.approx(1.0, abs=1e-12)
    assert lo[0] <= 0.5 and hi[0] >= 1.0


def test_relu_lower_line_zero_otherwise():
    # z1 in [-1.5, 0.5]: lower y1 >= 0, upper y1 <= 0.25 z1 + 0.375: out in [-1, 1]
    lo, hi = output_bounds(_relu_net(-0.5), _box([-1], [1]))
    assert lo[0] == pytest.approx(-1.0, abs=1e-12) and hi[0] == pytest.approx(1.0, abs=1e-12)


def test_relu_chords_on_a_2x2_layer():
    # z = (x1 + x2, x1 - x2) on [-1, 1]^2, both in [-2, 2]: y_i <= z_i / 2 + 1, y_i >= 0
    # (2 > 2 is false), so y1 + y2 <= x1 + 2 <= 3 (intervals: 4; exact: 2)
    layers = [Dense(np.array([[1.0, 1.0], [1.0, -1.0]]), np.zeros(2)), Relu(),
              Dense(np.array([[1.0, 1.0]]), np.zeros(1))]
    lo, hi = output_bounds(_plan(layers, (2,), 1), _box([-1, -1], [1, 1]))
    assert lo[0] == pytest.approx(0.0, abs=1e-12) and hi[0] == pytest.approx(3.0, abs=1e-12)


def _twin(act, lo: float, hi: float) -> float:
    """Lower bound of f(x) - f(x) from two copies of one neuron: the lower line of the first
    minus the upper line of the second, which is where the two relaxations show."""
    plan = _plan([Dense(np.array([[1.0], [1.0]]), np.zeros(2)), act()], (1,), 2)
    return _lower(plan, _box([lo], [hi]), [1.0, -1.0])


def _sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _dsig(x: float) -> float:
    return _sig(x) * (1.0 - _sig(x))


def test_sigmoid_tangent_slopes_across_zero():
    # l < 0 < u: both lines have slope d = min(s'(l), s'(u)) = s'(1), through (l, s(l)) and
    # (u, s(u)); the x terms cancel: s(-1) - s(1) + 2 s'(1)  (intervals: s(-1) - s(1))
    expect = _sig(-1.0) - _sig(1.0) + 2.0 * _dsig(1.0)
    got = _twin(Sigmoid, -1.0, 1.0)
    assert got == pytest.approx(expect, abs=1e-8) and got <= expect


def test_sigmoid_chord_below_when_positive():
    # 0 <= l: lower line the chord (slope c), upper line slope d = s'(u) through (u, s(u));
    # c > d, so the difference (c - d)(x - l) + s(l) - s(u) + d (u - l) is least at x = l
    lo, hi = 0.5, 2.0
    expect = _sig(lo) - _sig(hi) + _dsig(hi) * (hi - lo)
    got = _twin(Sigmoid, lo, hi)
    assert got == pytest.approx(expect, abs=1e-8) and got <= expect


def test_tanh_chord_above_when_negative():
    # u <= 0: upper line the chord (slope c), lower line slope d = tanh'(l) through (l, tanh l);
    # their difference (d - c)(x - l) is least at x = u since d < c
    lo, hi = -2.0, -0.5
    c = (math.tanh(hi) - math.tanh(lo)) / (hi - lo)
    d = 1.0 - math.tanh(lo) ** 2
    expect = (d - c) * (hi - lo)
    got = _twin(Tanh, lo, hi)
    assert got == pytest.approx(expect, abs=1e-8) and got <= expect


def test_tanh_bounds_are_the_end_points():
    plan = _plan([Dense(np.eye(1), np.zeros(1)), Tanh()], (1,), 1)
    lo, hi = output_bounds(plan, _box([-0.3], [0.7]))
    assert lo[0] == pytest.approx(math.tanh(-0.3), abs=1e-13) and lo[0] <= math.tanh(-0.3)
    assert hi[0] == pytest.approx(math.tanh(0.7), abs=1e-13) and hi[0] >= math.tanh(0.7)


def _pool_net() -> Plan:
    pool = MaxPool((1, 2, 2), (1, 1, 1), (2, 2), (2, 2), (0, 0, 0, 0))
    return _plan([Scale(np.ones(4), np.zeros(4)), pool], (1, 2, 2), 1)


def test_maxpool_dominating_input_passes_through():
    # pixel 0 in [0.9, 1.0] dominates pixels in [0, 0.3]
    lo, hi = output_bounds(_pool_net(), _box([0.9, 0.0, 0.1, 0.0], [1.0, 0.3, 0.2, 0.3]))
    assert lo[0] == pytest.approx(0.9, abs=1e-12) and hi[0] == pytest.approx(1.0, abs=1e-12)


def test_maxpool_undecided_is_largest_lower_to_largest_upper():
    lo, hi = output_bounds(_pool_net(), _box([0.2, 0.0, 0.1, 0.0], [1.0, 0.5, 0.2, 0.3]))
    assert lo[0] == pytest.approx(0.2, abs=1e-12) and hi[0] == pytest.approx(1.0, abs=1e-12)


def test_maxpool_relational_dominance():
    # channel 0 pools (x + 0.5, x), channel 1 pools (x + 0.25, x), x in [0, 1]: the intervals
    # overlap, but the differences 0.5 and 0.25 back-substitute exactly, so y0 = x + 0.5,
    # y1 = x + 0.25 and y0 - y1 = 0.25 (interval dominance alone: y0 >= x + 0.5, y1 <= 1.25,
    # so -0.75)
    spread = Dense(np.ones((4, 1)), np.array([0.5, 0.0, 0.25, 0.0]))
    pool = MaxPool((2, 1, 2), (2, 1, 1), (1, 2), (1, 2), (0, 0, 0, 0))
    plan = _plan([spread, pool], (1,), 2)
    got = _lower(plan, _box([0.0], [1.0]), [1.0, -1.0])
    assert got == pytest.approx(0.25, abs=1e-12) and got <= 0.25


def test_maxpool_live_input_beats_dead_ones_at_equal_lower_bounds():
    # after the ReLU, channel 0 pools (0, x, 0, 0) and channel 1 pools (x, 0, 0, 0), x in
    # [0, 0.5]: all lower bounds are 0 and the tie goes to the input that can exceed 0, which
    # then dominates the dead ones: y0 = y1 = x, so y0 - y1 >= 0 (had a dead input been picked:
    # y0 >= 0 and y1 <= 0.5, so -0.5)
    w = np.array([[0.0, 1, 0, 0, 1, 0, 0, 0]]).T
    spread = Dense(w, np.where(w[:, 0] > 0, 0.0, -1.0))
    pool = MaxPool((2, 2, 2), (2, 1, 1), (2, 2), (2, 2), (0, 0, 0, 0))
    plan = _plan([spread, Relu(), pool], (1,), 2)
    got = _lower(plan, _box([0.0], [0.5]), [1.0, -1.0])
    assert got == pytest.approx(0.0, abs=1e-12) and got <= 0.0


def test_maxpool_upper_line_through_the_top_input():
    # channel 0 pools (x1, x2) with x1 in [0.5, 1], x2 in [0, 0.6]: undecided, so the upper
    # line runs from (0.5, 0.6) to (1, 1): y0 <= 0.8 x1 + 0.2. Channel 1 pools (x1, x1 - 10),
    # so y1 = x1, and y1 - y0 >= 0.2 x1 - 0.2 >= -0.1, which is exact (x1 = 0.5, x2 = 0.6);
    # the constant upper bound max u = 1 would give -0.5
    spread = Dense(np.array([[1.0, 0], [0, 1], [1, 0], [1, 0]]), np.array([0.0, 0, 0, -10]))
    pool = MaxPool((2, 1, 2), (2, 1, 1), (1, 2), (1, 2), (0, 0, 0, 0))
    plan = _plan([spread, pool], (2,), 2)
    got = _lower(plan, _box([0.5, 0.0], [1.0, 0.6]), [-1.0, 1.0])
    assert got == pytest.approx(-0.1, abs=1e-12) and got <= -0.1


# ----------------------------------------------------------------------------- random nets


def _random_net(rng, kind, act) -> Network:
    if kind == "dense":
        sizes = [6, 7, 5, 3]
        layers = []
        for a, b in zip(sizes[:-1], sizes[1:], strict=True):
            layers += [Dense(rng.normal(size=(b, a)), rng.normal(size=b)), act()]
        return Network(tuple(layers[:-1]), (6,), 3)
    conv1 = Conv(rng.normal(size=(2, 1, 3, 3)), rng.normal(size=2) * 0.3, (1, 7, 7), (2, 7, 7),
                 (1, 1), (1, 1, 1, 1))
    pool = MaxPool((2, 7, 7), (2, 3, 3), (2, 2), (2, 2), (0, 0, 0, 0))
    conv2 = Conv(rng.normal(size=(3, 2, 2, 2)), rng.normal(size=3) * 0.3, (2, 3, 3), (3, 1, 1),
                 (2, 2), (0, 0, 0, 0))
    layers = [Scale(np.full(49, 2.0), np.full(49, -1.0)), conv1, act(), pool, conv2, act(),
              Dense(rng.normal(size=(4, 3)), rng.normal(size=4))]
    return Network(tuple(layers), (1, 7, 7), 4)


def _interval_bounds(net: Network, box: InputBox) -> tuple[np.ndarray, np.ndarray]:
    """Plain interval arithmetic, as a reference (padded outward by a relative 1e-9)."""
    lo, hi = box.lower, box.upper
    for layer in net.layers:
        if isinstance(layer, Dense):
            absolute = Dense(np.abs(layer.weight), np.zeros_like(layer.bias))
        elif isinstance(layer, Scale):
            absolute = Scale(np.abs(layer.a), np.zeros_like(layer.b))
        elif isinstance(layer, Conv):
            absolute = Conv(np.abs(layer.weight), np.zeros_like(layer.bias), layer.in_shape,
                            layer.out_shape, layer.stride, layer.pads)
        else:  # monotone: activations and max-pool
            lo, hi = apply_layer(layer, lo), apply_layer(layer, hi)
            lo, hi = lo - 1e-9 * (np.abs(lo) + 1), hi + 1e-9 * (np.abs(hi) + 1)
            continue
        centre = apply_layer(layer, 0.5 * (lo + hi))
        spread = apply_layer(absolute, 0.5 * (hi - lo))
        pad = 1e-9 * (np.abs(centre) + spread + 1.0)
        lo, hi = centre - spread - pad, centre + spread + pad
    return lo, hi


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    kind=st.sampled_from(["dense", "conv"]),
    act=st.sampled_from([Relu, Sigmoid, Tanh]),
    eps=st.floats(0.0, 0.5),
)
def test_sampled_points_respect_every_bound(seed, kind, act, eps):
    rng = np.random.default_rng(seed)
    net = _random_net(rng, kind, act)
    plan = Plan.of(net, DEEPPOLY)
    x = rng.uniform(size=net.input_size)
    box = InputBox.linf(x, eps)
    corners = rng.integers(0, 2, size=(300, net.input_size)).astype(float)
    ys = np.concatenate([rng.uniform(box.lower, box.upper, size=(700, net.input_size)),
                         box.lower + corners * (box.upper - box.lower), x[None, :]])
    out = net.forward(ys)
    lo, hi = output_bounds(plan, box)
    assert np.all(out >= lo) and np.all(out <= hi)
    ilo, ihi = _interval_bounds(net, box)  # at least as tight as intervals
    assert np.all(lo >= ilo) and np.all(hi <= ihi)
    label = net.predict(x)
    m = margins(plan, box, label)
    others = np.arange(net.n_outputs) != label
    assert np.all((out[:, [label]] - out)[:, others] >= m[others])
    C, d = rng.normal(size=(5, net.n_outputs)), rng.normal(size=5)
    low = DEEPPOLY.linear_lower(analyse(plan, box), C, d)
    assert np.all(out @ C.T + d >= low)


# ----------------------------------------------------------------------------- MNIST nets


def _mnist(name: str, n: int):
    path = MODELS / f"{name}.onnx"
    if not (path.is_file() and SLICE.is_file()):
        pytest.skip(f"{path.name} or the MNIST test slice is not shipped")
    net = load_onnx(path)
    with np.load(SLICE, allow_pickle=False) as z:
        x = z["x"].reshape(len(z["x"]), -1).astype(np.float64) / 255.0
        y = z["y"].astype(int)
    ok = np.flatnonzero(np.argmax(net.forward(x[: 3 * n]), axis=1) == y[: 3 * n])[:n]
    return net, x[ok], y[ok], ok


def test_cnn_margins_tighter_than_deepzono_and_intervals():
    net, xs, ys, _ = _mnist("cnn-6-16-128-relu", 10)
    plan, zplan = Plan.of(net, DEEPPOLY), Plan.of(net, DEEPZONO)
    poly, zono = [], []
    for x, y in zip(xs, ys, strict=True):
        box = InputBox.linf(x, 0.02)
        m = margins(plan, box, int(y))
        lo, hi = _interval_bounds(net, box)
        assert np.all(np.delete(m, y) >= np.delete(lo[y] - hi, y))  # intervals' margins
        poly.append(np.min(m))
        zono.append(np.min(margins(zplan, box, int(y))))
    assert np.mean(poly) > np.mean(zono)


def test_pgd_finds_nothing_inside_the_cnn_radius():
    """No PGD point in the DeepPoly-certified ball changes the class (a hit is a soundness
    bug). The attack is tests/verifier/test_soundness_attack.py's; a short run of it succeeds at 6x
    the radius on some inputs, so its silence inside is not idleness."""
    from tests.verifier.test_soundness_attack import _confirmed, onnx, onnx2torch, pgd, torch

    net, xs, ys, _ = _mnist("cnn-6-16-128-relu", 20)
    plan = Plan.of(net, DEEPPOLY)
    radii = np.array([_radius(plan, x, int(y)) for x, y in zip(xs, ys, strict=True)])
    assert np.all(radii > 0)
    model = onnx2torch.convert(onnx.load(str(MODELS / "cnn-6-16-128-relu.onnx"))).double().eval()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small batches run faster on one thread than on contended cores
    try:
        found, points = pgd(model, xs, ys, radii, restarts=2)
        assert not _confirmed(net, xs, ys, radii, points).any() and not found.any()
        found, points = pgd(model, xs, ys, 6.0 * radii, restarts=1, steps=50)
        assert _confirmed(net, xs, ys, 6.0 * radii, points).sum() >= 3
    finally:
        torch.set_num_threads(threads)


def test_fnn_radius_below_exact_milp():
    """On 50 MNIST inputs the MILP proves no adversarial point within the DeepPoly radius,
    which is also at least the DeepZono radius on average."""
    from verifier.exact import exact_radius

    net, xs, ys, idx = _mnist("fnn-3x30-relu", 50)
    assert len(xs) == 50
    plan, zplan = Plan.of(net, DEEPPOLY), Plan.of(net, DEEPZONO)
    poly, zono = [], []
    for i, x, y in zip(idx, xs, ys, strict=True):
        r = _radius(plan, x, int(y))
        poly.append(r)
        zono.append(_radius(zplan, x, int(y)))
        res = exact_radius(net, x, max_eps=r, label=int(y))
        assert res.status == "beyond_max_eps", (
            f"fnn-3x30-relu test index {i}: DeepPoly radius {r} but an adversarial point of "
            f"class {res.target} lies at {res.radius}"
        )
    assert np.mean(poly) >= np.mean(zono)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_conv_pool_radius_below_exact_milp(seed: int) -> None:
    """Random conv / ReLU / max-pool nets: the MILP finds no adversarial point within the
    DeepPoly radius (the max-pool relaxation and its upper line included)."""
    from tests.verifier.test_exact import random_conv_net
    from verifier.exact import exact_radius

    net = random_conv_net(seed)
    plan = Plan.of(net, DEEPPOLY)
    rng = np.random.default_rng(300 + seed)
    for _ in range(3):
        x = rng.uniform(0, 1, 36)
        label = net.predict(x)
        r = _radius(plan, x, label)
        res = exact_radius(net, x, max_eps=r, label=label)
        assert res.status == "beyond_max_eps", (seed, x.tolist(), r, res)
