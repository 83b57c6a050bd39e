"""Verifier speed on the reference models, per domain: is_robust, pass and certified radius
times on one core (CPU time of the scoring thread, medians), passes per radius, radii per
second (wall) with batching (score_many) on 1 and 2 threads and the cores the 2 threads got
(process CPU / wall: below 2 when other jobs share the machine), FLOPs per DeepZono pass,
mean radii beside the paper's, and the speed-up over ERAN. Prints a table; asserts nothing.

    python -m bench.verifier [--n 100] [--models fnn-3x30-relu,cnn-6-16-128-relu]
                             [--domains deepzono,deeppoly]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from verifier import DOMAINS, InputBox, VerifierSettings, load_onnx  # noqa: E402
from verifier.check import is_robust  # noqa: E402
from verifier.domains.deepzono.transfers import Zonotope  # noqa: E402
from verifier.network import Conv, Dense, MaxPool  # noqa: E402
from verifier.score import plan_for, radius_result, score_many  # noqa: E402
from verifier.walk import Plan  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# Table I of the paper (mean approximate radius of valid inputs) and its timings
PAPER_RADIUS = {"fnn-3x30-relu": 0.0227, "cnn-6-16-128-relu": 0.0175}
PAPER_CALL_S = {"fnn-3x30-relu": 0.24, "cnn-6-16-128-relu": 0.23}
ERAN_HERE_CALL_S = {"fnn-3x30-relu": 0.32, "cnn-6-16-128-relu": 0.83}


def fused_flops(plan: Plan, x: np.ndarray, eps: float, k_out: int) -> int:
    """Multiply-adds x 2 of one pass of the fused dense chain (property_kernels): layer 0's
    sweep of W (centre, error box and the m x n1 generators: 3 products an entry), then
    m x n_i x n_(i+1) per later layer, the last one folded into the k_out property rows
    (the few generators the activations add are left out)."""
    box = InputBox.linf(x, eps)
    m = int(np.count_nonzero(box.upper > box.lower))
    sizes = [w.shape[0] for w in plan.fast[0]]
    flops = 2 * 3 * m * sizes[0]
    outs = sizes[1:-1] + [k_out]
    for a, b in zip(sizes[:-1], outs, strict=True):
        flops += 2 * m * a * b
    return flops


def pass_flops(plan: Plan, x: np.ndarray, eps: float) -> int:
    """Multiply-adds x 2 of one DeepZono pass, counted from the sizes the kernels see."""
    if plan.fast is not None:
        return fused_flops(plan, x, eps, plan.net.n_outputs - 1)
    z = Zonotope.from_box(InputBox.linf(x, eps))
    flops = 0
    for layer, (transfer, prepared) in zip(plan.net.layers, plan.steps, strict=True):
        if isinstance(layer, Dense):
            n_out = layer.weight.shape[0]
            if z.is_dense:
                live = int(np.count_nonzero(np.any(z.dense != 0, axis=1)))
                flops += 2 * n_out * live * z.dense.shape[1]
            else:
                flops += 2 * n_out * len(z.idx)
        elif isinstance(layer, Conv):
            zc = z.to_csr()
            co, _, kh, kw = layer.weight.shape
            sh, sw = layer.stride
            flops += int(2 * np.diff(zc.indptr).sum() * co * kh * kw / (sh * sw))
        elif isinstance(layer, MaxPool):
            flops += int(z.indptr[-1]) if not z.is_dense else z.dense.size
        else:
            flops += 2 * (z.dense.size if z.is_dense else len(z.idx))
        z = transfer(prepared, z)
    return flops + 2 * (plan.net.n_outputs - 1) * z.c.shape[0] * (z.dense.shape[1] if z.is_dense
                                                                     else 1)


def _timed_radii(plan: Plan, xs: np.ndarray, settings: VerifierSettings) -> tuple[list, list]:
    """Radii one at a time, with the CPU seconds of this thread for each (robust to other
    jobs on the machine, unlike wall time)."""
    results, seconds = [], []
    for x in xs:
        t0 = time.thread_time()
        results.append(radius_result(plan, x, settings))
        seconds.append(time.thread_time() - t0)
    return results, seconds


def bench_model(name: str, domain: str, xs: np.ndarray, ys: np.ndarray) -> dict:
    net = load_onnx(ROOT / "models" / f"{name}.onnx")
    secant = VerifierSettings(domain=domain)
    bisect = VerifierSettings(domain=domain, search="bisect")
    plan = plan_for(net, secant)
    score_many(plan, xs[:4], secant, jobs=2)  # load the compiled kernels
    results, seconds = _timed_radii(plan, xs, secant)
    bis_results, bis_seconds = _timed_radii(plan, xs, bisect)
    call_s = []
    for x, r in zip(xs, results, strict=True):
        t0 = time.thread_time()
        is_robust(plan, x, max(r.radius, 0.001), r.predicted, secant)
        call_s.append(time.thread_time() - t0)
    rates, cores = {}, {}
    for jobs in (1, 2):
        t0, c0 = time.perf_counter(), time.process_time()
        score_many(plan, xs, secant, jobs=jobs)
        wall = time.perf_counter() - t0
        rates[jobs], cores[jobs] = len(xs) / wall, (time.process_time() - c0) / wall
    flops = float("nan")
    if domain == "deepzono":
        flops = statistics.median(pass_flops(plan, x, max(r.radius, 0.001))
                                  for x, r in zip(xs[:20], results, strict=False))
    radii = np.array([r.radius for r in results])
    correct = np.array([r.predicted for r in results]) == ys
    call = statistics.median(call_s)
    return {
        "model": name,
        "domain": domain,
        "call_ms": 1e3 * call,
        "radius_ms": 1e3 * statistics.median(seconds),
        "pass_ms": 1e3 * statistics.median(t / r.calls for t, r in zip(seconds, results,
                                                                         strict=True) if r.calls),
        "bisect_ms": 1e3 * statistics.median(bis_seconds),
        "calls": float(np.mean([r.calls for r in results])),
        "bisect_calls": float(np.mean([r.calls for r in bis_results])),
        "per_s_1": rates[1],
        "per_s_2": rates[2],
        "cores_2": cores[2],
        "mflop": flops / 1e6,
        "mean_radius": float(radii[correct].mean()),
        "paper_radius": PAPER_RADIUS.get(name, float("nan")),
        "secant_ge_bisect": all(a.radius >= b.radius
                                for a, b in zip(results, bis_results, strict=True)),
        "speedup_eran_here_call": ERAN_HERE_CALL_S.get(name, float("nan")) / call,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100, help="first N MNIST test images")
    parser.add_argument("--models", default="fnn-3x30-relu,fnn-3x30-sigmoid,fnn-3x30-tanh,"
                        "cnn-6-16-128-relu", help="comma-separated names under models/")
    parser.add_argument("--domains", default=",".join(DOMAINS),
                        help=f"comma-separated, of {sorted(DOMAINS)}")
    args = parser.parse_args()
    data = np.load(ROOT / "models" / "mnist_test_1000.npz")
    xs = data["x"][: args.n].reshape(args.n, -1).astype(np.float64) / 255.0
    ys = data["y"][: args.n]
    rows = [bench_model(name, domain, xs, ys)
            for name in args.models.split(",") for domain in args.domains.split(",")]
    print(f"inputs: first {args.n} MNIST test images; tolerance 0.001, up 0.256; medians of "
          f"thread CPU ms; radii/s are wall time; load average {os.getloadavg()[0]:.1f}")
    print(f"{'model':20} {'domain':9} {'is_robust ms':>12} {'pass ms':>8} {'radius ms':>10} "
          f"{'passes':>6} {'bisect ms':>10} {'passes':>6} {'radii/s 1':>9} {'radii/s 2':>9} "
          f"{'cores':>5} {'MFLOP':>7} {'mean r':>7} {'paper r':>7} {'vs ERAN':>8}")
    for r in rows:
        print(f"{r['model']:20} {r['domain']:9} {r['call_ms']:12.3f} {r['pass_ms']:8.3f} "
              f"{r['radius_ms']:10.3f} {r['calls']:6.2f} {r['bisect_ms']:10.3f} "
              f"{r['bisect_calls']:6.2f} {r['per_s_1']:9.1f} {r['per_s_2']:9.1f} "
              f"{r['cores_2']:5.2f} {r['mflop']:7.2f} "
              f"{r['mean_radius']:7.4f} {r['paper_radius']:7.4f} "
              f"{r['speedup_eran_here_call']:7.0f}x")
    for r in rows:
        print(f"{r['model']} {r['domain']}: secant radius >= bisect radius on every input: "
              f"{r['secant_ge_bisect']}")


if __name__ == "__main__":
    main()
