"""ONNX export of the study's torch models: opset 13, checked by onnx and by onnxruntime
against torch before the file appears; and the digests a models.json record keeps."""

from __future__ import annotations

import hashlib
import math
import os
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

OPSET = 13
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
VERIFY_ATOL = 1e-5


def export_onnx(
    model: nn.Module,
    path: Path | str,
    check_x: np.ndarray | None = None,
    metadata: dict[str, str] | None = None,
    input_shape: tuple[int, ...] = (1, 28, 28),
) -> None:
    """Export ``model`` (opset 13, input ``input`` [batch, *input_shape], output ``logits``, no
    softmax).

    The file is then checked with onnx and run in onnxruntime on ``check_x`` (default: random
    images); outputs must match torch within 1e-5 relative to the largest logit, or ValueError
    is raised and nothing is written at ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.onnx")
    try:
        _export_checked(model, tmp, check_x, metadata, input_shape)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _export_checked(
    model: nn.Module,
    path: Path,
    check_x: np.ndarray | None,
    metadata: dict[str, str] | None,
    input_shape: tuple[int, ...],
) -> None:
    model = model.eval()
    dummy = torch.zeros(1, *input_shape)
    with warnings.catch_warnings():
        # The TorchScript exporter is chosen on purpose: the dynamo one needs onnxscript.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (dummy,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=OPSET,
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            do_constant_folding=True,
            dynamo=False,
        )
    proto = onnx.load(str(path))
    proto.producer_name = "radiusguard.study"
    proto.producer_version = ""
    for key, value in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))

    if check_x is None:
        check_x = np.random.default_rng(0).random((64, *input_shape), dtype=np.float32)
    check_x = np.ascontiguousarray(check_x, dtype=np.float32)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run([OUTPUT_NAME], {INPUT_NAME: check_x})[0]
    with torch.no_grad():
        want = model(torch.from_numpy(check_x)).numpy()
    err = float(np.max(np.abs(got - want))) if got.shape == want.shape else math.inf
    if err > VERIFY_ATOL * max(1.0, float(np.max(np.abs(want)))):
        raise ValueError(f"onnxruntime output differs from torch for {path}: max |diff| = {err}")


def onnx_op_types(path: Path | str) -> list[str]:
    """Sorted distinct node op types of an ONNX graph."""
    return sorted({node.op_type for node in onnx.load(str(path)).graph.node})


def sha256_file(path: Path | str) -> str:
    """Hex SHA-256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
