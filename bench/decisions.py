"""Decision speed: one decision at the profile's budget against a full radius, per input.

    python -m bench.decisions [--n 300] [--reps 5] [--models cnn-6-16-128-relu,...]

For each shipped model with a profile: the median over inputs of the minimum thread time of
a decision at the guaranteed budget (the stages the profile runs) and of a full radius search
(the profile's domain and search), their ratio, the stages that proved; then as a user sees
it, the wall time per input of `radiusguard score --jobs 1` (the library call behind it) on n
inputs, start-up excluded (a run on 10 inputs is subtracted).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from bench.deepzono_passes import _min_time  # noqa: E402
from verifier import load_onnx  # noqa: E402
from verifier.decide import cascade, stage_plans  # noqa: E402
from verifier.numerics.runtime import single_threaded  # noqa: E402
from verifier.score import plan_for, radius_result  # noqa: E402
from worker.policy import make_validator  # noqa: E402
from worker.profile import load_profile  # noqa: E402
from worker.score import score_inputs  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MODELS = ("fnn-3x30-relu", "cnn-6-16-128-relu", "cnn-certified")


def _score_wall(model: Path, profile: Path, xs: np.ndarray) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.npy"
        np.save(path, xs)
        t0 = time.perf_counter()
        score_inputs(model, path, profile, jobs=1)
        return time.perf_counter() - t0


def bench_model(name: str, xs: np.ndarray, reps: int) -> None:
    model, profile_path = ROOT / "models" / f"{name}.onnx", ROOT / "models" / f"{name}.profile.json"
    if not (model.is_file() and profile_path.is_file()):
        print(f"{name}: no model or profile, skipped")
        return
    net = load_onnx(model)
    profile = load_profile(profile_path)
    settings = profile.verifier
    budget = make_validator(profile, "threshold").budget
    plans = stage_plans(net, settings)
    radius_plan = plan_for(net, settings)
    decide_t, radius_t, stages = [], [], Counter()
    with single_threaded():
        for x in xs:
            x = x.reshape(-1)
            prove = cascade(plans, x, net.predict(x), settings)
            stages[prove(budget).stage or "none"] += 1
            decide_t.append(_min_time(lambda p=prove: p(budget), reps))
            radius_t.append(_min_time(lambda x=x: radius_result(radius_plan, x, settings), reps))
    d, r = float(np.median(decide_t)), float(np.median(radius_t))
    print(f"{name}: budget {budget:.4g}, stages {','.join(settings.stages)}; decision "
          f"{1e3 * d:.3f} ms, radius {1e3 * r:.3f} ms (median thread time), radius/decision "
          f"{r / d:.2f}; proved by {dict(stages)}")
    full = _score_wall(model, profile_path, xs)
    start = _score_wall(model, profile_path, xs[:10])
    print(f"  score --jobs 1: {1e3 * (full - start) / (len(xs) - 10):.3f} ms wall per input "
          f"({len(xs)} inputs, start-up of a 10-input run subtracted)")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.decisions", description=__doc__)
    parser.add_argument("--n", type=int, default=300, help="inputs (test images from 0)")
    parser.add_argument("--reps", type=int, default=5, help="repetitions per timing")
    parser.add_argument("--models", default=",".join(MODELS))
    args = parser.parse_args()
    xs = np.load(ROOT / "models" / "mnist_test_1000.npz")["x"][: args.n] / 255.0
    print(f"load average {os.getloadavg()[0]:.2f}")
    for name in args.models.split(","):
        bench_model(name.strip(), xs, args.reps)


if __name__ == "__main__":
    main()
