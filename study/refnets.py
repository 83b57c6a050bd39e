"""Reference networks of verification-literature size for 3x32x32 inputs, trained reproducibly.

ERAN's ConvSmall, ConvMed and ConvBig (with their per-channel input normalisation as the first
layer) and two ResNets (2 and 4 residual blocks), trained with fixed seeds on a stand-in for
CIFAR-10 (MNIST padded to 32x32 in three channels, ``study.data.mnist_colour``) or on real
CIFAR-10 with ``--data cifar10:DIR`` (the python batches), and exported to ONNX (logits only).

    python -m study.refnets --out models/refnets --nets convsmall,convmed --epochs 1

writes ``<out>/<name>.onnx``, ``<out>/refnets.json`` (accuracy, neurons, parameters, ops) and
``<out>/test_<N>.npz`` (uint8 test images ``x`` [N, 3, 32, 32] and labels ``y``). The ResNets
import as graphs (residual Add layers). The shipped models/refnets (resnet2b, 1.7 MB; ConvMed's
8 MB are left out and tests train it in a second) were made, byte for byte, by

    python -m study.refnets --out models/refnets --nets resnet2b --train-n 4000 --test-n 20

(one epoch, seed 0, one thread: the defaults).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from study.data import MnistData, load_cifar10, load_mnist, mnist_colour, to_uint8
from study.export import export_onnx, onnx_op_types, sha256_file

INPUT_SHAPE = (3, 32, 32)
# ERAN's CIFAR-10 normalisation (per channel), part of each network.
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2023, 0.1994, 0.2010)


class Normalize(nn.Module):
    """(x - mean) / std per channel; exported as Sub and Div by [1, 3, 1, 1] constants."""

    increasing = True  # elementwise and increasing: bound propagation maps end points

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(MEAN).reshape(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(STD).reshape(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def conv_small() -> nn.Module:
    """ERAN ConvSmall: conv 16 4x4/2, conv 32 4x4/2, fc 100, fc 10 (32 -> 15 -> 6)."""
    return nn.Sequential(
        Normalize(), nn.Conv2d(3, 16, 4, 2), nn.ReLU(), nn.Conv2d(16, 32, 4, 2), nn.ReLU(),
        nn.Flatten(), nn.Linear(32 * 6 * 6, 100), nn.ReLU(), nn.Linear(100, 10),
    )


def conv_med() -> nn.Module:
    """ERAN ConvMed: conv 16 4x4/2 pad 1, conv 32 4x4/2 pad 1, fc 1000, fc 10 (32 -> 16 -> 8)."""
    return nn.Sequential(
        Normalize(), nn.Conv2d(3, 16, 4, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 4, 2, 1), nn.ReLU(),
        nn.Flatten(), nn.Linear(32 * 8 * 8, 1000), nn.ReLU(), nn.Linear(1000, 10),
    )


def conv_big() -> nn.Module:
    """ERAN ConvBig: conv 32 3x3 p1, conv 32 4x4/2 p1, conv 64 3x3 p1, conv 64 4x4/2 p1,
    fc 512, fc 512, fc 10 (about 62k neurons)."""
    return nn.Sequential(
        Normalize(),
        nn.Conv2d(3, 32, 3, 1, 1), nn.ReLU(), nn.Conv2d(32, 32, 4, 2, 1), nn.ReLU(),
        nn.Conv2d(32, 64, 3, 1, 1), nn.ReLU(), nn.Conv2d(64, 64, 4, 2, 1), nn.ReLU(),
        nn.Flatten(), nn.Linear(64 * 8 * 8, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
        nn.Linear(512, 10),
    )


class Block(nn.Module):
    """Basic residual block: relu(x + conv(relu(conv(x)))), both convs 3x3 pad 1, BN folded."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c, c, 3, 1, 1), nn.BatchNorm2d(c), nn.ReLU(),
            nn.Conv2d(c, c, 3, 1, 1), nn.BatchNorm2d(c),
        )
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.body(x))


def resnet(blocks: int) -> nn.Module:
    """Stem conv 16 3x3/2 (32 -> 16), `blocks` residual blocks of 16 channels; from the third
    block on, a conv 32 4x4/2 (16 -> 8) first; then fc 100, fc 10."""
    layers: list[nn.Module] = [Normalize(), nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU()]
    c, side = 16, 16
    for i in range(blocks):
        if i == 2:
            layers += [nn.Conv2d(c, 32, 4, 2, 1), nn.ReLU()]
            c, side = 32, 8
        layers.append(Block(c))
    layers += [nn.Flatten(), nn.Linear(c * side * side, 100), nn.ReLU(), nn.Linear(100, 10)]
    return nn.Sequential(*layers)


NETS: dict[str, Callable[[], nn.Module]] = {
    "convsmall": conv_small,
    "convmed": conv_med,
    "convbig": conv_big,
    "resnet2b": lambda: resnet(2),
    "resnet4b": lambda: resnet(4),
}


def neurons(model: nn.Module) -> int:
    """Number of hidden neurons (outputs of every ReLU) for one 3x32x32 input."""
    count = 0

    def hook(_m, _i, out):
        nonlocal count
        count += out[0].numel()

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.ReLU)]
    with torch.no_grad():
        model.eval()(torch.zeros(1, *INPUT_SHAPE))
    for h in handles:
        h.remove()
    return count


def load_data(spec: str, train_n: int) -> tuple[str, MnistData]:
    """``standin`` (MNIST padded to 3x32x32) or ``cifar10:DIR``."""
    if spec == "standin":
        return "MNIST padded to 3x32x32", mnist_colour(load_mnist(), n_train=train_n)
    if spec.startswith("cifar10:"):
        return "CIFAR-10", load_cifar10(spec.split(":", 1)[1])
    raise SystemExit(f"--data must be 'standin' or 'cifar10:DIR', got {spec!r}")


def train(model: nn.Module, data: MnistData, epochs: int, train_n: int, seed: int) -> float:
    """Adam (lr 1e-3, batch 128) on the first ``train_n`` training images; test accuracy on
    the first 2,000 test images."""
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.from_numpy(np.ascontiguousarray(data.train_x[:train_n], dtype=np.float32))
    y = torch.from_numpy(np.asarray(data.train_y[:train_n], dtype=np.int64))
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 128):
            idx = perm[i : i + 128]
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        tx = torch.from_numpy(np.ascontiguousarray(data.test_x[:2000], dtype=np.float32))
        pred = model(tx).argmax(1).numpy()
    return float((pred == data.test_y[:2000]).mean())


def main(argv: list[str] | None = None) -> int:
    """Build, train and export the requested networks; see the module docstring."""
    ap = argparse.ArgumentParser(prog="python -m study.refnets", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nets", default="convsmall,convmed,convbig,resnet2b,resnet4b")
    ap.add_argument("--data", default="standin", help="standin (default) or cifar10:DIR")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--train-n", type=int, default=10000, help="training images used")
    ap.add_argument("--test-n", type=int, default=100, help="test images written to test_N.npz")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("models/refnets"))
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.nets.split(",") if n.strip()]
    unknown = [n for n in names if n not in NETS]
    if unknown:
        ap.error(f"unknown networks {unknown}; choose from {sorted(NETS)}")
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    dataset, data = load_data(args.data, args.train_n)
    args.out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out / f"test_{args.test_n}.npz",
                        x=to_uint8(data.test_x[: args.test_n]),
                        y=np.asarray(data.test_y[: args.test_n], dtype=np.uint8))
    index_path = args.out / "refnets.json"
    index = json.loads(index_path.read_text()) if index_path.is_file() else {}
    for name in names:
        torch.manual_seed(args.seed)
        model = NETS[name]()
        t0 = time.perf_counter()
        acc = train(model, data, args.epochs, args.train_n, args.seed)
        seconds = time.perf_counter() - t0
        path = args.out / f"{name}.onnx"
        meta = {"radiusguard.net": name, "radiusguard.input": "uint8 pixels / 255, [3, 32, 32]",
                "radiusguard.data": dataset}
        export_onnx(model, path, check_x=data.test_x[:64], metadata=meta, input_shape=INPUT_SHAPE)
        index[name] = {
            "file": path.name, "sha256": sha256_file(path), "data": dataset,
            "test_accuracy_2000": round(acc, 4), "epochs": args.epochs, "train_n": args.train_n,
            "seed": args.seed, "neurons": neurons(model),
            "params": sum(p.numel() for p in model.parameters()), "ops": onnx_op_types(path),
            "bytes": path.stat().st_size,
        }
        print(f"{name}: accuracy={acc:.4f} train_seconds={seconds:.1f} "
              f"neurons={index[name]['neurons']} bytes={index[name]['bytes']} -> {path}")
        index_path.write_text(json.dumps(dict(sorted(index.items())), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
