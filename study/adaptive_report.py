"""The adaptive study's report: rejection.csv, algorithm2_attack.csv, radii.csv, attacks.json,
config.json, a rejection-against-budget figure and a radius figure per network, report.md."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from worker.policy import buildable_policies

POLICY_LABELS = {"threshold": "threshold", "distribution": "Algorithm 2 (run)",
                 "consistency": "consistency"}


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        for row in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def _pct(v: Any) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.0f} %"


def rejection_figure(path: Path, network: str, rows: list[dict[str, Any]],
                     policies: list[str]) -> None:
    """Rejected share of each PGD set against eps, one line per kappa, one panel per policy;
    C&W and the radius-aware attack as markers, the held-out false alarms as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = (4.2 * len(policies) + 2.6, 3.6)
    fig, axes = plt.subplots(1, len(policies), figsize=size, sharey=True)
    valid = next(r for r in rows if r["family"] == "valid")
    pgd = [r for r in rows if r["family"] == "pgd"]
    for ax, policy in zip(np.atleast_1d(axes), policies, strict=True):
        key = f"rejected_{policy}"
        for kappa in sorted({r["kappa"] for r in pgd}):
            pts = sorted((r["eps"], r[key]) for r in pgd if r["kappa"] == kappa and r["n"])
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=f"PGD κ={kappa:g}")
        for r in rows:
            if r["family"] == "radius_aware" and r["n"]:
                ax.plot([r["eps"]], [r[key]], marker="*", markersize=13, color="k",
                        linestyle="", label=f"radius-aware κ={r['kappa']:g}")
            if r["family"] == "cw" and r["n"]:
                ax.plot([0.02], [r[key]], marker="s", linestyle="",
                        label=f"C&W conf={r['kappa']:g} (L2, shown at left)")
        ax.axhline(valid[key], color="r", linestyle="--", label="held-out valid (false alarms)")
        ax.axhline(0.9, color="grey", linestyle=":", linewidth=0.8)
        ax.set_title(POLICY_LABELS.get(policy, policy))
        ax.set_xlabel("attacker budget eps (L∞)")
        ax.set_ylim(-0.02, 1.02)
    np.atleast_1d(axes)[0].set_ylabel("share rejected")
    np.atleast_1d(axes)[-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.suptitle(f"{network}: rejection at the calibrated profile (3 % false alarms)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def radii_figure(path: Path, network: str, sets: list[Any], threshold: float) -> None:
    """Box plots of the certified radius of each set, the threshold as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [s for s in sets if len(s.radius)]
    fig, ax = plt.subplots(figsize=(max(6, 0.55 * len(shown)), 4))
    ax.boxplot([s.radius for s in shown], showfliers=True)
    ax.set_xticks(range(1, len(shown) + 1), [s.attack for s in shown], rotation=60, ha="right",
                  fontsize=7)
    ax.axhline(threshold, color="r", linestyle="--", label=f"threshold {threshold:.4g}")
    ax.set_ylabel("certified radius")
    ax.set_title(f"{network}: radii per attack")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(out: Path, config: dict[str, Any], results: dict[str, dict[str, Any]]) -> Path:
    """All tables and figures; returns the path of report.md."""
    out.mkdir(parents=True, exist_ok=True)
    rows = [r for res in results.values() for r in res["rows"]]
    runs = [r for res in results.values() for r in res["runs"]]
    _write_csv(out / "rejection.csv", rows)
    _write_csv(out / "algorithm2_attack.csv", runs)
    radii_rows = [
        {"network": s.network, "attack": s.attack, "radius": float(r), "margin": float(m),
         "predicted": int(p), "label": int(lab)}
        for res in results.values() for s in [res["held"], *res["sets"]]
        for r, m, p, lab in zip(s.radius, s.margin, s.predicted, s.label, strict=True)
    ]
    _write_csv(out / "radii.csv", radii_rows)
    (out / "config.json").write_text(json.dumps(config, indent=1) + "\n")
    (out / "attacks.json").write_text(json.dumps(
        {name: res["attacks"] for name, res in results.items()}, indent=1) + "\n")
    lines = ["# Adaptive attacks against radiusguard", "",
             "Generated by `python -m study.adaptive` (`make adaptive`); parameters in "
             "`config.json` and `attacks.json`. Profiles are calibrated on valid inputs alone at "
             f"{config['max_false_alarm']:.0%} false alarms (images "
             f"{config['calibration'][0]}..{config['calibration'][1] - 1}); false alarms and "
             f"attacks are measured on images {config['held_out'][0]}.."
             f"{config['held_out'][1] - 1}. A set's share rejected counts its successful "
             "adversarial examples; Algorithm 2 sees each set as one run from the seed window."
             + ("" if not config.get("extra_valid") else
                f" More held-out valid inputs, for the false alarms: MNIST test images "
                f"{config['extra_valid'][0]}..{config['extra_valid'][1] - 1}."),
             ""]
    for name, res in results.items():
        profile = res["profile"]
        policies = buildable_policies(profile)
        net_rows = [r for r in rows if r["network"] == name]
        rejection_figure(out / f"rejection_{name}.png", name, net_rows, policies)
        radii_figure(out / f"radii_{name}.png", name, [res["held"], *res["sets"]],
                     profile.threshold)
        lines += [f"## {name}", "",
                  f"Threshold {profile.threshold:.4g}; Algorithm 2 sigma0 {profile.sigma0:.4g}, "
                  f"sigma1 {profile.sigma1:.4g}; consistency cutoff "
                  f"{profile.consistency.cutoff:.4g}. This run: {res['seconds']:.0f} s "
                  "(cached steps are read, not recomputed).", "",
                  f"![rejection](rejection_{name}.png)", "", f"![radii](radii_{name}.png)", "",
                  "| set | n / tried | mean radius | mean logit margin | "
                  + " | ".join(POLICY_LABELS.get(p, p) for p in policies) + " |",
                  "| --- | --- | --- | --- |" + " --- |" * len(policies)]
        for r in net_rows:
            lines.append(f"| {r['attack']} | {r['n']} / {r['tried']} | {r['mean_radius']:.4f} | "
                         f"{r['mean_margin']:.2f} | "
                         + " | ".join(_pct(r[f"rejected_{p}"]) for p in policies) + " |")
        lines += ["", "Algorithm 2 attack: runs of adversarial frames from all sets above.", "",
                  "| run | n | mean radius | " + " | ".join(policies) + " |",
                  "| --- | --- | --- |" + " --- |" * len(policies)]
        for r in (r for r in runs if r["network"] == name):
            lines.append(f"| {r['run']} | {r['n']} | {r['mean_radius']:.4f} | "
                         + " | ".join(_pct(r[f"rejected_{p}"]) for p in policies) + " |")
        lines.append("")
    report = out / "report.md"
    report.write_text("\n".join(lines))
    return report
