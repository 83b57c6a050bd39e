"""The DeepPoly domain (Singh et al., POPL 2019) as one table: back-substitution to the input.

A state is the graph of the layers seen so far (verifier.domains.deeppoly.state): for each, the
layers it reads, how to back-substitute linear bounds through it (its matrix, or its lower
and upper relaxation lines) and its concrete bounds. An affine layer's bounds come from
back-substituting its rows through every layer to the input box, as the paper and ERAN do,
intersected with interval arithmetic; they are computed when first needed, so a final
affine layer is only used through the property. A join (Add, Concat) passes rows on to its
sources; a layer read by several later ones sums what they pass before its own step.
Two savings that leave every relaxation as full back-substitution would make it: a ReLU
after a fully connected layer stops back-substituting the rows of neurons that intervals
already show stable (their relaxation is fixed; they keep interval bounds), and max-pool
outputs take interval bounds. As in ELINA, max-pool dominance is also tested on
back-substituted differences, and an undominated output's upper bound is a line through the
input with the largest upper bound (verifier.domains.deeppoly.relax.pool_relax), not a constant.
Back-substitution is blocked (verifier.domains.deeppoly.kernels): the rows of one convolution
position share a small support, and a fully connected layer's rows share all of it.
Why the results are sound in floating point: the docstrings of verifier.domains.deeppoly.kernels
and verifier.domains.deeppoly.relax.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np

from verifier.domains.base import Domain
from verifier.domains.deeppoly import kernels as K
from verifier.domains.deeppoly import relax as R
from verifier.domains.deeppoly.prepare import (
    Csr,
    DenseRows,
    Rows,
    prepare_conv,
    prepare_dense,
    prepare_pool,
    prepare_scale,
)
from verifier.domains.deeppoly.state import (
    PolyState,
    bounds,
    linear_lower,
    lower_of,
    node_bounds,
    npos_of,
    push,
    size_of,
    start,
)
from verifier.network import (
    Add,
    Concat,
    Conv,
    Dense,
    LeakyRelu,
    MaxPool,
    Relu,
    Scale,
    Sigmoid,
    Tanh,
)
from verifier.numerics.activations import RELU, SIGMOID, TANH

# ----------------------------------------------------------------------------- affine layers


def _conv(prep: Csr, state: PolyState) -> PolyState:
    lo, hi = node_bounds(state.box, state.last)
    mag = K.csr_mag(prep.indptr, prep.idx, prep.val, prep.bias, K.magnitude(lo, hi))

    def back(rows: Rows) -> Rows:
        return K.csr_step(*rows, prep.indptr, prep.idx, prep.val, prep.bias, mag, prep.n_in)

    return push((state,), back, prep.bias.shape[0], npos=prep.npos, own=lambda: prep.own,
                 lo_pos=prep.lo_pos, hi_pos=prep.hi_pos)


def _scale(prep: Csr, state: PolyState) -> PolyState:
    lo, hi = node_bounds(state.box, state.last)
    mag = K.csr_mag(prep.indptr, prep.idx, prep.val, prep.bias, K.magnitude(lo, hi))
    out_lo, out_hi = R.scale_bounds(prep.val, prep.bias, lo, hi)

    def back(rows: Rows) -> Rows:
        return K.csr_step(*rows, prep.indptr, prep.idx, prep.val, prep.bias, mag, prep.n_in)

    return push((state,), back, prep.n_in, npos=npos_of(state), lower=out_lo, upper=out_hi)


def _dense(prep: DenseRows, state: PolyState) -> PolyState:
    lo, hi = node_bounds(state.box, state.last)
    mag = K.dense_mag(prep.aw, prep.bias, K.magnitude(lo, hi))

    def back(rows: Rows) -> Rows:
        return K.dense_step(*rows, prep.wt, prep.bias, mag)

    return push((state,), back, prep.bias.shape[0], own=lambda: prep.own,
                 lo_pos=prep.lo_pos, hi_pos=prep.hi_pos, settles=True)


# ----------------------------------------------------------------------------- joins


@lru_cache(maxsize=16)
def _identity(n: int, npos: int) -> tuple[Rows, np.ndarray]:
    """Rows +x and -x of n neurons, one block per position (all its channels, as a
    convolution's own rows), and where neuron j's +x row lands in the flat result."""
    nch = n // npos
    p, ch = np.divmod(np.arange(n), nch)
    T = np.zeros((n, 2 * nch))
    T[np.arange(n), ch] = 1.0
    T[np.arange(n), nch + ch] = -1.0
    zero = np.zeros((npos, 2 * nch))
    rows = (np.arange(npos + 1, dtype=np.int64) * nch, ch * npos + p, T, zero, zero)
    j = np.arange(n)
    return rows, (j % npos) * 2 * nch + j // npos


def _join(states: tuple[PolyState, ...], back: Callable, size: int, **fields) -> PolyState:
    """A join's node; its blocks follow the sources' positions when they agree (any grouping
    of neurons into blocks is sound, this one keeps a convolution's supports small)."""
    npos = max(map(npos_of, states))
    if any(size_of(s) % npos for s in states):
        npos = 1
    if "derive" not in fields:  # bounds from its own rows +x and -x, over its output
        own, lo_pos = _identity(size, npos)
        fields.update(own=lambda: own, lo_pos=lo_pos, hi_pos=lo_pos + size // npos)
    return push(states, back, size, npos=npos, passes=True, **fields)


def _add(_layer: Add, *states: PolyState) -> PolyState:
    """The sum of the sources: the rows over it are the same rows over each source (the
    constants go with the first)."""

    def back(rows: Rows) -> tuple[Rows, ...]:
        bptr, sup, T, c, err = rows
        zero = np.zeros_like(c)
        return (rows,) + ((bptr, sup, T, zero, zero),) * (len(states) - 1)

    return _join(states, back, size_of(states[0]))


def _concat(layer: Concat, *states: PolyState) -> PolyState:
    """The sources side by side: a row's entries split by source (the constants go with the
    first); its bounds are theirs."""
    offs = np.concatenate([[0], np.cumsum(layer.sizes)]).astype(np.int64)

    def back(rows: Rows) -> tuple[Rows, ...]:
        bptr, sup, T, c, err = rows
        nb = bptr.shape[0] - 1
        src = np.searchsorted(offs, sup, side="right") - 1
        block = np.repeat(np.arange(nb), np.diff(bptr))
        out = []
        for i in range(len(states)):
            sel = np.flatnonzero(src == i)
            ptr = np.zeros(nb + 1, dtype=np.int64)
            np.cumsum(np.bincount(block[sel], minlength=nb), out=ptr[1:])
            cc, ee = (c, err) if i == 0 else (np.zeros_like(c), np.zeros_like(err))
            out.append((ptr, sup[sel] - offs[i], T[sel], cc, ee))
        return tuple(out)

    def derive() -> tuple[np.ndarray, np.ndarray]:
        los, his = zip(*(node_bounds(s.box, s.last) for s in states), strict=True)
        return np.concatenate(los), np.concatenate(his)

    return _join(states, back, int(offs[-1]), derive=derive)


# ----------------------------------------------------------------------------- nonlinear layers


def _relaxed(state: PolyState, relax: tuple) -> PolyState:
    ls, lf, us, uf, out_lo, out_hi, mag = relax

    def back(rows: Rows) -> Rows:
        return K.relax_step(*rows, ls, lf, us, uf, mag)

    return push((state,), back, size_of(state), npos=npos_of(state), lower=out_lo, upper=out_hi,
                 sums=True)


def _activation(kind: int) -> Callable[[object, PolyState], PolyState]:
    def transfer(_layer: object, state: PolyState) -> PolyState:
        lo, hi = node_bounds(state.box, state.last, settle=kind == RELU)
        relax = R.relu_relax(lo, hi) if kind == RELU else R.smooth_relax(kind, lo, hi)
        return _relaxed(state, relax)

    return transfer


def _leaky(layer: LeakyRelu, state: PolyState) -> PolyState:
    lo, hi = node_bounds(state.box, state.last, settle=True)
    return _relaxed(state, R.leaky_relax(float(layer.alpha), lo, hi))


def _proved(state: PolyState, lo, hi, windows, npos: int, cand, open_) -> np.ndarray:
    """The outputs o with open_[o] whose input cand[o] back-substitution proves >= every
    other input of the window."""
    rows, todo = R.pool_pair_rows(lo, hi, windows, cand, ~open_, npos)
    if not todo.size:
        return np.empty(0, dtype=np.int64)
    low = lower_of(state.box, state.last, rows)  # [positions, channels * (taps - 1)]
    proved = np.all(low.reshape(todo.size, -1, max(windows.shape[1] - 1, 1)) >= 0.0, axis=2)
    won = (np.arange(proved.shape[1])[None, :] * npos + todo[:, None])[proved]
    return won[open_[won]]


def _pool(prep: tuple[np.ndarray, int, int], state: PolyState) -> PolyState:
    """DeepPoly max-pool. The input with the largest lower bound (the largest upper bound
    among ties) dominates when intervals or, failing that, back-substituted differences (as
    ELINA does) show it >= every other input of the window."""
    windows, n_in, npos = prep
    lo, hi = node_bounds(state.box, state.last)
    best, dominated, top, slope, off, out_lo, out_hi, mag = R.pool_relax(lo, hi, windows)
    won = _proved(state, lo, hi, windows, npos, best, ~dominated)
    dominated[won] = True
    out_hi[won] = hi[best[won]]

    def back(rows: Rows) -> Rows:
        return K.pool_step(*rows, best, dominated, top, slope, off, mag, n_in)

    return push((state,), back, windows.shape[0], npos=npos, lower=out_lo, upper=out_hi,
                 sums=True)


DEEPPOLY = Domain(
    name="deeppoly",
    start=start,
    transfers={
        Dense: _dense,
        Conv: _conv,
        Scale: _scale,
        MaxPool: _pool,
        Relu: _activation(RELU),
        LeakyRelu: _leaky,
        Sigmoid: _activation(SIGMOID),
        Tanh: _activation(TANH),
        Add: _add,
        Concat: _concat,
    },
    linear_lower=linear_lower,
    bounds=bounds,
    prepare={Dense: prepare_dense, Conv: prepare_conv, Scale: prepare_scale,
             MaxPool: prepare_pool},
)
