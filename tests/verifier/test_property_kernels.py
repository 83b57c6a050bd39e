"""The fused dense chain's property bound against exact rational arithmetic where rounding
is all there is (a point box, logits so alike that C W cancels), and the kernels' outward
rounding (next_up, next_down) against numpy's nextafter."""

from fractions import Fraction

import numpy as np
import pytest

from verifier import linear_bounds, plan_for
from verifier.box import InputBox
from verifier.network import Dense, Network, Relu
from verifier.numerics.rounding import next_down, next_up


def _exact_output(layers, x):
    """The network's output at x in exact rational arithmetic (the floats are rationals)."""
    v = [Fraction(float(t)) for t in x]
    for layer in layers:
        if isinstance(layer, Dense):
            v = [sum((Fraction(float(w)) * a for w, a in zip(row, v, strict=True)), Fraction(0))
                 + Fraction(float(b)) for row, b in zip(layer.weight, layer.bias, strict=True)]
        else:
            v = [max(a, Fraction(0)) for a in v]
    return v


def _near_tie_net(rng):
    """Dense-ReLU-Dense-ReLU-Dense whose last rows differ by ~1e-9: C W cancels heavily, so
    the rounding of C W itself is the largest error the bound has to cover (the cases where
    it is not exact: coefficients like 0.1, 0.2, -0.3)."""
    w1 = rng.normal(size=(12, 8)) * 3
    w2 = rng.normal(size=(9, 12)) * 3
    base = rng.normal(size=9) * 5
    w3 = base + rng.normal(size=(4, 9)) * 1e-9
    layers = [Dense(w1, rng.normal(size=12)), Relu(), Dense(w2, rng.normal(size=9)), Relu(),
              Dense(w3, rng.normal(size=4) * 1e-9)]
    return Network(tuple(layers), (8,), 4)


@pytest.mark.parametrize("seed", range(40))
def test_bound_never_exceeds_the_exact_value_at_a_point(seed):
    rng = np.random.default_rng(seed)
    net = _near_tie_net(rng)
    assert plan_for(net).fast is not None  # the fused chain is what is tested
    x = rng.uniform(-3, 3, size=8)
    # rows summing to ~0 cancel the shared part of W's rows, and inexactly (0.1 + 0.2 - 0.3)
    C = np.array([[1.0, -1.0, 0.0, 0.0], [0.1, 0.2, -0.3, 0.0], [0.7, -0.1, -0.6, 0.0],
                  [1 / 3, 1 / 3, 1 / 3, -1.0]])
    d = rng.normal(size=4) * 1e-9
    lower = linear_bounds(net, InputBox(x, x), C, d)
    y = _exact_output(net.layers, x)
    for i in range(4):
        exact = sum((Fraction(float(c)) * v for c, v in zip(C[i], y, strict=True)), Fraction(0))
        exact += Fraction(float(d[i]))
        assert Fraction(float(lower[i])) <= exact
        assert float(exact) - lower[i] < 1e-9  # and the bound is not vacuous


def test_next_up_and_down_are_nextafter_bit_for_bit():
    rng = np.random.default_rng(0)
    tiny, big = 5e-324, np.finfo(np.float64).max
    special = [0.0, -0.0, tiny, -tiny, 2.2250738585072014e-308, -2.2250738585072014e-308,
               1.0, -1.0, big, -big, np.inf, -np.inf, np.nan]
    values = np.array(special + list(rng.normal(size=2000) * 10.0 ** rng.integers(-320, 300, 2000)))
    for kernel, target in ((next_up, np.inf), (next_down, -np.inf)):
        got = values.copy()
        kernel(got)
        with np.errstate(over="ignore"):
            want = np.nextafter(values, target)
        assert np.array_equal(got.view(np.int64), want.view(np.int64))
