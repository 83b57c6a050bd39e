"""What an attacker who knows radiusguard achieves against the threshold policy at its
guaranteed budget, on the shipped CNN and the certified one.

    python -m study.certified.evaluate --out reports/certified [--n 500] [--quick]

Per model, with its shipped profile (budget tau): clean accuracy on the MNIST test set; tau at
1, 3 and 5 % false alarms (cascade radii of the calibration images 500..999); the false
alarms at tau on held-out test images (1000 on); and per attack and budget (0.5 tau, tau, 0.1,
0.2, 0.3) how many sources were attacked, how many examples the float64 network classifies
otherwise than their source (successful), and how many of those the serving cascade proves at
tau (accepted: the attacker's end-to-end success). Sources are the first n correctly classified
held-out images. Attacks: margin PGD at kappa 0 and 15 with restarts, the radius-aware PGD
(pushes an interval bound of the adversarial class's certified margin at tau up), and ART's
C&W L-inf (which shrinks its own bound) projected onto each budget's ball, on fewer sources.
At budgets <= tau, accepted must be 0: the guarantee. Attacks and decisions are cached under
OUT/cache.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from study.report import write_csv
from verifier.decide import cascade_radius, decide_many
from verifier.network import Network
from verifier.onnx.importer import load_onnx
from worker.guarantee import false_alarm_threshold
from worker.policy import make_validator
from worker.profile import Profile, load_profile

ROOT = Path(__file__).resolve().parents[2]
MODELS = ("cnn-6-16-128-relu", "cnn-certified")
FIXED_BUDGETS = (0.1, 0.2, 0.3)
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalConfig:
    """What to run; recorded in OUT/config.json."""

    models: tuple[str, ...] = MODELS
    n: int = 500                         # attack sources per set
    cw_n: int = 50                       # C&W sources (ART's C&W L-inf is slow)
    held_out: tuple[int, int] = (1000, 4000)
    calibration: tuple[int, int] = (500, 1000)
    kappa: tuple[float, ...] = (0.0, 15.0)
    steps: int = 40
    restarts: int = 2
    radius_aware: tuple[float, float] = (10.0, 0.1)   # (kappa, weight of the IBP margin term)
    seed: int = 0
    jobs: int = 2

    @classmethod
    def quick(cls) -> EvalConfig:
        """Sizes for the test suite."""
        return cls(n=12, cw_n=3, held_out=(1000, 1100), calibration=(500, 560), steps=10,
                   restarts=1, kappa=(0.0,))


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _cached(cache: Path, key: str, make) -> np.ndarray:
    """make() once per key, stored as an .npy."""
    path = cache / f"{key[:24]}.npy"
    if path.is_file():
        return np.load(path)
    value = np.asarray(make())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, value)
    tmp.replace(path)
    return value


def budgets(tau: float) -> list[tuple[str, float]]:
    """(label, eps) of the budgets judged: 0.5 tau, tau and the fixed ones."""
    return [("0.5tau", 0.5 * tau), ("tau", tau)] + [(f"{b:g}", b) for b in FIXED_BUDGETS]


def _proved(net: Network, profile: Profile, xs: np.ndarray, eps: float, cache: Path,
            jobs: int) -> np.ndarray:
    """Which inputs the serving cascade proves at eps (bool per input)."""
    key = _digest("proved", net.sha256, asdict(profile.verifier), eps, hashlib.sha256(
        np.ascontiguousarray(xs, np.float64).tobytes()).hexdigest())
    return _cached(cache, key, lambda: [p.proved for p in decide_many(
        net, xs, eps, profile.verifier, jobs)]).astype(bool)


def _cw_linf(net: Network, onnx: Path, xs: np.ndarray, ys: np.ndarray, eps: float,
             cache: Path) -> np.ndarray:
    """ART's C&W L-inf (it shrinks its own L-inf bound), projected onto the eps-ball."""
    from art.attacks.evasion import CarliniLInfMethod

    from study.attacks import art_classifier

    def make():
        clf = art_classifier(onnx, net.input_shape, net.n_outputs)
        attack = CarliniLInfMethod(clf, confidence=0.0, targeted=False, learning_rate=0.01,
                                   max_iter=50, batch_size=50, verbose=False)
        x32 = xs.reshape(len(xs), *net.input_shape).astype(np.float32)
        return attack.generate(x32).reshape(len(xs), -1).astype(np.float64)

    adv = _cached(cache, _digest("cw_linf", net.sha256, ys.tolist(), xs.shape), make)
    return np.clip(adv, np.clip(xs - eps, 0, 1), np.clip(xs + eps, 0, 1))


def _successful(net: Network, onnx: Path, attack: str, family: str, params: dict,
                x: np.ndarray, y: np.ndarray, idx: np.ndarray, eps: float,
                cache: Path) -> np.ndarray:
    """One attack's examples at eps that the float64 network classifies otherwise than their
    (correctly classified) source."""
    if family == "cw":
        adv = _cw_linf(net, onnx, x[idx], y[idx], eps, cache)
        return adv[np.argmax(net.forward(adv), axis=1) != y[idx]]
    from study.adaptive_attacks import run_adaptive

    return run_adaptive(net, f"{attack}_{eps:g}", {**params, "eps": eps}, x, y, idx,
                        cache / "attacks").x


def attack_plan(cfg: EvalConfig, tau: float) -> list[tuple[str, str, dict]]:
    """(name, family, PGD keyword arguments) of every attack."""
    base = {"steps": cfg.steps, "restarts": cfg.restarts, "seed": cfg.seed}
    plan = [(f"pgd_k{k:g}", "pgd", {**base, "kappa": k}) for k in cfg.kappa]
    kappa, weight = cfg.radius_aware
    plan.append(("radius_aware", "pgd", {**base, "kappa": kappa, "cert_eps": tau,
                                         "cert_weight": weight}))
    plan.append(("cw_linf", "cw", {}))
    return plan


def evaluate_model(name: str, cfg: EvalConfig, data, cache: Path) -> tuple[dict, list[dict]]:
    """The summary row and the attack rows of one model."""
    onnx = ROOT / "models" / f"{name}.onnx"
    net, profile = load_onnx(onnx), load_profile(ROOT / "models" / f"{name}.profile.json")
    tau = float(make_validator(profile, "threshold").budget)
    test_x = data.test_x.reshape(len(data.test_x), -1).astype(np.float64)
    test_y = np.asarray(data.test_y, np.int64)
    pred = np.argmax(net.forward(test_x), axis=1)
    correct = pred == test_y
    a, b = cfg.calibration
    cal = test_x[a:b][correct[a:b]]
    radii = _cached(cache, _digest("radii", net.sha256, asdict(profile.verifier), a, b),
                    lambda: [cascade_radius(net, x, profile.verifier).radius for x in cal])
    a, b = cfg.held_out
    held = test_x[a:b][correct[a:b]]
    summary = {"model": name, "clean_accuracy": float(correct.mean()), "budget": tau,
               **{f"tau_at_{p}pct": false_alarm_threshold(radii, p / 100) for p in (1, 3, 5)},
               "false_alarm_calibration": profile.calibration.false_alarm_at_budget,
               "held_out": int(len(held)),
               "false_alarm_held_out": float(1 - _proved(net, profile, held, tau, cache,
                                                         cfg.jobs).mean())}
    src = np.flatnonzero(correct[a:b])[: cfg.n] + a
    rows = []
    for attack, family, params in attack_plan(cfg, tau):
        idx = src[: cfg.cw_n] if family == "cw" else src
        for label, eps in budgets(tau):
            adv = _successful(net, onnx, attack, family, params, test_x, test_y, idx, eps,
                              cache)
            accepted = int(_proved(net, profile, adv, tau, cache, cfg.jobs).sum()) \
                if len(adv) else 0
            rows.append({"model": name, "attack": attack, "budget": label, "eps": eps,
                         "guaranteed": eps <= tau, "sources": int(len(idx)),
                         "successful": int(len(adv)), "accepted": accepted,
                         "end_to_end_success": float(accepted / len(idx))})
            log.info("%s %s eps %.4g: %d/%d successful, %d accepted", name, attack, eps,
                     len(adv), len(idx), accepted)
    return summary, rows


def _plot(path: Path, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r["model"] for r in rows})
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 3.6), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        for attack in sorted({r["attack"] for r in rows}):
            pts = sorted((r["eps"], r["end_to_end_success"]) for r in rows
                         if r["model"] == model and r["attack"] == attack)
            ax.plot(*zip(*pts, strict=True), marker="o", label=attack)
        tau = next(r["eps"] for r in rows if r["model"] == model and r["budget"] == "tau")
        ax.axvline(tau, color="grey", ls="--", lw=1)
        ax.set(title=f"{model} (tau {tau:.3g})", xlabel="attack budget eps (L-inf)",
               ylabel="accepted adversarial / sources")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(cfg: EvalConfig, out: Path) -> list[dict]:
    """Evaluate every model, write OUT/summary.csv, attacks.csv, attacks.png, config.json."""
    from study.data import load_mnist

    data = load_mnist()
    out.mkdir(parents=True, exist_ok=True)
    summaries, rows = [], []
    for name in cfg.models:
        s, r = evaluate_model(name, cfg, data, out / "cache")
        summaries.append(s)
        rows += r
    write_csv(out / "summary.csv", summaries)
    write_csv(out / "attacks.csv", rows)
    _plot(out / "attacks.png", rows)
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=1) + "\n")
    broken = [r for r in rows if r["guaranteed"] and r["accepted"]]
    if broken:
        raise AssertionError(f"accepted adversarial examples within the budget: {broken}")
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m study.certified.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "reports" / "certified",
                   help="report directory (default: %(default)s)")
    p.add_argument("--n", type=int, help="attack sources per set (default: 500)")
    p.add_argument("--models", help=f"comma-separated shipped models (default: {','.join(MODELS)})")
    p.add_argument("--quick", action="store_true", help="test-suite sizes")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    cfg = EvalConfig.quick() if args.quick else EvalConfig()
    if args.n:
        cfg = replace(cfg, n=args.n)
    if args.models:
        cfg = replace(cfg, models=tuple(args.models.split(",")))
    run(cfg, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
