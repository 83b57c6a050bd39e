"""ONNX import: a table of op handlers lowering each node onto the layer kinds of verifier.network.

Every lowering is exact linear algebra, so every abstract domain supports the op at once:
AveragePool/GlobalAveragePool and grouped/depthwise Conv become a Conv with block-diagonal
weights (a Scale after it when padding is left out of the average), a zero Pad is folded into
the next Conv's padding or becomes a 1x1 identity Conv, a Transpose is a permutation folded
into the next Dense layer's columns, per-channel normalisation is a Scale folded into the next
affine layer, and a final Softmax/LogSoftmax is dropped (it keeps the order of the logits, so
the argmax margins are taken before it; ``Network.meta["dropped_output_op"]`` records it),
and Clip (ReLU6) is a chain of Scale and Relu layers. Shape (of a data tensor, whose shape
is known) and every op whose inputs are all constants are evaluated at import.
Tensors between layers are flattened in C order of the tracked shape (channel, row, column).

Models may be DAGs: every live tensor is tracked by name, and Add/Sum/Sub/Concat of data
tensors become join layers (verifier.onnx.graph, which also decides where folding is safe).
A model that is a chain gives a chain Network (`sources == ()`).
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from verifier.network import (
    INPUT,
    Conv,
    Dense,
    Layer,
    LeakyRelu,
    Network,
    Relu,
    Scale,
    Sigmoid,
    Tanh,
    UnsupportedModelError,
)
from verifier.onnx.graph import ALIASES, JOINS, JoinOps, Tensor, fold, graph_sources, readers
from verifier.onnx.spatial import SpatialOps, attr


def from_onnx_model(model: onnx.ModelProto) -> Network:
    """Convert an in-memory ONNX model (one data input, a chain or a DAG) into a Network."""
    graph = model.graph
    raw: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    consts: dict[str, np.ndarray] = {k: v.astype(np.float64) for k, v in raw.items()}
    inputs = [i for i in graph.input if i.name not in consts]
    if len(inputs) != 1:
        raise UnsupportedModelError(f"expected one data input, found {len(inputs)}")
    dims = [d.dim_value for d in inputs[0].type.tensor_type.shape.dim]
    if len(dims) >= 2 and dims[0] in (0, 1):
        dims = dims[1:]  # batch dimension (symbolic or 1)
    if not dims or any(d <= 0 for d in dims):
        raise UnsupportedModelError(f"input shape {dims} must be fully known")
    output = graph.output[0].name
    builder = _Builder(tuple(int(d) for d in dims),
                       readers(graph.node, inputs[0].name, output))
    tensors = {inputs[0].name: builder.state()}
    for node in graph.node:
        data_inputs = [i for i in node.input if i and i not in consts]
        unknown = [i for i in data_inputs if i not in tensors]
        if unknown:
            raise UnsupportedModelError(
                f"node {node.name!r} ({node.op_type}) reads {unknown[0]!r}, which no earlier "
                "node computes"
            )
        if node.op_type == "Shape" and len(data_inputs) == 1:
            values = [_shape_of(node, tensors[data_inputs[0]].shape)]
        elif not data_inputs and not node.op_type.startswith("Random"):
            # constants and shape arithmetic on them: evaluated here
            values = _evaluate(node, raw)
        else:
            values = None
        if values is not None:
            for name, value in zip(node.output, values, strict=False):
                raw[name] = np.asarray(value)
                consts[name] = raw[name].astype(np.float64)
            continue
        if not data_inputs:
            raise UnsupportedModelError(
                f"op {node.op_type} (node {node.name!r}) reads no data tensor and is not a "
                "constant"
            )
        if len(data_inputs) > 1 or node.op_type in JOINS:
            builder.join(node, [tensors[i] for i in data_inputs], consts)
        else:
            builder.load(tensors[data_inputs[0]])
            builder.add(node, consts)
        tensors[node.output[0]] = builder.state()
    if output not in tensors:
        raise UnsupportedModelError(f"graph output {output!r} is not computed from the input")
    builder.load(tensors[output])
    builder.flush_permutation(None)
    if builder.src != len(builder.layers) - 1:
        raise UnsupportedModelError(
            f"graph output {output!r} is not computed by the last layer (unused branches "
            "are not supported)"
        )
    layers, sources = fold(builder.layers, builder.sources)
    meta = {"dropped_output_op": builder.dropped} if builder.dropped else {}
    return Network(layers=tuple(layers), input_shape=builder.input_shape,
                   n_outputs=builder.size, meta=meta, sources=graph_sources(sources))


def _shape_of(node: onnx.NodeProto, shape: tuple[int, ...]) -> np.ndarray:
    """The static shape of the current tensor, with a batch of one (Shape's start/end)."""
    full = np.array([1, *shape], dtype=np.int64)
    return full[attr(node, "start", 0) : attr(node, "end", len(full))]


def _evaluate(node: onnx.NodeProto, raw: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run a node whose inputs are all constants (exact: its values are the model's)."""
    from onnx.reference import ReferenceEvaluator

    try:
        feeds = {i: raw[i] for i in node.input if i}
        return list(ReferenceEvaluator(node).run(None, feeds))
    except Exception as exc:  # the reference runtime raises many kinds
        raise UnsupportedModelError(
            f"op {node.op_type} (node {node.name!r}) on constants could not be evaluated: "
            f"{str(exc)[:120]}"
        ) from None


class _Builder(SpatialOps, JoinOps):
    """Turns ONNX nodes into layers, each reading the tensor (or, for a join, the tensors) the
    node reads: `load` makes a tensor current (its shape, layer `src`, pending state), the op
    handlers extend it, `state` records the result.

    A Transpose is kept pending as an index array (`perm`: new flat i holds old flat perm[i])
    through ops that commute with it, and absorbed by the next Dense layer. A handler may fold
    its arithmetic into the layer it reads (`_last`) only when no other node reads that layer.
    """

    def __init__(self, input_shape: tuple[int, ...], readers: dict[str, int]):
        self.input_shape = input_shape
        self.readers = readers  # per tensor name, from _readers
        self.layers: list[Layer] = []
        self.sources: list[tuple[int, ...]] = []
        self.dropped: str | None = None  # a final Softmax/LogSoftmax
        self.load(Tensor(input_shape, INPUT))

    def load(self, tensor: Tensor) -> None:
        self.shape, self.src, self.sole = tensor.shape, tensor.layer, tensor.sole
        self.perm, self.pad_layer = tensor.perm, tensor.pad_layer

    def state(self) -> Tensor:
        return Tensor(self.shape, self.src, self.perm, self.pad_layer, self.sole)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def add(self, node: onnx.NodeProto, consts: dict[str, np.ndarray]) -> None:
        op = node.op_type
        self._check_open(node)
        handler = getattr(self, f"_op_{op}", None)
        if handler is None:
            raise UnsupportedModelError(
                f"unsupported ONNX op {op} (node {node.name!r}); supported: "
                + ", ".join(sorted(n[4:] for n in dir(self) if n.startswith("_op_")))
            )
        if op not in _COMMUTES_WITH_PERMUTATION:
            self.flush_permutation(node)
        src, sole = self.src, self.sole
        handler(node, [consts.get(i) for i in node.input])
        if op not in ALIASES:  # the output is the layer's value: its readers are the layer's
            self.sole = (sole or self.src != src) and self.readers.get(node.output[0], 0) <= 1

    def _check_open(self, node: onnx.NodeProto) -> None:
        if self.dropped is not None:
            raise UnsupportedModelError(
                f"{self.dropped} is supported only as the last op; node {node.name!r} "
                f"({node.op_type}) follows it"
            )

    def append(self, layer: Layer, sources: tuple[int, ...] | None = None) -> None:
        """Add a layer reading the current tensor (or `sources`); it becomes current."""
        self.layers.append(layer)
        self.sources.append((self.src,) if sources is None else sources)
        self.src = len(self.layers) - 1
        self.sole = True  # read by the rest of this node only, until add() says otherwise
        self.pad_layer = None

    def _own(self) -> Layer | None:
        """The layer computing the current tensor when this node is its only reader, so the
        node's arithmetic may be folded into it (`replace`)."""
        return None if self.src == INPUT or not self.sole else self.layers[self.src]

    def replace(self, layer: Layer) -> None:
        """Put a layer in place of the current one (_own), reading the same sources."""
        self.layers[self.src] = layer
        self.pad_layer = None

    # ------------------------------------------------------------------ affine layers

    def _op_Gemm(self, node, args):
        w, b = args[1], (args[2] if len(args) > 2 else None)
        if w is None or attr(node, "transA", 0):
            raise UnsupportedModelError(f"Gemm {node.name!r}: needs constant B and transA=0")
        if attr(node, "transB", 0):
            w = w.T
        w = w.T * attr(node, "alpha", 1.0)  # stored as [out, in]
        bias = np.zeros(w.shape[0]) if b is None else np.broadcast_to(b, w.shape[0]).copy()
        self._dense(node, w, bias * attr(node, "beta", 1.0))

    def _op_MatMul(self, node, args):
        if args[1] is None or args[1].ndim != 2:
            raise UnsupportedModelError(f"MatMul {node.name!r}: needs a constant 2-D weight")
        self._dense(node, args[1].T.copy(), np.zeros(args[1].shape[1]))

    def _dense(self, node, w: np.ndarray, b: np.ndarray) -> None:
        if w.shape[1] != self.size:
            raise UnsupportedModelError(
                f"{node.op_type} {node.name!r}: weight expects {w.shape[1]} inputs, got {self.size}"
            )
        if self.perm is not None:  # W (P x): column i of W reads old position perm[i]
            cols = np.empty_like(w)
            cols[:, self.perm] = w
            w, self.perm = cols, None
        self.append(Dense(np.ascontiguousarray(w), b))
        self.shape = (w.shape[0],)

    def _conv(self, node, weight: np.ndarray, bias: np.ndarray, kernel, group_note: int = 1):
        c, h, w = self._spatial(node)
        stride, pads, oh, ow = self._geometry(node, kernel, (h, w))
        pad = self.pad_layer
        fold = pad is not None and self._own() is pad
        if fold:  # a preceding zero Pad becomes this Conv's padding
            c, h, w = pad.in_shape
            pads = tuple(int(a + b) for a, b in zip(pads, pad.pads, strict=True))
            oh = (h + pads[0] + pads[2] - kernel[0]) // stride[0] + 1
            ow = (w + pads[1] + pads[3] - kernel[1]) // stride[1] + 1
        oc = weight.shape[0]
        layer = Conv(np.ascontiguousarray(weight), np.asarray(bias, np.float64).copy(),
                     (c, h, w), (oc, oh, ow), stride, pads, group_note)
        if fold:
            self.replace(layer)
        else:
            self.append(layer)
        self.shape = (oc, oh, ow)

    def _op_Conv(self, node, args):
        c = self._spatial(node)[0]
        weight, group = args[1], int(attr(node, "group", 1))
        if weight is None or weight.ndim != 4:
            raise UnsupportedModelError(f"Conv {node.name!r}: needs constant 2-D conv weights")
        oc, icg, kh, kw = weight.shape
        if icg * group != c or oc % group:
            raise UnsupportedModelError(
                f"Conv {node.name!r}: {icg} input channels x group {group}, data has {c}"
            )
        if group > 1:  # block-diagonal weights: output block g reads input block g only
            full = np.zeros((oc, c, kh, kw))
            ocg = oc // group
            for g in range(group):
                rows = slice(g * ocg, (g + 1) * ocg)
                full[rows, g * icg : (g + 1) * icg] = weight[rows]
            weight = full
        bias = args[2] if len(args) > 2 and args[2] is not None else np.zeros(oc)
        self._conv(node, weight, bias, (kh, kw), group)

    # ------------------------------------------------------------------ elementwise

    def _elementwise(self, node, a, b) -> None:
        shape = self.shape
        av = np.broadcast_to(self._operand(node, a), shape).reshape(-1)
        bv = np.broadcast_to(self._operand(node, b), shape).reshape(-1)
        self.append(Scale(av.astype(np.float64).copy(), bv.astype(np.float64).copy()))

    def _operand(self, node, c) -> np.ndarray:
        c = np.asarray(c, dtype=np.float64)
        if c.ndim > len(self.shape):
            if c.shape[0] != 1 or c.ndim - 1 > len(self.shape):
                raise UnsupportedModelError(f"{node.op_type} {node.name!r}: constant {c.shape}")
            c = c.reshape(c.shape[1:])
        try:
            np.broadcast_shapes(c.shape, self.shape)
        except ValueError:
            raise UnsupportedModelError(
                f"{node.op_type} {node.name!r}: constant {c.shape} does not fit {self.shape}"
            ) from None
        return c

    def _const_operand(self, node, args) -> np.ndarray:
        if args[0] is not None or args[1] is None:
            raise UnsupportedModelError(
                f"{node.op_type} {node.name!r}: only data {node.op_type} constant is supported"
            )
        return self._operand(node, args[1])

    def _op_Add(self, node, args):
        c = self._const_operand(node, args)
        last = self._own()
        if isinstance(last, Dense) and last.bias.size == self.size:
            bias = last.bias + np.broadcast_to(c, self.shape).reshape(-1)
            self.replace(Dense(last.weight, bias))
            return
        self._elementwise(node, 1.0, c)

    def _op_Sub(self, node, args):
        self._elementwise(node, 1.0, -self._const_operand(node, args))

    def _op_Mul(self, node, args):
        self._elementwise(node, self._const_operand(node, args), 0.0)

    def _op_Div(self, node, args):
        self._elementwise(node, 1.0 / self._const_operand(node, args), 0.0)

    def _op_BatchNormalization(self, node, args):
        scale, bias, mean, var = args[1:5]
        if any(v is None for v in (scale, bias, mean, var)):
            raise UnsupportedModelError(f"BatchNormalization {node.name!r}: needs constant stats")
        eps = attr(node, "epsilon", 1e-5)
        a = scale / np.sqrt(var + eps)
        b = bias - mean * a
        if a.shape != (self.shape[0],):
            raise UnsupportedModelError(
                f"BatchNormalization {node.name!r}: {a.size} channels, data has {self.shape}"
            )
        reps = self.size // self.shape[0]
        a_full, b_full = np.repeat(a, reps), np.repeat(b, reps)
        last = self._own()
        if isinstance(last, Conv) and last is not self.pad_layer and last.out_shape == self.shape:
            self.replace(replace(
                last, weight=last.weight * a[:, None, None, None], bias=last.bias * a + b
            ))
        elif isinstance(last, Dense):
            self.replace(Dense(last.weight * a_full[:, None], last.bias * a_full + b_full))
        else:
            self.append(Scale(a_full, b_full))

    def _op_Relu(self, node, args):
        self.append(Relu())

    def _op_Sigmoid(self, node, args):
        self.append(Sigmoid())

    def _op_Tanh(self, node, args):
        self.append(Tanh())

    def _op_LeakyRelu(self, node, args):
        alpha = float(attr(node, "alpha", np.float32(0.01)))  # a float32 attribute
        if not 0.0 <= alpha < 1.0:
            raise UnsupportedModelError(
                f"LeakyRelu {node.name!r}: alpha {alpha} is outside [0, 1)"
            )
        self.append(LeakyRelu(alpha))

    def _op_Clip(self, node, args):
        """max(x, lo) = relu(x - lo) + lo and min(t, hi) = hi - relu(hi - t): a chain of
        Scale and Relu layers, exact, so every domain bounds Clip (and ReLU6) soundly."""
        lo = args[1] if len(args) > 1 and args[1] is not None else attr(node, "min", None)
        hi = args[2] if len(args) > 2 and args[2] is not None else attr(node, "max", None)
        lo = None if lo is None or not np.isfinite(lo) else float(lo)
        hi = None if hi is None or not np.isfinite(hi) else float(hi)
        n = self.size
        if lo is not None and hi is not None and lo > hi:
            raise UnsupportedModelError(f"Clip {node.name!r}: min {lo} exceeds max {hi}")
        offset = 0.0  # the tensor so far is (clipped value) - offset
        if lo is not None:
            self.append(Scale(np.ones(n), np.full(n, -lo)))
            self.append(Relu())
            offset = lo
        if hi is not None:
            self.append(Scale(-np.ones(n), np.full(n, hi - offset)))
            self.append(Relu())
            self.append(Scale(-np.ones(n), np.full(n, hi)))
        elif offset:
            self.append(Scale(np.ones(n), np.full(n, offset)))

    def _op_Identity(self, node, args):
        pass

    _op_Dropout = _op_Identity

    def _op_Softmax(self, node, args):
        axis = int(attr(node, "axis", -1))
        if len(self.shape) != 1 or axis not in (-1, 1):
            raise UnsupportedModelError(
                f"{node.op_type} {node.name!r}: only over the logits of a flat output (axis 1)"
            )
        self.dropped = node.op_type

    _op_LogSoftmax = _op_Softmax

# Ops through which a pending permutation stays pending (elementwise with no constants, or
# shape-only ops that keep the flat order).
_COMMUTES_WITH_PERMUTATION = {
    "Relu", "LeakyRelu", "Sigmoid", "Tanh", "Identity", "Dropout", "Flatten", "Reshape", "Squeeze",
    "Unsqueeze", "Transpose", "Gemm", "MatMul",
}


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
