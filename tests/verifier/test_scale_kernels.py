"""Row groups as BLAS blocks (conv and dense on CSR zonotopes) and the memory cap."""

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from verifier import is_robust, output_bounds, plan_for
from verifier.box import InputBox
from verifier.domains.deepzono import kernels as K
from verifier.domains.deepzono.conv_kernels import csr_conv
from verifier.domains.deepzono.group_kernels import grouped_dense_affine, row_groups
from verifier.network import Conv, Dense, Network, Relu
from verifier.numerics.memory import ENV, VerifierMemoryError, cap_bytes
from verifier.walk import analyse

NO_GROUPS = 1 << 40  # a min_group no input reaches: every entry on its own


def _wide_net(rng) -> Network:
    """Enough channels per position for row groups to form after each ReLU."""
    def conv(co, ci, k, s, p, side, out):
        w = rng.normal(size=(co, ci, k, k)) / k
        return Conv(w, rng.normal(size=co) * 0.2, (ci, side, side), (co, out, out), (s, s),
                    (p, p, p, p))

    layers = [conv(6, 1, 3, 1, 1, 8, 8), Relu(), conv(5, 6, 3, 1, 1, 8, 8), Relu(),
              conv(4, 5, 2, 2, 0, 8, 4), Relu(), Dense(rng.normal(size=(8, 64)) / 8,
                                                       rng.normal(size=8) * 0.1),
              Relu(), Dense(rng.normal(size=(3, 8)), rng.normal(size=3))]
    return Network(tuple(layers), (1, 8, 8), 3)


def _state_before(net, box, k):
    plan = plan_for(net)
    return plan, analyse(replace(plan, steps=plan.steps[:k]), box)


def test_row_groups_share_prefixes_and_leave_tails():
    # rows 0-3 share ids 1, 2, 3 (in any order); rows 1 and 3 each add an id no other row has
    rows = [[1, 2, 3], [1, 9, 2, 3], [3, 1, 2], [1, 2, 3, 10], [4, 5], [], [4, 6]]
    indptr = np.cumsum([0] + [len(r) for r in rows])
    idx = np.array([j for r in rows for j in r], dtype=np.int64)
    idx2, _, plen, order, gptr = row_groups(indptr, idx, np.ones(len(idx)), 11, 2)
    groups = [sorted(order[gptr[g]:gptr[g + 1]]) for g in range(len(gptr) - 1)]
    assert [0, 1, 2, 3] in groups
    assert [5] not in groups and sum(len(g) for g in groups) == 6  # the empty row is left out
    assert list(plen[:4]) == [3, 3, 3, 3]
    assert list(idx2[indptr[1]:indptr[2]]) == [1, 2, 3, 9]  # the private id moved last
    assert plen[4] == 1 and plen[6] == 1  # 5 and 6 are used once: tails


@pytest.mark.parametrize("seed", range(4))
def test_grouped_conv_matches_the_entry_by_entry_path(seed):
    rng = np.random.default_rng(seed)
    net = _wide_net(rng)
    box = InputBox.linf(rng.uniform(size=64), 0.15)
    grouped_somewhere = False
    for k in (2, 4):  # the second and third convolutions read ReLU outputs
        plan, z = _state_before(net, box, k)
        gptr = row_groups(z.indptr, z.idx, z.val, z.m, 4)[-1]
        grouped_somewhere |= bool(np.any(np.diff(gptr) >= 4))
        _, _, rad = z.bounds()
        args = (z.c, z.indptr, z.idx, z.val, z.beta, rad, z.m, *plan.steps[k][1])
        a = csr_conv(*args, min_group=NO_GROUPS)
        b = csr_conv(*args)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])  # centre, rows
        assert np.array_equal(a[4], b[4])  # error box
        for r in range(len(a[0])):
            s = slice(a[1][r], a[1][r + 1])
            ra = dict(zip(a[2][s], a[3][s], strict=True))
            rb = dict(zip(b[2][s], b[3][s], strict=True))
            assert ra.keys() == rb.keys()
            # both within the a-priori rounding bound of the exact row, which beta covers
            assert sum(abs(v - rb[j]) for j, v in ra.items()) <= 2 * a[4][r]
        assert np.allclose(a[5], b[5], rtol=1e-12, atol=0)
    assert grouped_somewhere


@pytest.mark.parametrize("seed", range(4))
def test_grouped_dense_affine_matches_csr_to_dense_affine(seed):
    rng = np.random.default_rng(seed)
    net = _wide_net(rng)
    box = InputBox.linf(rng.uniform(size=64), 0.15)
    plan, z = _state_before(net, box, 6)
    _, wt, aw, b = plan.steps[6][1]
    _, _, rad = z.bounds()
    args = (z.c, z.indptr, z.idx, z.val, z.beta, rad, z.m, wt, aw, b)
    c0, gt0, beta0 = K.csr_to_dense_affine(*args)
    c1, gt1, beta1 = grouped_dense_affine(*args, 2)
    assert np.array_equal(c0, c1) and np.array_equal(beta0, beta1)
    assert np.allclose(gt0, gt1, rtol=1e-13, atol=1e-300 + 1e-13 * np.abs(gt0).max())


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), eps=st.floats(0.0, 0.4))
def test_sampled_points_stay_inside_the_grouped_bounds(seed, eps):
    rng = np.random.default_rng(seed)
    net = _wide_net(rng)
    x = rng.uniform(size=64)
    box = InputBox.linf(x, eps, 0.0, 1.0)
    lo, hi = output_bounds(net, box)
    corners = rng.integers(0, 2, size=(200, 64)).astype(float)
    ys = np.concatenate([rng.uniform(box.lower, box.upper, size=(800, 64)),
                         box.lower + corners * (box.upper - box.lower)])
    out = net.forward(ys)
    assert np.all(out >= lo) and np.all(out <= hi)


def test_memory_cap_names_the_layer_that_would_not_fit(monkeypatch):
    net = _wide_net(np.random.default_rng(0))
    x = np.random.default_rng(1).uniform(size=64)
    assert is_robust(net, x, 0.0) in (True, False)  # fits under the default cap
    monkeypatch.setenv(ENV, "0.05")  # 51 KiB: the first convolution's state is larger
    with pytest.raises(VerifierMemoryError) as err:
        is_robust(net, x, 0.05)
    assert isinstance(err.value, ValueError)
    assert str(err.value).startswith("zonotope at layer 0 (Conv 6x8x8) would need ")
    assert str(err.value).endswith(f"MB, over the 0.05 MB cap ({ENV})")
    assert err.value.need > err.value.cap == int(0.05 * (1 << 20))


def test_memory_cap_reads_the_environment(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    assert cap_bytes() == 4096 << 20
    monkeypatch.setenv(ENV, "512")
    assert cap_bytes() == 512 << 20
    for bad in ("0", "-3", "lots"):
        monkeypatch.setenv(ENV, bad)
        with pytest.raises(ValueError, match=ENV):
            cap_bytes()
