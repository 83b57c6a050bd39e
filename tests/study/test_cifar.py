"""The CIFAR-10 data path: a generated python batch, restricted unpickling, a study on it."""

from __future__ import annotations

import csv
import math
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("art")
pytest.importorskip("onnx2torch")
pytest.importorskip("matplotlib")

from study.data import load_cifar10_batch, load_cifar10_test  # noqa: E402
from study.run import config_from_dict, run_study  # noqa: E402

N_IMAGES = 40
FLIPPED = (5, 17, 29)  # labels changed in the file: the network "misclassifies" these


def _images(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    base = rng.integers(60, 196, size=3 * 32 * 32)
    templates = base + rng.integers(-6, 7, size=(10, 3 * 32 * 32))
    y = np.arange(N_IMAGES) % 10
    noise = rng.integers(-20, 21, size=(N_IMAGES, 3 * 32 * 32))
    return np.clip(templates[y] + noise, 0, 255).astype(np.uint8), y


def _write_batch(path: Path, x: np.ndarray, labels: list[int]) -> None:
    batch = {b"batch_label": b"testing batch 1 of 1", b"labels": labels, b"data": x,
             b"filenames": [f"img_{i}.png".encode() for i in range(len(x))]}
    path.write_bytes(pickle.dumps(batch, protocol=2))


@pytest.fixture(scope="module")
def cifar(tmp_path_factory) -> tuple[Path, Path]:
    """A CIFAR-10-format test batch and a small ONNX classifier trained on its images."""
    d = tmp_path_factory.mktemp("cifar")
    x, y = _images()
    labels = [int(v) for v in y]
    for i in FLIPPED:
        labels[i] = (labels[i] + 1) % 10
    _write_batch(d / "test_batch", x, labels)

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3072, 32), torch.nn.ReLU(),
                                torch.nn.Linear(32, 10))
    xt = torch.from_numpy(x.reshape(-1, 3, 32, 32).astype(np.float32) / 255.0)
    yt = torch.from_numpy(y.astype(np.int64))
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)
    for _ in range(200):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(xt), yt).backward()
        opt.step()
    onnx_path = d / "cifar-fnn-32-relu.onnx"
    torch.onnx.export(model.eval(), (torch.zeros(1, 3, 32, 32),), str(onnx_path),
                      input_names=["input"], output_names=["logits"], opset_version=13,
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
    return d, onnx_path


def test_batch_loads_as_images_and_labels(cifar) -> None:
    d, _ = cifar
    x, y = load_cifar10_test(d)
    assert x.shape == (N_IMAGES, 3, 32, 32) and x.dtype == np.uint8
    assert y.dtype == np.int64 and y[5] == 6 and y[6] == 6
    raw, _ = _images()
    assert np.array_equal(x.reshape(N_IMAGES, -1), raw)


def test_batch_with_foreign_globals_is_refused(tmp_path: Path) -> None:
    class Sneaky:
        def __reduce__(self):
            return (os.getcwd, ())

    path = tmp_path / "bad_batch"
    path.write_bytes(pickle.dumps({b"data": Sneaky(), b"labels": [0]}, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="refused"):
        load_cifar10_batch(path)


def test_study_runs_on_cifar(cifar, tmp_path: Path) -> None:
    d, onnx_path = cifar
    cfg = config_from_dict({
        "study": {"n": 3, "data": f"cifar10:{d}", "jobs": 1, "torch_threads": 1,
                  "exact": False},
        "algorithm2": {"s": 8, "n_valid": 3, "n_adversarial": 3, "shuffles": 1},
        "attacks": {"fgsm_0.1": {"kind": "fgsm", "eps": 0.1}},
        "networks": [{"name": "cifar-fnn-32-relu", "onnx": str(onnx_path),
                      "dataset": "CIFAR-10"}],
    })
    run_study(cfg, tmp_path)
    with open(tmp_path / "table1.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert row["dataset"] == "CIFAR-10"
    assert float(row["accuracy"]) == pytest.approx(1 - len(FLIPPED) / N_IMAGES)
    for col in ("valid", "mis", "fgsm_0.1", "seconds_per_call"):
        assert math.isfinite(float(row[col])), col
    assert (tmp_path / "roc_cifar-fnn-32-relu.png").is_file()


def test_lenet5_is_trained_on_cifar_batches_and_studied(tmp_path: Path) -> None:
    from study.data import load_cifar10

    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    for i in range(1, 6):
        x, y = _images(seed=i)
        _write_batch(d / f"data_batch_{i}", x, [int(v) for v in y])
    x, y = _images(seed=0)
    _write_batch(d / "test_batch", x, [int(v) for v in y])
    data = load_cifar10(d)
    assert data.train_x.shape == (5 * N_IMAGES, 3, 32, 32) and data.train_x.dtype == np.float32
    assert data.test_x.max() <= 1.0

    cfg = config_from_dict({
        "study": {"n": 2, "data": f"cifar10:{d}", "jobs": 1, "torch_threads": 1,
                  "exact": False},
        "algorithm2": {"s": 8, "n_valid": 2, "n_adversarial": 2, "shuffles": 1},
        "attacks": {"fgsm_0.1": {"kind": "fgsm", "eps": 0.1}},
        "networks": [{"name": "lenet5-tanh", "train": {"epochs": 3, "seed": 0},
                      "dataset": "CIFAR-10", "detail": False}],
    })
    run_study(cfg, tmp_path / "out")
    onnx_path = tmp_path / "out" / "models" / "lenet5-tanh.onnx"
    from verifier.network import Conv
    from verifier.onnx.importer import load_onnx

    net = load_onnx(onnx_path)
    assert net.input_shape == (3, 32, 32)
    assert [layer.weight.shape for layer in net.layers if isinstance(layer, Conv)] == [
        (6, 3, 5, 5), (16, 6, 5, 5)]
    with open(tmp_path / "out" / "table1.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert row["dataset"] == "CIFAR-10" and row["activation"] == "tanh"
    assert math.isfinite(float(row["valid"]))


def test_lenet5_needs_the_training_batches(tmp_path: Path) -> None:
    from study.run import ConfigError, NetworkConfig, ensure_network

    x, y = _images()
    _write_batch(tmp_path / "test_batch", x, [int(v) for v in y])
    net = NetworkConfig(name="lenet5-relu", train_epochs=1)
    with pytest.raises(ConfigError, match="data_batch_1"):
        ensure_network(net, tmp_path / "out", f"cifar10:{tmp_path}")
