"""The DeepZono domain: zonotopes with a per-neuron rounding-error box, as one table.

A state is a `Zonotope`. Its generator matrix is sparse (CSR) from the input through
convolutions and pools, where each neuron depends on few generators, and dense through fully
connected layers (dropping every generator no neuron uses; held generator-major, so `dense`
is the n x m transposed view of a row-major m x n array). Networks that are a chain of
Dense/activation layers take a fused kernel (property_kernels.dense_chain_lower): the walk's
arithmetic with each activation folded into the next dense layer, in one GIL-free call.
Every transfer checks the memory cap (verifier.memory) before a big allocation. Why the
results are sound in floating point: the docstrings of verifier.kernels,
verifier.conv_kernels, verifier.group_kernels, verifier.pool_kernels and
verifier.property_kernels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from verifier import kernels as K
from verifier.box import InputBox
from verifier.conv_kernels import conv_taps, csr_conv
from verifier.domain import Domain
from verifier.group_kernels import grouped_dense_affine
from verifier.memory import csr_bytes, dense_bytes, ensure_fits
from verifier.network import Conv, Dense, MaxPool, Network, Relu, Scale, Sigmoid, Tanh
from verifier.pool_kernels import csr_maxpool
from verifier.property_kernels import dense_chain_lower, dense_linear_lower

ACTIVATION_KIND = {Relu: 0, Sigmoid: 1, Tanh: 2}


@dataclass
class Zonotope:
    """Centre c, generators (CSR rows or a dense matrix), error box beta; m generator ids.

    gsum, when the kernel that made a CSR zonotope knew it: an upper bound of the exact sum
    of |generators| of every row, so bounds need not sweep the rows again.
    """

    c: np.ndarray
    beta: np.ndarray
    m: int
    dense: np.ndarray | None = None
    indptr: np.ndarray | None = None
    idx: np.ndarray | None = None
    val: np.ndarray | None = None
    gsum: np.ndarray | None = None

    @classmethod
    def from_box(cls, box: InputBox) -> Zonotope:
        """One generator per input with non-zero width."""
        c, ptr, idx, val = K.box_to_csr(box.lower, box.upper)
        return cls(c=c, beta=np.zeros(c.shape[0]), m=c.shape[0], indptr=ptr, idx=idx, val=val)

    @classmethod
    def of_dense(cls, c: np.ndarray, gt: np.ndarray, beta: np.ndarray) -> Zonotope:
        """A dense zonotope from its generator-major matrix gt (m x n)."""
        return cls(c, beta, gt.shape[0], dense=gt.T)

    @property
    def is_dense(self) -> bool:
        return self.dense is not None

    @property
    def nbytes(self) -> int:
        """The memory the state holds (what verifier.memory's cap counts)."""
        n = self.c.shape[0]
        if self.is_dense:
            return dense_bytes(n, self.dense.shape[1])
        return csr_bytes(n, self.indptr[-1])

    @property
    def gt(self) -> np.ndarray:
        """The dense generators, generator-major and row-major (m x n)."""
        return np.ascontiguousarray(self.dense.T)

    def bounds(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sound (lower, upper, radius) per neuron."""
        if self.is_dense:
            return K.dense_bounds(self.c, self.gt, self.beta)
        if self.gsum is not None:
            return K.bounds_from_sums(self.c, self.gsum, self.beta)
        return K.csr_bounds(self.c, self.indptr, self.val, self.beta)

    def row_sums(self) -> np.ndarray:
        """gsum of a CSR zonotope (computed when its kernel did not give it)."""
        if self.gsum is not None:
            return self.gsum
        return K.csr_abs_sums(self.indptr, self.val)

    def to_csr(self) -> Zonotope:
        if not self.is_dense:
            return self
        ptr, idx, val = K.dense_to_csr(np.ascontiguousarray(self.dense))
        return Zonotope(self.c, self.beta, self.dense.shape[1], indptr=ptr, idx=idx, val=val)

    def to_dense(self) -> Zonotope:
        if self.is_dense:
            return self
        n = self.c.shape[0]
        eye = np.eye(n)
        _, gt, _ = K.csr_to_dense_affine(
            self.c, self.indptr, self.idx, self.val, self.beta, np.zeros(n), self.m,
            eye, eye, np.zeros(n),
        )  # the identity layer: every product is exact, so c and beta carry over
        return Zonotope.of_dense(self.c.copy(), gt, self.beta.copy())


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
    else:
        ensure_fits(z.nbytes + dense_bytes(w.shape[0], min(z.m, z.indptr[-1])))
        _, _, rad = z.bounds()
        c, gt, beta = grouped_dense_affine(
            z.c, z.indptr, z.idx, z.val, z.beta, rad, z.m, wt, aw, b
        )
    return Zonotope.of_dense(c, gt, beta)


def _scale(arrays: tuple, z: Zonotope) -> Zonotope:
    a, b = arrays
    ensure_fits(2 * z.nbytes)
    _, _, rad = z.bounds()
    if z.is_dense:
        c, gt, beta = K.dense_scale(z.c, z.gt, z.beta, rad, a, b)
        return Zonotope.of_dense(c, gt, beta)
    c, val, beta = K.csr_scale(z.c, z.indptr, z.val, z.beta, rad, a, b)
    return Zonotope(c, beta, z.m, indptr=z.indptr, idx=z.idx, val=val)


def _activation(kind: int):
    def transfer(_layer, z: Zonotope) -> Zonotope:
        n = z.c.shape[0]  # at most one new generator per neuron
        if z.is_dense:
            ensure_fits(z.nbytes + dense_bytes(n, z.dense.shape[1] + n))
        else:
            ensure_fits(z.nbytes + csr_bytes(n, z.indptr[-1] + n))
        lo, hi, rad = z.bounds()
        lam, mu, nu = K.relaxation(kind, lo, hi)
        if z.is_dense:
            c, gt, beta = K.dense_activation(z.c, z.gt, z.beta, rad, lam, mu, nu)
            return Zonotope.of_dense(c, gt, beta)
        c, ptr, idx, val, beta, m, gsum = K.csr_activation(
            z.c, z.indptr, z.idx, z.val, z.beta, rad, z.row_sums(), z.m, lam, mu, nu
        )
        return Zonotope(c, beta, m, indptr=ptr, idx=idx, val=val, gsum=gsum)

    return transfer


def _conv(arrays: tuple, z: Zonotope) -> Zonotope:
    z = z.to_csr()
    _, _, rad = z.bounds()
    c, ptr, idx, val, beta, gsum = csr_conv(
        z.c, z.indptr, z.idx, z.val, z.beta, rad, z.m, *arrays
    )
    return Zonotope(c, beta, z.m, indptr=ptr, idx=idx, val=val, gsum=gsum)


def _maxpool(arrays: tuple, z: Zonotope) -> Zonotope:
    z = z.to_csr()
    lo, hi, _ = z.bounds()
    c, ptr, idx, val, beta, m, gsum = csr_maxpool(
        z.c, z.indptr, z.idx, z.val, z.beta, lo, hi, z.row_sums(), z.m, *arrays
    )
    return Zonotope(c, beta, m, indptr=ptr, idx=idx, val=val, gsum=gsum)


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
        elif type(layer) in ACTIVATION_KIND and kinds[-1] == -1:
            kinds[-1] = ACTIVATION_KIND[type(layer)]
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
             Scale: _prepare_scale},
    transfers={
        Dense: _dense,
        Conv: _conv,
        MaxPool: _maxpool,
        Scale: _scale,
        **{kind: _activation(code) for kind, code in ACTIVATION_KIND.items()},
    },
    linear_lower=_linear_lower,
    bounds=_bounds,
    fast_path=_chain_lower,
    prepare_fast=_prepare_chain,
)
