"""The arrays DeepPoly derives from each affine and pooling layer once per network: sparse
or dense weights for back-substitution, and a layer's own rows (+x and -x of its outputs
over its input) from which its bounds are computed when first needed."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from verifier.network import Conv, Dense, MaxPool, Scale

Rows = tuple  # (bptr, sup, T, c, err): blocks of linear lower bounds, see deeppoly_kernels


@dataclass(frozen=True)
class Csr:
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
    npos: int = 0  # output positions per channel (0: a scale's, those of its input)


def conv_own(layer: Conv) -> tuple[Rows, np.ndarray]:
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


def prepare_conv(layer: Conv) -> Csr:
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
    own, lo_pos = conv_own(layer)
    bias = np.repeat(np.asarray(layer.bias, np.float64), oh * ow)
    return Csr(indptr, in_idx[order].astype(np.int64), vals[order], bias, c * h * w,
               own, lo_pos, lo_pos + oc, oh * ow)


def prepare_scale(layer: Scale) -> Csr:
    """y = a x + b as a diagonal CSR matrix (its bounds are computed elementwise)."""
    n = layer.a.shape[0]
    ar = np.arange(n, dtype=np.int64)
    none = np.empty(0, dtype=np.int64)
    return Csr(np.arange(n + 1, dtype=np.int64), ar, np.asarray(layer.a, np.float64),
               np.asarray(layer.b, np.float64), n, (), none, none)


@dataclass(frozen=True)
class DenseRows:
    """W transposed, |W| and the bias; own: the rows of +Wx+b and -Wx-b over the input."""

    wt: np.ndarray
    aw: np.ndarray
    bias: np.ndarray
    own: Rows
    lo_pos: np.ndarray
    hi_pos: np.ndarray


def prepare_dense(layer: Dense) -> DenseRows:
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
    return DenseRows(np.ascontiguousarray(w.T), np.abs(w), b, own, pos, pos + n_out)


def prepare_pool(layer: MaxPool) -> tuple[np.ndarray, int, int]:
    """Windows [outputs, taps] of flat input ids, -1 where the window covers padding."""
    c, h, w = layer.in_shape
    _, oh, ow = layer.out_shape
    (kh, kw), (sh, sw), (pt, pl) = layer.kernel, layer.stride, layer.pads[:2]
    ch, r, s, a, b = np.meshgrid(*(np.arange(n) for n in (c, oh, ow, kh, kw)), indexing="ij")
    rows, cols = r * sh + a - pt, s * sw + b - pl
    ok = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
    windows = np.where(ok, (ch * h + rows) * w + cols, -1).reshape(c * oh * ow, kh * kw)
    return windows.astype(np.int64), c * h * w, oh * ow


