"""How an input's shape maps onto a model's input shape: as is, or channels last.

A model takes [C, H, W] (flattened in C order) or a flat vector. An input is taken as is when
its shape is the model's (axes of size 1 aside, so [28, 28] fits [1, 28, 28]), when it is flat
(such as [784] or [1, 784]), or when the model is flat, with the right number of values;
as channels last when it is [H, W, C] for a model with C > 1 channels (image libraries and
tf2onnx-style data), and is then transposed to [C, H, W]. Anything else is refused, and so is
a shape that reads both ways with different meanings (a model whose [C, H, W] and [H, W, C]
coincide, such as [3, 3, 3]): such a model takes flat inputs only.
"""

from __future__ import annotations

import math

import numpy as np

AS_IS = "as is"
CHANNELS_LAST = "channels last"


def _squeeze(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(d for d in shape if d != 1)


def ambiguous(model_shape: tuple[int, ...]) -> bool:
    """Whether the model's [C, H, W] also reads as a different channels-last [H, W, C]."""
    if len(model_shape) != 3 or model_shape[0] == 1:
        return False
    c, h, w = model_shape
    return h * w > 1 and _squeeze((c, h, w)) == _squeeze((h, w, c))


def layout_of(shape: tuple[int, ...], model_shape: tuple[int, ...]) -> str | None:
    """AS_IS, CHANNELS_LAST or None (the shape does not fit the model, or fits ambiguously)."""
    shape, model_shape = tuple(shape), tuple(model_shape)
    if math.prod(shape) != math.prod(model_shape):
        return None
    if len(_squeeze(shape)) <= 1 or len(model_shape) == 1:
        return AS_IS  # flat (axes of size 1 aside), or a flat model
    if ambiguous(model_shape):
        return None
    if _squeeze(shape) == _squeeze(model_shape):
        return AS_IS
    if len(model_shape) == 3 and model_shape[0] > 1:
        c, h, w = model_shape
        if _squeeze(shape) == _squeeze((h, w, c)):
            return CHANNELS_LAST
    return None


def to_model_layout(batch: np.ndarray, model_shape: tuple[int, ...], layout: str) -> np.ndarray:
    """A batch [N, ...] in `layout` as [N, size] in the model's C order."""
    n = batch.shape[0]
    if layout == CHANNELS_LAST:
        c, h, w = model_shape
        batch = batch.reshape(n, h, w, c).transpose(0, 3, 1, 2)
    return np.ascontiguousarray(batch).reshape(n, math.prod(model_shape))


def shapes(model_shape: tuple[int, ...]) -> list[list[int]]:
    """The item shapes accepted (axes of size 1 aside): the model's, channels last, flat."""
    shape, size = list(model_shape), math.prod(model_shape)
    if ambiguous(model_shape):
        return [[size]]
    out = [shape]
    if len(shape) == 3 and shape[0] > 1:
        out.append([shape[1], shape[2], shape[0]])
    return out + ([[size]] if len(shape) > 1 else [])


def describe(model_shape: tuple[int, ...]) -> str:
    """The shapes an input may have, for error messages."""
    shape = list(model_shape)
    if ambiguous(model_shape):
        return f"flat [{math.prod(shape)}] in C order ({shape} would read as channels last too)"
    if len(shape) == 3 and shape[0] > 1:
        return f"{shape} or channels last {[shape[1], shape[2], shape[0]]}"
    return str(shape)
