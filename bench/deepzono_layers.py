"""DeepZono cost of one pass over a graph network, layer by layer, on one core.

    python -m bench.deepzono_layers NET.onnx [--eps 0.01] [--image 0] [--reps 3]

The image is the --image-th of the test_*.npz next to NET.onnx (bench.scale's cache). Prints
per layer: the minimum thread CPU time of its transfer over --reps runs, neurons n,
generator ids m, stored entries nnz, sparse (S) or dense (D), the mean radius of its
neurons; for a join (Add, Concat) also how many of each operand's ids its blocks share with
the first operand (what the join lays out once) and how many are its own.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from verifier import VerifierSettings, load_onnx  # noqa: E402
from verifier.numerics.runtime import single_threaded  # noqa: E402
from verifier.score import input_box, plan_for  # noqa: E402
from verifier.walk import INPUT  # noqa: E402


def block_sizes(z) -> dict[int, int]:
    """Tag -> number of ids of each block of a zonotope (untagged trailing ids under -1)."""
    sizes, start = {}, 0
    for tag, end in z.blocks:
        sizes[tag], start = end - start, end
    if start < z.m:
        sizes[-1] = z.m - start
    return sizes


def sharing(zs) -> list[tuple[int, int]]:
    """Per operand, (ids in blocks the first operand also holds, ids in blocks it does not)."""
    first = set(block_sizes(zs[0])) - {-1}
    out = []
    for z in zs:
        sizes = block_sizes(z)
        shared = sum(s for t, s in sizes.items() if t in first)
        out.append((shared, z.m - shared))
    return out


def describe(z) -> str:
    nnz = z.dense.size if z.is_dense else int(z.indptr[-1])
    _, _, rad = z.bounds()
    kind = "D" if z.is_dense else "S"
    return f"n={z.c.shape[0]:6d} m={z.m:7d} nnz={nnz:10d} {kind} mean radius {rad.mean():.4g}"


def profile(path: Path, eps: float, image: int, reps: int) -> None:
    net = load_onnx(path)
    settings = VerifierSettings(domain="deepzono")
    plan = plan_for(net, settings)
    data = np.load(sorted(path.parent.glob("test_*.npz"))[-1])
    x = data["x"][image].reshape(-1).astype(np.float64) / 255.0
    box = input_box(plan, x, eps, settings)
    sources = plan.sources or tuple((i - 1 if i else INPUT,) for i in range(len(plan.steps)))
    outs = {INPUT: plan.domain.start(box)}
    total = 0.0
    for i, (transfer, prepared) in enumerate(plan.steps):
        zs = [outs[j] for j in sources[i]]
        best = float("inf")
        for _ in range(reps):
            t0 = time.thread_time()
            out = transfer(prepared, *zs)
            best = min(best, time.thread_time() - t0)
        outs[i] = out
        total += best
        line = f"{i:3d} {type(net.layers[i]).__name__:8} {1e3 * best:9.1f} ms  {describe(out)}"
        if len(zs) > 1:
            line += "  shared/own ids " + " ".join(f"{s}/{o}" for s, o in sharing(zs))
        print(line)
    print(f"sum of the minima: {1e3 * total:.1f} ms at eps {eps}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("net", type=Path)
    parser.add_argument("--eps", type=float, default=0.01)
    parser.add_argument("--image", type=int, default=0)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.1f}")
    with single_threaded():
        profile(args.net, args.eps, args.image, args.reps)


if __name__ == "__main__":
    main()
