"""Checks on the shipped MNIST ONNX models (models/) and on the study's network naming."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

MODELS_DIR = Path(__file__).resolve().parents[1] / "models"
INDEX_PATH = MODELS_DIR / "models.json"
SLICE_PATH = MODELS_DIR / "mnist_test_1000.npz"
SHIPPED = ["fnn-3x30-relu", "fnn-3x30-sigmoid", "fnn-3x30-tanh", "cnn-6-16-128-relu", "cnn-certified"]
# Accuracy on the 1000-image slice may sit below the 10k test accuracy by sampling noise.
ACCURACY_MARGIN = 0.02


@pytest.fixture(scope="module")
def index() -> dict[str, dict]:
    return json.loads(INDEX_PATH.read_text())


@pytest.fixture(scope="module")
def test_slice() -> tuple[np.ndarray, np.ndarray]:
    with np.load(SLICE_PATH, allow_pickle=False) as z:
        x, y = z["x"], z["y"]
    assert x.dtype == np.uint8 and x.shape == (1000, 28, 28)
    assert y.dtype == np.uint8 and y.shape == (1000,)
    return x, y


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_index_lists_shipped_models(index: dict[str, dict]) -> None:
    assert set(SHIPPED) <= set(index)
    for name in SHIPPED:
        rec = index[name]
        assert {"file", "sha256", "test_accuracy", "epochs", "seed", "params"} <= set(rec)
        assert (MODELS_DIR / rec["file"]).is_file()


@pytest.mark.parametrize("name", SHIPPED)
def test_model_file_matches_index(index: dict[str, dict], name: str) -> None:
    path = MODELS_DIR / index[name]["file"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == index[name]["sha256"]
    assert path.stat().st_size < 2_000_000


@pytest.mark.parametrize("name", SHIPPED)
def test_model_interface(index: dict[str, dict], name: str) -> None:
    path = MODELS_DIR / index[name]["file"]
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    assert "Softmax" not in {node.op_type for node in proto.graph.node}
    sess = _session(path)
    (inp,) = sess.get_inputs()
    (out,) = sess.get_outputs()
    assert inp.name == "input" and out.name == "logits"
    assert list(inp.shape[1:]) == [1, 28, 28]
    assert out.shape[-1] == 10
    for batch in (1, 3):
        x = np.zeros((batch, 1, 28, 28), dtype=np.float32)
        (logits,) = sess.run(["logits"], {"input": x})
        assert logits.shape == (batch, 10)


@pytest.mark.parametrize("name", SHIPPED)
def test_model_accuracy_on_slice(
    index: dict[str, dict], test_slice: tuple[np.ndarray, np.ndarray], name: str
) -> None:
    x, y = test_slice
    sess = _session(MODELS_DIR / index[name]["file"])
    images = (x.astype(np.float32) / np.float32(255.0)).reshape(-1, 1, 28, 28)
    (logits,) = sess.run(["logits"], {"input": images})
    acc = float(np.mean(logits.argmax(axis=1) == y))
    assert acc >= index[name]["test_accuracy"] - ACCURACY_MARGIN, (name, acc)


def test_net_name_parsing(index: dict[str, dict]) -> None:
    torch = pytest.importorskip("torch")
    from study.nets import parse_net_name

    spec = parse_net_name("fnn-3x30-relu")
    assert (spec.kind, spec.sizes, spec.activation) == ("fnn", (30, 30, 30), "relu")
    spec = parse_net_name("FNN-50-20-tanh", seed=7)
    assert (spec.name, spec.sizes, spec.activation) == ("fnn-50-20-tanh", (50, 20), "tanh")
    assert spec.seed == 7
    spec = parse_net_name("cnn-6-16-128-relu")
    assert (spec.kind, spec.sizes, spec.activation) == ("cnn", (6, 16, 128), "relu")
    for bad in ("fnn-3x30", "fnn-3x30-gelu", "cnn-6-16-relu", "mlp-3x30-relu", "fnn-0x30-relu"):
        with pytest.raises(ValueError):
            parse_net_name(bad)

    for name in SHIPPED:
        model = parse_net_name(index[name].get("net", name)).build().eval()
        assert sum(p.numel() for p in model.parameters()) == index[name]["params"]
        with torch.no_grad():
            assert tuple(model(torch.zeros(2, 1, 28, 28)).shape) == (2, 10)
