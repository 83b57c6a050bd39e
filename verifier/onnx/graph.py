"""ONNX graphs: the ops that join data tensors, reader counts, and folding along graph edges.

Add/Sum of same-shaped tensors become an Add layer, Sub one of a Scale(-1) of its second
operand (exact), Concat on the channel axis a Concat layer (the flat concatenation, with
channel-major flattening). A layer absorbs its neighbour's arithmetic (a BatchNormalization,
a constant Add, a Pad, a Scale) only along an edge where it has exactly one reader, so every
other reader still sees its own value.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace

import numpy as np

from verifier.network import INPUT, Add, Concat, Conv, Dense, Layer, Scale, UnsupportedModelError
from verifier.onnx.spatial import attr

# Ops whose output is their input's value under another name or shape (no layer of their own).
ALIASES = {"Identity", "Dropout", "Flatten", "Reshape", "Squeeze", "Unsqueeze", "Transpose"}
JOINS = {"Concat", "Sum"}  # ops that join tensors even when only one input is data


@dataclass(frozen=True)
class Tensor:
    """What the builder knows of one live tensor: its shape (no batch), the layer computing it
    (INPUT for the input), a pending permutation and the identity Conv of a pending Pad."""

    shape: tuple[int, ...]
    layer: int
    perm: np.ndarray | None = None
    pad_layer: Conv | None = None
    sole: bool = True  # no node but one reads the layer's value (through any alias)


class JoinOps:
    """Join handlers for verifier.onnx.importer's builder (its load, append, flush_permutation)."""

    def join(self, node, tensors: list, consts: dict[str, np.ndarray]) -> None:
        """Lower a node that reads several data tensors (or a Concat/Sum) onto one layer."""
        self._check_open(node)
        op = node.op_type
        handler = {"Add": self._join_add, "Sum": self._join_add, "Sub": self._join_sub,
                   "Concat": self._join_concat}.get(op)
        if handler is None:
            raise UnsupportedModelError(
                f"op {op} (node {node.name!r}) combines {len(tensors)} data tensors; only Add, "
                "Sum, Sub and Concat join tensors"
            )
        if sum(1 for i in node.input if i) != len(tensors):
            raise UnsupportedModelError(
                f"{op} {node.name!r}: mixes data tensors with constants; only data tensors "
                "can be joined"
            )
        srcs, shapes = [], []
        for t in tensors:
            self.load(t)
            self.flush_permutation(node)
            srcs.append(self.src)
            shapes.append(self.shape)
        src, sole = self.src, self.sole
        handler(node, srcs, shapes)
        # a join of one tensor is that tensor: its layer keeps its other readers
        self.sole = (sole or self.src != src) and self.readers.get(node.output[0], 0) <= 1

    def _same_shape(self, node, shapes: list[tuple[int, ...]]) -> None:
        if any(s != shapes[0] for s in shapes):
            raise UnsupportedModelError(
                f"{node.op_type} {node.name!r}: data tensors of shapes "
                f"{', '.join(map(str, shapes))}; broadcasting between data tensors is not "
                "supported"
            )

    def _join_add(self, node, srcs: list[int], shapes: list[tuple[int, ...]]) -> None:
        self._same_shape(node, shapes)
        if len(srcs) > 1:  # Sum of one tensor is that tensor, already current
            self.append(Add(), tuple(srcs))

    def _join_sub(self, node, srcs: list[int], shapes: list[tuple[int, ...]]) -> None:
        self._same_shape(node, shapes)
        n = self.size  # the second operand is current: a - b = a + (-1) b, exactly
        self.append(Scale(-np.ones(n), np.zeros(n)))
        self.append(Add(), (srcs[0], self.src))

    def _join_concat(self, node, srcs: list[int], shapes: list[tuple[int, ...]]) -> None:
        rank = len(shapes[0])
        axis = int(attr(node, "axis", 1))
        if axis not in (1, -rank) or any(len(s) != rank or s[1:] != shapes[0][1:] for s in shapes):
            raise UnsupportedModelError(
                f"Concat {node.name!r}: only along channels (axis 1 after the batch) of tensors "
                f"of equal other dimensions; got axis {axis} and shapes "
                f"{', '.join(map(str, shapes))}"
            )
        if len(srcs) > 1:  # Concat of one tensor is that tensor, already current
            self.append(Concat(tuple(int(np.prod(s)) for s in shapes)), tuple(srcs))
            self.shape = (sum(s[0] for s in shapes), *shapes[0][1:])


def readers(nodes, input_name: str, output: str) -> dict[str, int]:
    """Per data tensor, how many nodes read its value, counting through ALIASES (a reader of
    an alias reads the tensor) and the graph output as one reader."""
    data = {input_name}
    for node in nodes:
        if node.op_type != "Shape" and any(i in data for i in node.input):
            data.update(node.output)
    count = {output: 1}
    for node in reversed(nodes):  # nodes are in topological order: readers come later
        if node.op_type == "Shape":
            continue
        weight = count.get(node.output[0], 0) if node.op_type in ALIASES else 1
        for i in node.input:
            if i in data:
                count[i] = count.get(i, 0) + weight
    return count


def graph_sources(sources: list[tuple[int, ...]]) -> tuple[tuple[int, ...], ...]:
    """Network.sources: () when every layer reads the one before it (a chain)."""
    if all(src == ((i - 1 if i else INPUT),) for i, src in enumerate(sources)):
        return ()
    return tuple(sources)


def fold(layers: list[Layer], sources: list[tuple[int, ...]]
         ) -> tuple[list[Layer], list[tuple[int, ...]]]:
    """Fold Scale layers into a neighbouring Dense layer (or a following unpadded Conv when the
    Scale is constant per channel), and merge consecutive Scales, along every edge whose
    source layer has that one reader. On a chain, each layer into the one before."""
    reads = Counter(j for src in sources for j in src)
    out: list[Layer] = []
    out_sources: list[tuple[int, ...]] = []
    where: dict[int, int] = {INPUT: INPUT}  # old layer index -> new
    for i, (layer, src) in enumerate(zip(layers, sources, strict=True)):
        mapped = tuple(where[j] for j in src)
        if len(src) == 1 and src[0] != INPUT and reads[src[0]] == 1:
            merged = _merged(out[mapped[0]], layer)
            if merged is not None:
                out[mapped[0]] = merged
                where[i] = mapped[0]
                continue
        out.append(layer)
        out_sources.append(mapped)
        where[i] = len(out) - 1
    return out, out_sources


def _merged(prev: Layer, layer: Layer) -> Layer | None:
    """One layer computing layer(prev(x)), when the pair folds; None otherwise."""
    if isinstance(layer, Scale) and isinstance(prev, Scale):
        return Scale(prev.a * layer.a, prev.b * layer.a + layer.b)
    if isinstance(layer, Dense) and isinstance(prev, Scale):
        return Dense(layer.weight * prev.a[None, :], layer.weight @ prev.b + layer.bias)
    if isinstance(layer, Scale) and isinstance(prev, Dense):
        return Dense(prev.weight * layer.a[:, None], prev.bias * layer.a + layer.b)
    if isinstance(layer, Conv) and isinstance(prev, Scale) and _per_channel(prev, layer):
        return _scale_into_conv(prev, layer)
    return None


def _per_channel(scale: Scale, conv: Conv) -> bool:
    """Whether a Scale is constant over each channel and the Conv has no padding (padding
    would see zeros after the Scale, not the Scale of zeros)."""
    if any(conv.pads):
        return False
    c = conv.in_shape[0]
    a, b = scale.a.reshape(c, -1), scale.b.reshape(c, -1)
    return bool(np.all(a == a[:, :1]) and np.all(b == b[:, :1]))


def _scale_into_conv(scale: Scale, conv: Conv) -> Conv:
    c = conv.in_shape[0]
    a, b = scale.a.reshape(c, -1)[:, 0], scale.b.reshape(c, -1)[:, 0]
    weight = conv.weight * a[None, :, None, None]
    bias = conv.bias + np.einsum("oikl,i->o", conv.weight, b)
    return replace(conv, weight=weight, bias=bias)
