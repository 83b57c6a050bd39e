"""The study's comparison of abstract domains: does a tighter radius detect better?

For every network studied in detail with `compare_domains`, the same first-N inputs of each
category are scored under each domain. Per domain and category: mean radius, ROC AUC of
"reject iff radius < t" against the valid inputs, the share rejected at the threshold that
rejects FALSE_ALARM of those valid inputs (fitted on them, so in-sample), and the median
seconds per radius (thread-seconds of batched scoring, shared among a batch's inputs).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

FALSE_ALARM = 0.03
COLUMNS = ("network", "domain", "category", "n", "mean_radius", "auc", "rejected",
           "threshold", "ms_per_radius")


def _threshold(valid: np.ndarray, rate: float) -> float:
    """The largest t with #{r < t} / n <= rate (as calibration does)."""
    v = np.sort(valid)
    return float(v[min(int(np.floor(rate * v.size)), v.size - 1)])


def _auc(valid: np.ndarray, other: np.ndarray) -> float:
    """P(other < valid) + P(tie) / 2: the area under the ROC of a radius threshold."""
    less = (other[:, None] < valid[None, :]).mean()
    ties = (other[:, None] == valid[None, :]).mean()
    return float(less + 0.5 * ties)


def rows(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per network, domain and category (valid first)."""
    out = []
    for net in results["networks"]:
        for domain, cats in net.get("domains", {}).items():
            valid = np.round(np.asarray(cats["valid"]["radius"], dtype=np.float64), 9)
            t = _threshold(valid, FALSE_ALARM)
            for cat, r in cats.items():
                radii = np.round(np.asarray(r["radius"], dtype=np.float64), 9)
                if radii.size == 0:
                    continue
                out.append({
                    "network": net["name"], "domain": domain, "category": cat,
                    "n": int(radii.size), "mean_radius": float(radii.mean()),
                    "auc": float("nan") if cat == "valid" else _auc(valid, radii),
                    "rejected": float(np.mean(radii < t)), "threshold": t,
                    "ms_per_radius": 1e3 * float(np.median(r["seconds"])),
                })
    return out


def section(table: list[dict[str, Any]]) -> list[str]:
    """The report's Markdown section (empty when no domains were compared)."""
    if not table:
        return []
    md = ["## Domains compared", "",
          "The first N inputs of each category scored under each domain. `rejected`: share "
          f"below the threshold that rejects {FALSE_ALARM:.0%} of these valid inputs (fitted "
          "on them); AUC: area under the ROC of a radius threshold against the valid inputs; "
          "ms: median thread-milliseconds per radius.", "",
          "| network | domain | category | N | mean radius | AUC | rejected | ms/radius |",
          "|---|---|---|---|---|---|---|---|"]
    for r in table:
        auc = "–" if np.isnan(r["auc"]) else f"{r['auc']:.3f}"
        md.append(f"| {r['network']} | {r['domain']} | {r['category']} | {r['n']} | "
                  f"{r['mean_radius']:.4f} | {auc} | {r['rejected']:.0%} | "
                  f"{r['ms_per_radius']:.1f} |")
    md += ["", *_findings(table), ""]
    return md


def _findings(table: list[dict[str, Any]]) -> list[str]:
    """Per network: is the tighter domain's detection better (mean AUC over the non-valid
    categories, and mean rejection at the threshold)?"""
    lines = []
    for net in dict.fromkeys(r["network"] for r in table):
        per = {}
        for domain in dict.fromkeys(r["domain"] for r in table if r["network"] == net):
            mine = [r for r in table if r["network"] == net and r["domain"] == domain]
            others = [r for r in mine if r["category"] != "valid"]
            valid = next(r for r in mine if r["category"] == "valid")
            per[domain] = (valid["mean_radius"], np.mean([r["auc"] for r in others]),
                           np.mean([r["rejected"] for r in others]), valid["ms_per_radius"])
        if len(per) < 2:
            continue
        tight = max(per, key=lambda d: per[d][0])
        best = max(per, key=lambda d: per[d][1])
        desc = "; ".join(f"{d}: valid mean radius {v[0]:.4f}, mean AUC {v[1]:.3f}, mean "
                         f"rejection {v[2]:.0%}, {v[3]:.1f} ms/radius" for d, v in per.items())
        verdict = ("the tighter domain also detects best" if tight == best else
                   f"the tighter domain ({tight}) does not detect best ({best} does)")
        lines.append(f"* {net}: {desc} — {verdict}.")
    return lines
