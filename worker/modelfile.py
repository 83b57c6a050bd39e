"""Loading an ONNX model file for a command: every error names the file."""

from __future__ import annotations

from pathlib import Path

from verifier.network import Network, UnsupportedModelError
from verifier.onnx.importer import load_onnx

__all__ = ["load_model"]


def load_model(path: str | Path) -> Network:
    """The network in an ONNX file; UnsupportedModelError (naming the file) if the file is
    missing, empty, unreadable or not a supported model."""
    path = Path(path)
    if not path.is_file():
        what = "is a directory, not" if path.is_dir() else "no such file, expected"
        raise UnsupportedModelError(f"{path}: {what} an ONNX model")
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise UnsupportedModelError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if size == 0:
        raise UnsupportedModelError(f"{path}: empty file, not an ONNX model")
    try:
        return load_onnx(path)
    except OSError as exc:
        raise UnsupportedModelError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnsupportedModelError as exc:
        if str(path) in str(exc):
            raise
        raise UnsupportedModelError(f"{path}: {exc}") from None
