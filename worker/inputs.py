"""Reading input arrays from files (.npy, .npz, a folder of PNG images) with clear errors.

Given the model's input shape, items are taken in the model's layout ([N, C, H, W] for a
[C, H, W] model, or flat [N, C*H*W]) or channels last ([N, H, W, C], as image libraries write
them), which is transposed; see worker.layout. PNG folders are read as RGB for a model with
three input channels, as grey otherwise.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from worker.layout import describe, layout_of, to_model_layout


class InputFileError(ValueError):
    """An input file is missing, unreadable, or does not fit the model."""


def load_inputs(path: str | Path, model: int | tuple[int, ...] | None = None) -> np.ndarray:
    """Inputs as float64 [N, input_size] in [0, 1]; uint8 arrays are scaled by 1/255.

    `model` is the model's input shape (layouts are checked, see the module docstring) or
    just its input size (any shape with that many values per item is flattened).
    """
    path = Path(path)
    if not path.exists():
        raise InputFileError(f"{path}: no such file or directory")
    if path.is_dir():
        colour = isinstance(model, tuple) and len(model) == 3 and model[0] == 3
        arr = _load_png_dir(path, "RGB" if colour else "L")
    elif path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            key = "x" if "x" in data.files else data.files[0]
            arr = data[key]
    else:
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise InputFileError(f"{path}: not a readable .npy array ({exc})") from None
    return as_unit_batch(arr, model, str(path))


def as_unit_batch(
    arr: np.ndarray, model: int | tuple[int, ...] | None, what: str = "inputs"
) -> np.ndarray:
    """Check dtype, range and size (or layout) of a batch; return float64 [N, input_size]."""
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float64) / 255.0
    elif np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
    else:
        raise InputFileError(f"{what}: dtype {arr.dtype} is not supported (uint8 or float)")
    if arr.ndim == 0 or arr.shape[0] == 0:
        raise InputFileError(f"{what}: expected an array [N, ...] with N >= 1, got {arr.shape}")
    if isinstance(model, tuple):
        arr = _model_layout(arr, model, what)
        model = int(np.prod(model))
    input_size = model
    flat = arr.reshape(arr.shape[0], -1)
    if input_size is not None and flat.shape[1] != input_size:
        if arr.size == input_size:
            flat = arr.reshape(1, input_size)
        else:
            raise InputFileError(
                f"{what}: items have {flat.shape[1]} values (shape {arr.shape[1:]}), "
                f"the model expects {input_size}"
            )
    if not np.all(np.isfinite(flat)):
        raise InputFileError(f"{what}: contains NaN or infinite values")
    if flat.min() < 0.0 or flat.max() > 1.0:
        raise InputFileError(
            f"{what}: values must lie in [0, 1], found [{flat.min():.4g}, {flat.max():.4g}]"
        )
    return flat


def _model_layout(arr: np.ndarray, shape: tuple[int, ...], what: str) -> np.ndarray:
    """[N, ...] items in the model's layout or channels last, as [N, size]; one item alone
    (without the batch axis) is taken as a batch of one."""
    layout = layout_of(arr.shape[1:], shape) if arr.ndim >= 2 else None
    if layout is None and layout_of(arr.shape, shape) is not None:
        arr, layout = arr[None], layout_of(arr.shape, shape)
    if layout is None:
        raise InputFileError(
            f"{what}: items have shape {list(arr.shape[1:])}, the model expects "
            f"{int(np.prod(shape))} values as {describe(shape)}"
        )
    return to_model_layout(arr, shape, layout)


def _load_png_dir(path: Path, mode: str | None = None) -> np.ndarray:
    """The folder's PNG images as uint8 [N, H, W] ("L") or [N, H, W, 3] ("RGB"); without a
    mode, RGB when any image has colour, else grey."""
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow is a dependency
        raise InputFileError("reading PNG folders needs the pillow package") from None
    files = sorted(path.glob("*.png"))
    if not files:
        raise InputFileError(f"{path}: no .png files in this folder")
    if mode is None:
        grey = {"1", "L", "LA", "I", "I;16", "F"}
        mode = "L"
        for f in files:
            with Image.open(f) as im:
                if im.mode not in grey:
                    mode = "RGB"
                    break
    imgs = []
    for f in files:
        with Image.open(f) as im:
            imgs.append(np.asarray(im.convert(mode), dtype=np.uint8))
    shapes = {im.shape for im in imgs}
    if len(shapes) != 1:
        raise InputFileError(f"{path}: images differ in size: {sorted(shapes)}")
    return np.stack(imgs)
