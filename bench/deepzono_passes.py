"""DeepZono pass cost on the reference models: minimum time per certified radius and per layer
transfer, over many repetitions (the minimum is what a loaded machine lets through), on one core.

    python -m bench.deepzono_passes [--n 20] [--reps 30] [--models fnn-3x30-relu,cnn-6-16-128-relu]

Prints, per model: mean of the per-input minimum ms per radius, passes per radius, the sum of
the radii (to compare builds), and for one input at its radius the minimum ms of each layer's
transfer and of the property.
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
from verifier.score import input_box, plan_for, radius_result  # noqa: E402
from verifier.walk import linear_lower, margin_matrix  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _min_time(fn, reps: int) -> float:
    best = float("inf")
    for _ in range(reps):
        t0 = time.thread_time()
        fn()
        best = min(best, time.thread_time() - t0)
    return best


def bench_model(name: str, xs: np.ndarray, reps: int) -> None:
    net = load_onnx(ROOT / "models" / f"{name}.onnx")
    settings = VerifierSettings(domain="deepzono")
    plan = plan_for(net, settings)
    radius_result(plan, xs[0], settings)  # load the compiled kernels
    per_radius, passes, radii = [], [], []
    for x in xs:
        r = radius_result(plan, x, settings)
        radii.append(r.radius)
        passes.append(r.calls)
        per_radius.append(_min_time(lambda x=x: radius_result(plan, x, settings), reps))
    print(f"{name}: {1e3 * np.mean(per_radius):.3f} ms per radius (mean of minima over {reps}), "
          f"{np.mean(passes):.2f} passes, sum of radii {sum(radii):.6f}")
    x, eps = xs[0], max(radii[0], 0.001)
    box = input_box(plan, x, eps, settings)
    label = net.predict(x)
    C = margin_matrix(net.n_outputs, label)
    d = np.zeros(net.n_outputs - 1)
    if plan.fast is not None:
        t = _min_time(lambda: linear_lower(plan, box, C, d), 20 * reps)
        print(f"  fused pass at eps {eps:.4f}: {1e3 * t:.3f} ms")
        return
    state = plan.domain.start(box)
    total = _min_time(lambda: plan.domain.start(box), 20 * reps)
    print(f"  start {1e3 * total:.3f} ms")
    for layer, (transfer, prepared) in zip(net.layers, plan.steps, strict=True):
        t = _min_time(lambda tr=transfer, p=prepared, s=state: tr(p, s), 20 * reps)
        total += t
        state = transfer(prepared, state)
        print(f"  {type(layer).__name__:8} {1e3 * t:.3f} ms")
    t = _min_time(lambda s=state: plan.domain.linear_lower(s, C, d), 20 * reps)
    total += t
    print(f"  property {1e3 * t:.3f} ms; pass at eps {eps:.4f}: {1e3 * total:.3f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20, help="first N MNIST test images")
    parser.add_argument("--reps", type=int, default=30, help="repetitions per input")
    parser.add_argument("--models", default="fnn-3x30-relu,cnn-6-16-128-relu")
    args = parser.parse_args()
    data = np.load(ROOT / "models" / "mnist_test_1000.npz")
    xs = data["x"][: args.n].reshape(args.n, -1).astype(np.float64) / 255.0
    print(f"load average {os.getloadavg()[0]:.1f}")
    with single_threaded():  # the process settings a radius runs under (verifier.numerics.runtime)
        for name in args.models.split(","):
            bench_model(name, xs, args.reps)


if __name__ == "__main__":
    main()
