"""DeepPoly radii and margins beside DeepZono's, judged on the adaptive study's attack sets.

    python -m study.adaptive_poly --out reports/adaptive [--network cnn-6-16-128-relu]
        [--extra] [--jobs 1]

Run after `python -m study.adaptive --out DIR` (it reuses DIR/cache). Per input: the logit
margin m, the DeepZono radius r_z (the profile's), the DeepPoly radius r_p (same search, up
and tol), both radii again at search tolerance FINE_TOL, and each domain's certified margin
of every class at MARGIN_EPS, from which the certified-margin slopes (m_j - M_j) /
MARGIN_EPS (DeepPoly: runner-up and worst class; DeepZono: worst class). The idea tested: on
valid inputs m, r_z and r_p move together one way; an example pushed far past the boundary
by PGD may relate them another way (its r_p / r_z, or r_p for its m). Every rule is
calibrated on the calibration slice's valid inputs alone at the study's false-alarm target;
DIR/signals_poly_NETWORK.csv gives each rule's held-out false alarms and each attack set's
rejection. --extra adds MNIST test images 1000..2999 as a second held-out valid set.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from study.adaptive import (
    NETWORKS,
    AdaptiveConfig,
    _hash,
    run_attacks,
    verified,
)
from study.adaptive_signals import Setup, mahalanobis_rule
from verifier.check import margins
from verifier.network import Network
from verifier.score import plan_for
from verifier.settings import VERIFIER_VERSION
from worker.guarantee import false_alarm_threshold
from worker.profile import Profile

MARGIN_EPS = 0.01   # about half the valid inputs' mean DeepZono radius: most stay certified
FINE_TOL = 1e-4     # the profile's search tolerance (1e-3) is ~5 % of a valid radius
FLOOR = 1e-3
COLUMNS = ("log margin", "log r_zono", "log r_poly", "log runner-up poly slope",
           "log worst poly slope", "log worst zono slope", "log r_zono fine", "log r_poly fine")
Rule = Callable[[np.ndarray], np.ndarray]


def poly_profile(profile: Profile, domain: str = "deeppoly", tol: float | None = None
                 ) -> Profile:
    """The profile with its verifier switched to `domain` (same search and up; tol if given)."""
    return replace(profile, verifier=replace(profile.verifier, domain=domain,
                                             tol=tol or profile.verifier.tol))


def poly_margins(net: Network, profile: Profile, xs: np.ndarray, predicted: np.ndarray,
                 cache: Path) -> np.ndarray:
    """[N, classes] certified margins at MARGIN_EPS under the profile's domain (inf at the
    prediction); cached."""
    settings = profile.verifier
    key = _hash(net.sha256, xs, [MARGIN_EPS, settings.domain, VERIFIER_VERSION])
    path = cache / f"polymargins-{key}.npy"
    if path.is_file():
        return np.load(path)
    plan = plan_for(net, settings)
    out = np.array([margins(plan, x, MARGIN_EPS, int(p), settings)
                    for x, p in zip(xs, predicted, strict=True)]).reshape(len(xs), -1)
    np.save(path, out)
    return out


def features(net: Network, profile: Profile, xs: np.ndarray, cache: Path, jobs: int
             ) -> tuple[np.ndarray, np.ndarray]:
    """[N, 8] in COLUMNS order (radii as log(r + FLOOR), the rest floored at FLOOR) and the
    predicted classes; every verifier result is cached under the whole set's key."""
    xs = np.asarray(xs, np.float64).reshape(len(xs), net.input_size)
    r_zono, margin, predicted = verified(net, profile, xs, cache, jobs)
    poly = poly_profile(profile)
    r_poly, _, pred_poly = verified(net, poly, xs, cache, jobs)
    assert np.array_equal(predicted, pred_poly)
    fine = [verified(net, poly_profile(profile, d, FINE_TOL), xs, cache, jobs)[0]
            for d in ("deepzono", "deeppoly")]
    n = len(xs)
    logits = net.forward(xs).reshape(n, net.n_outputs)
    per_class = logits[np.arange(n), predicted][:, None] - logits

    def slopes(p: Profile) -> np.ndarray:
        certified = poly_margins(net, p, xs, predicted, cache)
        others = np.isfinite(certified)
        return np.where(others, (per_class - np.where(others, certified, 0.0)) / MARGIN_EPS,
                        -np.inf)

    slope, zono_slope = slopes(poly), slopes(profile)
    runner_up = np.where(np.isfinite(slope), logits, -np.inf).argmax(1)
    floor = lambda v: np.log(np.maximum(v, FLOOR))  # noqa: E731
    return np.column_stack([floor(margin), np.log(r_zono + FLOOR), np.log(r_poly + FLOOR),
                            floor(slope[np.arange(n), runner_up]), floor(slope.max(1)),
                            floor(zono_slope.max(1)), np.log(fine[0] + FLOOR),
                            np.log(fine[1] + FLOOR)]), predicted


def low_rule(cal: np.ndarray, col: int, alpha: float) -> Rule:
    """Reject a value below the threshold policy's quantile of the calibration values."""
    cut = false_alarm_threshold(cal[:, col], alpha)
    return lambda f: f[:, col] < cut


def ratio_rule(cal: np.ndarray, num: int, den: int, alpha: float) -> Rule:
    """Reject column num - column den (a log ratio) outside the calibration values' central
    1 - alpha."""
    d = cal[:, num] - cal[:, den]
    lo, hi = np.quantile(d, alpha / 2, method="lower"), np.quantile(d, 1 - alpha / 2,
                                                                     method="higher")
    return lambda f: ((f[:, num] - f[:, den]) < lo) | ((f[:, num] - f[:, den]) > hi)


def either_rule(cal: np.ndarray, a: list[int], b: list[int], alpha: float) -> Rule:
    """Two Mahalanobis scores OR-ed, each at one shared rate: the largest of a grid whose
    union rejects at most alpha of the calibration inputs."""
    best: Rule = mahalanobis_rule(cal, a, alpha / 2)
    for rate in np.linspace(alpha / 2, alpha, 21):
        ra, rb = mahalanobis_rule(cal, a, rate), mahalanobis_rule(cal, b, rate)
        if np.mean(ra(cal) | rb(cal)) <= alpha:
            best = _union(ra, rb)
    return best


def _union(ra: Rule, rb: Rule) -> Rule:
    return lambda f: ra(f) | rb(f)


def rules(cal: np.ndarray, alpha: float) -> dict[str, Rule]:
    """The candidates, fixed before any attack set is looked at (columns: COLUMNS)."""
    return {
        "r_zono (threshold)": low_rule(cal, 1, alpha),
        "margin, r_zono (consistency, shipped)": mahalanobis_rule(cal, [0, 1], alpha),
        "r_poly (threshold on DeepPoly)": low_rule(cal, 2, alpha),
        "margin, r_poly (consistency on DeepPoly)": mahalanobis_rule(cal, [0, 2], alpha),
        "r_zono, r_poly": mahalanobis_rule(cal, [1, 2], alpha),
        "r_poly / r_zono outside central 97 %": ratio_rule(cal, 2, 1, alpha),
        "margin, r_zono, r_poly (3-D)": mahalanobis_rule(cal, [0, 1, 2], alpha),
        "consistency or consistency on DeepPoly": either_rule(cal, [0, 1], [0, 2], alpha),
        "margin, r_zono, runner-up poly slope": mahalanobis_rule(cal, [0, 1, 3], alpha),
        "margin, r_zono, worst poly slope": mahalanobis_rule(cal, [0, 1, 4], alpha),
        "margin, r_zono, r_poly, runner-up poly slope": mahalanobis_rule(cal, [0, 1, 2, 3],
                                                                         alpha),
        "worst zono slope / worst poly slope outside central 97 %": ratio_rule(cal, 5, 4,
                                                                                alpha),
        "margin, r_zono, worst zono slope, worst poly slope": mahalanobis_rule(
            cal, [0, 1, 5, 4], alpha),
        "fine: r_zono, r_poly": mahalanobis_rule(cal, [6, 7], alpha),
        "fine: r_poly / r_zono outside central 97 %": ratio_rule(cal, 7, 6, alpha),
        "fine: margin, r_zono (consistency at tol 1e-4)": mahalanobis_rule(cal, [0, 6], alpha),
        "fine: margin, r_zono, r_poly (3-D)": mahalanobis_rule(cal, [0, 6, 7], alpha),
    }


def poly_cost(net: Network, profile: Profile, xs: np.ndarray) -> dict[str, float]:
    """Median thread CPU ms per input of a DeepZono radius, a DeepPoly radius and the
    DeepPoly margins at MARGIN_EPS, one thread."""
    from verifier.score import radius_result

    zono, poly = profile.verifier, poly_profile(profile).verifier
    pz, pp = plan_for(net, zono), plan_for(net, poly)
    steps: dict[str, Callable] = {
        "r_zono": lambda x, label: radius_result(pz, x, zono, label),
        "r_poly": lambda x, label: radius_result(pp, x, poly, label),
        "poly margins": lambda x, label: margins(pp, x, MARGIN_EPS, label, poly),
    }
    times: dict[str, list[float]] = {k: [] for k in steps}
    for x in xs:
        label = int(np.argmax(net.forward(x[None])))
        for name, run in steps.items():
            t0 = time.thread_time()
            run(x, label)
            times[name].append(1e3 * (time.thread_time() - t0))
    return {k: float(np.median(v)) for k, v in times.items()}


def extra_inputs(cfg: AdaptiveConfig) -> tuple[np.ndarray, np.ndarray]:
    """MNIST test images cfg.extra_valid as flat floats, with labels."""
    from study.data import load_mnist, to_uint8

    a, b = cfg.extra_valid or (0, 0)
    mnist = load_mnist()
    x = to_uint8(mnist.test_x[a:b]).reshape(b - a, -1).astype(np.float64) / 255.0
    return x, np.asarray(mnist.test_y[a:b], np.int64)


def main(argv: list[str] | None = None) -> int:
    """Write DIR/signals_poly_NETWORK.csv and print it with the per-input cost."""
    import torch

    p = argparse.ArgumentParser(prog="python -m study.adaptive_poly")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--network", default="cnn-6-16-128-relu", choices=tuple(NETWORKS))
    p.add_argument("--quick", action="store_true")
    p.add_argument("--extra", action="store_true", help="also MNIST test 1000..2999")
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--cost", type=int, default=20, help="inputs timed for the cost (0: none)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    setup = Setup.of(args.network, args.quick, args.out)
    cfg, cache, onnx, net, profile = setup.cfg, setup.cache, setup.onnx, setup.net, setup.profile
    x, y = setup.x, setup.y

    def valid(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        f, pred = features(net, profile, xs, cache, args.jobs)
        return f[pred == ys]

    (ca, cb), (ha, hb) = cfg.calibration, cfg.held_out
    cal = valid(x[ca:cb], y[ca:cb])
    feats = {f"valid {ha}..{hb - 1} (held-out)": valid(x[ha:hb], y[ha:hb])}
    if args.extra and cfg.extra_valid is not None:
        ea, eb = cfg.extra_valid
        feats[f"valid {ea}..{eb - 1} (held-out)"] = valid(*extra_inputs(cfg))
    sets, _ = run_attacks(net, onnx, profile, x, y, cfg, cache)
    for s in sets:
        if len(s.radius):
            feats[s.attack] = features(net, profile, s.x, cache, args.jobs)[0]
    lines = ["rule,calibration," + ",".join(f'"{k}"' for k in feats)]
    for rule_name, rule in rules(cal, cfg.max_false_alarm).items():
        lines.append(f'"{rule_name}",{rule(cal).mean():.3f},'
                     + ",".join(f"{rule(f).mean():.3f}" for f in feats.values()))
    lines.append('"n",' + f"{len(cal)}," + ",".join(str(len(f)) for f in feats.values()))
    text = "\n".join(lines) + "\n"
    (args.out / f"signals_poly_{args.network}.csv").write_text(text)
    print(text, end="")
    for name, num, den in (("log r_poly - log r_zono", 2, 1), ("the same, fine", 7, 6)):
        print(f"median {name}:", ", ".join(f"{k} {np.median(f[:, num] - f[:, den]):.3f}"
                                           for k, f in {"calibration": cal, **feats}.items()))
    corr = np.corrcoef(cal[:, [0, 1, 2, 6, 7]].T)
    print(f"calibration correlations: log r_zono ~ log r_poly {corr[1, 2]:.4f} (fine "
          f"{corr[3, 4]:.4f}), log margin ~ log r_zono {corr[0, 1]:.3f}")
    if args.cost:
        cost = poly_cost(net, profile, x[ca:ca + args.cost])
        print("median thread CPU ms per input:", ", ".join(f"{k} {v:.1f}"
                                                          for k, v in cost.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
