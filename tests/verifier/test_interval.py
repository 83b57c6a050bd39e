"""The interval domain: exact on hand-checked boxes, sound on random networks of every layer
kind (sampled points and exact MILP radii), and the decision cascade built on it."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from verifier import VerifierSettings, certified_radius
from verifier.box import InputBox
from verifier.check import box_margins, output_bounds
from verifier.decide import cascade_radius, decide, decide_many
from verifier.exact import exact_radius
from verifier.network import (
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
)
from verifier.settings import DOMAIN_NAMES

INTERVAL = VerifierSettings(domain="interval")


def test_bounds_of_a_known_layer_are_exact_to_rounding() -> None:
    # [1, 2, 3] +/- 1 through y = [1, -2, 0.5] . x + 1: centre 1 - 4 + 1.5 + 1, radius 3.5
    net = Network((Dense(np.array([[1.0, -2.0, 0.5]]), np.array([1.0])),), (3,), 1)
    box = InputBox(np.array([0.0, 1.0, 2.0]), np.array([2.0, 3.0, 4.0]))
    lo, hi = output_bounds(net, box, INTERVAL)
    assert lo[0] <= -4.0 and hi[0] >= 3.0
    assert np.allclose([lo[0], hi[0]], [-4.0, 3.0], atol=1e-12)


def test_the_last_layer_is_folded_into_the_margin() -> None:
    # y0 = x, y1 = x: a logit box says y0 - y1 in [-1, 1]; folding C W gives exactly 0
    net = Network((Relu(), Dense(np.array([[1.0], [1.0]]), np.array([0.5, 0.0]))), (1,), 2)
    box = InputBox(np.array([0.0]), np.array([1.0]))
    m = box_margins(net, box, 0, INTERVAL)
    assert 0.5 - 1e-12 <= m[1] <= 0.5


def _random_net(rng: np.random.Generator, kind: str) -> Network:
    """A small network of one family: dense with each activation, conv + pool, or a graph."""
    if kind == "conv":
        conv = Conv(rng.normal(size=(2, 1, 3, 3)), rng.normal(size=2) * 0.1, (1, 6, 6),
                    (2, 4, 4), (1, 1), (0, 0, 0, 0))
        pool = MaxPool((2, 4, 4), (2, 2, 2), (2, 2), (2, 2), (0, 0, 0, 0))
        out = Dense(rng.normal(size=(3, 8)), rng.normal(size=3) * 0.1)
        return Network((conv, Relu(), pool, out), (1, 6, 6), 3)
    if kind == "graph":
        a = Dense(rng.normal(size=(5, 4)), rng.normal(size=5) * 0.1)
        b = Dense(rng.normal(size=(5, 5)), rng.normal(size=5) * 0.1)
        out = Dense(rng.normal(size=(3, 10)), rng.normal(size=3) * 0.1)
        layers = (a, Relu(), b, Add(), Concat((5, 5)), out)
        sources = ((-1,), (0,), (1,), (2, 1), (3, 0), (4,))
        return Network(layers, (4,), 3, sources=sources)
    act = {"relu": Relu(), "leaky": LeakyRelu(0.1), "sigmoid": Sigmoid(), "tanh": Tanh()}[kind]
    scale = Scale(rng.uniform(0.5, 2.0, size=4), rng.normal(size=4) * 0.1)
    return Network((scale, Dense(rng.normal(size=(6, 4)), rng.normal(size=6)), act,
                    Dense(rng.normal(size=(3, 6)), rng.normal(size=3))), (4,), 3)


KINDS = ("relu", "leaky", "sigmoid", "tanh", "conv", "graph")


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), kind=st.sampled_from(KINDS),
       eps=st.floats(0.001, 0.3))
def test_bounds_contain_every_sampled_output(seed, kind, eps) -> None:
    rng = np.random.default_rng(seed)
    net = _random_net(rng, kind)
    x = rng.uniform(0, 1, size=net.input_size)
    box = InputBox.linf(x, eps)
    lo, hi = output_bounds(net, box, INTERVAL)
    label = net.predict(x)
    margins = box_margins(net, box, label, INTERVAL)
    samples = rng.uniform(box.lower, box.upper, size=(200, net.input_size))
    corners = np.where(rng.random((50, net.input_size)) < 0.5, box.lower, box.upper)
    for z in np.concatenate([samples, corners]):
        y = net.forward(z)
        assert np.all(lo <= y) and np.all(y <= hi)
        others = np.arange(net.n_outputs) != label  # the margin is inf at the label itself
        assert np.all(margins[others] <= (y[label] - y)[others])


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_interval_and_cascade_radii_never_exceed_the_exact_radius(seed) -> None:
    rng = np.random.default_rng(seed)
    net = Network((Dense(rng.normal(size=(6, 4)), rng.normal(size=6) * 0.3), Relu(),
                   Dense(rng.normal(size=(3, 6)), rng.normal(size=3) * 0.3)), (4,), 3)
    x = rng.uniform(0, 1, size=4)
    exact = exact_radius(net, x, max_eps=0.5).radius
    cfg = VerifierSettings(up=0.5, tol=0.001)
    assert certified_radius(net, x, VerifierSettings(domain="interval", up=0.5)) <= exact
    assert cascade_radius(net, x, cfg).radius <= exact
    if 0.002 < exact < 0.5:  # just past the exact radius a point of another class exists
        assert decide(net, x, exact * 1.001 + 1e-9, cfg).proved is False


def test_a_decision_stops_at_the_first_stage_that_proves() -> None:
    rng = np.random.default_rng(0)
    net = Network((Dense(rng.normal(size=(3, 4)), rng.normal(size=3)),), (4,), 3)
    x = rng.uniform(0, 1, size=4)
    proof = decide(net, x, 1e-4, VerifierSettings(stages=("interval", "deepzono")))
    assert proof.proved and proof.stage == "interval" and proof.passes == 1
    swap = Network((Dense(np.eye(2), np.zeros(2)),), (2,), 2)  # class 1 at (0, 1)
    far = decide(swap, np.array([0.9, 0.1]), 1.0, VerifierSettings(stages=DOMAIN_NAMES))
    assert not far.proved and far.stage is None and far.passes == len(DOMAIN_NAMES)
    assert far.margin < 0


def test_decide_many_equals_one_by_one_decisions() -> None:
    rng = np.random.default_rng(1)
    net = _random_net(rng, "conv")
    xs = rng.uniform(0, 1, size=(12, 36))
    one = [decide(net, x, 0.02) for x in xs]
    assert decide_many(net, xs, 0.02, jobs=2) == one
    assert {p.proved for p in one} == {True, False}
