"""DeepPoly on graphs (Add, Concat, forks) and LeakyRelu: hand-checked bounds, the graph
back-substitution against an equivalent chain, and soundness and tightness on random DAGs."""

from __future__ import annotations

from fractions import Fraction
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from verifier import VerifierSettings, certified_radius
from verifier.box import InputBox
from verifier.domains.deeppoly import state as deeppoly_state
from verifier.domains.deeppoly.kernels import join_rows, sum_rows
from verifier.domains.deeppoly.relax import leaky_relax
from verifier.domains.deeppoly.transfers import DEEPPOLY
from verifier.network import (
    INPUT,
    Add,
    Concat,
    Conv,
    Dense,
    LeakyRelu,
    MaxPool,
    Network,
    Relu,
    Scale,
    Sigmoid,
    Tanh,
    apply_layer,
)
from verifier.walk import Plan, analyse, margins, output_bounds


def _box(lo, hi) -> InputBox:
    return InputBox(np.array(lo, dtype=float), np.array(hi, dtype=float))


def _plan(layers, sources, in_shape, n_out) -> Plan:
    net = Network(tuple(layers), in_shape, n_out, sources=tuple(map(tuple, sources)))
    return Plan.of(net, DEEPPOLY)


def _sample(rng, box: InputBox, n: int = 600) -> np.ndarray:
    """Points of the box: uniform, corners and the centre."""
    size = box.lower.shape[0]
    corners = rng.integers(0, 2, size=(n // 3, size)).astype(float)
    return np.concatenate([rng.uniform(box.lower, box.upper, size=(n, size)),
                           box.lower + corners * (box.upper - box.lower),
                           (0.5 * (box.lower + box.upper))[None, :]])


# ----------------------------------------------------------------------------- by hand


def test_opposite_scale_branches_cancel_at_the_input():
    # x + (-x) over x in [-1, 2]^3: the branches meet at the input, where their rows are
    # summed before the box is used (bounding each branch alone: [-3, 3])
    layers = [Scale(np.ones(3), np.zeros(3)), Scale(-np.ones(3), np.zeros(3)), Add()]
    plan = _plan(layers, [(INPUT,), (INPUT,), (0, 1)], (3,), 3)
    lo, hi = output_bounds(plan, _box([-1] * 3, [2] * 3))
    assert np.all(lo <= 0.0) and np.all(hi >= 0.0)
    assert np.all(lo >= -1e-12) and np.all(hi <= 1e-12)


def test_opposite_dense_branches_cancel_at_a_relu_fork():
    # h = relu(W0 x + b0) is read by W h + b and -W h - b: their rows reach h from two readers
    # and are summed before h's relaxation, so the sum is 0 (relaxing each row on its own
    # leaves the gap between h's lower and upper lines)
    rng = np.random.default_rng(1)
    w0, b0 = rng.normal(size=(4, 3)), rng.normal(size=4)
    w, b = rng.normal(size=(2, 4)), rng.normal(size=2)
    layers = [Dense(w0, b0), Relu(), Dense(w, b), Dense(-w, -b), Add()]
    plan = _plan(layers, [(INPUT,), (0,), (1,), (1,), (2, 3)], (3,), 2)
    box = _box([-1] * 3, [1] * 3)
    _, h_hi = DEEPPOLY.bounds(analyse(_plan(layers[:2], [(INPUT,), (0,)], (3,), 4), box))
    assert np.any(h_hi > 0.5)  # some relu is live, so separate relaxations would not cancel
    lo, hi = output_bounds(plan, box)
    assert np.all(lo <= 0.0) and np.all(hi >= 0.0)
    assert np.all(lo >= -1e-12) and np.all(hi <= 1e-12)


def test_concat_of_a_branch_and_its_negation_cancels():
    # [3x + 1, 3x + 1] concatenated and mapped by [I, -I]: the concat's rows split by source,
    # the two parts meet again at the input and cancel
    layers = [Scale(np.full(2, 3.0), np.ones(2)), Scale(np.full(2, 3.0), np.ones(2)),
              Concat((2, 2)), Dense(np.hstack([np.eye(2), -np.eye(2)]), np.zeros(2))]
    plan = _plan(layers, [(INPUT,), (INPUT,), (0, 1), (2,)], (2,), 2)
    lo, hi = output_bounds(plan, _box([0, -1], [1, 1]))
    assert np.all(lo <= 0.0) and np.all(hi >= 0.0)
    assert np.all(lo >= -1e-12) and np.all(hi <= 1e-12)


def test_a_join_may_read_one_source_twice():
    # h = relu(x) on [-1, 2]; h + h - 2 h through transfers called directly (Add(h, h)):
    # the two equal rows reach h together and are summed with the -2 h row: exactly 0
    box = _box([-1.0, -1.0], [2.0, 2.0])
    t = DEEPPOLY.transfers
    h = t[Relu](Relu(), t[Scale](DEEPPOLY.prepare[Scale](Scale(np.ones(2), np.zeros(2))),
                                 deeppoly_state.start(box)))
    twice = t[Add](Add(), h, h)
    both = t[Concat](Concat((2, 2)), twice, h)
    C = np.array([[1.0, 0.0, -2.0, 0.0], [0.0, -1.0, 0.0, 2.0]])
    low = DEEPPOLY.linear_lower(both, C, np.zeros(2))
    assert np.all(low <= 0.0) and np.all(low >= -1e-12)
    lo, hi = DEEPPOLY.bounds(twice)
    assert lo == pytest.approx([0.0, 0.0], abs=1e-12) and hi == pytest.approx([4.0, 4.0])


def test_concat_bounds_are_the_sources_bounds():
    rng = np.random.default_rng(2)
    a = Dense(rng.normal(size=(3, 4)), rng.normal(size=3))
    b = [Dense(rng.normal(size=(5, 4)), rng.normal(size=5)), Relu(),
         Dense(rng.normal(size=(2, 5)), rng.normal(size=2))]
    box = _box(np.full(4, -0.5), np.full(4, 0.7))
    plan_a, plan_b = _plan([a], [(INPUT,)], (4,), 3), _plan(b, [(INPUT,), (0,), (1,)], (4,), 2)
    plan = _plan([a, *b, Concat((3, 2))], [(INPUT,), (INPUT,), (1,), (2,), (0, 3)], (4,), 5)
    s_lo, s_hi = DEEPPOLY.bounds(analyse(plan, box))  # the concat's own bounds: theirs
    for got, a_part, b_part in zip((s_lo, s_hi), DEEPPOLY.bounds(analyse(plan_a, box)),
                                   DEEPPOLY.bounds(analyse(plan_b, box)), strict=True):
        assert np.array_equal(got, np.concatenate([a_part, b_part]))
    lo, hi = output_bounds(plan, box)  # back-substituted through the concat: up to rounding
    (a_lo, a_hi), (b_lo, b_hi) = output_bounds(plan_a, box), output_bounds(plan_b, box)
    assert lo == pytest.approx(np.concatenate([a_lo, b_lo]), abs=1e-12)
    assert hi == pytest.approx(np.concatenate([a_hi, b_hi]), abs=1e-12)
    assert np.all(lo <= s_lo + 1e-12) and np.all(s_lo <= lo + 1e-12)


def _residual(rng, big: float = 0.0):
    """relu(x + W2 relu(W1 x + b1) + b2) on x in R^2 as a graph, and the same function as a
    chain that carries x through a ReLU as x + big (stable on the box: exact)."""
    w1, b1 = rng.normal(size=(3, 2)), rng.normal(size=3) * 0.5
    w2, b2 = rng.normal(size=(2, 3)), rng.normal(size=2) * 0.5
    graph = _plan([Dense(w1, b1), Relu(), Dense(w2, b2), Add(), Relu()],
                  [(INPUT,), (0,), (1,), (INPUT, 2), (3,)], (2,), 2)
    first = Dense(np.vstack([w1, np.eye(2)]), np.concatenate([b1, np.full(2, big)]))
    second = Dense(np.hstack([w2, np.eye(2)]), b2 - big)
    chain = Plan.of(Network((first, Relu(), second, Relu()), (2,), 2), DEEPPOLY)
    return graph, chain


@pytest.mark.parametrize("seed", range(6))
def test_residual_block_brute_force_and_equivalent_chain(seed):
    rng = np.random.default_rng(seed)
    graph, chain = _residual(rng, big=10.0)
    box = _box([-1.0, -0.5], [1.0, 0.5])
    grid = np.stack(np.meshgrid(np.linspace(-1, 1, 201), np.linspace(-0.5, 0.5, 201)), -1)
    out = graph.net.forward(grid.reshape(-1, 2))
    lo, hi = output_bounds(graph, box)
    assert np.all(out >= lo) and np.all(out <= hi)
    c_lo, c_hi = output_bounds(chain, box)  # the same linear maps and relaxations
    assert lo == pytest.approx(c_lo, abs=1e-9) and hi == pytest.approx(c_hi, abs=1e-9)
    C = np.array([[1.0, -1.0], [-2.0, 0.5]])
    got = DEEPPOLY.linear_lower(analyse(graph, box), C, np.zeros(2))
    assert np.all(out @ C.T >= got)
    assert got == pytest.approx(DEEPPOLY.linear_lower(analyse(chain, box), C, np.zeros(2)),
                                abs=1e-9)


# ----------------------------------------------------------------------------- LeakyRelu


@pytest.mark.parametrize(
    ("lo", "hi", "lines", "bounds"),
    [
        # chord from (-1, -0.1) to (3, 3): slope 3.1 / 4, offset 0.675; 3 >= 1: y >= x
        (-1.0, 3.0, (1.0, 0.0, 0.775, 0.675), (-0.1, 3.0)),
        # chord from (-3, -0.3) to (1, 1): slope 1.3 / 4, offset 0.675; 1 < 3: y >= 0.1 x
        (-3.0, 1.0, (0.1, 0.0, 0.325, 0.675), (-0.3, 1.0)),
        (0.5, 2.0, (1.0, 0.0, 1.0, 0.0), (0.5, 2.0)),  # stable: exact
        (-2.0, -1.0, (0.1, 0.0, 0.1, 0.0), (-0.2, -0.1)),
    ],
)
def test_leaky_relu_relaxation_by_hand(lo, hi, lines, bounds):
    ls, lf, us, uf, out_lo, out_hi, mag = leaky_relax(0.1, np.array([lo]), np.array([hi]))
    got = (ls[0], lf[0], us[0], uf[0])
    assert got == pytest.approx(lines, abs=1e-12)
    assert lf[0] <= lines[1] and uf[0] >= lines[3]  # offsets rounded outward
    assert (out_lo[0], out_hi[0]) == pytest.approx(bounds, abs=1e-12)
    assert out_lo[0] <= bounds[0] and out_hi[0] >= bounds[1]
    assert mag[0] >= max(abs(lo), abs(hi)) * max(ls[0], us[0]) + max(lf[0], uf[0])


@settings(max_examples=200, deadline=None)
@given(lo=st.floats(-50, 50), width=st.floats(0, 100), alpha=st.floats(0, 0.99))
def test_leaky_relu_lines_hold_on_the_interval(lo, width, alpha):
    hi = lo + width
    ls, lf, us, uf, out_lo, out_hi, _ = leaky_relax(alpha, np.array([lo]), np.array([hi]))
    x = np.linspace(lo, hi, 101)
    y = np.maximum(x, alpha * x)
    slack = 1e-12 * (1 + np.abs(x))  # the check's own float evaluation
    assert np.all(ls[0] * x + lf[0] <= y + slack) and np.all(y <= us[0] * x + uf[0] + slack)
    assert np.all(out_lo[0] <= y) and np.all(y <= out_hi[0])


def test_leaky_relu_through_a_network_is_the_lower_minus_the_upper_line():
    # two copies of one neuron on [-1, 3], alpha 0.1: y1 - y2 >= x - (0.775 x + 0.675), least
    # at x = -1: -0.9 (the exact difference is 0; intervals give -3.1)
    plan = _plan([Dense(np.ones((2, 1)), np.zeros(2)), LeakyRelu(0.1)], [(INPUT,), (0,)],
                 (1,), 2)
    got = DEEPPOLY.linear_lower(analyse(plan, _box([-1.0], [3.0])), np.array([[1.0, -1.0]]),
                                np.zeros(1))[0]
    assert got == pytest.approx(-0.9, abs=1e-12) and got <= -0.9


# ----------------------------------------------------------------------------- random DAGs


def _conv(rng, c: int, oc: int, hw: int) -> Conv:
    w = rng.normal(size=(oc, c, 3, 3)) / np.sqrt(9 * c)
    return Conv(w, rng.normal(size=oc) * 0.2, (c, hw, hw), (oc, hw, hw), (1, 1), (1, 1, 1, 1))


def _scale(rng, shape) -> Scale:
    n = int(np.prod(shape))
    return Scale(rng.normal(size=n), rng.normal(size=n) * 0.2)


def random_dag(rng, steps: int = 5) -> Network:
    """A random small graph on 1x5x5 inputs: residual adds (of two or three sources, near or
    far), channel concats, convolutions, max-pools, dense layers and activations."""
    layers: list = []
    sources: list = []
    shapes: dict[int, tuple[int, int, int]] = {INPUT: (1, 5, 5)}

    def add(layer, src, shape) -> int:
        layers.append(layer)
        sources.append(tuple(src))
        shapes[len(layers) - 1] = shape
        return len(layers) - 1

    def act(src) -> int:
        pick = rng.random()
        layer = (Relu() if pick < 0.4 else LeakyRelu(float(rng.uniform(0, 0.5))) if pick < 0.8
                 else Sigmoid() if pick < 0.9 else Tanh())
        return add(layer, [src], shapes[src])

    cur = add(_conv(rng, 1, 2, 5), [INPUT], (2, 5, 5))
    for _ in range(steps):
        c, hw, _ = shapes[cur]
        kind = rng.choice(["res", "skip", "cat", "dense", "act", "pool"])
        if kind == "res":  # cur + conv(act(conv(cur))) [+ cur again]
            t = add(_conv(rng, c, c, hw), [act(add(_conv(rng, c, c, hw), [cur], shapes[cur]))],
                    shapes[cur])
            extra = [add(_scale(rng, shapes[cur]), [cur], shapes[cur])] if rng.random() < 0.3 else []
            cur = act(add(Add(), [cur, t, *extra], shapes[cur]))
        elif kind == "skip":  # cur + an earlier node of its shape (or a scaled cur)
            same = [j for j, s in shapes.items() if s == shapes[cur] and j not in (INPUT, cur)]
            other = int(rng.choice(same)) if same else add(_scale(rng, shapes[cur]), [cur],
                                                           shapes[cur])
            cur = add(Add(), [cur, other], shapes[cur])
        elif kind == "cat":  # [conv(cur), cur]
            oc = int(rng.integers(1, 3))
            a = add(_conv(rng, c, oc, hw), [cur], (oc, hw, hw))
            cur = act(add(Concat((oc * hw * hw, c * hw * hw)), [a, cur], (oc + c, hw, hw)))
        elif kind == "dense":
            m = int(rng.integers(3, 7))
            n = int(np.prod(shapes[cur]))
            cur = add(Dense(rng.normal(size=(m, n)) / np.sqrt(n), rng.normal(size=m) * 0.2),
                      [cur], (m, 1, 1))
        elif kind == "pool" and hw > 1:  # 2x2 windows, stride 1 or 2
            stride = int(rng.integers(1, 3))
            out = (hw - 2) // stride + 1
            cur = add(MaxPool((c, hw, hw), (c, out, out), (2, 2), (stride, stride), (0, 0, 0, 0)),
                      [cur], (c, out, out))
        else:
            cur = act(cur)
    n = int(np.prod(shapes[cur]))
    add(Dense(rng.normal(size=(3, n)) / np.sqrt(n), rng.normal(size=3)), [cur], (3, 1, 1))
    return Network(tuple(layers), (1, 5, 5), 3, sources=tuple(sources))


def interval_bounds(net: Network, box: InputBox) -> tuple[np.ndarray, np.ndarray]:
    """Plain interval arithmetic on a graph, as a reference (padded outward by 1e-9)."""
    outs = {INPUT: (box.lower, box.upper)}
    for i, layer in enumerate(net.layers):
        ins = [outs[j] for j in net.sources_of(i)]
        if isinstance(layer, Scale):
            (lo, hi), = ins
            lo, hi = np.minimum(layer.a * lo, layer.a * hi) + layer.b, np.maximum(
                layer.a * lo, layer.a * hi) + layer.b
        elif isinstance(layer, (Add, Concat)):
            join = sum if isinstance(layer, Add) else np.concatenate
            lo, hi = join([a for a, _ in ins]), join([b for _, b in ins])
        elif isinstance(layer, (Dense, Conv)):
            (lo, hi), = ins
            absolute = (Dense(np.abs(layer.weight), 0 * layer.bias) if isinstance(layer, Dense)
                        else Conv(np.abs(layer.weight), 0 * layer.bias, layer.in_shape,
                                  layer.out_shape, layer.stride, layer.pads))
            centre, spread = apply_layer(layer, 0.5 * (lo + hi)), apply_layer(absolute,
                                                                              0.5 * (hi - lo))
            lo, hi = centre - spread, centre + spread
        else:  # monotone: activations and max-pool
            (lo, hi), = ins
            lo, hi = apply_layer(layer, lo), apply_layer(layer, hi)
        pad = 1e-9 * (np.abs(lo) + np.abs(hi) + 1.0)
        outs[i] = (lo - pad, hi + pad)
    return outs[len(net.layers) - 1]


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), steps=st.integers(1, 6), eps=st.floats(0.0, 0.4))
def test_random_dags_sound_and_tighter_than_intervals(seed, steps, eps):
    rng = np.random.default_rng(seed)
    net = random_dag(rng, steps)
    plan = Plan.of(net, DEEPPOLY)
    x = rng.uniform(size=net.input_size)
    box = InputBox.linf(x, eps)
    out = net.forward(_sample(rng, box))
    lo, hi = output_bounds(plan, box)
    assert np.all(out >= lo) and np.all(out <= hi)
    ilo, ihi = interval_bounds(net, box)
    assert np.all(lo >= ilo) and np.all(hi <= ihi)
    label = net.predict(x)
    m = margins(plan, box, label)
    others = np.arange(net.n_outputs) != label
    assert np.all((out[:, [label]] - out)[:, others] >= m[others])
    C, d = rng.normal(size=(4, net.n_outputs)), rng.normal(size=4)
    assert np.all(out @ C.T + d >= DEEPPOLY.linear_lower(analyse(plan, box), C, d))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), eps=st.floats(0.0, 0.3))
def test_chain_with_explicit_sources_equals_the_chain(seed, eps):
    # a chain written as a graph, also walked by the graph back-substitution, gives the
    # chain's bounds exactly
    rng = np.random.default_rng(seed)
    layers = (_conv(rng, 1, 2, 5), Relu(), _conv(rng, 2, 2, 5), LeakyRelu(0.2),
              Dense(rng.normal(size=(6, 50)) / 7, rng.normal(size=6)), Relu(),
              Dense(rng.normal(size=(3, 6)), rng.normal(size=3)))
    chain = Network(layers, (1, 5, 5), 3)
    graph = Network(layers, (1, 5, 5), 3, sources=tuple((i - 1,) for i in range(len(layers))))
    box = InputBox.linf(rng.uniform(size=25), eps)
    expect = output_bounds(Plan.of(chain, DEEPPOLY), box)
    got = output_bounds(Plan.of(graph, DEEPPOLY), box)
    assert all(np.array_equal(a, b) for a, b in zip(got, expect, strict=True))
    with mock.patch.object(deeppoly_state, "_back_chain", deeppoly_state._back_graph):
        got = output_bounds(Plan.of(graph, DEEPPOLY), box)
    assert all(np.array_equal(a, b) for a, b in zip(got, expect, strict=True))


def residual_mnist(rng) -> Network:
    """A 1x28x28 residual CNN with random weights: a stride-2 convolution to 8x14x14, two
    residual blocks relu(x + conv(relu(conv(x)))), a stride-2 convolution and a dense layer."""
    def conv(c, oc, hw, stride=1, scale=1.0):
        out = (hw + 2 - 3) // stride + 1
        w = rng.normal(size=(oc, c, 3, 3)) * scale * np.sqrt(2.0 / (9 * c))
        return Conv(w, rng.normal(size=oc) * 0.05, (c, hw, hw), (oc, out, out),
                    (stride, stride), (1, 1, 1, 1))

    layers = [conv(1, 8, 28, 2), Relu()]
    sources = [(INPUT,), (0,)]
    for _ in range(2):
        skip = len(layers) - 1
        layers += [conv(8, 8, 14), Relu(), conv(8, 8, 14, scale=0.5), Add(), Relu()]
        sources += [(skip,), (skip + 1,), (skip + 2,), (skip, skip + 3), (skip + 4,)]
    layers += [conv(8, 8, 14, 2), Relu(), Dense(rng.normal(size=(10, 392)) / 20, np.zeros(10))]
    sources += [(len(sources) - 1,), (len(sources),), (len(sources) + 1,)]
    return Network(tuple(layers), (1, 28, 28), 10, sources=tuple(sources))


def test_residual_mnist_sound_on_samples():
    rng = np.random.default_rng(7)
    net = residual_mnist(rng)
    plan = Plan.of(net, DEEPPOLY)
    x = rng.uniform(size=net.input_size)
    box = InputBox.linf(x, 0.01)
    out = net.forward(_sample(rng, box, 60))
    lo, hi = output_bounds(plan, box)
    assert np.all(out >= lo) and np.all(out <= hi)
    ilo, ihi = interval_bounds(net, box)
    assert np.all(lo >= ilo) and np.all(hi <= ihi) and np.mean(hi - lo) < np.mean(ihi - ilo)


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_joined_and_summed_rows_keep_their_claim_in_exact_arithmetic(seed):
    # rows over 4 neurons with repeats and cancelling coefficients of mixed magnitude: the
    # exact value of the parts' sum is >= that of the joined, summed rows minus the error
    # they added (checked in rationals at points of the neurons' box)
    rng = np.random.default_rng(seed)
    k, lo, hi = 3, -rng.uniform(0, 2, 4), rng.uniform(0, 2, 4)

    def part():
        n = int(rng.integers(1, 6))
        big = rng.choice([1.0, 1e8, 1e16], size=(n, k)) if rng.random() < 0.5 else 1.0
        return (np.array([0, n]), rng.integers(0, 4, n), rng.normal(size=(n, k)) * big,
                rng.normal(size=(1, k)) * rng.choice([1.0, 1e16]),
                np.abs(rng.normal(size=(1, k))) * 1e-9)

    a, b = part(), part()
    joined = join_rows(*a, *b)
    summed = sum_rows(*joined, np.maximum(np.abs(lo), np.abs(hi)))
    assert len(set(summed[1].tolist())) == summed[1].size  # one entry per neuron

    def value(rows, x, r):
        _, sup, T, c, err = rows
        terms = [Fraction(float(T[s, r])) * x[sup[s]] for s in range(sup.size)]
        return sum(terms, Fraction(float(c[0, r]))), Fraction(float(err[0, r]))

    for _ in range(5):
        x = [Fraction(float(v)) for v in rng.uniform(lo, hi)]
        for r in range(k):
            (va, ea), (vb, eb) = value(a, x, r), value(b, x, r)
            vs, es = value(summed, x, r)
            assert va - ea + vb - eb >= vs - es


def test_pgd_never_beats_the_deeppoly_radius_of_a_residual_net():
    """The residual LeakyReLU / concat net of test_graph_attack: PGD finds no class change
    inside the DeepPoly radius, which is at least DeepZono's on average."""
    torch = pytest.importorskip("torch")
    from study.adaptive_attacks import TorchNet, pgd
    from tests.verifier.test_graph_attack import _residual_net

    net = _residual_net(3)
    tnet = TorchNet(net)
    xs = np.random.default_rng(4).uniform(size=(6, net.input_size))
    labels = np.argmax(net.forward(xs), 1)
    poly = np.array([certified_radius(net, x, VerifierSettings(domain="deeppoly")) for x in xs])
    zono = np.array([certified_radius(net, x, VerifierSettings(domain="deepzono")) for x in xs])
    assert np.all(poly > 0) and np.mean(poly) >= np.mean(zono)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for x, y, r in zip(xs, labels, poly, strict=True):
            adv = pgd(tnet, x[None], np.array([y]), float(r), kappa=10.0, steps=60,
                      restarts=4)[0]
            assert InputBox.linf(x, r).contains(adv)
            assert net.predict(adv) == y, f"adversarial inside the DeepPoly radius {r}"
    finally:
        torch.set_num_threads(threads)
