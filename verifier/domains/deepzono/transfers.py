"""The DeepZono domain: zonotopes with a per-neuron rounding-error box, as one table.

A state is a `Zonotope` (deepzono.state: sparse through convolutions and pools, dense
through fully connected layers, with generator blocks that keep identity across branches).
Networks that are a chain of Dense/activation layers take a fused kernel
(property_kernels.dense_chain_lower): the walk's arithmetic with each activation folded into
the next dense layer, in one GIL-free call.
Every transfer checks the memory cap (verifier.numerics.memory) before a big allocation. Why the
results are sound in floating point: the docstrings of deepzono.kernels,
deepzono.conv_kernels, deepzono.group_kernels, deepzono.pool_kernels, deepzono.join_kernels
and deepzono.property_kernels.
"""

from __future__ import annotations

import numpy as np

from verifier.box import InputBox
from verifier.domains.base import Domain
from verifier.domains.deepzono import join_kernels as J
from verifier.domains.deepzono import kernels as K
from verifier.domains.deepzono.conv_kernels import conv_taps, csr_conv
from verifier.domains.deepzono.group_kernels import grouped_dense_affine
from verifier.domains.deepzono.pool_kernels import csr_maxpool
from verifier.domains.deepzono.property_kernels import dense_chain_lower, dense_linear_lower
from verifier.domains.deepzono.state import BLOCK_TAGS, Blocks, Zonotope
from verifier.network import (
    Add,
    Concat,
    Conv,
    Dense,
    LeakyRelu,
    MaxPool,
    Network,
    Scale,
)
from verifier.numerics.activations import CODES
from verifier.numerics.memory import csr_bytes, dense_bytes, ensure_fits

# ----------------------------------------------------------------------------- prepare


def _prepare_dense(layer: Dense) -> tuple:
    w = np.ascontiguousarray(layer.weight, dtype=np.float64)
    return w, np.ascontiguousarray(w.T), np.abs(w), np.asarray(layer.bias, np.float64)


def _prepare_conv(layer: Conv) -> tuple:
    tap_k, wtap = conv_taps(
        np.ascontiguousarray(layer.weight, dtype=np.float64),
        *(np.array(v, np.int64) for v in (layer.in_shape, layer.out_shape, layer.stride,
                                          layer.pads)),
    )
    return tap_k, wtap, np.asarray(layer.bias, np.float64)


def _prepare_pool(layer: MaxPool) -> tuple:
    return tuple(
        np.array(v, np.int64)
        for v in (layer.in_shape, layer.out_shape, layer.kernel, layer.stride, layer.pads)
    )


def _prepare_scale(layer: Scale) -> tuple:
    return np.asarray(layer.a, np.float64), np.asarray(layer.b, np.float64)


# ----------------------------------------------------------------------------- transfers


def _dense(arrays: tuple, z: Zonotope) -> Zonotope:
    w, wt, aw, b = arrays
    if z.is_dense:
        ensure_fits(z.nbytes + dense_bytes(w.shape[0], z.dense.shape[1]))
        c, gt, beta = K.dense_affine(z.c, z.gt, z.beta, w, wt, aw, b)
        return Zonotope.of_dense(c, gt, beta, z.blocks)
    ensure_fits(z.nbytes + dense_bytes(w.shape[0], min(z.m, z.indptr[-1])))
    _, _, rad = z.bounds()
    c, gt, beta = grouped_dense_affine(z.c, z.indptr, z.idx, z.val, z.beta, rad, z.m, wt, aw, b)
    return Zonotope.of_dense(c, gt, beta, z.compacted(gt.shape[0]))


def _scale(arrays: tuple, z: Zonotope) -> Zonotope:
    a, b = arrays
    ensure_fits(2 * z.nbytes)
    _, _, rad = z.bounds()
    if z.is_dense:
        c, gt, beta = K.dense_scale(z.c, z.gt, z.beta, rad, a, b)
        return Zonotope.of_dense(c, gt, beta, z.blocks)
    c, val, beta = K.csr_scale(z.c, z.indptr, z.val, z.beta, rad, a, b)
    return Zonotope(c, beta, z.m, indptr=z.indptr, idx=z.idx, val=val, blocks=z.blocks)


def _relaxed(z: Zonotope, rad: np.ndarray, lam, mu, nu) -> Zonotope:
    """y in lam x + mu +/- nu per neuron; each nu >= 0 becomes a new generator."""
    if z.is_dense:
        c, gt, beta = K.dense_activation(z.c, z.gt, z.beta, rad, lam, mu, nu)
        return Zonotope.of_dense(c, gt, beta, z.grown(gt.shape[0]))
    c, ptr, idx, val, beta, m, gsum = K.csr_activation(
        z.c, z.indptr, z.idx, z.val, z.beta, rad, z.row_sums(), z.m, lam, mu, nu
    )
    return Zonotope(c, beta, m, indptr=ptr, idx=idx, val=val, gsum=gsum, blocks=z.grown(m))


def _fits_relaxed(z: Zonotope) -> None:
    """The memory cap against a relaxation's result (at most one new generator a neuron)."""
    n = z.c.shape[0]
    if z.is_dense:
        ensure_fits(z.nbytes + dense_bytes(n, z.dense.shape[1] + n))
    else:
        ensure_fits(z.nbytes + csr_bytes(n, z.indptr[-1] + n))


def _activation(kind: int):
    def transfer(_layer, z: Zonotope) -> Zonotope:
        _fits_relaxed(z)
        lo, hi, rad = z.bounds()
        return _relaxed(z, rad, *K.relaxation(kind, lo, hi))

    return transfer


def _leaky(alpha: float, z: Zonotope) -> Zonotope:
    _fits_relaxed(z)
    lo, hi, rad = z.bounds()
    return _relaxed(z, rad, *J.leaky_relaxation(alpha, lo, hi))


def _conv(arrays: tuple, z: Zonotope) -> Zonotope:
    z = z.to_csr()
    _, _, rad = z.bounds()
    c, ptr, idx, val, beta, gsum = csr_conv(
        z.c, z.indptr, z.idx, z.val, z.beta, rad, z.m, *arrays
    )
    return Zonotope(c, beta, z.m, indptr=ptr, idx=idx, val=val, gsum=gsum, blocks=z.blocks)


def _maxpool(arrays: tuple, z: Zonotope) -> Zonotope:
    z = z.to_csr()
    lo, hi, _ = z.bounds()
    c, ptr, idx, val, beta, m, gsum = csr_maxpool(
        z.c, z.indptr, z.idx, z.val, z.beta, lo, hi, z.row_sums(), z.m, *arrays
    )
    return Zonotope(c, beta, m, indptr=ptr, idx=idx, val=val, gsum=gsum, blocks=z.grown(m))


# ----------------------------------------------------------------------------- joins


def _align(zs: tuple[Zonotope, ...]) -> tuple[list[np.ndarray | None], int, Blocks]:
    """One numbering for all operands: the first's blocks, then every block of a later operand
    whose tag is new, in order. Returns per operand the new id of each of its ids (None when
    every id keeps its number), the number of ids, and the blocks of that numbering."""
    place: dict[int, tuple[int, int]] = {}  # tag -> (first new id, size)
    blocks: list[tuple[int, int]] = []
    maps = []
    for z in zs:
        own = list(z.blocks)
        start = own[-1][1] if own else 0
        if start < z.m:  # untagged trailing ids: private to this operand
            own.append((next(BLOCK_TAGS), z.m))
        remap = np.empty(z.m, np.int64)
        start, same = 0, True
        for tag, end in own:
            if tag not in place:
                place[tag] = (blocks[-1][1] if blocks else 0, end - start)
                blocks.append((tag, place[tag][0] + end - start))
            at, size = place[tag]
            if size != end - start:
                raise RuntimeError(f"generator block {tag} has sizes {size} and {end - start}")
            remap[start:end] = np.arange(at, at + size)
            same = same and at == start
            start = end
        maps.append(None if same else remap)
    return maps, (blocks[-1][1] if blocks else 0), tuple(blocks)


def _ids(z: Zonotope, remap: np.ndarray | None) -> np.ndarray:
    """The generator ids of a CSR zonotope's entries in the common numbering."""
    return z.idx if remap is None else remap[z.idx]


def _embedded(z: Zonotope, remap: np.ndarray | None, gt: np.ndarray, col: int) -> None:
    """Write z's generators into columns col.. of gt (m x n, zero there) at ids remap[id]."""
    n = z.c.shape[0]
    if z.is_dense:
        gt[slice(z.m) if remap is None else remap, col : col + n] = z.dense.T
    else:
        rows = np.repeat(np.arange(n), np.diff(z.indptr))
        gt[_ids(z, remap), col + rows] = z.val


def _add(_layer, *zs: Zonotope) -> Zonotope:
    """The sum of the operands, generator by generator in their common numbering."""
    maps, m, blocks = _align(zs)
    held = sum(z.nbytes for z in zs)
    if any(z.is_dense for z in zs):
        ensure_fits(held + sum(dense_bytes(z.c.shape[0], m) for z in zs))
        gts = []
        for z, remap in zip(zs, maps, strict=True):
            gts.append(np.zeros((m, z.c.shape[0])))
            _embedded(z, remap, gts[-1], 0)
        c, gt, beta = zs[0].c, gts[0], zs[0].beta
        for z, other in zip(zs[1:], gts[1:], strict=True):
            c, gt, beta = J.dense_add(c, gt, beta, z.c, other, z.beta)
        return Zonotope.of_dense(c, gt, beta, blocks)
    ensure_fits(held + csr_bytes(zs[0].c.shape[0], sum(z.indptr[-1] for z in zs)))
    z = zs[0]
    acc = (z.c, z.indptr, _ids(z, maps[0]), z.val, z.beta, z.row_sums())
    for z, remap in zip(zs[1:], maps[1:], strict=True):
        acc = _csr_sum(acc, (z.c, z.indptr, _ids(z, remap), z.val, z.beta, z.row_sums()), m)
    c, ptr, idx, val, beta, gsum = acc
    return Zonotope(c, beta, m, indptr=ptr, idx=idx, val=val, gsum=gsum, blocks=blocks)


def _csr_sum(a: tuple, b: tuple, m: int) -> tuple:
    """(c, indptr, idx, val, beta, gsum) of a + b: in the rows of the operand whose rows hold
    all of the other's ids when one does (a residual Add's body), else merged row by row."""
    for big, small in ((b, a), (a, b)):
        if small[1][-1] <= big[1][-1]:
            ok, c, val, beta, gsum = J.csr_add_within(*small, *big, m)
            if ok:
                return c, big[1], big[2], val, beta, gsum
    return J.csr_add(*a, *b, m)


def _concat(_layer, *zs: Zonotope) -> Zonotope:
    """The operands' neurons stacked, in their common numbering (exact: values are copied)."""
    maps, m, blocks = _align(zs)
    c = np.concatenate([z.c for z in zs])
    beta = np.concatenate([z.beta for z in zs])
    held = sum(z.nbytes for z in zs)
    if any(z.is_dense for z in zs):
        ensure_fits(held + dense_bytes(c.shape[0], m))
        gt = np.zeros((m, c.shape[0]))
        col = 0
        for z, remap in zip(zs, maps, strict=True):
            _embedded(z, remap, gt, col)
            col += z.c.shape[0]
        return Zonotope.of_dense(c, gt, beta, blocks)
    ensure_fits(held + csr_bytes(c.shape[0], sum(z.indptr[-1] for z in zs)))
    offsets = np.cumsum([0] + [z.indptr[-1] for z in zs[:-1]])
    ptr = np.concatenate([[0]] + [z.indptr[1:] + o for z, o in zip(zs, offsets, strict=True)])
    idx = np.concatenate([_ids(z, remap) for z, remap in zip(zs, maps, strict=True)])
    val = np.concatenate([z.val for z in zs])
    gsum = np.concatenate([z.row_sums() for z in zs])
    return Zonotope(c, beta, m, indptr=ptr.astype(np.int64), idx=idx, val=val, gsum=gsum,
                    blocks=blocks)


# ----------------------------------------------------------------------------- property


def _linear_lower(z: Zonotope, C: np.ndarray, d: np.ndarray) -> np.ndarray:
    if not z.is_dense:
        ensure_fits(z.nbytes + dense_bytes(z.c.shape[0], min(z.m, z.indptr[-1])))
    z = z.to_dense()
    _, _, rad = z.bounds()
    return dense_linear_lower(z.c, z.gt, z.beta, rad, C, d)


def _bounds(z: Zonotope) -> tuple[np.ndarray, np.ndarray]:
    lo, hi, _ = z.bounds()
    return lo, hi


def _prepare_chain(net: Network) -> tuple | None:
    """Dense (activation) Dense (activation) ... Dense: the form the fused kernel takes."""
    layers = net.layers
    if not net.is_chain or not layers:
        return None
    if not isinstance(layers[0], Dense) or not isinstance(layers[-1], Dense):
        return None
    dense, kinds = [], []
    for layer in layers:
        if isinstance(layer, Dense):
            dense.append(_prepare_dense(layer))
            kinds.append(-1)
        elif type(layer) in CODES and kinds[-1] == -1:
            kinds[-1] = CODES[type(layer)]
        else:
            return None
    w, wt, aw, b = (tuple(a[i] for a in dense) for i in range(4))
    return w, wt, aw, b, np.array(kinds, np.int64)


def _chain_lower(chain: tuple, box: InputBox, C: np.ndarray, d: np.ndarray) -> np.ndarray:
    return dense_chain_lower(box.lower, box.upper, *chain, C, d)


DEEPZONO = Domain(
    name="deepzono",
    start=Zonotope.from_box,
    prepare={Dense: _prepare_dense, Conv: _prepare_conv, MaxPool: _prepare_pool,
             Scale: _prepare_scale, LeakyRelu: lambda layer: float(layer.alpha)},
    transfers={
        Dense: _dense,
        Conv: _conv,
        MaxPool: _maxpool,
        Scale: _scale,
        LeakyRelu: _leaky,
        Add: _add,
        Concat: _concat,
        **{kind: _activation(code) for kind, code in CODES.items()},
    },
    linear_lower=_linear_lower,
    bounds=_bounds,
    fast_path=_chain_lower,
    prepare_fast=_prepare_chain,
)
