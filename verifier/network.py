"""ONNX import into a small layer list of plain numpy data, and a float64 forward pass.

Supported: Gemm, MatMul (+ Add), Conv (groups 1), MaxPool, Relu, Sigmoid, Tanh, Flatten,
Reshape (to a flat vector), BatchNormalization (folded), Dropout/Identity, and elementwise
Add/Sub/Mul/Div by constants (input normalisation, folded into the next affine layer).
Tensors between layers are flattened in C order (channel, row, column).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper


class UnsupportedModelError(ValueError):
    """The ONNX model uses an operator or a form that radiusguard cannot verify."""


@dataclass(frozen=True)
class Dense:
    """y = W x + b on flat vectors; weight has shape [out, in]."""

    weight: np.ndarray
    bias: np.ndarray


@dataclass(frozen=True)
class Conv:
    """2-D convolution (groups 1); weight [out_c, in_c, kh, kw]; pads (top, left, bottom, right)."""

    weight: np.ndarray
    bias: np.ndarray
    in_shape: tuple[int, int, int]
    out_shape: tuple[int, int, int]
    stride: tuple[int, int]
    pads: tuple[int, int, int, int]


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


Layer = Dense | Conv | MaxPool | Scale | Relu | Sigmoid | Tanh
ACTIVATIONS = (Relu, Sigmoid, Tanh)


@dataclass(frozen=True)
class Network:
    """A feed-forward network as a list of layers, with the shape of one input (no batch)."""

    layers: tuple[Layer, ...]
    input_shape: tuple[int, ...]
    n_outputs: int
    sha256: str = ""
    name: str = ""
    input_lower: float = 0.0
    input_upper: float = 1.0
    meta: dict = field(default_factory=dict, compare=False)

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
        out = np.stack([_forward_one(self.layers, v) for v in flat])
        return out if batch else out[0]

    def predict(self, x: np.ndarray) -> int:
        """Predicted class of one input."""
        return int(np.argmax(self.forward(np.asarray(x).reshape(self.input_size))))


def _forward_one(layers: tuple[Layer, ...], v: np.ndarray) -> np.ndarray:
    for layer in layers:
        v = apply_layer(layer, v)
    return v


def apply_layer(layer: Layer, v: np.ndarray) -> np.ndarray:
    """Concrete float64 evaluation of one layer on a flat vector."""
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
    c, h, w = layer.in_shape
    _, oh, ow = layer.out_shape
    kh, kw = layer.kernel
    sh, sw = layer.stride
    pt, pl, pb, pr = layer.pads
    img = np.full((c, h + pt + pb, w + pl + pr), -np.inf)
    img[:, pt : pt + h, pl : pl + w] = v.reshape(c, h, w)
    out = np.full((c, oh, ow), -np.inf)
    for i in range(kh):
        for j in range(kw):
            out = np.maximum(out, img[:, i : i + sh * oh : sh, j : j + sw * ow : sw])
    return out.reshape(-1)


# ----------------------------------------------------------------------------- ONNX import


def load_onnx(path: str | Path) -> Network:
    """Read an ONNX file into a Network; unsupported ops raise UnsupportedModelError."""
    path = Path(path)
    data = path.read_bytes()
    try:
        model = onnx.load_from_string(data)
    except Exception as exc:  # onnx raises DecodeError and others
        raise UnsupportedModelError(f"{path}: not a readable ONNX model ({exc})") from None
    net = from_onnx_model(model)
    return replace(net, sha256=hashlib.sha256(data).hexdigest(), name=path.stem)


def from_onnx_model(model: onnx.ModelProto) -> Network:
    """Convert an in-memory ONNX model (a single-input chain) into a Network."""
    graph = model.graph
    consts: dict[str, np.ndarray] = {
        t.name: numpy_helper.to_array(t).astype(np.float64) for t in graph.initializer
    }
    inputs = [i for i in graph.input if i.name not in consts]
    if len(inputs) != 1:
        raise UnsupportedModelError(f"expected one data input, found {len(inputs)}")
    dims = [d.dim_value for d in inputs[0].type.tensor_type.shape.dim]
    if len(dims) >= 2 and dims[0] in (0, 1):
        dims = dims[1:]  # batch dimension (symbolic or 1)
    if not dims or any(d <= 0 for d in dims):
        raise UnsupportedModelError(f"input shape {dims} must be fully known")
    builder = _Builder(tuple(int(d) for d in dims))
    current = inputs[0].name
    for node in graph.node:
        if node.op_type == "Constant":
            consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t).astype(np.float64)
            continue
        data_inputs = [i for i in node.input if i and i not in consts]
        if node.op_type in ("Shape", "Gather", "Unsqueeze", "Concat") and not data_inputs:
            raise UnsupportedModelError(f"op {node.op_type} (node {node.name!r}) is not supported")
        if data_inputs != [current]:
            raise UnsupportedModelError(
                f"node {node.name!r} ({node.op_type}) does not continue a single chain; "
                "only feed-forward chains are supported"
            )
        builder.add(node, consts)
        current = node.output[0]
    if current != graph.output[0].name:
        raise UnsupportedModelError("graph output is not the end of the layer chain")
    layers = _fold(builder.layers)
    net = Network(layers=tuple(layers), input_shape=builder.input_shape, n_outputs=builder.size)
    return net


def _attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


class _Builder:
    """Turns ONNX nodes into layers while tracking the (C, H, W) or flat shape."""

    def __init__(self, input_shape: tuple[int, ...]):
        self.input_shape = input_shape
        self.shape: tuple[int, ...] = input_shape
        self.layers: list[Layer] = []

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def add(self, node: onnx.NodeProto, consts: dict[str, np.ndarray]) -> None:
        op = node.op_type
        handler = getattr(self, f"_op_{op}", None)
        if handler is None:
            raise UnsupportedModelError(
                f"unsupported ONNX op {op} (node {node.name!r}); supported: "
                + ", ".join(sorted(n[4:] for n in dir(self) if n.startswith("_op_")))
            )
        handler(node, [consts.get(i) for i in node.input])

    def _op_Gemm(self, node, args):
        w, b = args[1], (args[2] if len(args) > 2 else None)
        if w is None or _attr(node, "transA", 0):
            raise UnsupportedModelError(f"Gemm {node.name!r}: needs constant B and transA=0")
        if _attr(node, "transB", 0):
            w = w.T
        w = w.T * _attr(node, "alpha", 1.0)  # stored as [out, in]
        bias = np.zeros(w.shape[0]) if b is None else np.broadcast_to(b, w.shape[0]).copy()
        self._dense(node, w, bias * _attr(node, "beta", 1.0))

    def _op_MatMul(self, node, args):
        if args[1] is None or args[1].ndim != 2:
            raise UnsupportedModelError(f"MatMul {node.name!r}: needs a constant 2-D weight")
        self._dense(node, args[1].T.copy(), np.zeros(args[1].shape[1]))

    def _dense(self, node, w: np.ndarray, b: np.ndarray) -> None:
        if w.shape[1] != self.size:
            raise UnsupportedModelError(
                f"{node.op_type} {node.name!r}: weight expects {w.shape[1]} inputs, got {self.size}"
            )
        self.layers.append(Dense(np.ascontiguousarray(w), b))
        self.shape = (w.shape[0],)

    def _elementwise(self, node, a: np.ndarray | float, b: np.ndarray | float) -> None:
        av = np.broadcast_to(np.asarray(a, dtype=np.float64), self._bshape(node, a)).reshape(-1)
        bv = np.broadcast_to(np.asarray(b, dtype=np.float64), self._bshape(node, b)).reshape(-1)
        self.layers.append(Scale(av.copy(), bv.copy()))

    def _bshape(self, node, c) -> tuple[int, ...]:
        c = np.asarray(c)
        shape = self.shape
        if c.ndim > len(shape):
            if c.shape[0] != 1 or c.ndim - 1 > len(shape):
                raise UnsupportedModelError(
                    f"{node.op_type} {node.name!r}: constant shape {c.shape}"
                )
            c = c.reshape(c.shape[1:])
        try:
            np.broadcast_shapes(c.shape, shape)
        except ValueError:
            raise UnsupportedModelError(
                f"{node.op_type} {node.name!r}: constant {c.shape} does not broadcast to {shape}"
            ) from None
        return shape

    def _const_operand(self, node, args) -> np.ndarray:
        if args[0] is not None or args[1] is None:
            raise UnsupportedModelError(
                f"{node.op_type} {node.name!r}: only data {node.op_type} constant is supported"
            )
        c = args[1]
        return c.reshape(c.shape[1:]) if c.ndim > len(self.shape) else c

    def _op_Add(self, node, args):
        c = self._const_operand(node, args)
        last = self.layers[-1] if self.layers else None
        if isinstance(last, Dense) and c.size in (1, last.bias.size):
            self.layers[-1] = Dense(last.weight, last.bias + np.broadcast_to(c, last.bias.shape))
            return
        self._elementwise(node, 1.0, c)

    def _op_Sub(self, node, args):
        self._elementwise(node, 1.0, -self._const_operand(node, args))

    def _op_Mul(self, node, args):
        self._elementwise(node, self._const_operand(node, args), 0.0)

    def _op_Div(self, node, args):
        self._elementwise(node, 1.0 / self._const_operand(node, args), 0.0)

    def _op_Relu(self, node, args):
        self.layers.append(Relu())

    def _op_Sigmoid(self, node, args):
        self.layers.append(Sigmoid())

    def _op_Tanh(self, node, args):
        self.layers.append(Tanh())

    def _op_Identity(self, node, args):
        pass

    _op_Dropout = _op_Identity

    def _op_Flatten(self, node, args):
        if _attr(node, "axis", 1) != 1:
            raise UnsupportedModelError(f"Flatten {node.name!r}: only axis=1 is supported")
        self.shape = (self.size,)

    def _op_Reshape(self, node, args):
        target = args[1]
        if target is None:
            raise UnsupportedModelError(f"Reshape {node.name!r}: needs a constant shape")
        dims = [int(d) for d in target]
        flat = [d for d in dims if d not in (1, -1, 0)] or [self.size]
        if len(dims) <= 2 and (np.prod(flat) == self.size or -1 in dims):
            self.shape = (self.size,)
            return
        raise UnsupportedModelError(
            f"Reshape {node.name!r}: only flattening is supported, got target {dims}"
        )

    def _spatial(self, node) -> tuple[int, int, int]:
        if len(self.shape) != 3:
            raise UnsupportedModelError(f"{node.op_type} {node.name!r}: needs a [C,H,W] input")
        return self.shape  # type: ignore[return-value]

    def _geometry(self, node, kernel: tuple[int, int], in_hw: tuple[int, int]):
        stride = tuple(_attr(node, "strides", [1, 1]))
        if _attr(node, "dilations", [1, 1]) not in ([1, 1], (1, 1)):
            raise UnsupportedModelError(f"{node.op_type} {node.name!r}: dilation is not supported")
        auto_pad = _attr(node, "auto_pad", b"NOTSET")
        auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
        h, w = in_hw
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            pads = []
            for size, k, s in ((h, kernel[0], stride[0]), (w, kernel[1], stride[1])):
                out = -(-size // s)
                total = max((out - 1) * s + k - size, 0)
                small = total // 2
                upper_first = auto_pad == "SAME_UPPER"
                pads.append((small, total - small) if upper_first else (total - small, small))
            pt, pb = pads[0]
            pl, pr = pads[1]
        elif auto_pad == "VALID":
            pt = pl = pb = pr = 0
        else:
            pt, pl, pb, pr = tuple(_attr(node, "pads", [0, 0, 0, 0]))
        if _attr(node, "ceil_mode", 0):
            raise UnsupportedModelError(f"{node.op_type} {node.name!r}: ceil_mode is not supported")
        oh = (h + pt + pb - kernel[0]) // stride[0] + 1
        ow = (w + pl + pr - kernel[1]) // stride[1] + 1
        return (int(stride[0]), int(stride[1])), (int(pt), int(pl), int(pb), int(pr)), oh, ow

    def _op_Conv(self, node, args):
        c, h, w = self._spatial(node)
        weight = args[1]
        if weight is None or _attr(node, "group", 1) != 1:
            raise UnsupportedModelError(f"Conv {node.name!r}: needs constant weights and group=1")
        oc, ic, kh, kw = weight.shape
        if ic != c:
            raise UnsupportedModelError(f"Conv {node.name!r}: {ic} input channels, data has {c}")
        bias = args[2] if len(args) > 2 and args[2] is not None else np.zeros(oc)
        stride, pads, oh, ow = self._geometry(node, (kh, kw), (h, w))
        self.layers.append(
            Conv(np.ascontiguousarray(weight), bias.copy(), (c, h, w), (oc, oh, ow), stride, pads)
        )
        self.shape = (oc, oh, ow)

    def _op_MaxPool(self, node, args):
        c, h, w = self._spatial(node)
        kernel = tuple(int(k) for k in _attr(node, "kernel_shape", None))
        if len(node.output) > 1 and node.output[1]:
            raise UnsupportedModelError(f"MaxPool {node.name!r}: the indices output is unsupported")
        stride, pads, oh, ow = self._geometry(node, kernel, (h, w))
        self.layers.append(MaxPool((c, h, w), (c, oh, ow), kernel, stride, pads))
        self.shape = (c, oh, ow)

    def _op_BatchNormalization(self, node, args):
        scale, bias, mean, var = args[1:5]
        eps = _attr(node, "epsilon", 1e-5)
        a = scale / np.sqrt(var + eps)
        b = bias - mean * a
        last = self.layers[-1] if self.layers else None
        if isinstance(last, Conv):
            self.layers[-1] = replace(
                last, weight=last.weight * a[:, None, None, None], bias=last.bias * a + b
            )
        elif isinstance(last, Dense):
            self.layers[-1] = Dense(last.weight * a[:, None], last.bias * a + b)
        else:
            c = self.shape[0]
            reps = self.size // c
            self.layers.append(Scale(np.repeat(a, reps), np.repeat(b, reps)))


def _fold(layers: list[Layer]) -> list[Layer]:
    """Fold Scale layers into a following Dense layer, and merge consecutive Scales."""
    out: list[Layer] = []
    for layer in layers:
        prev = out[-1] if out else None
        if isinstance(layer, Scale) and isinstance(prev, Scale):
            out[-1] = Scale(prev.a * layer.a, prev.b * layer.a + layer.b)
        elif isinstance(layer, Dense) and isinstance(prev, Scale):
            out[-1] = Dense(layer.weight * prev.a[None, :], layer.weight @ prev.b + layer.bias)
        elif isinstance(layer, Scale) and isinstance(prev, Dense):
            out[-1] = Dense(prev.weight * layer.a[:, None], prev.bias * layer.a + layer.b)
        else:
            out.append(layer)
    return out
