"""calibrate by budget, certificates through score's CSV, and `radiusguard recheck`."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest

from worker.cli import main

ROOT = Path(__file__).resolve().parents[2]
FNN = ROOT / "models" / "fnn-3x30-relu.onnx"
MNIST = ROOT / "models" / "mnist_test_1000.npz"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("recheck")
    z = np.load(MNIST)
    np.save(tmp / "cal.npy", z["x"][500:700])
    np.save(tmp / "labels.npy", z["y"][500:700])
    rng = np.random.default_rng(0)
    stream = np.concatenate([z["x"][:30], rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)])
    np.save(tmp / "x.npy", stream)
    return tmp


def _calibrate(files: Path, *flags: str) -> dict:
    out = files / "p.json"
    assert main(["calibrate", str(FNN), str(files / "cal.npy"), "--labels",
                 str(files / "labels.npy"), "--jobs", "1", "--out", str(out), *flags]) == 0
    return json.loads(out.read_text())


def test_calibrate_by_budget_stores_it_and_reports_the_false_alarms(files, capsys) -> None:
    profile = _calibrate(files, "--budget", "0.008")
    printed = capsys.readouterr().out
    assert profile["guaranteed_budget"] == 0.008
    fa = profile["calibration"]["false_alarm_at_budget"]
    assert 0 < fa < 1 and f"false alarms {fa:.1%}" in printed
    assert "guaranteed budget 0.008" in printed
    proved = profile["calibration"]["proved_by"]
    assert sum(proved.values()) == round((1 - fa) * profile["calibration"]["n"])


def test_calibrate_by_false_alarms_reports_the_budget(files, capsys) -> None:
    profile = _calibrate(files, "--max-false-alarm", "0.05")
    printed = capsys.readouterr().out
    assert profile["calibration"]["false_alarm_at_budget"] <= 0.05
    assert f"guaranteed budget {profile['guaranteed_budget']:.6g}" in printed


@pytest.mark.parametrize("flags,expected", [
    ([], "give --budget EPS"),
    (["--budget", "-0.1"], "expected a finite number >= 0"),
    (["--budget", "0.01", "--stages", "deepzono,zonk"], "expected distinct domains"),
])
def test_bad_calibrate_flags_are_one_line(files, capsys, flags, expected) -> None:
    argv = ["calibrate", str(FNN), str(files / "cal.npy"), "--labels",
            str(files / "labels.npy"), "--out", str(files / "bad.json"), *flags]
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and expected in err[-1]


def test_recheck_confirms_scored_certificates_and_catches_tampering(files, capsys) -> None:
    _calibrate(files, "--budget", "0.008")
    capsys.readouterr()
    out = files / "v.csv"
    assert main(["score", str(FNN), str(files / "x.npy"), "--profile", str(files / "p.json"),
                 "--jobs", "1", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["recheck", str(out), str(FNN), str(files / "x.npy")]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    accepted = [r for r in rows if r["verdict"] == "accept"]
    assert accepted and all(r["status"] == "confirmed" for r in accepted)
    assert all(r["status"] == "unproved" for r in rows if r["verdict"] == "reject")
    # a certificate claiming a ball far larger than was proved does not survive
    text = out.read_text().splitlines()
    head = text[0].split(",")
    first = next(r.split(",") for r in text[1:] if r.split(",")[head.index("verdict")] == "accept")
    first[head.index("eps")] = "0.3"
    (files / "forged.csv").write_text("\n".join([text[0], ",".join(first)]) + "\n")
    assert main(["recheck", str(files / "forged.csv"), str(FNN), str(files / "x.npy")]) == 1
    assert "failed" in capsys.readouterr().out


def test_recheck_of_a_missing_file_is_one_line(files, capsys) -> None:
    assert main(["recheck", str(files / "none.csv"), str(FNN), str(files / "x.npy")]) == 2
    assert capsys.readouterr().err.strip().endswith("no such verdict file")
