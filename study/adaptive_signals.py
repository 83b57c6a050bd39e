"""Candidate detector signals beyond one radius, judged on the adaptive study's attack sets.

    python -m study.adaptive_signals --out reports/adaptive [--network cnn-6-16-128-relu]

Run after `python -m study.adaptive --out DIR` (it reuses DIR/cache). Signals per input: the
radius r, the logit margin m, and the certified-margin slopes (m - M(eps)) / eps, where M(eps)
is DeepZono's certified margin (verifier.zonotope.robustness_margin) at eps = 0.002, 0.005,
0.01. Every rule is calibrated on the calibration slice's valid inputs alone at 3 % false
alarms; DIR/signals.csv gives each rule's held-out false alarms and each attack set's
rejection, so that the rules not shipped are reported, not just dropped.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
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
from verifier.network import Network, load_onnx
from verifier.zonotope import ZonoNet, robustness_margin

SLOPE_EPS = (0.002, 0.005, 0.01)
Rule = Callable[[np.ndarray], np.ndarray]


def features(net: Network, xs: np.ndarray, radius: np.ndarray, margin: np.ndarray,
             predicted: np.ndarray, cache: Path, jobs: int) -> np.ndarray:
    """[N, 5]: log margin, log radius, log slope at each SLOPE_EPS (floored at 1e-3); cached."""
    xs = np.asarray(xs, np.float64).reshape(len(xs), net.input_size)
    path = cache / f"slopes-{_hash(net.sha256, xs, list(SLOPE_EPS))}.npy"
    if path.is_file():
        certified = np.load(path)
    else:
        znet = ZonoNet.of(net)

        def one(i: int) -> list[float]:
            return [robustness_margin(znet, xs[i], e, int(predicted[i])) for e in SLOPE_EPS]

        with ThreadPoolExecutor(jobs) as pool:
            certified = np.array(list(pool.map(one, range(len(xs))))).reshape(len(xs), 3)
        np.save(path, certified)
    slopes = [(margin - certified[:, i]) / e for i, e in enumerate(SLOPE_EPS)]
    return np.column_stack([np.log(np.maximum(margin, 1e-3)), np.log(radius + 1e-3)]
                           + [np.log(np.maximum(s, 1e-3)) for s in slopes])


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
    """The candidates: column 0 is log margin, 1 log radius, 2-4 the log slopes."""
    return {
        "radius (threshold)": union_rule(cal, [1], [True], alpha),
        "radius + logit margin (consistency, shipped)": mahalanobis_rule(cal, [0, 1], alpha),
        "radius or slope@0.01": union_rule(cal, [1, 4], [True, False], alpha),
        "radius or slope@0.002 or slope@0.01": union_rule(cal, [1, 2, 4], [True, False, False],
                                                          alpha),
        "slope@0.005 alone": union_rule(cal, [3], [False], alpha),
        "Mahalanobis(margin, radius, 3 slopes)": mahalanobis_rule(cal, [0, 1, 2, 3, 4], alpha),
    }


def main(argv: list[str] | None = None) -> int:
    """Write DIR/signals.csv and print it."""
    import torch

    p = argparse.ArgumentParser(prog="python -m study.adaptive_signals")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--network", default="cnn-6-16-128-relu", choices=tuple(NETWORKS))
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    cfg = AdaptiveConfig.quick() if args.quick else AdaptiveConfig()
    cache = args.out / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    onnx = ROOT / NETWORKS[args.network]
    net = load_onnx(onnx)
    with np.load(ROOT / DATA) as z:
        x = z["x"].reshape(len(z["x"]), -1).astype(np.float64) / 255.0
        y = z["y"].astype(np.int64)
    profile = network_profile(net, x, y, cfg, cache)

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
