"""The layer kinds (plain numpy data) a network is made of, and its float64 forward pass.

ONNX import (verifier.onnx.importer, `load_onnx`) lowers every supported op onto these
layer kinds. Tensors between layers are flattened in C order (channel, row, column).
A network is its layers in topological order; a chain reads each layer's input from the one
before, a graph (residual Add, Concat) names every layer's sources (`Network.sources`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


class UnsupportedModelError(ValueError):
    """The ONNX model uses an operator or a form that radiusguard cannot verify."""


@dataclass(frozen=True)
class Dense:
    """y = W x + b on flat vectors; weight has shape [out, in]."""

    weight: np.ndarray
    bias: np.ndarray


@dataclass(frozen=True)
class Conv:
    """2-D convolution; weight [out_c, in_c, kh, kw]; pads (top, left, bottom, right).

    Grouped convolutions are stored with their weights expanded to all input channels (zero
    off the diagonal blocks); `groups` records that block structure for kernels that use it.
    """

    weight: np.ndarray
    bias: np.ndarray
    in_shape: tuple[int, int, int]
    out_shape: tuple[int, int, int]
    stride: tuple[int, int]
    pads: tuple[int, int, int, int]
    groups: int = 1


@dataclass(frozen=True)
class MaxPool:
    """2-D max pooling per channel; padding never wins (it is -inf)."""

    in_shape: tuple[int, int, int]
    out_shape: tuple[int, int, int]
    kernel: tuple[int, int]
    stride: tuple[int, int]
    pads: tuple[int, int, int, int]


@dataclass(frozen=True)
class Scale:
    """Elementwise y = a * x + b (normalisation that could not be folded); a, b are flat."""

    a: np.ndarray
    b: np.ndarray


@dataclass(frozen=True)
class Relu:
    """max(x, 0) elementwise."""


@dataclass(frozen=True)
class Sigmoid:
    """1 / (1 + exp(-x)) elementwise."""


@dataclass(frozen=True)
class Tanh:
    """tanh(x) elementwise."""


@dataclass(frozen=True)
class LeakyRelu:
    """max(x, alpha x) elementwise, 0 <= alpha < 1."""

    alpha: float


@dataclass(frozen=True)
class Add:
    """The elementwise sum of two or more tensors of one shape (a residual connection)."""


@dataclass(frozen=True)
class Concat:
    """Tensors joined along channels; with channel-major flattening, their flat concatenation.

    sizes: the flat size of each source, in order.
    """

    sizes: tuple[int, ...]


Layer = Dense | Conv | MaxPool | Scale | Relu | LeakyRelu | Sigmoid | Tanh | Add | Concat
ACTIVATIONS = (Relu, LeakyRelu, Sigmoid, Tanh)
JOINS = (Add, Concat)  # the layer kinds that take several sources
INPUT = -1  # the source index that names the network's input


@dataclass(frozen=True)
class Network:
    """A feed-forward network: layers in topological order, the shape of one input (no batch).

    sources: empty for a chain (each layer reads the one before, the first the input); for a
    graph, one tuple per layer of the indices of the layers it reads (INPUT for the input).
    The last layer's output is the network's.
    """

    layers: tuple[Layer, ...]
    input_shape: tuple[int, ...]
    n_outputs: int
    sha256: str = ""
    name: str = ""
    input_lower: float = 0.0
    input_upper: float = 1.0
    meta: dict = field(default_factory=dict, compare=False)
    sources: tuple[tuple[int, ...], ...] = ()

    @property
    def is_chain(self) -> bool:
        return not self.sources

    def sources_of(self, i: int) -> tuple[int, ...]:
        """The indices of the layers layer i reads (INPUT for the network input)."""
        return self.sources[i] if self.sources else (i - 1 if i else INPUT,)

    def __repr__(self) -> str:
        """One line: name, shapes and layer kinds, never the weights."""

        def dims(shape) -> str:
            return "x".join(str(int(d)) for d in shape)

        def summary(layer) -> str:
            kind = type(layer).__name__
            if hasattr(layer, "in_shape"):
                return f"{kind} {dims(layer.in_shape)}->{dims(layer.out_shape)}"
            if hasattr(layer, "weight"):
                return f"{kind} {layer.weight.shape[1]}->{layer.weight.shape[0]}"
            return f"{kind} {len(layer.a)}" if hasattr(layer, "a") else kind

        layers = ", ".join(summary(layer) for layer in self.layers)
        digest = f", sha256 {self.sha256[:12]}" if self.sha256 else ""
        return (f"Network({self.name or 'unnamed'!r}, input {dims(self.input_shape)}, "
                f"{self.n_outputs} outputs, layers [{layers}]{digest})")

    @property
    def input_size(self) -> int:
        return int(np.prod(self.input_shape))

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Logits for one input (any shape with input_size elements) or a batch [N, ...]."""
        x = np.asarray(x, dtype=np.float64)
        batch = x.ndim > len(self.input_shape) or (
            x.size != self.input_size and x.size % self.input_size == 0
        )
        flat = x.reshape(-1, self.input_size)
        out = np.stack([_forward_one(self, v) for v in flat])
        return out if batch else out[0]

    def predict(self, x: np.ndarray) -> int:
        """Predicted class of one input."""
        return int(np.argmax(self.forward(np.asarray(x).reshape(self.input_size))))


def _forward_one(net: Network, v: np.ndarray) -> np.ndarray:
    if net.is_chain:
        for layer in net.layers:
            v = apply_layer(layer, v)
        return v
    return layer_outputs(net, v)[-1]


def layer_outputs(net: Network, v: np.ndarray) -> list[np.ndarray]:
    """Every layer's output for one flat input, in layer order (the last is the logits)."""
    outs: list[np.ndarray] = []
    for i, layer in enumerate(net.layers):
        outs.append(apply_layer(layer, *(v if j == INPUT else outs[j] for j in net.sources_of(i))))
    return outs


def apply_layer(layer: Layer, v: np.ndarray, *more: np.ndarray) -> np.ndarray:
    """Concrete float64 evaluation of one layer on flat vectors (several for a join)."""
    if isinstance(layer, Add):
        return sum(more, v)
    if isinstance(layer, Concat):
        return np.concatenate((v, *more))
    if isinstance(layer, LeakyRelu):
        return np.maximum(v, layer.alpha * v)
    if isinstance(layer, Dense):
        return layer.weight @ v + layer.bias
    if isinstance(layer, Scale):
        return layer.a * v + layer.b
    if isinstance(layer, Relu):
        return np.maximum(v, 0.0)
    if isinstance(layer, Sigmoid):
        return 1.0 / (1.0 + np.exp(-v))
    if isinstance(layer, Tanh):
        return np.tanh(v)
    if isinstance(layer, Conv):
        return _conv_forward(layer, v)
    if isinstance(layer, MaxPool):
        return _pool_forward(layer, v)
    raise TypeError(f"unknown layer {layer!r}")


def _conv_forward(layer: Conv, v: np.ndarray) -> np.ndarray:
    c, h, w = layer.in_shape
    oc, oh, ow = layer.out_shape
    _, _, kh, kw = layer.weight.shape
    pt, pl, pb, pr = layer.pads
    img = np.zeros((c, h + pt + pb, w + pl + pr))
    img[:, pt : pt + h, pl : pl + w] = v.reshape(c, h, w)
    sh, sw = layer.stride
    cols = np.empty((c, kh, kw, oh, ow))
    for i in range(kh):
        for j in range(kw):
            cols[:, i, j] = img[:, i : i + sh * oh : sh, j : j + sw * ow : sw]
    out = layer.weight.reshape(oc, -1) @ cols.reshape(c * kh * kw, oh * ow)
    return (out + layer.bias[:, None]).reshape(-1)


def _pool_forward(layer: MaxPool, v: np.ndarray) -> np.ndarray:
    return pool_windows(layer, v).max(axis=0).reshape(-1)


def pool_windows(layer: MaxPool, v: np.ndarray) -> np.ndarray:
    """[kh * kw, c, oh, ow]: tap t = i * kw + j of every output's window (padding -inf)."""
    c, h, w = layer.in_shape
    _, oh, ow = layer.out_shape
    kh, kw = layer.kernel
    sh, sw = layer.stride
    pt, pl, pb, pr = layer.pads
    img = np.full((c, h + pt + pb, w + pl + pr), -np.inf)
    img[:, pt : pt + h, pl : pl + w] = v.reshape(c, h, w)
    return np.stack([img[:, i : i + sh * oh : sh, j : j + sw * ow : sw]
                     for i in range(kh) for j in range(kw)])
