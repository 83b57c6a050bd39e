"""The certified evaluation on the shipped models, at test sizes: PGD, the radius-aware attack
and C&W at budgets up to the profile's tau get no adversarial example accepted (the guarantee),
and the report's tables and figure are written."""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("art")

from study.certified.evaluate import ROOT, EvalConfig, run  # noqa: E402

SHIPPED = [m for m in ("cnn-certified", "cnn-6-16-128-relu")
           if (ROOT / "models" / f"{m}.profile.json").is_file()]


@pytest.mark.parametrize("model", SHIPPED)
def test_no_adversarial_example_within_tau_is_accepted(model: str, tmp_path: Path) -> None:
    rows = run(replace(EvalConfig.quick(), models=(model,)), tmp_path)
    within = [r for r in rows if r["guaranteed"]]
    assert {r["budget"] for r in within} >= {"0.5tau", "tau"}
    assert all(r["accepted"] == 0 for r in within)
    assert all(r["successful"] <= r["sources"] for r in rows)
    assert any(r["successful"] for r in rows)  # the attacks do find adversarial examples
    with (tmp_path / "summary.csv").open() as f:
        (summary,) = list(csv.DictReader(f))
    assert float(summary["tau_at_1pct"]) <= float(summary["tau_at_3pct"]) <= \
        float(summary["tau_at_5pct"])
    assert (tmp_path / "attacks.png").stat().st_size > 1000
