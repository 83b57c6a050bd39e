"""DeepZono analysis of a Network over an input box, and is_robust on top of it.

Python walks the layer list; verifier.kernels does the arithmetic. The generator matrix is
sparse (CSR) from the input through convolutions and pools and turns dense at the first
fully connected layer, dropping every generator that no neuron uses any more.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from verifier import kernels as K
from verifier.box import InputBox
from verifier.network import Conv, Dense, MaxPool, Network, Relu, Scale, Sigmoid, Tanh
from verifier.runtime import single_threaded

_ACT_KIND = {Relu: 0, Sigmoid: 1, Tanh: 2}


@dataclass(frozen=True)
class _Prepared:
    """A layer with the derived arrays its kernel wants (transposes, |W|, shape tuples)."""

    layer: object
    arrays: tuple


@dataclass(frozen=True)
class ZonoNet:
    """A Network prepared once for repeated zonotope passes."""

    net: Network
    steps: tuple[_Prepared, ...]
    last: Dense | None  # a final dense layer is applied together with the property
    chain: tuple | None = None  # arguments of the fused kernel for Dense/activation chains

    @classmethod
    def of(cls, net: Network | ZonoNet) -> ZonoNet:
        """Prepare a Network (or return an already prepared one)."""
        if isinstance(net, ZonoNet):
            return net
        layers = list(net.layers)
        last = layers.pop() if layers and isinstance(layers[-1], Dense) else None
        steps = tuple(_prepare(layer) for layer in layers)
        return cls(net, steps, last, _chain(steps, last))


def _chain(steps: tuple[_Prepared, ...], last: Dense | None) -> tuple | None:
    """Dense (activation) Dense (activation) ... Dense: the form the fused kernel takes."""
    if last is None or not steps or not isinstance(steps[0].layer, Dense):
        return None
    dense, kinds = [], []
    for step in steps:
        if isinstance(step.layer, Dense):
            dense.append(step.arrays)
            kinds.append(-1)
        elif type(step.layer) in _ACT_KIND and kinds[-1] == -1:
            kinds[-1] = _ACT_KIND[type(step.layer)]
        else:
            return None
    w, wt, aw, b = (tuple(a[i] for a in dense) for i in range(4))
    last_w = np.ascontiguousarray(last.weight, dtype=np.float64)
    return w, wt, aw, b, np.array(kinds, np.int64), last_w, np.asarray(last.bias, np.float64)


def _prepare(layer) -> _Prepared:
    if isinstance(layer, Dense):
        w = np.ascontiguousarray(layer.weight, dtype=np.float64)
        arrays = (w, np.ascontiguousarray(w.T), np.abs(w), np.asarray(layer.bias, np.float64))
        return _Prepared(layer, arrays)
    if isinstance(layer, Conv):
        arrays = (
            np.ascontiguousarray(layer.weight, dtype=np.float64),
            np.asarray(layer.bias, np.float64),
            np.array(layer.in_shape, np.int64),
            np.array(layer.out_shape, np.int64),
            np.array(layer.stride, np.int64),
            np.array(layer.pads, np.int64),
        )
        return _Prepared(layer, arrays)
    if isinstance(layer, MaxPool):
        arrays = tuple(
            np.array(v, np.int64)
            for v in (layer.in_shape, layer.out_shape, layer.kernel, layer.stride, layer.pads)
        )
        return _Prepared(layer, arrays)
    if isinstance(layer, Scale):
        return _Prepared(layer, (np.asarray(layer.a, np.float64), np.asarray(layer.b, np.float64)))
    return _Prepared(layer, ())


@dataclass
class Zonotope:
    """Centre c, generators (CSR rows or a dense matrix), error box beta; m generator ids."""

    c: np.ndarray
    beta: np.ndarray
    m: int
    dense: np.ndarray | None = None
    indptr: np.ndarray | None = None
    idx: np.ndarray | None = None
    val: np.ndarray | None = None

    @classmethod
    def from_box(cls, box: InputBox) -> Zonotope:
        """One generator per input with non-zero width."""
        c, ptr, idx, val = K.box_to_csr(box.lower, box.upper)
        return cls(c=c, beta=np.zeros(c.shape[0]), m=c.shape[0], indptr=ptr, idx=idx, val=val)

    @property
    def is_dense(self) -> bool:
        return self.dense is not None

    def bounds(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sound (lower, upper, radius) per neuron."""
        if self.is_dense:
            return K.dense_bounds(self.c, self.dense, self.beta)
        return K.csr_bounds(self.c, self.indptr, self.val, self.beta)

    def to_csr(self) -> Zonotope:
        if not self.is_dense:
            return self
        ptr, idx, val = K.dense_to_csr(self.dense)
        return Zonotope(self.c, self.beta, self.dense.shape[1], indptr=ptr, idx=idx, val=val)


def propagate(znet: ZonoNet, box: InputBox) -> Zonotope:
    """The zonotope of the network's values before its final dense layer (if any)."""
    z = Zonotope.from_box(box)
    for step in znet.steps:
        z = _apply(step, z)
    return z


def _apply(step: _Prepared, z: Zonotope) -> Zonotope:
    layer = step.layer
    lo, hi, rad = z.bounds()
    if isinstance(layer, Dense):
        w, wt, aw, b = step.arrays
        if z.is_dense:
            c, g, beta = K.dense_affine(z.c, z.dense, z.beta, rad, w, wt, aw, b)
        else:
            c, g, beta = K.csr_to_dense_affine(
                z.c, z.indptr, z.idx, z.val, z.beta, rad, z.m, wt, aw, b
            )
        return Zonotope(c, beta, g.shape[1], dense=g)
    if isinstance(layer, Scale):
        a, b = step.arrays
        if z.is_dense:
            c, g, beta = K.dense_scale(z.c, z.dense, z.beta, rad, a, b)
            return Zonotope(c, beta, z.m, dense=g)
        c, val, beta = K.csr_scale(z.c, z.indptr, z.val, z.beta, rad, a, b)
        return Zonotope(c, beta, z.m, indptr=z.indptr, idx=z.idx, val=val)
    if isinstance(layer, (Relu, Sigmoid, Tanh)):
        lam, mu, nu = K.relaxation(_ACT_KIND[type(layer)], lo, hi)
        if z.is_dense:
            c, g, beta = K.dense_activation(z.c, z.dense, z.beta, rad, lam, mu, nu)
            return Zonotope(c, beta, g.shape[1], dense=g)
        c, ptr, idx, val, beta, m = K.csr_activation(
            z.c, z.indptr, z.idx, z.val, z.beta, rad, z.m, lam, mu, nu
        )
        return Zonotope(c, beta, m, indptr=ptr, idx=idx, val=val)
    if isinstance(layer, Conv):
        z = z.to_csr()
        c, ptr, idx, val, beta = K.csr_conv(
            z.c, z.indptr, z.idx, z.val, z.beta, rad, z.m, *step.arrays
        )
        return Zonotope(c, beta, z.m, indptr=ptr, idx=idx, val=val)
    if isinstance(layer, MaxPool):
        z = z.to_csr()
        c, ptr, idx, val, beta, m = K.csr_maxpool(
            z.c, z.indptr, z.idx, z.val, z.beta, lo, hi, z.m, *step.arrays
        )
        return Zonotope(c, beta, m, indptr=ptr, idx=idx, val=val)
    raise TypeError(f"no zonotope transformer for {layer!r}")


def output_bounds(net: Network | ZonoNet, box: InputBox) -> tuple[np.ndarray, np.ndarray]:
    """Sound interval bounds of every logit over the box."""
    znet = ZonoNet.of(net)
    z = propagate(znet, box)
    if znet.last is not None:
        z = _apply(_prepare(znet.last), z)
    lo, hi, _ = z.bounds()
    return lo, hi


def margins(net: Network | ZonoNet, x: np.ndarray, eps: float, label: int) -> np.ndarray:
    """Sound lower bounds of z_label - z_j over the clipped eps-ball around x (inf at label)."""
    znet = ZonoNet.of(net)
    box = InputBox.linf(x, eps, znet.net.input_lower, znet.net.input_upper)
    if znet.chain is not None:
        w, wt, aw, b, kinds, last_w, last_b = znet.chain
        return K.dense_chain_margins(
            box.lower, box.upper, w, wt, aw, b, kinds, last_w, last_b, label
        )
    z = propagate(znet, box)
    if not z.is_dense:
        z = _densify(z)
    _, _, rad = z.bounds()
    if znet.last is not None:
        w = np.ascontiguousarray(znet.last.weight, dtype=np.float64)
        b = np.asarray(znet.last.bias, np.float64)
        return K.margins_dense_last(z.c, z.dense, z.beta, rad, w, b, label)
    return K.margins_rows(z.c, z.dense, z.beta, label)


def _densify(z: Zonotope) -> Zonotope:
    n = z.c.shape[0]
    eye = np.eye(n)
    c, g, beta = K.csr_to_dense_affine(
        z.c, z.indptr, z.idx, z.val, z.beta, np.zeros(n), z.m, eye, eye, np.zeros(n)
    )
    return Zonotope(z.c.copy(), z.beta.copy(), g.shape[1], dense=g)


def robustness_margin(net: Network | ZonoNet, x: np.ndarray, eps: float, label: int) -> float:
    """The smallest certified logit margin; > 0 means robust at eps."""
    return float(np.min(margins(net, x, eps, label)))


def is_robust(net: Network | ZonoNet, x: np.ndarray, eps: float, label: int | None = None) -> bool:
    """True when DeepZono proves every input in the clipped eps-ball keeps class `label`.

    label defaults to the class the network predicts for x.
    """
    znet = ZonoNet.of(net)
    if label is None:
        label = znet.net.predict(x)
    with single_threaded():
        return robustness_margin(znet, x, eps, label) > 0.0
