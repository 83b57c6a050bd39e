"""The study report from ``results.json``: Markdown, CSV tables and PNG figures.

Writes ``table1.csv``, ``table2.csv``, ``roc.csv``, ``auc.csv``, ``algorithm2.csv``,
``budget.csv`` (tau against false alarms), ``report.md`` and one set of PNGs per network. Every
section states the paper's finding and whether ours confirms or contradicts it.
``python -m study.report OUT`` rebuilds the report from ``OUT/results.json`` without
recomputing anything.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from study import budget_report, domains_report, paper
from worker.validate import DistributionValidator, normality_pvalue, replay

THRESHOLDS: tuple[float, ...] = tuple(round(0.002 * k, 3) for k in range(1, 9))
TABLE1_CATEGORIES = ("valid", "misclassified", "fgsm_0.1", "fgsm_0.05", "cw", "hop")
TABLE1_COLUMNS = ("network", "dataset", "activation", "accuracy", "valid", "mis", "fgsm_0.1",
                  "fgsm_0.05", "cw", "hop", "pvalue", "seconds_per_call")
PVALUE_N = 100
SIGMA1_GRID = (0.0, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)

# ----------------------------------------------------------------------------- analysis


def rejected(radii: Sequence[float] | np.ndarray, threshold: float) -> np.ndarray:
    """Reject iff radius < threshold (radii rounded to 1e-9: they lie on a decimal grid)."""
    return np.round(np.asarray(radii, dtype=np.float64), 9) < threshold


def roc_points(valid: Sequence[float], positive: Sequence[float]) -> list[tuple[float, ...]]:
    """(threshold, fpr, tpr) of "reject iff radius < t" over every distinct radius and one above
    them all; valid inputs are the negatives, the other category the positives."""
    v = np.sort(np.asarray(valid, dtype=np.float64))
    a = np.sort(np.asarray(positive, dtype=np.float64))
    ts = np.unique(np.concatenate([v, a]))
    ts = np.append(ts, np.nextafter(ts[-1], np.inf) if ts.size else 1.0)
    fpr = np.searchsorted(v, ts, side="left") / max(v.size, 1)
    tpr = np.searchsorted(a, ts, side="left") / max(a.size, 1)
    return [(float(t), float(f), float(p)) for t, f, p in zip(ts, fpr, tpr, strict=True)]


def auc_of(points: Sequence[tuple[float, ...]]) -> float:
    """Trapezoidal area under (fpr, tpr); ties between the classes count one half."""
    f = np.array([p[1] for p in points])
    t = np.array([p[2] for p in points])
    return float(np.trapezoid(t, f))


def pvalue(radii: Sequence[float]) -> float | None:
    """D'Agostino-Pearson p-value of the radii (None with fewer than 8 or all equal)."""
    r = np.asarray(radii, dtype=np.float64)
    if r.size < 8:
        return None
    p = normality_pvalue(r)
    return None if math.isnan(p) else p


def pooled(net: Mapping[str, Any], cat: str) -> np.ndarray:
    """Radii of a category's first and random selections, each source index once."""
    seen: set[int] = set()
    out = []
    for sel in ("first", "random"):
        s = net["sets"].get(cat, {}).get(sel)
        if not s:
            continue
        for i, r in zip(s["index"], s["radius"], strict=True):
            if int(i) not in seen:
                seen.add(int(i))
                out.append(float(r))
    return np.array(out, dtype=np.float64)


def first(net: Mapping[str, Any], cat: str, n: int | None = None) -> np.ndarray:
    """Radii of a category's first-N selection, or of its first `n` (empty if not run)."""
    s = net["sets"].get(cat, {}).get("first")
    r = np.asarray(s["radius"] if s else [], dtype=np.float64)
    return r if n is None else r[:n]


def detailed(results: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The networks studied in detail (Table II, ROC, figures, Algorithm 2 in the report)."""
    return [net for net in results["networks"] if net.get("detail", True)]


def seconds_per_call(net: Mapping[str, Any]) -> float:
    """Wall seconds per is_robust call (one DeepZono pass) over all radii of the network."""
    secs = calls = 0.0
    for sets in [*net["sets"].values(), {"seed": net.get("seed_window")}]:
        for s in sets.values():
            if s:
                secs += float(np.sum(s["seconds"]))
                calls += float(np.sum(s["calls"]))
    return secs / calls if calls else math.nan


def table1_rows(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One Table I row per network: accuracy, mean radius per category, p-value, time."""
    rows = []
    for net in results["networks"]:
        row: dict[str, Any] = {
            "network": net["name"], "dataset": net["dataset"], "activation": net["activation"],
            "accuracy": net["accuracy"],
        }
        n = net.get("n")
        for cat in TABLE1_CATEGORIES:
            r = first(net, cat, n)
            row["mis" if cat == "misclassified" else cat] = float(r.mean()) if r.size else None
        row["pvalue"] = pvalue(first(net, "valid")[:PVALUE_N])
        row["seconds_per_call"] = seconds_per_call(net)
        rows.append(row)
    order = {name: k for k, name in enumerate(paper.TABLE1)}
    return sorted(rows, key=lambda r: order.get(r["network"], len(order)))


def table2_rows(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Rejection rate per network, selection, category and threshold."""
    rows = []
    cats = results["config"]["categories"]
    for net in results["networks"]:
        for sel in net.get("selections", ("first", "random")):
            for cat in cats:
                s = net["sets"].get(cat, {}).get(sel)
                r = np.asarray(s["radius"] if s else [], dtype=np.float64)
                row: dict[str, Any] = {"network": net["name"], "selection": sel,
                                       "category": cat, "n": int(r.size),
                                       "detail": bool(net.get("detail", True))}
                for t in THRESHOLDS:
                    row[f"{t:.3f}"] = float(rejected(r, t).mean()) if r.size else None
                rows.append(row)
    return rows


def roc_tables(results: Mapping[str, Any]) -> tuple[list[dict], list[dict]]:
    """ROC points and AUC per network and attack (pooled first + random radii)."""
    points, aucs = [], []
    attacks = [c for c in results["config"]["categories"] if c != "valid"]
    for net in results["networks"]:
        valid = pooled(net, "valid")
        for cat in attacks:
            adv = pooled(net, cat)
            if not (valid.size and adv.size):
                continue
            pts = roc_points(valid, adv)
            for t, f, p in pts:
                points.append({"network": net["name"], "category": cat, "threshold": t,
                               "fpr": f, "tpr": p})
            aucs.append({"network": net["name"], "category": cat, "n_valid": int(valid.size),
                         "n_positive": int(adv.size), "auc": auc_of(pts)})
    return points, aucs


@dataclass(frozen=True)
class Alg2Outcome:
    """Algorithm 2 on one stream order: how many of each kind were accepted and rejected."""

    valid_rejected: int
    misclassified_accepted: int
    adversarial_accepted: int
    n_valid: int
    n_misclassified: int
    n_adversarial: int
    per_attack_accepted: dict[str, int]


def algorithm2_stream(
    net: Mapping[str, Any], cfg: Mapping[str, Any]
) -> tuple[list[float], list[str]]:
    """Section 6's stream: n_valid valid inputs and the misclassified among them in test order,
    then n_adversarial examples of each attack, attack by attack."""
    n_valid = int(cfg["n_valid"])
    v = net["sets"]["valid"]["first"]
    v_idx = np.asarray(v["index"][:n_valid], dtype=np.int64)
    items = [(int(i), float(r), "valid") for i, r in zip(v_idx, v["radius"][:n_valid],
                                                         strict=True)]
    m = net["sets"].get("misclassified", {}).get("first")
    if m and v_idx.size:
        items += [(int(i), float(r), "misclassified")
                  for i, r in zip(m["index"], m["radius"], strict=True) if i < v_idx.max()]
    items.sort()
    radii = [r for _, r, _ in items]
    kinds = [k for _, _, k in items]
    for cat, sets in net["sets"].items():
        if cat in ("valid", "misclassified"):
            continue
        r = list(sets["first"]["radius"][: int(cfg["n_adversarial"])])
        radii += [float(x) for x in r]
        kinds += [cat] * len(r)
    return radii, kinds


def run_algorithm2(
    validator: DistributionValidator, seed: Sequence[float], radii: Sequence[float],
    kinds: Sequence[str],
) -> Alg2Outcome:
    """Replay the stream from the seed window and count the wrong decisions."""
    decisions, _ = replay(validator, validator.initial_state(seed), radii)
    accept = [d.verdict == "accept" for d in decisions]
    per: dict[str, int] = {}
    for k, a in zip(kinds, accept, strict=True):
        if k not in ("valid", "misclassified"):
            per[k] = per.get(k, 0) + int(a)
    return Alg2Outcome(
        valid_rejected=sum(not a for k, a in zip(kinds, accept, strict=True) if k == "valid"),
        misclassified_accepted=sum(a for k, a in zip(kinds, accept, strict=True)
                                   if k == "misclassified"),
        adversarial_accepted=sum(per.values()),
        n_valid=kinds.count("valid"),
        n_misclassified=kinds.count("misclassified"),
        n_adversarial=sum(k not in ("valid", "misclassified") for k in kinds),
        per_attack_accepted=per,
    )


def calibrated_sigmas(
    valid: np.ndarray, seed: Sequence[float], s: int, max_false_alarm: float
) -> tuple[float, float]:
    """sigma0: the max_false_alarm quantile threshold of valid radii; sigma1: the smallest grid
    value with which Algorithm 2, from the seed window, rejects at most that share of them."""
    r = np.sort(np.asarray(valid, dtype=np.float64))
    k = int(math.floor(max_false_alarm * r.size))
    while k > 0 and k / r.size > max_false_alarm:
        k -= 1
    sigma0 = float(r[min(k, r.size - 1)])
    best = (math.inf, SIGMA1_GRID[-1])
    for s1 in SIGMA1_GRID:
        v = DistributionValidator(sigma0, s1, s)
        decisions, _ = replay(v, v.initial_state(seed), list(valid))
        fa = sum(d.verdict == "reject" for d in decisions) / max(len(valid), 1)
        if fa < best[0]:
            best = (fa, s1)
        if fa <= max_false_alarm:
            return sigma0, s1
    return sigma0, best[1]


def algorithm2_rows(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Algorithm 2 in sequence and shuffled, with the paper's and calibrated sigmas."""
    cfg = results["config"]["algorithm2"]
    base_seed = int(results["config"].get("seed", 0))
    rows = []
    for net in detailed(results):
        seed = [float(r) for r in net["seed_window"]["radius"]]
        s = int(cfg["s"])
        if len(seed) < s:
            continue
        radii, kinds = algorithm2_stream(net, cfg)
        settings = [("paper", float(cfg["sigma0"]), float(cfg["sigma1"]))]
        if cfg.get("calibrated", True):
            pool = np.concatenate([pooled(net, "valid"), np.asarray(seed)])
            stream_valid = {int(i) for i in net["sets"]["valid"]["first"]["index"]}
            rnd = net["sets"]["valid"].get("random") or {"index": [], "radius": []}
            cal = [float(r) for i, r in zip(rnd["index"], rnd["radius"], strict=True)
                   if int(i) not in stream_valid] + seed
            pool = np.asarray(cal) if len(cal) >= 8 else pool
            s0, s1 = calibrated_sigmas(pool, seed, s, float(cfg.get("max_false_alarm", 0.03)))
            settings.append(("calibrated", s0, s1))
        for name, s0, s1 in settings:
            v = DistributionValidator(s0, s1, s)
            orders = [("sequence", list(range(len(radii))))]
            for k in range(int(cfg["shuffles"])):
                perm = np.random.default_rng([base_seed, 1000 + k]).permutation(len(radii))
                orders.append((f"shuffle-{k}", perm.tolist()))
            for order_name, order in orders:
                o = run_algorithm2(v, seed, [radii[i] for i in order], [kinds[i] for i in order])
                rows.append({
                    "network": net["name"], "sigmas": name, "sigma0": s0, "sigma1": s1, "s": s,
                    "order": order_name, "n_valid": o.n_valid,
                    "n_misclassified": o.n_misclassified, "n_adversarial": o.n_adversarial,
                    "valid_rejected": o.valid_rejected,
                    "misclassified_accepted": o.misclassified_accepted,
                    "adversarial_accepted": o.adversarial_accepted,
                    **{f"accepted_{k}": n for k, n in o.per_attack_accepted.items()},
                })
    return rows


# ----------------------------------------------------------------------------- output


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _pct(v: float | None, sign: bool = True) -> str:
    return "–" if v is None else f"{100 * v:.0f}" + ("%" if sign else "")


def write_csv(path: Path, rows: list[dict[str, Any]], columns: Sequence[str] | None = None):
    cols = list(columns or (rows[0].keys() if rows else []))
    for row in rows:
        cols += [k for k in row if k not in cols]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for row in rows:
            w.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in cols})


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _verdict(ok: bool) -> str:
    return "**confirms**" if ok else "**contradicts**"


def write_report(results: Mapping[str, Any], out: str | Path) -> Path:
    """Write every table, figure and report.md into `out`; returns the report's path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t1 = table1_rows(results)
    t2 = table2_rows(results)
    roc, aucs = roc_tables(results)
    alg2 = algorithm2_rows(results)
    write_csv(out / "table1.csv", t1, TABLE1_COLUMNS)
    write_csv(out / "table2.csv", t2)
    write_csv(out / "roc.csv", roc, ("network", "category", "threshold", "fpr", "tpr"))
    write_csv(out / "auc.csv", aucs, ("network", "category", "n_valid", "n_positive", "auc"))
    write_csv(out / "algorithm2.csv", alg2)
    domain_rows = domains_report.rows(results)
    if domain_rows:
        write_csv(out / "domains.csv", domain_rows, domains_report.COLUMNS)
    budget = budget_report.rows({n["name"]: pooled(n, "valid") for n in results["networks"]})
    if budget:
        write_csv(out / "budget.csv", budget, budget_report.COLUMNS)
        budget_report.figure(budget, out / "budget.png")
    figures = write_figures(results, roc, out)
    text = render(results, t1, t2, aucs, alg2, figures, budget)
    path = out / "report.md"
    path.write_text(text)
    return path


def render(
    results: Mapping[str, Any], t1: list[dict], t2: list[dict], aucs: list[dict],
    alg2: list[dict], figures: Mapping[str, list[str]], budget: list[dict] | None = None,
) -> str:
    """The Markdown report."""
    cfg = results["config"]
    cats = cfg["categories"]
    md: list[str] = [
        "# Input validation by certified robustness radius: study report", "",
        f"Config `{cfg['source']}`; data: {results['dataset']}; radius search "
        f"`{cfg['search']}` on [0, {cfg['up']}] with tolerance {cfg['tol']}; {cfg['jobs']} "
        f"radius threads; this run took {results['seconds']:.0f} s (cached steps are not "
        "recomputed).", "",
        "Per network, the first N inputs of each category (and, where listed, a random N, "
        f"seed {cfg['seed']}) and the first N_valid valid inputs:", "",
        _md_table(["network", "N", "N_valid", "selections", "in detail"],
                  [[n["name"], str(n.get("n", cfg["n"])), str(n.get("valid_n", cfg["n"])),
                    "/".join(n.get("selections", ["first", "random"])),
                    "yes" if n.get("detail", True) else "Table I only"]
                   for n in results["networks"]]), "",
        "Categories: valid (correctly classified test inputs), misclassified, and adversarial "
        "examples made by ART on the deployed ONNX model from correctly classified inputs, kept "
        "only when our float64 network misclassifies them. Attack parameters:", "",
    ]
    for name, p in cfg["attacks"].items():
        md.append(f"* `{name}`: " + ", ".join(f"{k}={v}" for k, v in p.items()))
    md += ["", "Attack success (first-N sources):", ""]
    rows = []
    for net in results["networks"]:
        att = net.get("attacks", {})
        cells = []
        for name in cfg["attacks"]:
            f = att.get(name, {}).get("first", {})
            cells.append(f"{f['succeeded']}/{f['tried']} in {f['seconds']:.1f} s" if f else "–")
        rows.append([net["name"], *cells])
    md += [_md_table(["network", *cfg["attacks"]], rows), ""]
    md += [*_section_table1(t1, cats), *_section_pvalue(t1), *_section_table2(t2, cats),
           *_section_roc(aucs, figures, {n["name"] for n in detailed(results)}),
           *_section_counts(results, figures),
           *_section_hist(results, figures), *_section_exact(results, figures),
           *_section_alg2(alg2, cfg), *_section_time(t1),
           *domains_report.section(domains_report.rows(results)),
           *budget_report.section(budget or [])]
    return "\n".join(md) + "\n"


def _ours(items: Sequence[tuple[str, bool, str]], criterion: str, noun: str = "networks") -> str:
    """One explicit verdict per network (or other item), with the criterion it was judged by."""
    if not items:
        return "Ours: no network had enough data to judge."
    parts = [f"`{n}` {_verdict(ok)}" + (f" ({d})" if d else "") for n, ok, d in items]
    n_ok = sum(ok for _, ok, _ in items)
    return (f"Ours, judged by {criterion}: " + "; ".join(parts)
            + f". Confirmed on {n_ok} of {len(items)} {noun}.")


def _with_paper(ours: Any, theirs: float | None, digits: int = 4) -> str:
    cell = _fmt(ours, digits)
    return cell if theirs is None else f"{cell} ({_fmt(theirs, digits)})"


def _section_table1(t1: list[dict], cats: Sequence[str]) -> list[str]:
    cols = [c for c in TABLE1_CATEGORIES if c in cats]
    key = {c: ("mis" if c == "misclassified" else c) for c in cols}
    header = ["network", "activation", "accuracy", *cols]
    rows, verdicts = [], []
    for row in t1:
        theirs = paper.TABLE1.get(row["network"], {})
        cells = [row["network"], row["activation"],
                 _with_paper(row["accuracy"], theirs.get("accuracy"))]
        bad = []
        for c in cols:
            v = row[key[c]]
            cells.append(_with_paper(v, theirs.get(c)))
            if c != "valid" and v is not None and row["valid"] is not None and v >= row["valid"]:
                bad.append(c)
        rows.append(cells)
        others = [row[key[c]] for c in cols if c != "valid" and row[key[c]] is not None]
        detail = (f"valid {_fmt(row['valid'])} vs at most {max(others):.4f}" if others and not bad
                  else f"not larger than {', '.join(bad)}" if bad else "")
        verdicts.append((row["network"], not bad, detail))
    ratios = [row["valid"] / max(row[key[c]] for c in cols if c != "valid")
              for row in t1 if row["valid"] is not None
              and all(row[key[c]] for c in cols if c != "valid")]
    summary = (f" Across networks, the mean valid radius is {min(ratios):.1f}–{max(ratios):.1f}× "
               f"the largest other category's mean (median {float(np.median(ratios)):.1f}×)."
               if ratios else "")
    return [
        "## Table I: mean certified radius per category", "",
        "Mean radius of the first N inputs of each category (N per network as listed above); "
        "the paper's value in brackets where it has the same network (its means are over the "
        "first 10 inputs). Rows in the paper's order.", "",
        _md_table(header, rows), "",
        "Paper: valid inputs have clearly larger radii than misclassified inputs and "
        "adversarial examples, on every network. "
        + _ours(verdicts, "whether the mean valid radius exceeds every other category's mean")
        + summary,
        "Absolute values differ from the paper's where our independently trained networks "
        "differ from its networks.", "",
    ]


def _section_pvalue(t1: list[dict]) -> list[str]:
    rows = [[r["network"], _fmt_p(r["pvalue"]),
             _fmt_p(paper.TABLE1.get(r["network"], {}).get("pvalue"))] for r in t1]
    lines = ["## Normality of valid radii (Table I, p-value)", "",
             _md_table(["network", f"p-value (first ≤{PVALUE_N} valid radii)", "paper"], rows),
             ""]
    items = [(r["network"], r["pvalue"] >= 0.05, f"p = {_fmt_p(r['pvalue'])}")
             for r in t1 if r["pvalue"] is not None]
    both = [(r["pvalue"], paper.TABLE1[r["network"]]["pvalue"]) for r in t1
            if r["pvalue"] is not None and r["network"] in paper.TABLE1]
    tally = ""
    if both:
        tally = (f" On the {len(both)} networks the paper also has, normality is not rejected "
                 f"for {sum(p >= 0.05 for p, _ in both)} by ours and for "
                 f"{sum(q >= 0.05 for _, q in both)} by the paper's table.")
    lines.append(
        "Paper: the radii of valid inputs of most networks are close to normally distributed "
        "(Algorithm 2 rests on this), judged by the D'Agostino–Pearson test on the first 100 "
        "valid radii. "
        + _ours(items, "whether the test does not reject normality at the 5% level") + tally
    )
    return [*lines, ""]


def _fmt_p(p: float | None) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "–"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _section_table2(t2: list[dict], cats: Sequence[str]) -> list[str]:
    lines = ["## Table II: rejection rates by threshold", "",
             "An input is rejected iff its radius is below the threshold. Networks studied in "
             "detail here; `table2.csv` has every network.", ""]
    nets = list(dict.fromkeys(r["network"] for r in t2 if r["detail"]))
    for net in nets:
        by = {(r["selection"], r["category"]): r for r in t2 if r["network"] == net}
        sels = [s for s in ("first", "random") if any(k[0] == s for k in by)]
        shown = [c for c in cats if ("first", c) in by]
        rows = []
        for t in THRESHOLDS:
            cells = [f"{t:.3f}"]
            for c in shown:
                ours = "/".join(_pct(by[(s, c)][f"{t:.3f}"], sign=False) for s in sels)
                if net == paper.TABLE2_NETWORK:
                    theirs = "/".join(_pct(paper.table2_rate(t, c, s), sign=False) for s in sels)
                    ours += f" ({theirs})"
                cells.append(ours)
            rows.append(cells)
        ns = ", ".join(f"{c} {'/'.join(str(by[(s, c)]['n']) for s in sels)}" for c in shown)
        note = (" The paper's Table II in brackets (same network architecture)."
                if net == paper.TABLE2_NETWORK else "")
        lines += [f"`{net}`: percent rejected, {'/'.join(sels)} selection (n: {ns}).{note}", "",
                  _md_table(["threshold", *shown], rows), ""]
    items = []
    for net in nets:
        by_cat = {r["category"]: r for r in t2 if r["network"] == net
                  and r["selection"] == "first"}
        best = None
        for t in THRESHOLDS:
            v = by_cat["valid"][f"{t:.3f}"]
            others = [by_cat[c][f"{t:.3f}"] for c in cats
                      if c not in ("valid", "misclassified") and by_cat[c]["n"]]
            if v is not None and v <= 0.05 and others:
                best = (t, v, min(others))
        if best is None:
            items.append((net, False, "no threshold rejects ≤5% of valid inputs"))
        else:
            items.append((net, best[2] >= 0.9,
                          f"at {best[0]:.3f}, {_pct(best[1])} valid and ≥{_pct(best[2])} of "
                          "every attack rejected"))
    lines += _table2_at_paper_threshold(t2, cats)
    lines.append(
        "Paper: one threshold rejects few valid inputs and almost all adversarial ones (CNN "
        "at 0.010: 3% valid, 75% misclassified, 95–100% per attack). "
        + _ours(items, "whether the largest threshold rejecting ≤5% of valid inputs (first N) "
                "rejects ≥90% of every attack")
    )
    return [*lines, ""]


def _table2_at_paper_threshold(t2: list[dict], cats: Sequence[str]) -> list[str]:
    """CNN-MNIST at the paper's threshold 0.010: ours beside the paper's, with a verdict."""
    t = 0.010
    ours = {(r["selection"], r["category"]): r[f"{t:.3f}"] for r in t2
            if r["network"] == paper.TABLE2_NETWORK}
    if not ours:
        return []
    sels = [s for s in ("first", "random") if (s, "valid") in ours]
    shown = [c for c in cats if c in paper.TABLE2_CATEGORIES and ("first", c) in ours]
    rows = [[f"ours ({s})", *[_pct(ours[(s, c)]) for c in shown]] for s in sels]
    rows += [[f"paper ({s})", *[_pct(paper.table2_rate(t, c, s)) for c in shown]] for s in sels]
    attacks = [c for c in shown if c not in ("valid", "misclassified")]
    items = []
    for s in sels:
        v = ours[(s, "valid")]
        worst = min((ours[(s, c)] for c in attacks if ours[(s, c)] is not None), default=None)
        if v is None or worst is None:
            continue
        items.append((f"{paper.TABLE2_NETWORK} ({s})", v <= 0.05 and worst >= 0.9,
                      f"{_pct(v)} valid, {_pct(ours[(s, 'misclassified')])} misclassified, "
                      f"≥{_pct(worst)} of every attack rejected"))
    return [f"At the paper's threshold {t:.3f} on `{paper.TABLE2_NETWORK}`:", "",
            _md_table(["", *shown], rows), "",
            "Paper: at 0.010 the CNN rejects 3% of valid inputs, 75% of misclassified ones, "
            "95% of FGSM 0.1 and 100% of FGSM 0.05, C&W and HopSkipJump examples. "
            + _ours(items, "at most 5% of valid inputs and at least 90% of every attack "
                    "rejected at 0.010", noun="selections"), ""]


def _section_roc(
    aucs: list[dict], figures: Mapping[str, list[str]], names: set[str]
) -> list[str]:
    lines = ["## ROC curves (valid = negatives, each other category = positives; "
             "score = −radius)", "",
             "Radii of the first and random selections pooled, each source input once. "
             "Networks studied in detail here; `auc.csv` and `roc.csv` have every network.", "",
             _md_table(["network", "category", "n valid", "n positive", "AUC"],
                       [[a["network"], a["category"], str(a["n_valid"]), str(a["n_positive"]),
                         f"{a['auc']:.4f}"] for a in aucs if a["network"] in names]), ""]
    lines += [f"![ROC]({p})" for p in figures.get("roc", [])]
    items = []
    for net in dict.fromkeys(a["network"] for a in aucs if a["network"] in names):
        att = [a for a in aucs if a["network"] == net and a["category"] != "misclassified"]
        if att:
            worst = min(att, key=lambda a: a["auc"])
            items.append((net, worst["auc"] >= 0.9,
                          f"lowest AUC {worst['auc']:.3f} ({worst['category']})"))
    lines += ["", "Paper: the radius separates valid inputs from adversarial examples (high "
              "rejection of attacks at low false alarm). "
              + _ours(items, "whether every attack's AUC is at least 0.9"), ""]
    return lines


def _section_counts(results: Mapping[str, Any], figures: Mapping[str, list[str]]) -> list[str]:
    lines = ["## Inputs with radius above a threshold", ""]
    lines += [f"![counts]({p})" for p in figures.get("counts", [])]
    items = []
    t = 0.010
    for net in detailed(results):
        v = first(net, "valid")
        advs = {c: first(net, c) for c in results["config"]["categories"]
                if c not in ("valid", "misclassified")}
        advs = {c: a for c, a in advs.items() if a.size}
        if v.size and advs:
            above_v = float((~rejected(v, t)).mean())
            c_max = max(advs, key=lambda c: (~rejected(advs[c], t)).mean())
            above_a = float((~rejected(advs[c_max], t)).mean())
            items.append((net["name"], above_v > above_a,
                          f"{_pct(above_v)} of valid vs at most {_pct(above_a)} ({c_max})"))
    lines += ["", "Paper: as the threshold grows, the count of adversarial inputs above it "
              "falls to zero much sooner than the count of valid inputs. "
              + _ours(items, "whether, at 0.010, a larger share of valid inputs than of any "
                      "attack's lies above the threshold"), ""]
    return lines


def _section_hist(results: Mapping[str, Any], figures: Mapping[str, list[str]]) -> list[str]:
    lines = ["## Distribution of radii (Figure 8)", ""]
    lines += [f"![histogram]({p})" for p in figures.get("hist", [])]
    rows, items = [], []
    for net in detailed(results):
        v = pooled(net, "valid")
        if v.size < 3:
            continue
        skew = float(((v - v.mean()) ** 3).mean() / max(v.std(), 1e-12) ** 3)
        rows.append([net["name"], str(v.size), f"{v.mean():.4f}", f"{np.median(v):.4f}",
                     f"{v.std():.4f}", f"{skew:.2f}"])
        items.append((net["name"], abs(skew) < 1.0, f"skewness {skew:.2f}"))
    lines += ["", _md_table(["network", "n valid", "mean", "median", "std", "skewness"], rows),
              "", "Paper: the valid radii form a single bell-shaped cluster, adversarial radii "
              "pile up near zero. "
              + _ours(items, "|skewness| < 1 for the valid radii; the p-values above are the "
                      "formal test"), ""]
    return lines


def _section_exact(results: Mapping[str, Any], figures: Mapping[str, list[str]]) -> list[str]:
    lines = ["## Exact vs approximate radius (Figures 2 and 3)", ""]
    notes = [f"* `{n['name']}`: {n['exact_note']}" for n in detailed(results)
             if n.get("exact_note")]
    rows, items = [], []
    for net in detailed(results):
        ex = net.get("exact")
        if not ex:
            continue
        all_e, all_a, all_m, all_t = [], [], [], []
        for cat, v in ex.items():
            e, a = np.asarray(v["exact"], float), np.asarray(v["approx"], float)
            st = np.asarray(v["status"])
            m, t = st == "optimal", st == "time_limit"
            pos = m & (e > 0) & (a > 0)
            ratios = a[pos] / e[pos]
            rows.append([
                net["name"], cat, f"{int(m.sum())}/{m.size}",
                f"{ratios.min():.0%}–{ratios.max():.0%}" if ratios.size else "–",
                f"{np.median(ratios):.0%}" if ratios.size else "–",
                (f"{int(t.sum())}: exact in [{_fmt(float(np.median(a[t])))}, "
                 f"{_fmt(float(np.median(e[t])))}] (medians)") if t.any() else "–",
            ])
            all_e.append(e), all_a.append(a), all_m.append(m), all_t.append(t)
        e, a = np.concatenate(all_e), np.concatenate(all_a)
        m, t = np.concatenate(all_m), np.concatenate(all_t)
        # Sound: below every optimum, and below every adversarial distance found in time.
        sound = bool(np.all(a[m | t] <= e[m | t] + 1e-9))
        pos = m & (e > 0)
        if pos.sum() < 2:
            notes.append(f"* `{net['name']}`: fewer than 2 inputs solved to optimality")
            continue
        corr = float(np.corrcoef(a[pos], e[pos])[0, 1]) if np.std(a[pos]) > 0 else math.nan
        nonzero = pos & (a > 0)
        ratios = a[nonzero] / e[nonzero]
        items.append((net["name"], sound and corr >= 0.8,
                      f"{'sound' if sound else 'UNSOUND'}, Pearson r = {corr:.3f} over "
                      f"{int(pos.sum())} solved inputs, approx/exact {ratios.min():.0%}–"
                      f"{ratios.max():.0%}"))
    lines += notes
    paper = ("Paper: the approximate (DeepZono) radius is a lower bound of the exact one and "
             "tracks it closely, so it can stand in for it (on FNN-MNIST its nonzero "
             "approximate radii are 44–100% of the exact ones).")
    if not items:
        return [*lines, "", paper + " No exact radii solved in this run, so this finding is "
                "not reproduced here.", ""]
    lines += [f"![exact]({p})" for p in figures.get("exact", [])]
    lines += ["", _md_table(["network", "category", "solved (optimal)",
                             "approx/exact (solved, approx > 0)", "median",
                             "time limit: bracket"], rows), "",
              "Exact radii come from verifier.exact (MILP, per-input time limit "
              f"{results['config'].get('exact_time_limit')} s). Where the time limit is hit, the "
              "exact radius lies between the certified radius (a proven lower bound) and the "
              "closest adversarial point the solver found (an upper bound); those inputs are "
              "drawn as bars and left out of the ratios.", "",
              paper + " " + _ours(items, "approx ≤ exact on every solved input (and ≤ the "
                                  "upper bound on the others) and Pearson r ≥ 0.8"), ""]
    return lines


def _section_alg2(alg2: list[dict], cfg: Mapping[str, Any]) -> list[str]:
    a = cfg["algorithm2"]
    lines = ["## Algorithm 2 (Section 6)", "",
             f"Stream: the first {a['n_valid']} valid test inputs with the misclassified ones "
             f"among them (test order), then {a['n_adversarial']} examples per attack, attack by "
             f"attack; shuffled {a['shuffles']} times (fixed seeds). Window s = {a['s']}, seeded "
             f"with radii of {a['s']} other valid inputs. Sigmas: `paper` = σ0 {a['sigma0']}, "
             f"σ1 {a['sigma1']} as in the paper; `calibrated` = σ0 is the "
             f"{a.get('max_false_alarm', 0.03):.0%}-false-alarm threshold of valid radii outside "
             "the stream and σ1 the smallest grid value keeping Algorithm 2's false alarm on "
             "them within that share.", ""]
    if not alg2:
        return [*lines, "Not run: too few valid radii for the seed window.", ""]
    rows, seq_items, shuf_items = [], [], []
    for net in dict.fromkeys(r["network"] for r in alg2):
        for sig in dict.fromkeys(r["sigmas"] for r in alg2 if r["network"] == net):
            rs = [r for r in alg2 if r["network"] == net and r["sigmas"] == sig]
            seq = next(r for r in rs if r["order"] == "sequence")
            sh = [r for r in rs if r["order"] != "sequence"]
            sv = float(np.mean([r["valid_rejected"] for r in sh])) if sh else math.nan
            sa = float(np.mean([r["adversarial_accepted"] + r["misclassified_accepted"]
                                for r in sh])) if sh else math.nan
            wrong = seq["adversarial_accepted"] + seq["misclassified_accepted"]
            rows.append([net, sig, f"{seq['sigma0']:.4f}", f"{seq['sigma1']:.4g}",
                         f"{seq['n_valid']}/{seq['n_misclassified']}/{seq['n_adversarial']}",
                         str(seq["valid_rejected"]), str(wrong), f"{sv:.1f}", f"{sa:.1f}"])
            if sig == "paper":
                seq_items.append((net, seq["adversarial_accepted"] == 0
                                  and seq["valid_rejected"] <= 0.1 * seq["n_valid"],
                                  f"{seq['adversarial_accepted']} adversarial accepted, "
                                  f"{seq['valid_rejected']}/{seq['n_valid']} valid rejected"))
                shuf_items.append((net, sa > wrong,
                                   f"{sa:.1f} invalid accepted shuffled vs {wrong} in sequence"))
    pa = paper.ALGORITHM2
    rows.append([f"paper: {paper.TABLE2_NETWORK}", "paper", "0.0140", "0.001", "100/1/400",
                 str(pa["sequence_valid_rejected"]), str(pa["sequence_adversarial_accepted"]),
                 f"{pa['shuffled_valid_rejected']:.1f}",
                 f"{pa['shuffled_adversarial_accepted']:.1f}"])
    lines += [_md_table(["network", "sigmas", "σ0", "σ1", "valid/mis/adv",
                         "seq: valid rejected", "seq: mis+adv accepted",
                         "shuffled: valid rejected (mean)", "shuffled: mis+adv accepted (mean)"],
                        rows), ""]
    lines += [
        "Paper (100 valid + 1 misclassified + 400 adversarial, σ0 0.014, σ1 0.001): in sequence "
        "all adversarial inputs are rejected with 3 valid rejected. "
        + _ours(seq_items, "the paper's sigmas in sequence: no adversarial input accepted and "
                "≤10% of valid inputs rejected"), "",
        "Paper: shuffled, on average 5 valid and 28 adversarial inputs are handled wrongly, "
        "more than in sequence. "
        + _ours(shuf_items, "the paper's sigmas: more invalid inputs accepted on average "
                "shuffled than in sequence"),
    ]
    return [*lines, ""]


def _section_time(t1: list[dict]) -> list[str]:
    rows = []
    for r in t1:
        theirs = paper.TABLE1.get(r["network"], {}).get("seconds_per_call")
        rows.append([r["network"], f"{1000 * r['seconds_per_call']:.2f}",
                     "–" if theirs is None else f"{1000 * theirs:.0f}"])
    items = [(r["network"], r["seconds_per_call"] < 1.0,
              f"{1000 * r['seconds_per_call']:.1f} ms") for r in t1]
    return ["## Time per is_robust call", "",
            _md_table(["network", "ms per call (wall time per radius thread)",
                       "paper (ms, ERAN)"], rows), "",
            "Paper: one is_robust call is cheap enough to validate inputs at run time. "
            + _ours(items, "under one second per call (a radius takes a handful of calls)"),
            ""]


# ----------------------------------------------------------------------------- figures


def write_figures(
    results: Mapping[str, Any], roc: list[dict], out: Path
) -> dict[str, list[str]]:
    """ROC, counts-above-threshold, histogram and exact-vs-approximate PNGs per network."""
    from matplotlib.figure import Figure

    files: dict[str, list[str]] = {"roc": [], "counts": [], "hist": [], "exact": []}
    cats = results["config"]["categories"]
    for net in detailed(results):
        name = net["name"]
        fig = Figure(figsize=(5, 4.5))
        ax = fig.add_subplot()
        for cat in cats[1:]:
            pts = [r for r in roc if r["network"] == name and r["category"] == cat]
            if pts:
                auc = auc_of([(p["threshold"], p["fpr"], p["tpr"]) for p in pts])
                ax.plot([p["fpr"] for p in pts], [p["tpr"] for p in pts],
                        label=f"{cat} (AUC {auc:.3f})")
        ax.plot([0, 1], [0, 1], color="grey", lw=0.5, ls="--")
        ax.set(xlabel="valid rejected (FPR)", ylabel="rejected (TPR)", title=f"ROC: {name}")
        _legend(ax, loc="lower right")
        files["roc"].append(_save(fig, out / f"roc_{name}.png"))

        fig = Figure(figsize=(6, 4))
        ax = fig.add_subplot()
        ts = np.linspace(0, 0.04, 81)
        for cat in cats:
            r = first(net, cat)
            if r.size:
                ax.plot(ts, [(~rejected(r, t)).sum() for t in ts], label=f"{cat} (n={r.size})")
        for t in THRESHOLDS:
            ax.axvline(t, color="grey", lw=0.3)
        ax.set(xlabel="threshold", ylabel="inputs with radius ≥ threshold",
               title=f"Counts above threshold: {name} (first N)")
        _legend(ax)
        files["counts"].append(_save(fig, out / f"counts_{name}.png"))

        fig = Figure(figsize=(6, 4))
        ax = fig.add_subplot()
        allr = np.concatenate([pooled(net, c) for c in cats])
        bins = np.linspace(0, max(float(allr.max()) if allr.size else 0.05, 0.01) * 1.05, 40)
        for cat in cats:
            r = pooled(net, cat)
            if r.size:
                ax.hist(r, bins=bins, histtype="step", label=cat, lw=1.5 if cat == "valid" else 1)
        ax.set(xlabel="certified radius", ylabel="inputs", title=f"Radii: {name}")
        _legend(ax)
        files["hist"].append(_save(fig, out / f"hist_{name}.png"))

        ex = net.get("exact")
        if ex:
            fig = Figure(figsize=(5, 5))
            ax = fig.add_subplot()
            hi = 0.0
            for k, (cat, v) in enumerate(ex.items()):
                st = np.asarray(v["status"])
                e, a = np.asarray(v["exact"], float), np.asarray(v["approx"], float)
                m, t = st == "optimal", st == "time_limit"
                color = f"C{k}"
                if m.any():
                    ax.scatter(e[m], a[m], s=10, color=color, label=cat)
                if t.any():  # exact in [approx, found]: a horizontal bar at height approx
                    ax.hlines(a[t], a[t], e[t], color=color, lw=1, alpha=0.7,
                              label=f"{cat}, time limit (bracket)")
                if e.size:
                    hi = max(hi, float(e.max()), float(a.max()))
            ax.plot([0, hi], [0, hi], color="grey", lw=0.5, ls="--")
            ax.set(xlabel="exact radius (MILP)", ylabel="approximate radius (DeepZono)",
                   title=f"Exact vs approximate: {name}")
            _legend(ax)
            files["exact"].append(_save(fig, out / f"exact_{name}.png"))

            fig = Figure(figsize=(6, 4))
            ax = fig.add_subplot()
            ts = np.linspace(0, max(hi, 0.01) * 1.05, 81)
            for cat, v in ex.items():
                e = np.asarray(v["exact"])[np.asarray(v["status"]) == "optimal"]
                if e.size:
                    ax.plot(ts, [(e >= t).sum() for t in ts], label=f"{cat} (n={e.size})")
            ax.set(xlabel="threshold", ylabel="inputs with exact radius ≥ threshold",
                   title=f"Counts above threshold, exact radii: {name}")
            _legend(ax)
            files["exact"].append(_save(fig, out / f"exact_counts_{name}.png"))
    return files


def _legend(ax, loc: str = "best") -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc=loc)


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path.name


def main(argv: list[str] | None = None) -> int:
    """Rebuild the report of a study directory from its results.json."""
    ap = argparse.ArgumentParser(prog="python -m study.report", description=__doc__)
    ap.add_argument("out", type=Path, help="study output directory (holds results.json)")
    args = ap.parse_args(argv)
    results = json.loads((args.out / "results.json").read_text())
    print(write_report(results, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
