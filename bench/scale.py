"""Verification cost on networks of verification-literature size (3x32x32 inputs), one core.

    python -m bench.scale [--nets convsmall,convmed,convbig,resnet2b,resnet4b]
                          [--domains deepzono,deeppoly] [--n 5] [--offset 0] [--eps 0.01]
                          [--timeout 900] [--cache .cache/refnets]

Prints, per network and domain: neurons, ms per is_robust (one pass at --eps, median over the
inputs), ms per radius (mean over --n test images from --offset on, secant search), passes per
radius, peak resident memory of the process that ran it, and the mean radius. Each network and
domain runs in its own process, so every peak is its own (it includes the interpreter, the
import and the compiled kernels). Times are thread CPU times. Networks absent from --cache are
trained there first with `python -m study.refnets --out CACHE --nets NAME --test-n 100` (needs
the study extra); a network that does not import, or a run over --timeout seconds, is reported
as skipped with the reason.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

NETS = ("convsmall", "convmed", "convbig", "resnet2b", "resnet4b")
ROOT = Path(__file__).resolve().parent.parent


def _images(cache: Path, n: int, offset: int = 0):
    import numpy as np

    files = sorted(cache.glob("test_*.npz"))
    if not files:
        raise FileNotFoundError(f"no test_*.npz in {cache}")
    data = np.load(files[-1])
    x = data["x"][offset: offset + n]
    return x.reshape(len(x), -1).astype(np.float64) / 255.0


def measure(path: Path, domain: str, n: int, eps: float, offset: int = 0) -> dict:
    """The figures of one network and domain, in this process."""
    from verifier import VerifierSettings, is_robust, load_onnx, radius_result
    from verifier.numerics.runtime import single_threaded
    from verifier.score import plan_for

    net = load_onnx(path)
    settings = VerifierSettings(domain=domain)
    plan = plan_for(net, settings)
    xs = _images(path.parent, n, offset)
    if not len(xs):
        raise ValueError(f"no test images from --offset {offset}")
    with single_threaded():
        is_robust(plan, xs[0], eps, settings=settings)  # load the compiled kernels
        passes = []
        for x in xs:
            t0 = time.thread_time()
            is_robust(plan, x, eps, settings=settings)
            passes.append(time.thread_time() - t0)
        radii, calls, seconds = [], [], []
        for x in xs:
            t0 = time.thread_time()
            r = radius_result(plan, x, settings)
            seconds.append(time.thread_time() - t0)
            radii.append(r.radius)
            calls.append(r.calls)
    index = path.parent / "refnets.json"
    meta = json.loads(index.read_text()).get(path.stem, {}) if index.is_file() else {}
    return {
        "neurons": meta.get("neurons"),
        "ms_pass": 1e3 * statistics.median(passes),
        "ms_radius": 1e3 * statistics.fmean(seconds),
        "passes": statistics.fmean(calls),
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "mean_radius": statistics.fmean(radii),
        "n": len(xs),
    }


def _ensure_net(cache: Path, name: str) -> Path:
    path = cache / f"{name}.onnx"
    if not path.is_file():
        cmd = [sys.executable, "-m", "study.refnets", "--out", str(cache), "--nets", name,
               "--test-n", "100"]
        print(f"training {name}: {' '.join(cmd[1:])}", flush=True)
        subprocess.run(cmd, check=True, cwd=ROOT)
    return path


def _child(args: argparse.Namespace) -> int:
    try:
        out = measure(Path(args.child[0]), args.child[1], args.n, args.eps, args.offset)
    except Exception as err:  # reported as a skip by the parent, never a crash
        out = {"skipped": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"}
    print(json.dumps(out), flush=True)
    return 0


def _row(name: str, domain: str, res: dict) -> str:
    if "skipped" in res:
        return f"{name:10} {domain:9} skipped: {res['skipped']}"
    neurons = f"{res['neurons']:,}" if res["neurons"] else "-"
    return (f"{name:10} {domain:9} {neurons:>8} {res['ms_pass']:10.1f} {res['ms_radius']:11.1f} "
            f"{res['passes']:7.1f} {res['peak_mb']:8.0f} {res['mean_radius']:8.4f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nets", default=",".join(NETS))
    ap.add_argument("--domains", default="deepzono,deeppoly")
    ap.add_argument("--n", type=int, default=5, help="test images per network")
    ap.add_argument("--offset", type=int, default=0, help="index of the first test image")
    ap.add_argument("--eps", type=float, default=0.01, help="eps of the timed single pass")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per network and domain")
    ap.add_argument("--cache", type=Path, default=ROOT / ".cache" / "refnets")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return _child(args)
    print(f"{'network':10} {'domain':9} {'neurons':>8} {'ms/pass':>10} {'ms/radius':>11} "
          f"{'passes':>7} {'peak MB':>8} {'radius':>8}   (n={args.n} from {args.offset}, "
          f"pass at eps {args.eps})")
    for name in [s.strip() for s in args.nets.split(",") if s.strip()]:
        try:
            path = _ensure_net(args.cache, name)
        except (subprocess.CalledProcessError, OSError) as err:
            print(f"{name:10} {'-':9} skipped: could not build it ({err})")
            continue
        for domain in [s.strip() for s in args.domains.split(",") if s.strip()]:
            cmd = [sys.executable, "-m", "bench.scale", "--child", str(path), domain,
                   "--n", str(args.n), "--offset", str(args.offset), "--eps", str(args.eps)]
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                                      timeout=args.timeout)
                lines = proc.stdout.strip().splitlines()
                res = json.loads(lines[-1]) if lines else {
                    "skipped": f"exit {proc.returncode}: {proc.stderr.strip()[-200:]}"}
            except subprocess.TimeoutExpired:
                res = {"skipped": f"over the {args.timeout:.0f} s budget (--timeout)"}
            print(_row(name, domain, res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
