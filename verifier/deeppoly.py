"""The DeepPoly domain (Singh et al., POPL 2019) as one table: back-substitution to the input.

A state is the history of the layers seen so far: for each, how to back-substitute linear
bounds through it (its matrix, or its lower and upper relaxation lines) and its concrete
bounds. An affine layer's bounds come from back-substituting its rows through every layer to
the input box, as the paper and ERAN do, intersected with interval arithmetic; they are
computed when first needed, so a final affine layer is only used through the property.
Two savings that leave every relaxation as full back-substitution would make it: a ReLU
after a fully connected layer stops back-substituting the rows of neurons that intervals
already show stable (their relaxation is fixed; they keep interval bounds), and max-pool
outputs take interval bounds. As in ELINA, max-pool dominance is also tested on
back-substituted differences, and an undominated output's upper bound is a line through the
input with the largest upper bound (verifier.deeppoly_relax.pool_relax), not a constant.
Back-substitution is blocked (verifier.deeppoly_kernels): the rows of one convolution
position share a small support, and a fully connected layer's rows share all of it.
Why the results are sound in floating point: the docstrings of verifier.deeppoly_kernels
and verifier.deeppoly_relax.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from verifier import deeppoly_kernels as K
from verifier import deeppoly_relax as R
from verifier.box import InputBox
from verifier.domain import Domain
from verifier.network import Conv, Dense, MaxPool, Relu, Scale, Sigmoid, Tanh

Rows = tuple  # (bptr, sup, T, c, err): blocks of linear lower bounds, see deeppoly_kernels


@dataclass
class _Node:
    """One layer of the history: its back-substitution step and its (lazy) bounds."""

    back: Callable[[Rows], Rows]
    lower: np.ndarray | None = None
    upper: np.ndarray | None = None
    own: Callable[[], Rows] | None = None  # an affine layer's rows of +x and -x over its input
    lo_pos: np.ndarray | None = None  # where each neuron's +x row lands in the flat result
    hi_pos: np.ndarray | None = None  # ... and its -x row
    settles: bool = False  # a ReLU after it may settle stable neurons early (see _lower_of)


@dataclass(frozen=True)
class PolyState:
    """The input box and the layers seen so far."""

    box: InputBox
    nodes: tuple[_Node, ...] = ()


def start(box: InputBox) -> PolyState:
    """The abstract element of an input box: no layers yet."""
    return PolyState(box)


def _input_bounds(
    state: PolyState, depth: int, settle: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Bounds of the values entering node `depth` (the box for depth 0); settle: see
    _lower_of (for a ReLU's input)."""
    if depth == 0:
        return state.box.lower, state.box.upper
    _ensure(state, depth - 1, settle)
    node = state.nodes[depth - 1]
    return node.lower, node.upper


def _lower_of(state: PolyState, depth: int, rows: Rows, settle: bool = False) -> np.ndarray:
    """Sound lower bounds [blocks, k] of rows over the values entering node `depth`.

    Back-substitutes to the input box (DeepPoly's bound) and keeps the larger of that and
    the rows concretised on the first known bounds on the way (interval arithmetic).
    settle: the rows are +x_j (first n) and -x_j (last n) of the n inputs of a ReLU, whose
    relaxation needs exact bounds only where x_j may change sign; rows already showing that
    it cannot stop there, and those neurons keep the interval bounds.
    """
    first = None
    for i in range(depth - 1, -1, -1):
        node = state.nodes[i]
        if first is None and node.lower is not None:
            first = K.concretise(*rows, node.lower, node.upper)
            if settle:
                n = first.shape[1] // 2
                fixed = (first[0, :n] >= 0.0) | (first[0, n:] >= 0.0)
                keep = np.flatnonzero(np.concatenate([~fixed, ~fixed]))
                if keep.size == 0:
                    return np.where(np.isnan(first), -np.inf, first)
                bptr, sup, T, c, err = rows
                rows = (bptr, sup, np.ascontiguousarray(T[:, keep]), c[:, keep].copy(),
                        err[:, keep].copy())
        rows = node.back(rows)
    low = K.concretise(*rows, state.box.lower, state.box.upper)
    if first is not None:
        if settle:
            first[:, keep] = np.maximum(first[:, keep], low)
            low = first
        else:
            low = np.maximum(first, low)
    return np.where(np.isnan(low), -np.inf, low)  # overflowed bounds claim nothing


def _ensure(state: PolyState, depth: int, settle: bool = False) -> None:
    """Compute the bounds of node `depth` if they are not known yet (affine layers)."""
    node = state.nodes[depth]
    if node.lower is not None:
        return
    settle = settle and node.lo_pos is not None and node.settles
    flat = _lower_of(state, depth, node.own(), settle).reshape(-1)
    node.lower = flat[node.lo_pos]
    node.upper = -flat[node.hi_pos]


def bounds(state: PolyState) -> tuple[np.ndarray, np.ndarray]:
    """Sound (lower, upper) of every neuron of the last layer."""
    return _input_bounds(state, len(state.nodes))


def linear_lower(state: PolyState, C: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Sound lower bounds of C y + d over every output y the state contains."""
    k, n = C.shape
    rows = (
        np.array([0, n], dtype=np.int64),
        np.arange(n, dtype=np.int64),
        np.ascontiguousarray(C.T, dtype=np.float64),
        np.asarray(d, dtype=np.float64).reshape(1, k).copy(),
        np.zeros((1, k)),
    )
    return _lower_of(state, len(state.nodes), rows)[0]


def _push(state: PolyState, node: _Node) -> PolyState:
    return PolyState(state.box, state.nodes + (node,))


# ----------------------------------------------------------------------------- affine layers


@dataclass(frozen=True)
class _Csr:
    """A layer as CSR rows W [n_out, n_in] with a bias per output, for conv and scale.

    own: the rows of +x and -x of its outputs over its input (conv: grouped by position).
    """

    indptr: np.ndarray
    idx: np.ndarray
    val: np.ndarray
    bias: np.ndarray
    n_in: int
    own: Rows
    lo_pos: np.ndarray
    hi_pos: np.ndarray


def _conv_own(layer: Conv) -> tuple[Rows, np.ndarray]:
    """Rows +(W x + b) and -(W x + b) of the channels of each position, over the layer's input:
    exact copies of the weights, one block per position (its support the receptive field)."""
    c, h, w = layer.in_shape
    oc, oh, ow = layer.out_shape
    _, _, kh, kw = layer.weight.shape
    (sh, sw), (pt, pl) = layer.stride, layer.pads[:2]
    wk = np.asarray(layer.weight, np.float64).reshape(oc, -1).T  # [taps, channels]
    ci, ky, kx = (a.reshape(-1) for a in np.meshgrid(*map(np.arange, (c, kh, kw)), indexing="ij"))
    bptr, sup, blocks = [0], [], []
    for y in range(oh):
        for x in range(ow):
            iy, ix = y * sh + ky - pt, x * sw + kx - pl
            ok = (iy >= 0) & (iy < h) & (ix >= 0) & (ix < w)
            sup.append(((ci * h + iy) * w + ix)[ok])
            blocks.append(wk[ok])
            bptr.append(bptr[-1] + int(ok.sum()))
    T = np.concatenate(blocks)
    bias = np.asarray(layer.bias, np.float64)
    npos = oh * ow
    cb = np.tile(np.concatenate([bias, -bias]), (npos, 1))
    rows = (np.array(bptr, np.int64), np.concatenate(sup).astype(np.int64),
            np.ascontiguousarray(np.concatenate([T, -T], axis=1)), cb, np.zeros_like(cb))
    # neuron (channel o, position p) is row o (lower) / oc + o (upper) of block p
    o, p = np.divmod(np.arange(oc * npos), npos)
    return rows, p * 2 * oc + o


def _prepare_conv(layer: Conv) -> _Csr:
    """The convolution as a CSR matrix, and its own rows grouped by position."""
    c, h, w = layer.in_shape
    oc, oh, ow = layer.out_shape
    _, _, kh, kw = layer.weight.shape
    (sh, sw), (pt, pl) = layer.stride, layer.pads[:2]
    o, i, a, b, r, s = np.meshgrid(*(np.arange(n) for n in (oc, c, kh, kw, oh, ow)), indexing="ij")
    rows, cols = r * sh + a - pt, s * sw + b - pl
    ok = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
    out_idx = ((o * oh + r) * ow + s)[ok]
    in_idx = ((i * h + rows) * w + cols)[ok]
    vals = np.asarray(layer.weight, np.float64)[o, i, a, b][ok]
    order = np.lexsort((in_idx, out_idx))
    n_out = oc * oh * ow
    indptr = np.zeros(n_out + 1, dtype=np.int64)
    np.cumsum(np.bincount(out_idx, minlength=n_out), out=indptr[1:])
    own, lo_pos = _conv_own(layer)
    bias = np.repeat(np.asarray(layer.bias, np.float64), oh * ow)
    return _Csr(indptr, in_idx[order].astype(np.int64), vals[order], bias, c * h * w,
                own, lo_pos, lo_pos + oc)


def _prepare_scale(layer: Scale) -> _Csr:
    """y = a x + b as a diagonal CSR matrix (its bounds are computed elementwise)."""
    n = layer.a.shape[0]
    ar = np.arange(n, dtype=np.int64)
    none = np.empty(0, dtype=np.int64)
    return _Csr(np.arange(n + 1, dtype=np.int64), ar, np.asarray(layer.a, np.float64),
                np.asarray(layer.b, np.float64), n, (), none, none)


def _conv(prep: _Csr, state: PolyState) -> PolyState:
    lo, hi = _input_bounds(state, len(state.nodes))
    mag = K.csr_mag(prep.indptr, prep.idx, prep.val, prep.bias, K.magnitude(lo, hi))

    def back(rows: Rows) -> Rows:
        return K.csr_step(*rows, prep.indptr, prep.idx, prep.val, prep.bias, mag, prep.n_in)

    return _push(state, _Node(back, own=lambda: prep.own,
                              lo_pos=prep.lo_pos, hi_pos=prep.hi_pos))


def _scale(prep: _Csr, state: PolyState) -> PolyState:
    lo, hi = _input_bounds(state, len(state.nodes))
    mag = K.csr_mag(prep.indptr, prep.idx, prep.val, prep.bias, K.magnitude(lo, hi))
    out_lo, out_hi = R.scale_bounds(prep.val, prep.bias, lo, hi)

    def back(rows: Rows) -> Rows:
        return K.csr_step(*rows, prep.indptr, prep.idx, prep.val, prep.bias, mag, prep.n_in)

    return _push(state, _Node(back, out_lo, out_hi))


@dataclass(frozen=True)
class _Dense:
    """W transposed, |W| and the bias; own: the rows of +Wx+b and -Wx-b over the input."""

    wt: np.ndarray
    aw: np.ndarray
    bias: np.ndarray
    own: Rows
    lo_pos: np.ndarray
    hi_pos: np.ndarray


def _prepare_dense(layer: Dense) -> _Dense:
    w = np.asarray(layer.weight, np.float64)
    b = np.asarray(layer.bias, np.float64)
    n_out, n_in = w.shape
    own = (  # exact: copies and negations of W and b
        np.array([0, n_in], dtype=np.int64),
        np.arange(n_in, dtype=np.int64),
        np.ascontiguousarray(np.concatenate([w.T, -w.T], axis=1)),
        np.concatenate([b, -b]).reshape(1, -1),
        np.zeros((1, 2 * n_out)),
    )
    pos = np.arange(n_out, dtype=np.int64)
    return _Dense(np.ascontiguousarray(w.T), np.abs(w), b, own, pos, pos + n_out)


def _dense(prep: _Dense, state: PolyState) -> PolyState:
    lo, hi = _input_bounds(state, len(state.nodes))
    mag = K.dense_mag(prep.aw, prep.bias, K.magnitude(lo, hi))

    def back(rows: Rows) -> Rows:
        return K.dense_step(*rows, prep.wt, prep.bias, mag)

    return _push(state, _Node(back, own=lambda: prep.own, lo_pos=prep.lo_pos,
                              hi_pos=prep.hi_pos, settles=True))


# ----------------------------------------------------------------------------- nonlinear layers


def _relaxed(state: PolyState, relax: tuple) -> PolyState:
    ls, lf, us, uf, out_lo, out_hi, mag = relax

    def back(rows: Rows) -> Rows:
        return K.relax_step(*rows, ls, lf, us, uf, mag)

    return _push(state, _Node(back, out_lo, out_hi))


def _activation(kind: int) -> Callable[[object, PolyState], PolyState]:
    def transfer(_layer: object, state: PolyState) -> PolyState:
        lo, hi = _input_bounds(state, len(state.nodes), settle=kind == 0)
        relax = R.relu_relax(lo, hi) if kind == 0 else R.smooth_relax(kind, lo, hi)
        return _relaxed(state, relax)

    return transfer


def _prepare_pool(layer: MaxPool) -> tuple[np.ndarray, int, int]:
    """Windows [outputs, taps] of flat input ids, -1 where the window covers padding."""
    c, h, w = layer.in_shape
    _, oh, ow = layer.out_shape
    (kh, kw), (sh, sw), (pt, pl) = layer.kernel, layer.stride, layer.pads[:2]
    ch, r, s, a, b = np.meshgrid(*(np.arange(n) for n in (c, oh, ow, kh, kw)), indexing="ij")
    rows, cols = r * sh + a - pt, s * sw + b - pl
    ok = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
    windows = np.where(ok, (ch * h + rows) * w + cols, -1).reshape(c * oh * ow, kh * kw)
    return windows.astype(np.int64), c * h * w, oh * ow


def _proved(state: PolyState, lo, hi, windows, npos: int, cand, open_) -> np.ndarray:
    """The outputs o with open_[o] whose input cand[o] back-substitution proves >= every
    other input of the window."""
    rows, todo = R.pool_pair_rows(lo, hi, windows, cand, ~open_, npos)
    if not todo.size:
        return np.empty(0, dtype=np.int64)
    low = _lower_of(state, len(state.nodes), rows)  # [positions, channels * (taps - 1)]
    proved = np.all(low.reshape(todo.size, -1, max(windows.shape[1] - 1, 1)) >= 0.0, axis=2)
    won = (np.arange(proved.shape[1])[None, :] * npos + todo[:, None])[proved]
    return won[open_[won]]


def _pool(prep: tuple[np.ndarray, int, int], state: PolyState) -> PolyState:
    """DeepPoly max-pool. The input with the largest lower bound (the largest upper bound
    among ties) dominates when intervals or, failing that, back-substituted differences (as
    ELINA does) show it >= every other input of the window."""
    windows, n_in, npos = prep
    lo, hi = _input_bounds(state, len(state.nodes))
    best, dominated, top, slope, off, out_lo, out_hi, mag = R.pool_relax(lo, hi, windows)
    won = _proved(state, lo, hi, windows, npos, best, ~dominated)
    dominated[won] = True
    out_hi[won] = hi[best[won]]

    def back(rows: Rows) -> Rows:
        return K.pool_step(*rows, best, dominated, top, slope, off, mag, n_in)

    return _push(state, _Node(back, out_lo, out_hi))


DEEPPOLY = Domain(
    name="deeppoly",
    start=start,
    transfers={
        Dense: _dense,
        Conv: _conv,
        Scale: _scale,
        MaxPool: _pool,
        Relu: _activation(0),
        Sigmoid: _activation(1),
        Tanh: _activation(2),
    },
    linear_lower=linear_lower,
    bounds=bounds,
    prepare={Dense: _prepare_dense, Conv: _prepare_conv, Scale: _prepare_scale,
             MaxPool: _prepare_pool},
)
