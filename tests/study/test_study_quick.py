"""`make study-quick` end to end: the shipped quick config through the CLI, into a temporary
directory, and its report checked -- tables complete, numbers finite, figures present, every
AUC recomputed from the ROC points, every finding given a verdict."""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("art")
pytest.importorskip("onnx2torch")
pytest.importorskip("matplotlib")

from study.report import TABLE1_COLUMNS, THRESHOLDS  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
NETWORKS = ("fnn-3x30-relu", "cnn-6-16-128-relu")
CATEGORIES = ("valid", "misclassified", "fgsm_0.1", "fgsm_0.05", "cw", "hop")


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("quick")
    proc = subprocess.run(
        [sys.executable, "-m", "worker.cli", "study", "--config",
         str(ROOT / "study" / "configs" / "quick.toml"), "--out", str(out)],
        capture_output=True, text=True, timeout=1200, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith("report.md")
    return out


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_table1_has_every_network_and_category(quick: Path) -> None:
    rows = {r["network"]: r for r in _rows(quick / "table1.csv")}
    assert tuple(rows) == NETWORKS
    for row in rows.values():
        assert list(row) == list(TABLE1_COLUMNS)
        for col in TABLE1_COLUMNS[3:]:
            assert math.isfinite(float(row[col])), (row["network"], col)
        assert float(row["valid"]) > max(float(row[c]) for c in ("mis", "fgsm_0.1", "cw", "hop"))


def test_table2_rates_are_complete_and_monotone(quick: Path) -> None:
    rows = _rows(quick / "table2.csv")
    got = {(r["network"], r["selection"], r["category"]) for r in rows}
    assert got == {(n, s, c) for n in NETWORKS for s in ("first", "random") for c in CATEGORIES}
    for r in rows:
        rates = [float(r[f"{t:.3f}"]) for t in THRESHOLDS]
        assert rates == sorted(rates) and 0 <= rates[0] and rates[-1] <= 1


def test_auc_is_computed_from_the_roc_points(quick: Path) -> None:
    points = _rows(quick / "roc.csv")
    aucs = _rows(quick / "auc.csv")
    assert {(a["network"], a["category"]) for a in aucs} == {
        (n, c) for n in NETWORKS for c in CATEGORIES[1:]}
    for a in aucs:
        pts = [p for p in points if (p["network"], p["category"]) == (a["network"], a["category"])]
        f = np.array([float(p["fpr"]) for p in pts])
        t = np.array([float(p["tpr"]) for p in pts])
        assert (f[0], t[0], f[-1], t[-1]) == (0, 0, 1, 1)
        assert float(np.trapezoid(t, f)) == pytest.approx(float(a["auc"]), abs=1e-12)
        assert 0.5 < float(a["auc"]) <= 1.0


def test_figures_exist_and_the_report_gives_verdicts(quick: Path) -> None:
    for net in NETWORKS:
        for kind in ("roc", "counts", "hist"):
            assert (quick / f"{kind}_{net}.png").stat().st_size > 5000, (kind, net)
    assert (quick / "exact_fnn-3x30-relu.png").is_file()
    report = (quick / "report.md").read_text()
    for heading in ("Table I", "Table II", "ROC", "Algorithm 2", "Exact vs approximate"):
        assert f"## {heading}" in report
    assert "At the paper's threshold 0.010 on `cnn-6-16-128-relu`" in report
    assert report.count("**confirms**") + report.count("**contradicts**") >= 10


def test_domains_are_compared_on_the_same_inputs(quick: Path) -> None:
    rows = _rows(quick / "domains.csv")
    got = {(r["network"], r["domain"], r["category"]) for r in rows}
    assert got == {(n, d, c) for n in NETWORKS for d in ("deepzono", "deeppoly")
                   for c in CATEGORIES}
    by = {(r["network"], r["domain"], r["category"]): r for r in rows}
    for net in NETWORKS:
        for cat in CATEGORIES:
            assert by[(net, "deepzono", cat)]["n"] == by[(net, "deeppoly", cat)]["n"]
        # DeepPoly is at least as tight as DeepZono on average on these ReLU networks
        assert (float(by[(net, "deeppoly", "valid")]["mean_radius"])
                >= float(by[(net, "deepzono", "valid")]["mean_radius"]))
    assert "## Domains compared" in (quick / "report.md").read_text()
