"""`radiusguard train --certified EPS`: certified training of a study or reference network."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from worker.argtypes import positive_float, positive_int

REFNETS = ("convsmall", "convmed", "convbig")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of `radiusguard train` and `python -m study.certified`."""
    p.add_argument("--certified", type=positive_float, required=True, metavar="EPS",
                   help="the training eps (train above the budget you calibrate for)")
    p.add_argument("--net", required=True,
                   help="a study/nets.py name (fnn-3x30-relu, cnn-6-16-128-relu, ...) or a "
                   f"colour reference network ({', '.join(REFNETS)}; stand-in data)")
    p.add_argument("--method", choices=("ibp", "crown-ibp"), default="ibp",
                   help="the bound trained against: interval (IBP) or CROWN-IBP")
    p.add_argument("--epochs", type=positive_int, default=30, help="training epochs")
    p.add_argument("--warmup", type=int, default=2, help="epochs at eps 0 first")
    p.add_argument("--ramp", type=positive_int, default=10, help="epochs of the eps ramp")
    p.add_argument("--seed", type=int, default=0, help="torch and data-order seed")
    p.add_argument("--train-n", type=positive_int, help="train on the first N images only")
    p.add_argument("--threads", type=positive_int, default=1, help="torch threads")
    p.add_argument("--name", help="model name (default NET-certified)")
    p.add_argument("--out", type=Path, default=Path("models"), help="where the ONNX goes")


def _model_and_data(net: str, train_n: int | None):
    from study.data import load_mnist, mnist_colour
    from study.nets import parse_net_name

    data = load_mnist()
    if net in REFNETS:
        from study import refnets

        builder = {"convsmall": refnets.conv_small, "convmed": refnets.conv_med,
                   "convbig": refnets.conv_big}[net]
        return builder(), mnist_colour(data, train_n), (3, 32, 32)
    try:
        spec = parse_net_name(net)
    except ValueError as exc:
        raise SystemExit(f"radiusguard train: error: {exc}") from None
    return spec.build(), data, (1, 28, 28)


def cmd_train(args: argparse.Namespace) -> int:
    """Train, print one line per epoch, export ONNX and record it in models.json."""
    import torch

    from study.certified.train import Schedule, certified_accuracy, train_certified
    from study.export import export_onnx, onnx_op_types, sha256_file

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    try:
        schedule = Schedule(args.certified, args.method, args.epochs, args.warmup, args.ramp,
                            seed=args.seed)
    except ValueError as exc:
        raise SystemExit(f"radiusguard train: error: {exc}") from None
    torch.manual_seed(args.seed)
    model, data, shape = _model_and_data(args.net, args.train_n)
    n = args.train_n or len(data.train_x)
    t0 = time.perf_counter()
    history = train_certified(model, data.train_x[:n], data.train_y[:n], schedule,
                              test=(data.test_x[:1000], data.test_y[:1000]))
    clean, proved = certified_accuracy(model, data.test_x, data.test_y, args.certified)
    name = args.name or f"{args.net}-certified"
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{name}.onnx"
    export_onnx(model, path, check_x=data.test_x[:64], input_shape=shape,
                metadata={"training": f"{args.method} eps {args.certified}"})
    index_path = args.out / "models.json"
    index = json.loads(index_path.read_text()) if index_path.is_file() else {}
    index[name] = {
        "file": path.name, "sha256": sha256_file(path), "test_accuracy": round(clean, 4),
        "ibp_certified_accuracy": round(proved, 4), "epochs": args.epochs, "seed": args.seed,
        "params": sum(p.numel() for p in model.parameters()), "opset": 13,
        "ops": onnx_op_types(path), "net": args.net, "train_n": n,
        "training": {**schedule.as_dict(), "final": history[-1]},
        "seconds": round(time.perf_counter() - t0),
    }
    index_path.write_text(json.dumps(dict(sorted(index.items())), indent=2) + "\n")
    print(f"{path}: test accuracy {clean:.4f}, IBP-certified at {args.certified}: {proved:.4f}")
    return 0


def register(sub) -> None:
    """Add `train` to the CLI's subparsers."""
    p = sub.add_parser("train", help="certified training (IBP, CROWN-IBP) of a network to ONNX")
    add_arguments(p)
    p.set_defaults(func=cmd_train)


def main(argv: list[str] | None = None) -> int:
    """`python -m study.certified --certified EPS --net NAME ...`."""
    p = argparse.ArgumentParser(prog="python -m study.certified", description=__doc__)
    add_arguments(p)
    return cmd_train(p.parse_args(argv))
