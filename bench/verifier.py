"""Verifier speed on the reference models: is_robust and certified radius times, radii per second
on 1 and 2 threads, FLOPs per zonotope pass, mean radii beside the paper's, and the speed-up
over ERAN's DeepZono. Prints a table; asserts nothing.

    python -m bench.verifier [--n 100] [--models fnn-3x30-relu,cnn-6-16-128-relu]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from verifier.box import InputBox  # noqa: E402
from verifier.network import Conv, Dense, MaxPool, load_onnx  # noqa: E402
from verifier.radius import certified_radii, radius_result  # noqa: E402
from verifier.runtime import single_threaded  # noqa: E402
from verifier.zonotope import ZonoNet, Zonotope, _apply, is_robust  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# Table I of the paper (mean approximate radius of valid inputs) and its timings
PAPER_RADIUS = {"fnn-3x30-relu": 0.0227, "cnn-6-16-128-relu": 0.0175}
PAPER_CALL_S = {"fnn-3x30-relu": 0.24, "cnn-6-16-128-relu": 0.23}
ERAN_HERE_CALL_S = {"fnn-3x30-relu": 0.32, "cnn-6-16-128-relu": 0.83}


def pass_flops(znet: ZonoNet, x: np.ndarray, eps: float) -> int:
    """Multiply-adds x 2 of one zonotope pass, counted from the sizes the kernels see."""
    z = Zonotope.from_box(InputBox.linf(x, eps))
    flops = 0
    for step in znet.steps:
        layer = step.layer
        if isinstance(layer, Dense):
            n_out = layer.weight.shape[0]
            if z.is_dense:
                live = int(np.count_nonzero(np.any(z.dense != 0, axis=1)))
                flops += 2 * n_out * live * z.dense.shape[1]
            else:
                flops += 2 * n_out * len(z.idx)
        elif isinstance(layer, Conv):
            zc = z.to_csr()
            nnz_per_row = np.diff(zc.indptr)
            co, _, kh, kw = layer.weight.shape
            sh, sw = layer.stride
            flops += int(2 * nnz_per_row.sum() * co * kh * kw / (sh * sw))
        elif isinstance(layer, MaxPool):
            flops += int(z.indptr[-1]) if not z.is_dense else z.dense.size
        else:
            flops += 2 * (z.dense.size if z.is_dense else len(z.idx))
        z = _apply(step, z)
    if znet.last is not None:
        m = z.dense.shape[1] if z.is_dense else len(z.idx)
        flops += 2 * znet.last.weight.shape[0] * z.c.shape[0] * (m if z.is_dense else 1)
    return flops


def bench_model(name: str, xs: np.ndarray, ys: np.ndarray) -> dict:
    net = load_onnx(ROOT / "models" / f"{name}.onnx")
    znet = ZonoNet.of(net)
    radius_result(znet, xs[0])  # load the compiled kernels
    certified_radii(znet, xs[:4], jobs=2)
    results, seconds = [], []
    for x in xs:
        t0 = time.perf_counter()
        results.append(radius_result(znet, x, search="secant"))
        seconds.append(time.perf_counter() - t0)
    bis_seconds, bis_results = [], []
    for x in xs:
        t0 = time.perf_counter()
        bis_results.append(radius_result(znet, x, search="bisect"))
        bis_seconds.append(time.perf_counter() - t0)
    call_s = []
    with single_threaded():
        for x, r in zip(xs, results, strict=True):
            eps = max(r.radius, 0.001)
            t0 = time.perf_counter()
            is_robust(znet, x, eps, r.predicted)
            call_s.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    certified_radii(znet, xs, jobs=1)
    one = len(xs) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    certified_radii(znet, xs, jobs=2)
    two = len(xs) / (time.perf_counter() - t0)
    flops = statistics.median(
        pass_flops(znet, x, max(r.radius, 0.001)) for x, r in zip(xs[:20], results, strict=False)
    )
    radii = np.array([r.radius for r in results])
    correct = np.array([r.predicted for r in results]) == ys
    never_below = all(a.radius >= b.radius for a, b in zip(results, bis_results, strict=True))
    call = statistics.median(call_s)
    return {
        "model": name,
        "call_ms": 1e3 * call,
        "radius_ms": 1e3 * statistics.median(seconds),
        "bisect_ms": 1e3 * statistics.median(bis_seconds),
        "calls": float(np.mean([r.calls for r in results])),
        "bisect_calls": float(np.mean([r.calls for r in bis_results])),
        "per_s_1": one,
        "per_s_2": two,
        "mflop": flops / 1e6,
        "gflops": flops / call / 1e9,
        "mean_radius": float(radii[correct].mean()),
        "paper_radius": PAPER_RADIUS.get(name, float("nan")),
        "secant_ge_bisect": never_below,
        "speedup_paper_call": PAPER_CALL_S.get(name, float("nan")) / call,
        "speedup_eran_here_call": ERAN_HERE_CALL_S.get(name, float("nan")) / call,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--models", default="fnn-3x30-relu,fnn-3x30-sigmoid,fnn-3x30-tanh,"
                        "cnn-6-16-128-relu")
    args = parser.parse_args()
    data = np.load(ROOT / "models" / "mnist_test_1000.npz")
    xs = data["x"][: args.n].reshape(args.n, -1).astype(np.float64) / 255.0
    ys = data["y"][: args.n]
    rows = [bench_model(name, xs, ys) for name in args.models.split(",")]
    print(f"inputs: first {args.n} MNIST test images; tolerance 0.001, up 0.256; medians")
    head = (f"{'model':20} {'is_robust ms':>12} {'radius ms':>10} {'passes':>6} "
            f"{'bisect ms':>10} {'passes':>6} {'radii/s 1':>9} {'radii/s 2':>9} "
            f"{'MFLOP':>7} {'GFLOP/s':>7} {'mean r':>7} {'paper r':>7} {'vs ERAN':>8}")
    print(head)
    for r in rows:
        print(f"{r['model']:20} {r['call_ms']:12.3f} {r['radius_ms']:10.3f} {r['calls']:6.2f} "
              f"{r['bisect_ms']:10.3f} {r['bisect_calls']:6.2f} {r['per_s_1']:9.1f} "
              f"{r['per_s_2']:9.1f} {r['mflop']:7.2f} {r['gflops']:7.2f} "
              f"{r['mean_radius']:7.4f} {r['paper_radius']:7.4f} "
              f"{r['speedup_eran_here_call']:7.0f}x")
    for r in rows:
        print(f"{r['model']}: secant radius >= bisect radius on every input: "
              f"{r['secant_ge_bisect']}; is_robust speed-up vs the paper's ERAN call: "
              f"{r['speedup_paper_call']:.0f}x")


if __name__ == "__main__":
    main()
