"""How an input's shape maps onto a model's input shape: as is, or channels last.

A model takes [C, H, W] (flattened in C order) or a flat vector. An input is taken as is when
its shape is the model's (axes of size 1 aside, so [28, 28] fits [1, 28, 28]), when it is flat,
or when the model is flat, with the right number of values;
as channels last when it is [H, W, C] for a model with C > 1 channels (image libraries and
tf2onnx-style data), and is then transposed to [C, H, W]. Anything else is refused.
"""

from __future__ import annotations

import math

import numpy as np

AS_IS = "as is"
CHANNELS_LAST = "channels last"


def layout_of(shape: tuple[int, ...], model_shape: tuple[int, ...]) -> str | None:
    """AS_IS, CHANNELS_LAST or None (the shape does not fit the model)."""
    shape, model_shape = tuple(shape), tuple(model_shape)
    if math.prod(shape) != math.prod(model_shape):
        return None
    squeeze = lambda s: tuple(d for d in s if d != 1)  # noqa: E731
    if len(shape) == 1 or len(model_shape) == 1 or squeeze(shape) == squeeze(model_shape):
        return AS_IS
    if len(model_shape) == 3 and model_shape[0] > 1:
        c, h, w = model_shape
        if squeeze(shape) == squeeze((h, w, c)):
            return CHANNELS_LAST
    return None


def to_model_layout(batch: np.ndarray, model_shape: tuple[int, ...], layout: str) -> np.ndarray:
    """A batch [N, ...] in `layout` as [N, size] in the model's C order."""
    n = batch.shape[0]
    if layout == CHANNELS_LAST:
        c, h, w = model_shape
        batch = batch.reshape(n, h, w, c).transpose(0, 3, 1, 2)
    return np.ascontiguousarray(batch).reshape(n, math.prod(model_shape))


def describe(model_shape: tuple[int, ...]) -> str:
    """The shapes an input may have, for error messages."""
    shape = list(model_shape)
    if len(shape) == 3 and shape[0] > 1:
        return f"{shape} or channels last {[shape[1], shape[2], shape[0]]}"
    return str(shape)
