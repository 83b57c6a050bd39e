"""DeepZono on residual conv nets: a residual Add recognises the skip's generators inside the
body's (through convolutions, activations and max pools), so it adds no ids and a body that
is an exact function of the skip cancels against it block after block."""

import numpy as np
import pytest

from verifier import plan_for
from verifier.box import InputBox
from verifier.network import INPUT, Add, Conv, MaxPool, Network, Relu
from verifier.walk import analyse

C, SIDE = 2, 4
SHAPE = (C, SIDE, SIDE)


class _Graph:
    """Layers with their sources, added in topological order (sources default to the last)."""

    def __init__(self):
        self.layers, self.sources = [], []

    def __call__(self, layer, *src):
        self.layers.append(layer)
        self.sources.append(src or (len(self.layers) - 2 if len(self.layers) > 1 else INPUT,))
        return len(self.layers) - 1

    def net(self):
        return Network(tuple(self.layers), (1, SIDE, SIDE), C * SIDE * SIDE,
                       sources=tuple(self.sources))


def _conv3(rng, cin=C):
    return Conv(rng.normal(size=(C, cin, 3, 3)) * 0.5, rng.normal(size=C) * 0.2,
                (cin, SIDE, SIDE), SHAPE, (1, 1), (1,) * 4)


def _conv1(a, b):
    """1x1 convolution a * x + b per channel."""
    return Conv(a * np.eye(C).reshape(C, C, 1, 1), np.full(C, float(b)), SHAPE, SHAPE, (1, 1),
                (0,) * 4)


def _states(net, box):
    """Every layer's DeepZono state (the walker's order, nothing dropped)."""
    plan = plan_for(net)
    outs = {INPUT: plan.domain.start(box)}
    for i, (transfer, prepared) in enumerate(plan.steps):
        outs[i] = transfer(prepared, *(outs[j] for j in plan.sources[i]))
    return outs


def _box(rng, eps):
    return InputBox.linf(rng.uniform(0.2, 0.8, size=SIDE * SIDE), eps)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("pool", [False, True])
def test_a_residual_add_adds_no_generators(seed, pool):
    rng = np.random.default_rng(seed)
    g = _Graph()
    cur = g(Relu(), g(_conv3(rng, 1), INPUT))
    adds = []
    for _ in range(4):
        body = g(_conv3(rng), cur)
        if pool:
            body = g(MaxPool(SHAPE, SHAPE, (3, 3), (1, 1), (1,) * 4), body)
        body = g(_conv3(rng), g(Relu(), body))
        adds.append(g(Add(), cur, body))
        cur = g(Relu(), adds[-1])
    net = g.net()
    outs = _states(net, _box(rng, 0.05))
    for a in adds:
        skip, body = (outs[j] for j in net.sources[a])
        assert body.blocks[: len(skip.blocks)] == skip.blocks  # the skip's ids, shared
        assert outs[a].m == body.m and outs[a].blocks == body.blocks
    # every id was made by the input box, a ReLU or a pool: none by a join
    made = SIDE * SIDE + sum(outs[i].m - outs[net.sources[i][0]].m
                             for i, layer in enumerate(net.layers)
                             if isinstance(layer, (Relu, MaxPool)))
    assert outs[len(net.layers) - 1].m == made


@pytest.mark.parametrize("blocks", [1, 3])
def test_a_body_exact_in_the_skip_cancels_block_after_block(blocks):
    # body = -1/2 relu(x + 10) + 6 = -x/2 + 1 exactly (the ReLU is stable), so every block
    # maps x to relu(x/2 + 1) = x/2 + 1: widths halve and no id is made after the first ReLU;
    # had the Add counted the skip's ids as private, widths would grow by 3/2 a block
    rng = np.random.default_rng(0)
    g = _Graph()
    cur = g(Relu(), g(_conv3(rng, 1), INPUT))
    first = cur
    for _ in range(blocks):
        body = g(_conv1(-0.5, 6.0), g(Relu(), g(_conv1(1.0, 10.0), cur)))
        cur = g(Relu(), g(Add(), cur, body))
    net = g.net()
    outs = _states(net, _box(rng, 0.05))
    lo0, hi0, _ = outs[first].bounds()
    lo, hi, _ = outs[cur].bounds()
    assert np.max(hi0 - lo0) > 0.05
    assert hi - lo == pytest.approx((hi0 - lo0) / 2**blocks, rel=1e-9, abs=1e-12)
    assert outs[cur].m == outs[first].m
    z = analyse(plan_for(net), _box(np.random.default_rng(0), 0.05))
    assert z.m == outs[first].m
