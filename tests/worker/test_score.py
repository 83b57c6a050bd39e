"""`radiusguard score`: the worker's verdicts on the same stream, for every policy, and
one-line errors for bad input."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest

from verifier.onnx.importer import load_onnx
from verifier.score import plan_for, score_many
from worker.calibrate import calibrate
from worker.cli import main
from worker.formats.codec import encode_input
from worker.policy import POLICIES, logit_margins
from worker.processor import Processor, Record, Scorer, process_all
from worker.profile import save_profile

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

ROOT = Path(__file__).resolve().parents[2]
FNN = ROOT / "models" / "fnn-3x30-relu.onnx"
CNN = ROOT / "models" / "cnn-6-16-128-relu.onnx"
MNIST = ROOT / "models" / "mnist_test_1000.npz"


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path, np.ndarray]:
    """A profile calibrated on 120 digits and a stream of 40 others plus 8 noise images."""
    tmp = tmp_path_factory.mktemp("score")
    z = np.load(MNIST)
    profile = calibrate(load_onnx(FNN), z["x"][500:620], z["y"][500:620], 0.1, window_size=20,
                        jobs=2)
    save_profile(profile, tmp / "p.json")
    rng = np.random.default_rng(5)
    noise = rng.integers(0, 256, size=(8, 28, 28), dtype=np.uint8)
    stream = np.concatenate([z["x"][:40], noise])[rng.permutation(48)]
    np.save(tmp / "x.npy", stream)
    return tmp / "p.json", tmp / "x.npy", stream


def _csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def _num(s: str) -> float | None:
    return None if s == "" else float(s)


@pytest.mark.parametrize("policy", ["threshold", "distribution"])
def test_score_gives_the_processors_verdicts(setup, policy, capsys) -> None:
    prof_path, x_path, stream = setup
    assert main(["score", str(FNN), str(x_path), "--profile", str(prof_path),
                 "--policy", policy, "--jobs", "2"]) == 0
    rows = _csv(capsys.readouterr().out)
    from worker.profile import load_profile

    profile = load_profile(prof_path)
    znet = plan_for(load_onnx(FNN), profile.verifier)
    scorer = Scorer(znet, profile.verifier, 2)
    records = [Record("t", 3, 100 + i, *encode_input(f"cam-{i}", x, stream="cam", dtype="uint8"))
               for i, x in enumerate(stream)]
    try:
        ref = process_all(Processor(znet, profile, policy, scorer), records, 7)
    finally:
        scorer.close()
    assert len(rows) == len(ref.verdicts) == 48
    assert list(rows[0]) == ["index", "predicted", "radius", "verdict", "rule", "pvalue", "score",
                             "eps", "proved", "stage", "verifier_version", "model_sha256",
                             "preprocessing"]
    for i, (row, (_, v)) in enumerate(zip(rows, ref.verdicts, strict=True)):
        assert int(row["index"]) == i
        assert (int(row["predicted"]), row["verdict"], row["rule"]) == (
            v.predicted, v.verdict, v.rule)
        assert _num(row["radius"]) == (None if v.radius is None else
                                       pytest.approx(v.radius, rel=1e-5))
        cert = v.certificate
        assert (float(row["eps"]), bool(int(row["proved"])), row["stage"] or None) == (
            cert["eps"], cert["proved"], cert["stage"])
        assert (int(row["verifier_version"]), row["model_sha256"]) == (
            cert["verifier_version"], cert["model_sha256"])
        p = _num(row["pvalue"])
        if v.pvalue is None or math.isnan(v.pvalue):
            assert p is None or math.isnan(p)
        else:
            assert p == pytest.approx(v.pvalue, rel=1e-5)
    assert {r["verdict"] for r in rows} == {"accept", "reject"}


def test_score_consistency_follows_its_rule(setup, tmp_path, capsys) -> None:
    prof_path, x_path, stream = setup
    out = tmp_path / "v.csv"
    assert main(["score", str(FNN), str(x_path), "--profile", str(prof_path),
                 "--policy", "consistency", "--out", str(out), "--jobs", "2"]) == 0
    assert "48 inputs" in capsys.readouterr().err
    rows = _csv(out.read_text())
    from worker.profile import load_profile

    net = load_onnx(FNN)
    xs = stream.reshape(48, -1) / 255.0
    radii = np.array([r.radius for r in score_many(net, xs, jobs=2)])
    scores = load_profile(prof_path).consistency.scores(radii, logit_margins(net.forward(xs)))
    cutoff = load_profile(prof_path).consistency.cutoff
    assert [float(r["score"]) for r in rows] == pytest.approx(scores, rel=1e-5)
    assert [r["verdict"] for r in rows] == ["reject" if s > cutoff else "accept" for s in scores]
    assert {r["rule"] for r in rows} == {"consistency"}


def _one_line_error(argv: list[str], capsys) -> str:
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("radiusguard score: error: ")
    return lines[0]


def test_bad_input_is_a_one_line_error(setup, tmp_path, capsys) -> None:
    prof_path, x_path, _ = setup
    missing = tmp_path / "missing.npy"
    assert "no such file" in _one_line_error(
        ["score", str(FNN), str(missing), "--profile", str(prof_path)], capsys)
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((3, 5)))
    assert "the model expects 784" in _one_line_error(
        ["score", str(FNN), str(wrong), "--profile", str(prof_path)], capsys)
    assert "calibrated for model" in _one_line_error(
        ["score", str(CNN), str(x_path), "--profile", str(prof_path)], capsys)
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    assert "not valid JSON" in _one_line_error(
        ["score", str(FNN), str(x_path), "--profile", str(bad)], capsys)
    old = tmp_path / "old.json"  # a profile from before the consistency policy
    data = json.loads(prof_path.read_text())
    del data["consistency"]
    old.write_text(json.dumps(data))
    assert "no consistency parameters" in _one_line_error(
        ["score", str(FNN), str(x_path), "--profile", str(old), "--policy", "consistency"],
        capsys)
    assert "no such directory" in _one_line_error(
        ["score", str(FNN), str(x_path), "--profile", str(prof_path), "--out",
         str(tmp_path / "nope" / "v.csv")], capsys)
    with pytest.raises(SystemExit):
        main(["score", str(FNN), str(x_path), "--profile", str(prof_path), "--policy", "vibes"])
    assert "invalid choice" in capsys.readouterr().err
    assert set(POLICIES) >= {"threshold", "distribution", "consistency"}

