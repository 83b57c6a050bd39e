"""DeepZono on residual conv nets: a residual Add recognises the skip's generators inside the
body's (through convolutions, activations and max pools), so it adds no ids and a body that
is an exact function of the skip cancels against it block after block."""

import math

import numpy as np
import pytest

from verifier import plan_for
from verifier.box import InputBox
from verifier.domains.deepzono import join_kernels as J
from verifier.domains.deepzono import kernels as K
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


def _random_rows(rng, n, m, within=None):
    """CSR rows of distinct ids < m; with `within` (indptr, idx), each row a subset of its."""
    rows = []
    for i in range(n):
        pool = np.arange(m) if within is None else within[1][within[0][i]: within[0][i + 1]]
        k = rng.integers(0, len(pool) + 1)
        rows.append(rng.permutation(pool)[:k])
    ptr = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
    idx = np.concatenate(rows).astype(np.int64)
    return ptr, idx, rng.normal(size=len(idx))


def _operand(rng, n, ptr, idx, val):
    return (rng.normal(size=n), ptr, idx, val, np.abs(rng.normal(size=n)) * 1e-9,
            K.csr_abs_sums(ptr, val) * (1 + 1e-15))


def _dense_rows(ptr, idx, val, m):
    out = np.zeros((len(ptr) - 1, m))
    for i in range(len(ptr) - 1):
        out[i, idx[ptr[i]: ptr[i + 1]]] = val[ptr[i]: ptr[i + 1]]
    return out


@pytest.mark.parametrize("seed", range(5))
def test_an_add_within_the_other_operands_rows_is_csr_adds_sum(seed):
    rng = np.random.default_rng(seed)
    n, m = 7, 12
    big = _operand(rng, n, *_random_rows(rng, n, m))
    small_rows = _random_rows(rng, n, m, within=big[1:3])
    small = _operand(rng, n, *small_rows)
    at = {(i, j): q for i in range(n) for q, j in enumerate(big[2]) if big[1][i] <= q < big[1][i + 1]}
    for i in range(n):  # every other entry of the small operand cancels the big one's
        for q in range(small[1][i], small[1][i + 1], 2):
            small[3][q] = -big[3][at[i, small[2][q]]]
    ok, c, val, beta, gsum = J.csr_add_within(*small, *big, m)
    assert ok
    c2, ptr2, idx2, val2, beta2, gsum2 = J.csr_add(*small, *big, m)
    assert np.array_equal(c, c2) and np.array_equal(beta, beta2)
    assert np.array_equal(_dense_rows(big[1], big[2], val, m), _dense_rows(ptr2, idx2, val2, m))
    exact = [math.fsum(abs(v) for v in val[big[1][i]: big[1][i + 1]]) for i in range(n)]
    assert np.all(gsum >= exact) and gsum == pytest.approx(gsum2, rel=1e-14, abs=1e-300)
    extra = _operand(rng, n, *_random_rows(rng, n, m))
    if any(not set(extra[2][extra[1][i]: extra[1][i + 1]])
           <= set(big[2][big[1][i]: big[1][i + 1]]) for i in range(n)):
        assert not J.csr_add_within(*extra, *big, m)[0]
