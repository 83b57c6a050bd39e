"""Candidate detector signals beyond one radius, judged on the adaptive study's attack sets.

    python -m study.adaptive_signals --out reports/adaptive [--network cnn-6-16-128-relu]

Run after `python -m study.adaptive --out DIR` (it reuses DIR/cache). Signals per input: the
radius r, the logit margin m, the certified-margin slopes (m - M(eps)) / eps, where M(eps)
is DeepZono's smallest certified margin at eps = 0.002, 0.005, 0.01, and from the per-class
certified margins M_j(0.005) (verifier.margins): the runner-up class's slope and
the smallest linearised per-class radius m_j / slope_j. Every rule is calibrated on the
calibration slice's valid inputs alone at 3 % false alarms; DIR/signals_NETWORK.csv gives
each rule's held-out false alarms and each attack set's rejection, so that the rules not
shipped are reported, not just dropped.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from study.adaptive import (
    DATA,
    NETWORKS,
    ROOT,
    AdaptiveConfig,
    _hash,
    network_profile,
    run_attacks,
    verified,
)
from verifier.check import margins
from verifier.network import Network
from verifier.onnx.importer import load_onnx
from verifier.score import plan_for
from verifier.settings import VERIFIER_VERSION
from worker.guarantee import false_alarm_threshold
from worker.profile import Profile

SLOPE_EPS = (0.002, 0.005, 0.01)
Rule = Callable[[np.ndarray], np.ndarray]


def features(net: Network, xs: np.ndarray, radius: np.ndarray, margin: np.ndarray,
             predicted: np.ndarray, cache: Path, jobs: int) -> np.ndarray:
    """[N, 7]: log margin, log radius, log slope at each SLOPE_EPS, log runner-up slope at
    0.005, log smallest linearised class radius (all floored at 1e-3); cached."""
    xs = np.asarray(xs, np.float64).reshape(len(xs), net.input_size)
    path = cache / f"margins-{_hash(net.sha256, xs, [*SLOPE_EPS, VERIFIER_VERSION])}.npy"
    if path.is_file():
        certified = np.load(path)
    else:
        znet = plan_for(net)

        def one(i: int) -> np.ndarray:
            return np.array([margins(znet, xs[i], e, int(predicted[i])) for e in SLOPE_EPS])

        with ThreadPoolExecutor(jobs) as pool:
            certified = np.array(list(pool.map(one, range(len(xs))))).reshape(
                len(xs), len(SLOPE_EPS), net.n_outputs)
        np.save(path, certified)
    n = len(xs)
    logits = net.forward(xs).reshape(n, net.n_outputs)
    per_class = logits[np.arange(n), predicted][:, None] - logits  # m_j, 0 at the prediction
    others = np.isfinite(certified[:, 0, :])
    slopes = [(margin - certified[:, i].min(1, initial=np.inf, where=others)) / e
              for i, e in enumerate(SLOPE_EPS)]
    class_slope = (per_class - np.where(others, certified[:, 1], 0.0)) / SLOPE_EPS[1]
    runner_up = np.where(others, logits, -np.inf).argmax(1)
    linear = np.where(others, per_class / np.maximum(class_slope, 1e-9), np.inf).min(1)
    floor = lambda v: np.log(np.maximum(v, 1e-3))  # noqa: E731
    return np.column_stack([floor(margin), np.log(radius + 1e-3)] + [floor(s) for s in slopes]
                           + [floor(class_slope[np.arange(n), runner_up]), floor(linear)])


def threshold_rule(cal: np.ndarray, alpha: float) -> Rule:
    """The threshold policy's own rule (false_alarm_threshold) on the log radius."""
    cut = false_alarm_threshold(cal[:, 1], alpha)
    return lambda f: f[:, 1] < cut


def union_rule(cal: np.ndarray, cols: list[int], low_is_bad: list[bool], alpha: float) -> Rule:
    """Reject if any signal is beyond its own quantile; one shared per-signal rate, the largest
    whose union rejects at most alpha of the calibration inputs."""
    signs = np.where(low_is_bad, 1.0, -1.0)
    x = cal[:, cols] * signs
    cuts = np.full(len(cols), -np.inf)
    for rate in np.linspace(alpha / len(cols), alpha, 50):
        trial = np.array([np.quantile(x[:, i], rate, method="lower") for i in range(len(cols))])
        if np.mean(np.any(x < trial, axis=1)) <= alpha:
            cuts = trial
    return lambda f: np.any(f[:, cols] * signs < cuts, axis=1)


def mahalanobis_rule(cal: np.ndarray, cols: list[int], alpha: float) -> Rule:
    """Reject if the squared Mahalanobis distance from the calibration mean is too large."""
    mu = cal[:, cols].mean(0)
    inv = np.linalg.inv(np.cov(cal[:, cols].T))

    def score(f: np.ndarray) -> np.ndarray:
        d = f[:, cols] - mu
        return np.einsum("ij,jk,ik->i", d, inv, d)

    s = np.sort(score(cal))[::-1]
    cut = s[min(int(np.floor(alpha * len(s) + 1e-9)), len(s) - 1)]
    return lambda f: score(f) > cut


def rules(cal: np.ndarray, alpha: float) -> dict[str, Rule]:
    """The candidates: column 0 is log margin, 1 log radius, 2-4 the log slopes, 5 the
    runner-up's log slope, 6 the log smallest linearised class radius."""
    return {
        "radius (threshold)": threshold_rule(cal, alpha),
        "radius + logit margin (consistency, shipped)": mahalanobis_rule(cal, [0, 1], alpha),
        "radius or slope@0.01": union_rule(cal, [1, 4], [True, False], alpha),
        "radius or slope@0.002 or slope@0.01": union_rule(cal, [1, 2, 4], [True, False, False],
                                                          alpha),
        "slope@0.005 alone": union_rule(cal, [3], [False], alpha),
        "Mahalanobis(margin, radius, 3 slopes)": mahalanobis_rule(cal, [0, 1, 2, 3, 4], alpha),
        "Mahalanobis(margin, radius, runner-up slope@0.005)": mahalanobis_rule(cal, [0, 1, 5],
                                                                              alpha),
        "Mahalanobis(margin, radius, linearised class radius)": mahalanobis_rule(
            cal, [0, 1, 6], alpha),
    }


@dataclass(frozen=True)
class Setup:
    """What a signals study starts from: the network, the test images, the calibrated profile."""

    cfg: AdaptiveConfig
    cache: Path
    onnx: Path
    net: Network
    x: np.ndarray  # [N, size] in [0, 1]
    y: np.ndarray
    profile: Profile

    @classmethod
    def of(cls, network: str, quick: bool, out: Path) -> Setup:
        cfg = AdaptiveConfig.quick() if quick else AdaptiveConfig()
        cache = out / "cache"
        cache.mkdir(parents=True, exist_ok=True)
        onnx = ROOT / NETWORKS[network]
        net = load_onnx(onnx)
        with np.load(ROOT / DATA) as z:
            x = z["x"].reshape(len(z["x"]), -1).astype(np.float64) / 255.0
            y = z["y"].astype(np.int64)
        return cls(cfg, cache, onnx, net, x, y, network_profile(net, x, y, cfg, cache))


def main(argv: list[str] | None = None) -> int:
    """Write DIR/signals.csv and print it."""
    import torch

    p = argparse.ArgumentParser(prog="python -m study.adaptive_signals")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--network", default="cnn-6-16-128-relu", choices=tuple(NETWORKS))
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    setup = Setup.of(args.network, args.quick, args.out)
    cfg, cache, onnx, net, profile = setup.cfg, setup.cache, setup.onnx, setup.net, setup.profile
    x, y = setup.x, setup.y

    def valid(lo: int, hi: int) -> np.ndarray:
        r, m, pred = verified(net, profile, x[lo:hi], cache, cfg.jobs)
        ok = pred == y[lo:hi]
        return features(net, x[lo:hi][ok], r[ok], m[ok], pred[ok], cache, cfg.jobs)

    cal, held = valid(*cfg.calibration), valid(*cfg.held_out)
    sets, _ = run_attacks(net, onnx, profile, x, y, cfg, cache)
    feats = {"valid (held-out)": held}
    for s in sets:
        if len(s.radius):
            feats[s.attack] = features(net, s.x, s.radius, s.margin, s.predicted, cache,
                                       cfg.jobs)
    lines = ["rule," + ",".join(f'"{k}"' for k in feats)]
    for rule_name, rule in rules(cal, cfg.max_false_alarm).items():
        lines.append(f'"{rule_name}",' + ",".join(f"{rule(f).mean():.3f}" for f in feats.values()))
    text = "\n".join(lines) + "\n"
    (args.out / f"signals_{args.network}.csv").write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
