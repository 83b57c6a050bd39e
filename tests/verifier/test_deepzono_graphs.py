"""DeepZono on graphs: shared generators cancel in joins, branch generators never collide,
the LeakyReLU relaxation, and soundness on random small DAGs."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from verifier import margins, output_bounds, plan_for
from verifier.box import InputBox
from verifier.domains.deepzono.join_kernels import leaky_relaxation
from verifier.domains.deepzono.kernels import relaxation
from verifier.domains.deepzono.transfers import Zonotope
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
)
from verifier.walk import analyse


class _Graph:
    """Layers with their sources, added in topological order."""

    def __init__(self):
        self.layers, self.sources = [], []

    def __call__(self, layer, *src):
        self.layers.append(layer)
        self.sources.append(src or (len(self.layers) - 2 if len(self.layers) > 1 else INPUT,))
        return len(self.layers) - 1

    def net(self, in_shape, n_out):
        return Network(tuple(self.layers), in_shape, n_out, sources=tuple(self.sources))


def _eye(n):
    return Dense(np.eye(n), np.zeros(n))


def _scale(n, a):
    return Scale(np.full(n, float(a)), np.zeros(n))


def test_x_minus_x_is_exactly_zero():
    g = _Graph()
    g(_scale(3, 1.0), INPUT)
    g(_scale(3, -1.0), INPUT)
    g(Add(), 0, 1)
    g(_eye(3))
    box = InputBox(np.array([0.0, 1.0, 2.0]), np.array([2.0, 3.0, 4.0]))
    lo, hi = output_bounds(g.net((3,), 3), box)
    assert np.all(np.abs(lo) < 1e-13) and np.all(np.abs(hi) < 1e-13)
    assert np.all(lo <= 0.0) and np.all(hi >= 0.0)


def test_branch_generators_do_not_collide():
    # x in [-1, 3]: relu(x) = 3/4 x + 3/8 + 3/8 e1 and relu(-x) = -1/4 x + 3/8 + 3/8 e2 with
    # fresh e1, e2; their difference is x + 3/8 (e1 - e2) = 1 + 2 e0 + 3/8 (e1 - e2), boxed
    # as [-1.75, 3.75]. Had both ReLUs numbered their generator alike, e1 - e2 would cancel.
    g = _Graph()
    a = g(Relu(), INPUT)
    neg = g(_scale(1, -1.0), INPUT)
    b = g(Relu(), neg)
    nb = g(_scale(1, -1.0), b)
    s = g(Add(), a, nb)
    net = g.net((1,), 1)
    box = InputBox(np.array([-1.0]), np.array([3.0]))
    lo, hi = output_bounds(net, box)
    assert lo[0] == pytest.approx(-1.75, abs=1e-12) and hi[0] == pytest.approx(3.75, abs=1e-12)
    z = analyse(plan_for(net), box)
    assert z.m == 3 and [end for _, end in z.blocks] == [1, 2, 3]
    assert s == len(net.layers) - 1


def test_a_shared_relu_generator_cancels():
    # r = relu(x) carries one new generator; 2r - r - r shares it in all three and is 0
    g = _Graph()
    r = g(Relu(), INPUT)
    two = g(_scale(2, 2.0), r)
    m1 = g(_scale(2, -1.0), r)
    m2 = g(_scale(2, -1.0), r)
    g(Add(), two, m1, m2)
    box = InputBox(np.array([-1.0, -2.0]), np.array([3.0, 1.0]))
    lo, hi = output_bounds(g.net((2,), 2), box)
    assert np.all(np.abs(lo) < 1e-13) and np.all(np.abs(hi) < 1e-13)


def test_dense_branches_of_one_input_share_its_renumbering():
    # both Dense layers renumber the input's generators alike: W x - W x is 0
    w = np.array([[1.0, -2.0], [0.5, 3.0]])
    g = _Graph()
    a = g(Dense(w, np.ones(2)), INPUT)
    b = g(Dense(w, np.ones(2)), INPUT)
    nb = g(_scale(2, -1.0), b)
    g(Add(), a, nb)
    lo, hi = output_bounds(g.net((2,), 2), InputBox(np.zeros(2), np.ones(2)))
    assert np.all(np.abs(lo) < 1e-13) and np.all(np.abs(hi) < 1e-13)


def test_mixed_dense_and_sparse_operands():
    # x + relu(D x) with D the identity: the sparse skip and the dense branch share x's ids
    g = _Graph()
    d = g(_eye(2), INPUT)
    r = g(Relu(), d)
    g(Add(), INPUT, r)
    g(Concat((2, 2)), 2, d)
    g(Dense(np.array([[1.0, 0, -1, 0], [0, 1, 0, -1]]), np.zeros(2)))
    box = InputBox(np.array([-1.0, 0.5]), np.array([3.0, 1.0]))
    lo, hi = output_bounds(g.net((2,), 2), box)
    # x + relu(x) - x = relu(x): DeepZono's relu box [-0.75, 3] and [0.5, 1]
    assert lo == pytest.approx([-0.75, 0.5], abs=1e-12)
    assert hi == pytest.approx([3.0, 1.0], abs=1e-12)


def test_concat_stacks_neurons_and_keeps_sharing():
    g = _Graph()
    g(Concat((2, 2)), INPUT, g(_scale(2, -1.0), INPUT))
    g(Dense(np.array([[1.0, 0, 1, 0], [0, 1, 0, 0]]), np.zeros(2)))
    box = InputBox(np.array([0.0, 1.0]), np.array([2.0, 3.0]))
    lo, hi = output_bounds(g.net((2,), 2), box)
    assert abs(lo[0]) < 1e-13 and abs(hi[0]) < 1e-13  # x0 - x0
    assert lo[1] == pytest.approx(1.0, abs=1e-12) and hi[1] == pytest.approx(3.0, abs=1e-12)


def test_leaky_relu_relaxation_values():
    lam, mu, nu = leaky_relaxation(0.1, np.array([-1.0, -3.0, 0.5]), np.array([3.0, -1.0, 2.0]))
    # crossing: slope (3 + 0.1) / 4, offset in [0, 0.675]; stable: slopes 0.1 and 1, exact
    assert lam[0] == pytest.approx(0.775) and mu[0] == pytest.approx(0.3375)
    assert nu[0] == pytest.approx(0.3375) and nu[0] >= 0.3375
    assert (lam[1], mu[1]) == (0.1, 0.0) and nu[1] < 0
    assert (lam[2], mu[2]) == (1.0, 0.0) and nu[2] < 0
    lo, hi = np.array([-1.0, -2.0, 0.5, -4.0]), np.array([3.0, -1.0, 2.0, 0.25])
    np.testing.assert_array_equal(np.stack(leaky_relaxation(0.0, lo, hi)),
                                  np.stack(relaxation(0, lo, hi)))


def test_leaky_relu_bounds():
    # x in [-1, 3], alpha 0.1: 0.775 x + 0.3375 +/- 0.3375 boxes to [-0.775, 3]
    g = _Graph()
    g(_eye(1), INPUT)
    g(LeakyRelu(0.1))
    g(_eye(1))
    lo, hi = output_bounds(g.net((1,), 1), InputBox(np.array([-1.0]), np.array([3.0])))
    assert lo[0] == pytest.approx(-0.775, abs=1e-12) and hi[0] == pytest.approx(3.0, abs=1e-12)


def test_untagged_generators_count_as_private():
    box = InputBox(np.array([-1.0]), np.array([1.0]))
    z = Zonotope.from_box(box)
    bare = Zonotope(z.c, z.beta, z.m, indptr=z.indptr, idx=z.idx, val=-z.val)
    plan = plan_for(Network((Add(),), (1,), 1, sources=((INPUT, INPUT),)))
    transfer, prepared = plan.steps[0]
    s = transfer(prepared, z, bare)  # -x with no blocks: not known to share x's generator
    lo, hi, _ = s.bounds()
    assert s.m == 2 and lo[0] == pytest.approx(-2.0) and hi[0] == pytest.approx(2.0)


# ----------------------------------------------------------------------------- random DAGs


def _conv(rng, cin, cout, side, k=3, pad=1):
    out = side + 2 * pad - k + 1
    return Conv(rng.normal(size=(cout, cin, k, k)) * 0.5, rng.normal(size=cout) * 0.2,
                (cin, side, side), (cout, out, out), (1, 1), (pad,) * 4)


def _avg_pool(c, side):
    w = np.zeros((c, c, 2, 2))
    w[np.arange(c), np.arange(c)] = 0.25
    return Conv(w, np.zeros(c), (c, side, side), (c, side // 2, side // 2), (2, 2), (0,) * 4, c)


def _act(rng, g, src):
    return g(Relu() if rng.random() < 0.5 else LeakyRelu(float(rng.uniform(0, 0.5))), src)


def _random_dag(rng, kind):
    """conv: residual blocks, a concat of two branches, an average or max pool, a dense head;
    dense: residual dense blocks and a concat of two branches."""
    g = _Graph()
    if kind == "conv":
        c, side = 2, 6
        cur = _act(rng, g, g(_conv(rng, 1, c, side), INPUT))
        for _ in range(rng.integers(1, 3)):
            body = _act(rng, g, g(_conv(rng, c, c, side), cur))
            body = g(_conv(rng, c, c, side), body)
            cur = _act(rng, g, g(Add(), cur, body))
        a = _act(rng, g, g(_conv(rng, c, 2, side), cur))
        b = g(_conv(rng, c, 1, side, k=1, pad=0), cur)
        cur = g(Concat((2 * side * side, side * side)), a, b)
        if rng.random() < 0.5:
            cur = g(_avg_pool(3, side), cur)
        else:
            cur = g(MaxPool((3, side, side), (3, 3, 3), (2, 2), (2, 2), (0,) * 4), cur)
        g(Dense(rng.normal(size=(4, 27)), rng.normal(size=4)), cur)
        return g.net((1, side, side), 4)
    n = 5
    cur = _act(rng, g, g(Dense(rng.normal(size=(n, 6)), rng.normal(size=n)), INPUT))
    for _ in range(rng.integers(1, 3)):
        body = _act(rng, g, g(Dense(rng.normal(size=(n, n)), rng.normal(size=n)), cur))
        cur = g(Add(), cur, g(Dense(rng.normal(size=(n, n)), rng.normal(size=n)), body))
    a = _act(rng, g, cur)
    cur = g(Concat((n, 6)), a, INPUT)
    g(Dense(rng.normal(size=(3, n + 6)), rng.normal(size=3)), cur)
    return g.net((6,), 3)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), kind=st.sampled_from(["conv", "dense"]),
       eps=st.floats(0.0, 0.3))
def test_sampled_points_stay_inside_the_bounds_of_random_dags(seed, kind, eps):
    rng = np.random.default_rng(seed)
    net = _random_dag(rng, kind)
    x = rng.uniform(size=net.input_size)
    box = InputBox.linf(x, eps)
    lo, hi = output_bounds(net, box)
    corners = rng.integers(0, 2, size=(200, net.input_size)).astype(float)
    ys = np.concatenate([rng.uniform(box.lower, box.upper, size=(400, net.input_size)),
                         box.lower + corners * (box.upper - box.lower)])
    out = net.forward(ys)
    assert np.all(out >= lo) and np.all(out <= hi)
    label = net.predict(x)
    m = margins(net, x, eps, label)
    others = np.arange(net.n_outputs) != label
    diffs = (out[:, [label]] - out)[:, others]
    assert np.all(diffs >= m[others])
