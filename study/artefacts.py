"""Regenerate the shipped artefacts: calibrated profiles and the demo stream recording.

``python -m study.artefacts`` writes ``models/<model>.profile.json`` for every shipped ONNX
model (worker.calibrate.calibrate on test images 500..999 of ``mnist_test_1000.npz``, with
attack sets made on those images) and ``models/demo-stream.rgr`` for the CNN: the first 120
correctly classified frames of images 0..499, every misclassified frame there, and 20
adversarial examples per attack, mixed in a fixed-seed order on stream ``cam-1``. The two
halves of the slice never overlap.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from study.attacks import AttackSpec, LazyClassifier, attack_spec, run_attack
from study.data import REPO_ROOT
from verifier.network import Network
from verifier.onnx.importer import load_onnx

log = logging.getLogger(__name__)

DEMO_MODEL = "cnn-6-16-128-relu"
DEMO_STREAM = "cam-1"
DEMO_IMAGES = range(0, 500)
CALIBRATION_IMAGES = range(500, 1000)
ATTACKS = ("fgsm_0.1", "fgsm_0.05", "cw", "hop")
# HopSkipJump cut down from ART's defaults so the artefacts rebuild in minutes.
ATTACK_PARAMS = {"hop": {"max_iter": 10, "max_eval": 1000, "init_eval": 20}}
START_TS = 1_767_225_600_000  # fixed timestamps (ms) keep the recording byte-reproducible
PERIOD_MS = 100


def load_slice(models_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The shipped test slice: uint8 images [N, 1, 28, 28] and int64 labels."""
    with np.load(models_dir / "mnist_test_1000.npz", allow_pickle=False) as z:
        x, y = z["x"], z["y"]
    return x.reshape(len(x), 1, 28, 28), y.astype(np.int64)


def shipped_models(models_dir: Path) -> list[Path]:
    """Every ONNX model in the directory, sorted by name."""
    return sorted(models_dir.glob("*.onnx"))


def correct_indices(net: Network, x: np.ndarray, y: np.ndarray, idx: Sequence[int]) -> np.ndarray:
    """The indices among `idx` whose image our float64 network classifies correctly."""
    idx = np.asarray(list(idx), dtype=np.int64)
    logits = np.atleast_2d(net.forward(x[idx].reshape(len(idx), -1).astype(np.float64) / 255.0))
    return idx[np.argmax(logits, axis=1) == y[idx]]


def adversarial(
    net: Network, onnx_path: Path, spec: AttackSpec, x: np.ndarray, y: np.ndarray,
    sources: np.ndarray, want: int | None, cache: Path, classifier, chunk: int = 50,
) -> tuple[np.ndarray, np.ndarray]:
    """Successful examples of one attack from `sources` in order, in chunks, until `want`
    (None: all sources); returns (float32 examples, source indices)."""
    xs, src = [], []
    for start in range(0, len(sources), chunk):
        res = run_attack(net, onnx_path, spec, x, y, sources[start : start + chunk], cache,
                         classifier)
        xs.append(res.x)
        src.append(res.source)
        if want is not None and sum(len(s) for s in src) >= want:
            break
    x_adv = np.concatenate(xs) if xs else np.zeros((0, *net.input_shape), np.float32)
    source = np.concatenate(src) if src else np.zeros(0, np.int64)
    if want is not None:
        x_adv, source = x_adv[:want], source[:want]
    return x_adv, source


def make_profile(
    onnx_path: Path, x: np.ndarray, y: np.ndarray, cache: Path, attack_sources: int,
    jobs: int, max_false_alarm: float = 0.03, window: int = 50,
) -> Path:
    """Calibrate one model on the calibration half of the slice and save its profile."""
    from worker.calibrate import calibrate
    from worker.profile import save_profile

    net = load_onnx(onnx_path)
    cal = np.asarray(list(CALIBRATION_IMAGES), dtype=np.int64)
    correct = correct_indices(net, x, y, cal)
    classifier = LazyClassifier(onnx_path, net.input_shape, net.n_outputs)
    attacks = {}
    for name in ATTACKS:
        spec = attack_spec(name, ATTACK_PARAMS.get(name))
        # FGSM costs nothing, so it starts from every correctly classified image (it rarely
        # succeeds at eps 0.05 on the CNN); C&W and HopSkipJump from the first few.
        sources = correct if spec.kind == "fgsm" else correct[:attack_sources]
        adv, _ = adversarial(net, onnx_path, spec, x, y, sources, None, cache, classifier)
        if len(adv):
            attacks[name] = adv
        log.info("%s: %s %d adversarial examples from %d sources", net.name, name, len(adv),
                 len(sources))
    profile = calibrate(
        net, x[cal], y[cal], max_false_alarm=max_false_alarm, window_size=window,
        attacks=attacks, jobs=jobs, name=net.name,
    )
    path = onnx_path.with_name(f"{onnx_path.stem}.profile.json")
    save_profile(profile, path)
    return path


def make_demo_stream(
    models_dir: Path, x: np.ndarray, y: np.ndarray, cache: Path, n_valid: int = 120,
    n_attack: int = 20, seed: int = 0,
) -> tuple[Path, dict[str, int]]:
    """Write the demo recording for the CNN; returns its path and the per-category counts."""
    from worker.formats.codec import encode_input
    from worker.formats.recording import Recorded, write_recording

    onnx_path = models_dir / f"{DEMO_MODEL}.onnx"
    net = load_onnx(onnx_path)
    demo = np.asarray(list(DEMO_IMAGES), dtype=np.int64)
    good = correct_indices(net, x, y, demo)
    wrong = np.setdiff1d(demo, good)
    # The first n_valid correctly classified frames and every misclassified one of the range.
    natural = np.union1d(good[:n_valid], wrong)
    good_set = set(good.tolist())
    items: list[tuple[np.ndarray, int, str, str]] = [
        (x[i].reshape(28, 28), int(y[i]), "valid" if i in good_set else "misclassified", "uint8")
        for i in natural
    ]
    classifier = LazyClassifier(onnx_path, net.input_shape, net.n_outputs)
    for name in ATTACKS:
        spec = attack_spec(name, ATTACK_PARAMS.get(name))
        adv, src = adversarial(net, onnx_path, spec, x, y, good, n_attack, cache, classifier)
        items += [(a.reshape(28, 28), int(y[s]), name, "float32")
                  for a, s in zip(adv, src, strict=True)]
    order = np.random.default_rng(seed).permutation(len(items))
    records = []
    for pos, k in enumerate(order):
        frame, label, category, dtype = items[k]
        ts = START_TS + pos * PERIOD_MS
        key, value = encode_input(f"{DEMO_STREAM}-{pos:04d}", frame, stream=DEMO_STREAM,
                                  dtype=dtype, ts=ts, label=label, meta={"category": category})
        records.append(Recorded(key, value, (), ts))
    path = models_dir / "demo-stream.rgr"
    write_recording(path, records)
    counts: dict[str, int] = {}
    for _, _, category, _ in items:
        counts[category] = counts.get(category, 0) + 1
    return path, counts


def main(argv: list[str] | None = None) -> int:
    """Regenerate the profiles and the demo stream; prints each file with its size."""
    ap = argparse.ArgumentParser(prog="python -m study.artefacts", description=__doc__)
    ap.add_argument("--models-dir", type=Path, default=REPO_ROOT / "models")
    ap.add_argument("--cache", type=Path, default=REPO_ROOT / ".cache" / "artefacts",
                    help="attack cache (reruns reuse it)")
    ap.add_argument("--only", choices=("profiles", "stream"), help="make just one kind")
    ap.add_argument("--models", default="", help="comma-separated model names (default: all)")
    ap.add_argument("--attack-sources", type=int, default=100,
                    help="correctly classified calibration images C&W and HopSkipJump start "
                    "from (FGSM: all of them)")
    ap.add_argument("--jobs", type=int, default=2, help="radius threads")
    ap.add_argument("--torch-threads", type=int, default=1)
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("art").setLevel(logging.WARNING)  # its per-batch success lines are noise
    import torch

    torch.set_num_threads(max(1, args.torch_threads))
    x, y = load_slice(args.models_dir)
    summary: dict[str, object] = {}
    if args.only in (None, "profiles"):
        wanted = {m.strip() for m in args.models.split(",") if m.strip()}
        for onnx_path in shipped_models(args.models_dir):
            if wanted and onnx_path.stem not in wanted:
                continue
            t0 = time.perf_counter()
            path = make_profile(onnx_path, x, y, args.cache, args.attack_sources, args.jobs)
            summary[path.name] = {"bytes": path.stat().st_size,
                                  "seconds": round(time.perf_counter() - t0, 1)}
            print(f"{path} {path.stat().st_size} bytes", file=sys.stderr)
    if args.only in (None, "stream"):
        t0 = time.perf_counter()
        path, counts = make_demo_stream(args.models_dir, x, y, args.cache)
        summary[path.name] = {"bytes": path.stat().st_size, "records": sum(counts.values()),
                              "counts": counts, "seconds": round(time.perf_counter() - t0, 1)}
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
