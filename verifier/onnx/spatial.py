"""ONNX op handlers for pools, padding and shapes, mixed into verifier.onnx.importer's builder.

Pools and padding lower onto Conv/MaxPool/Scale layers (average = a Conv with weight 1/k on the
diagonal channel block); shape ops only change the tracked shape, or, for a Transpose, the
pending permutation (new flat i holds old flat perm[i]) that the next Dense layer absorbs.
"""

from __future__ import annotations

import numpy as np
import onnx

from verifier.network import Conv, Dense, MaxPool, Scale, UnsupportedModelError, apply_layer

# Largest flat size for which a Transpose that no Dense layer absorbs becomes a Dense layer.
MAX_PERMUTATION_DENSE = 4096


def attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            value = onnx.helper.get_attribute_value(a)
            return value.decode() if isinstance(value, bytes) else value
    return default


class SpatialOps:
    """Handlers that need the builder's append, _conv, shape, size, layers, pad_layer, perm."""

    # ------------------------------------------------------------------ pools and padding

    def _op_MaxPool(self, node, args):
        c, h, w = self._spatial(node)
        kernel = tuple(int(k) for k in attr(node, "kernel_shape", None))
        if len(node.output) > 1 and node.output[1]:
            raise UnsupportedModelError(f"MaxPool {node.name!r}: the indices output is unsupported")
        stride, pads, oh, ow = self._geometry(node, kernel, (h, w))
        self.append(MaxPool((c, h, w), (c, oh, ow), kernel, stride, pads))
        self.shape = (c, oh, ow)

    def _op_AveragePool(self, node, args):
        c, h, w = self._spatial(node)
        kernel = tuple(int(k) for k in attr(node, "kernel_shape", None))
        self._average(node, kernel, bool(attr(node, "count_include_pad", 0)))

    def _op_GlobalAveragePool(self, node, args):
        c, h, w = self._spatial(node)
        self._average(node, (h, w), True)

    def _average(self, node, kernel: tuple[int, int], count_pad: bool) -> None:
        """A Conv summing each channel's window with weight 1/k, or with weight 1 followed by
        a Scale of 1/(window cells inside the image) when padding is not counted."""
        c, h, w = self._spatial(node)
        kh, kw = kernel
        self.pad_layer = None  # an explicit zero Pad counts in the average: keep it a layer
        _, pads, oh, ow = self._geometry(node, kernel, (h, w))
        exclude = not count_pad and any(pads)
        weight = np.zeros((c, c, kh, kw))
        weight[np.arange(c), np.arange(c)] = 1.0 if exclude else 1.0 / (kh * kw)
        self._conv(node, weight, np.zeros(c), kernel, c)
        if exclude:
            ones = Conv(np.ones((1, 1, kh, kw)), np.zeros(1), (1, h, w), (1, oh, ow),
                        self.layers[self.src].stride, pads)
            counts = apply_layer(ones, np.ones(h * w))
            self.append(Scale(np.tile(1.0 / counts, c), np.zeros(c * oh * ow)))

    def _op_Pad(self, node, args):
        c, h, w = self._spatial(node)
        mode = attr(node, "mode", "constant")
        pads = args[1] if len(args) > 1 and args[1] is not None else attr(node, "pads", None)
        value = args[2] if len(args) > 2 and args[2] is not None else attr(node, "value", 0.0)
        if mode != "constant" or np.any(np.asarray(value) != 0) or pads is None:
            raise UnsupportedModelError(
                f"Pad {node.name!r}: only constant zero padding with constant pads is supported"
            )
        if len(args) > 3 and node.input[3]:
            raise UnsupportedModelError(f"Pad {node.name!r}: the axes input is not supported")
        p = [int(v) for v in np.asarray(pads).reshape(-1)]
        if len(p) != 8 or p[0] or p[1] or p[4] or p[5] or min(p) < 0:
            raise UnsupportedModelError(
                f"Pad {node.name!r}: only non-negative padding of H and W of [N,C,H,W], got {p}"
            )
        ident = np.zeros((c, c, 1, 1))
        ident[np.arange(c), np.arange(c)] = 1.0
        pads4 = (p[2], p[3], p[6], p[7])
        layer = Conv(ident, np.zeros(c), (c, h, w), (c, h + p[2] + p[6], w + p[3] + p[7]),
                     (1, 1), pads4, c)
        self.append(layer)
        self.pad_layer = layer
        self.shape = layer.out_shape

    def _spatial(self, node) -> tuple[int, int, int]:
        if len(self.shape) != 3:
            raise UnsupportedModelError(f"{node.op_type} {node.name!r}: needs a [C,H,W] input")
        return self.shape  # type: ignore[return-value]

    def _geometry(self, node, kernel: tuple[int, int], in_hw: tuple[int, int]):
        stride = tuple(attr(node, "strides", [1, 1]))
        if tuple(attr(node, "dilations", [1, 1])) != (1, 1):
            raise UnsupportedModelError(f"{node.op_type} {node.name!r}: dilation is not supported")
        auto_pad = attr(node, "auto_pad", "NOTSET")
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
            pt, pl, pb, pr = tuple(attr(node, "pads", [0, 0, 0, 0]))
        if attr(node, "ceil_mode", 0):
            raise UnsupportedModelError(f"{node.op_type} {node.name!r}: ceil_mode is not supported")
        oh = (h + pt + pb - kernel[0]) // stride[0] + 1
        ow = (w + pl + pr - kernel[1]) // stride[1] + 1
        return (int(stride[0]), int(stride[1])), (int(pt), int(pl), int(pb), int(pr)), oh, ow

    def flush_permutation(self, node: onnx.NodeProto | None) -> None:
        """Materialise a pending Transpose as a Dense permutation layer (small tensors only)."""
        if self.perm is None or np.array_equal(self.perm, np.arange(self.perm.size)):
            self.perm = None
            return
        n = self.perm.size
        if n > MAX_PERMUTATION_DENSE:
            where = f"before node {node.name!r} ({node.op_type})" if node else "at the output"
            raise UnsupportedModelError(
                f"a Transpose of {n} values {where} is not followed by a Dense layer that can "
                f"absorb it (only up to {MAX_PERMUTATION_DENSE} values become a Dense layer)"
            )
        w = np.zeros((n, n))
        w[np.arange(n), self.perm] = 1.0
        self.perm = None
        self.append(Dense(w, np.zeros(n)))

    # ------------------------------------------------------------------ shapes

    def _op_Flatten(self, node, args):
        if attr(node, "axis", 1) != 1:
            raise UnsupportedModelError(f"Flatten {node.name!r}: only axis=1 is supported")
        self.shape = (self.size,)

    def _op_Reshape(self, node, args):
        if args[1] is None:
            raise UnsupportedModelError(f"Reshape {node.name!r}: needs a constant shape")
        dims = [int(d) for d in args[1]]
        full = (1, *self.shape)
        if attr(node, "allowzero", 0) == 0:
            dims = [full[i] if d == 0 and i < len(full) else d for i, d in enumerate(dims)]
        try:
            out = np.empty(full, dtype=np.int8).reshape(dims).shape
        except ValueError:
            raise UnsupportedModelError(
                f"Reshape {node.name!r}: cannot reshape {full} to {dims}"
            ) from None
        if not out or out[0] != 1:
            raise UnsupportedModelError(
                f"Reshape {node.name!r}: target {dims} does not keep a batch of one first"
            )
        self.shape = tuple(out[1:]) or (1,)

    def _op_Squeeze(self, node, args):
        axes = args[1] if len(args) > 1 and args[1] is not None else attr(node, "axes", None)
        if axes is None:
            self.shape = tuple(d for d in self.shape if d != 1) or (1,)
            return
        axes = tuple(int(a) % (len(self.shape) + 1) for a in axes)
        if 0 in axes or any(self.shape[a - 1] != 1 for a in axes):
            raise UnsupportedModelError(f"Squeeze {node.name!r}: axes {axes} are not of size 1")
        self.shape = tuple(d for i, d in enumerate(self.shape, 1) if i not in axes) or (1,)

    def _op_Unsqueeze(self, node, args):
        axes = args[1] if len(args) > 1 and args[1] is not None else attr(node, "axes", None)
        if axes is None:
            raise UnsupportedModelError(f"Unsqueeze {node.name!r}: needs constant axes")
        shape = np.expand_dims(np.empty((1, *self.shape), np.int8), tuple(int(a) for a in axes))
        if shape.shape[0] != 1:
            raise UnsupportedModelError(f"Unsqueeze {node.name!r}: an axis before the batch")
        self.shape = tuple(shape.shape[1:])

    def _op_Transpose(self, node, args):
        rank = len(self.shape) + 1
        perm = [int(p) for p in attr(node, "perm", list(range(rank))[::-1])]
        if sorted(perm) != list(range(rank)) or perm[0] != 0:
            raise UnsupportedModelError(
                f"Transpose {node.name!r}: perm {perm} must keep the batch axis first"
            )
        axes = [p - 1 for p in perm[1:]]
        order = np.arange(self.size).reshape(self.shape).transpose(axes).reshape(-1)
        self.perm = order if self.perm is None else self.perm[order]
        self.shape = tuple(self.shape[a] for a in axes)
