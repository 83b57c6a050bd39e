"""τ against false alarms for every network a study runs: the largest radius threshold (the
budget the threshold policy would guarantee with radii of the study's domain) that rejects at
most each share of the valid inputs. Writes ``budget.csv`` and ``budget.png``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from worker.guarantee import false_alarm_threshold

FALSE_ALARMS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2)
COLUMNS = ("network", "false_alarm", "tau", "n_valid")


def rows(valid_radii: Mapping[str, np.ndarray]) -> list[dict[str, Any]]:
    """One row per network (name -> its valid inputs' radii) and false-alarm share."""
    out = []
    for name, valid in valid_radii.items():
        if not len(valid):
            continue
        out += [{"network": name, "false_alarm": fa,
                 "tau": false_alarm_threshold(valid, fa), "n_valid": len(valid)}
                for fa in FALSE_ALARMS]
    return out


def figure(budget_rows: list[dict[str, Any]], path: Path) -> Path:
    """One curve per network: tau (y) against the false alarms it costs (x)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4.5))
    ax = fig.add_subplot()
    names = sorted({r["network"] for r in budget_rows})
    for name in names:
        pts = [(r["false_alarm"], r["tau"]) for r in budget_rows if r["network"] == name]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", lw=1,
                label=name if len(names) <= 12 else None)
    ax.set(xlabel="false alarms (valid inputs rejected)", ylabel="tau (guaranteed budget)",
           title="tau against false alarms", xscale="log")
    if len(names) <= 12:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def section(budget_rows: list[dict[str, Any]]) -> list[str]:
    """The report's lines: tau at 1, 3 and 5 % false alarms per network, and the figure."""
    if not budget_rows:
        return []
    tau = {(r["network"], r["false_alarm"]): r["tau"] for r in budget_rows}
    names = sorted({r["network"] for r in budget_rows})
    lines = ["## The guaranteed budget against false alarms", "",
             "Paper: no counterpart (it thresholds radii but states no guarantee).", "",
             "The threshold policy accepts an input only when its whole tau-ball is proved, so "
             "no adversarial example of budget <= tau made from a correctly classified input "
             "passes. tau is bought with false alarms (valid inputs rejected); from the "
             "study's radii (`budget.csv`, `budget.png`):", "",
             "| network | tau at 1 % | tau at 3 % | tau at 5 % |", "| --- | --- | --- | --- |"]
    lines += [f"| {n} | {tau[(n, 0.01)]:.4g} | {tau[(n, 0.03)]:.4g} | {tau[(n, 0.05)]:.4g} |"
              for n in names]
    return [*lines, "", "![tau against false alarms](budget.png)", ""]
