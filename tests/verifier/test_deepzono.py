"""DeepZono transformers: exact numbers on hand-checkable cases, soundness on random ones."""

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from verifier import is_robust, margins, output_bounds, plan_for
from verifier.box import InputBox
from verifier.network import Conv, Dense, MaxPool, Network, Relu, Scale, Sigmoid, Tanh
from verifier.walk import analyse


def _net(layers, in_shape, n_out):
    return Network(tuple(layers), in_shape, n_out)


def test_affine_is_exact():
    box = InputBox(np.array([0.0, 1.0, 2.0]), np.array([2.0, 3.0, 4.0]))  # [1, 2, 3] +/- 1
    net = _net([Dense(np.array([[1.0, -1.0, 2.0]]), np.array([0.5]))], (3,), 1)
    lo, hi = output_bounds(net, box)
    assert lo[0] == pytest.approx(1.5, abs=1e-12) and hi[0] == pytest.approx(9.5, abs=1e-12)
    assert lo[0] <= 1.5 and hi[0] >= 9.5  # rounded outward, never inward


def test_relu_crossing_uses_the_deepzono_slope():
    # x in [-1, 3]: slope 3/4, offset 3/8 +/- 3/8, so relu(x) is boxed by [-0.75, 3]
    box = InputBox(np.array([-1.0]), np.array([3.0]))
    net = _net([Dense(np.eye(1), np.zeros(1)), Relu(), Dense(np.eye(1), np.zeros(1))], (1,), 1)
    lo, hi = output_bounds(net, box)
    assert lo[0] == pytest.approx(-0.75, abs=1e-12) and hi[0] == pytest.approx(3.0, abs=1e-12)


def test_difference_zonotope_is_tighter_than_intervals():
    # z0 = x + 1, z1 = x: the difference is exactly 1 although the intervals overlap
    net = _net([Dense(np.array([[1.0], [1.0]]), np.array([1.0, 0.0]))], (1,), 2)
    m = margins(net, np.array([0.5]), 0.5, label=0)
    assert m[1] == pytest.approx(1.0, abs=1e-12)
    assert is_robust(net, np.array([0.5]), 0.5)


def test_maxpool_dominating_input_passes_through():
    # inputs 2x2, one channel: pixel 0 in [0.9, 1.0] dominates pixels in [0, 0.3]
    pool = MaxPool((1, 2, 2), (1, 1, 1), (2, 2), (2, 2), (0, 0, 0, 0))
    net = _net([Scale(np.ones(4), np.zeros(4)), pool, Dense(np.eye(1), np.zeros(1))], (1, 2, 2), 1)
    box = InputBox(np.array([0.9, 0.0, 0.1, 0.0]), np.array([1.0, 0.3, 0.2, 0.3]))
    lo, hi = output_bounds(net, box)
    assert lo[0] == pytest.approx(0.9, abs=1e-12) and hi[0] == pytest.approx(1.0, abs=1e-12)
    box = InputBox(np.array([0.2, 0.0, 0.1, 0.0]), np.array([1.0, 0.5, 0.2, 0.3]))
    lo, hi = output_bounds(net, box)  # undecided: boxed as [max lower, max upper]
    assert lo[0] == pytest.approx(0.2, abs=1e-12) and hi[0] == pytest.approx(1.0, abs=1e-12)


def _pair_pool_net():
    # pixels a, b, c -> 1x2 conv with weights [1, 1] -> (a + b, b + c) -> max over both
    conv = Conv(np.ones((1, 1, 1, 2)), np.zeros(1), (1, 1, 3), (1, 1, 2), (1, 1), (0, 0, 0, 0))
    pool = MaxPool((1, 1, 2), (1, 1, 1), (1, 2), (1, 2), (0, 0, 0, 0))
    return _net([conv, pool, Dense(np.eye(1), np.zeros(1))], (1, 1, 3), 1)


def test_maxpool_dominance_is_tested_on_the_difference_of_affine_forms():
    # a = 1, b in [0, 1], c = 0.5: a + b in [1, 2] and b + c in [0.5, 1.5] overlap as intervals,
    # but (a + b) - (b + c) = 0.5 > 0 exactly, so a + b passes through with b's generator
    plan = plan_for(_pair_pool_net())
    box = InputBox(np.array([1.0, 0.0, 0.5]), np.array([1.0, 1.0, 0.5]))
    z = analyse(replace(plan, steps=plan.steps[:2]), box)
    assert z.m == 3  # generator ids 0..2 (the inputs): no fresh one; the winner carries b's
    assert z.c[0] == pytest.approx(1.5, abs=1e-12)
    assert list(z.idx) == [1] and z.val[0] == pytest.approx(0.5, abs=1e-12)
    lo, hi = output_bounds(plan, box)
    assert lo[0] == pytest.approx(1.0, abs=1e-12) and hi[0] == pytest.approx(2.0, abs=1e-12)


def test_maxpool_without_generators_adds_none():
    # every input fixed: the window is a constant; no fresh generator, a tiny error box only
    plan = plan_for(_pair_pool_net())
    box = InputBox(np.array([1.0, 0.25, 0.5]), np.array([1.0, 0.25, 0.5]))
    z = analyse(replace(plan, steps=plan.steps[:2]), box)
    assert z.m == 3 and len(z.idx) == 0
    assert z.c[0] == pytest.approx(1.25, abs=1e-12) and 0 < z.beta[0] < 1e-12


def test_maxpool_undecided_window_gets_one_fresh_generator():
    # a + b and b + c with a in [0, 1], c in [0, 1]: either may win
    plan = plan_for(_pair_pool_net())
    box = InputBox(np.array([0.0, 0.0, 0.0]), np.array([1.0, 1.0, 1.0]))
    z = analyse(replace(plan, steps=plan.steps[:2]), box)
    assert z.m == 4 and list(z.idx) == [3]
    lo, hi = output_bounds(plan, box)
    assert lo[0] == pytest.approx(0.0, abs=1e-12) and hi[0] == pytest.approx(2.0, abs=1e-12)


def _random_net(rng, kind, act):
    if kind == "dense":
        sizes = [6, 7, 5, 3]
        layers = []
        for a, b in zip(sizes[:-1], sizes[1:], strict=True):
            layers += [Dense(rng.normal(size=(b, a)), rng.normal(size=b)), act()]
        return _net(layers[:-1], (6,), 3)
    conv1 = Conv(rng.normal(size=(2, 1, 3, 3)), rng.normal(size=2) * 0.3, (1, 7, 7), (2, 7, 7), (1, 1), (1, 1, 1, 1))
    pool = MaxPool((2, 7, 7), (2, 3, 3), (2, 2), (2, 2), (0, 0, 0, 0))
    conv2 = Conv(rng.normal(size=(3, 2, 2, 2)), rng.normal(size=3) * 0.3, (2, 3, 3), (3, 1, 1), (2, 2), (0, 0, 0, 0))
    layers = [Scale(np.full(49, 2.0), np.full(49, -1.0)), conv1, act(), pool, conv2, act(),
              Dense(rng.normal(size=(4, 3)), rng.normal(size=4))]
    return _net(layers, (1, 7, 7), 4)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    kind=st.sampled_from(["dense", "conv"]),
    act=st.sampled_from([Relu, Sigmoid, Tanh]),
    eps=st.floats(0.0, 0.5),
)
def test_sampled_points_stay_inside_the_bounds(seed, kind, act, eps):
    rng = np.random.default_rng(seed)
    net = _random_net(rng, kind, act)
    x = rng.uniform(size=net.input_size)
    box = InputBox.linf(x, eps)
    lo, hi = output_bounds(net, box)
    corners = rng.integers(0, 2, size=(300, net.input_size)).astype(float)
    ys = np.concatenate([rng.uniform(box.lower, box.upper, size=(700, net.input_size)),
                         box.lower + corners * (box.upper - box.lower)])
    out = net.forward(ys)
    assert np.all(out >= lo) and np.all(out <= hi)
    label = net.predict(x)
    m = margins(net, x, eps, label)
    others = np.arange(net.n_outputs) != label
    diffs = (out[:, [label]] - out)[:, others]
    assert np.all(diffs >= m[others])  # every sampled logit gap respects its certified bound


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), act=st.sampled_from([Relu, Sigmoid, Tanh]),
       eps=st.floats(0.0, 0.5))
def test_fused_chain_matches_the_layer_walk(seed, act, eps):
    # the fused kernel folds activations into dense layers; it must agree with the walk up to
    # rounding-level slack (a few ulp of the magnitudes involved)
    rng = np.random.default_rng(seed)
    net = _random_net(rng, "dense", act)
    plan = plan_for(net)
    assert plan.fast is not None
    box = InputBox.linf(rng.uniform(size=net.input_size), eps)
    C = rng.normal(size=(5, net.n_outputs))
    d = rng.normal(size=5)
    fused = plan.domain.fast_path(plan.fast, box, C, d)
    walked = plan.domain.linear_lower(analyse(plan, box), C, d)
    assert np.allclose(fused, walked, rtol=1e-9, atol=1e-9)


def test_kernel_row_sums_bound_the_rows():
    # conv, activation and pool kernels hand their row sums on; each must bound the row it wrote
    rng = np.random.default_rng(3)
    net = _random_net(rng, "conv", Relu)
    plan = plan_for(net)
    box = InputBox.linf(rng.uniform(size=net.input_size), 0.2)
    for k in range(2, 6):
        z = analyse(replace(plan, steps=plan.steps[:k]), box)
        assert z.gsum is not None
        exact = np.add.reduceat(np.abs(np.append(z.val, 0.0)), z.indptr[:-1])
        exact[np.diff(z.indptr) == 0] = 0.0
        assert np.all(z.gsum >= exact)
        assert np.all(z.gsum <= exact * (1 + 1e-12) + 1e-290)
