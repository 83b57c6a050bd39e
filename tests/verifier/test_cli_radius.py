"""`radiusguard radius`: the CSV it writes and the one-line errors it gives."""

import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "fnn-3x30-relu.onnx"


def _run(*args):
    return subprocess.run([sys.executable, "-m", "worker.cli", *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_radius_csv(tmp_path):
    data = np.load(ROOT / "models" / "mnist_test_1000.npz")
    inputs = tmp_path / "x.npy"
    np.save(inputs, data["x"][:5])
    out = tmp_path / "r.csv"
    res = _run("radius", MODEL, inputs, "--out", out, "--jobs", "1")
    assert res.returncode == 0, res.stderr
    lines = out.read_text().splitlines()
    assert lines[0] == "index,predicted,radius,seconds"
    rows = [line.split(",") for line in lines[1:]]
    assert [int(r[0]) for r in rows] == list(range(5))
    assert all(0 <= float(r[2]) < 0.256 for r in rows)


def test_radius_errors_are_one_line(tmp_path):
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((2, 10)))
    res = _run("radius", MODEL, wrong)
    assert res.returncode == 2 and "expects 784" in res.stderr and "Traceback" not in res.stderr
    big = tmp_path / "big.npy"
    np.save(big, np.full((2, 784), 3.0))
    res = _run("radius", MODEL, big)
    assert res.returncode == 2 and "[0, 1]" in res.stderr
    res = _run("radius", tmp_path / "missing.onnx", wrong)
    assert res.returncode == 2 and "missing.onnx" in res.stderr and "Traceback" not in res.stderr
    res = _run("radius", MODEL, wrong, "--tol", "zero")
    assert res.returncode == 2 and "expected a number" in res.stderr


def test_radius_per_domain(tmp_path):
    data = np.load(ROOT / "models" / "mnist_test_1000.npz")
    inputs = tmp_path / "x.npy"
    np.save(inputs, data["x"][:6])
    radii = {}
    for domain in ("deepzono", "deeppoly"):
        out = tmp_path / f"{domain}.csv"
        res = _run("radius", MODEL, inputs, "--domain", domain, "--out", out, "--jobs", "2")
        assert res.returncode == 0, res.stderr
        radii[domain] = [float(line.split(",")[2]) for line in out.read_text().splitlines()[1:]]
    assert len(radii["deeppoly"]) == 6 and all(r > 0 for r in radii["deeppoly"])
    res = _run("radius", MODEL, inputs, "--domain", "polyhedra")
    assert res.returncode == 2 and "invalid choice: 'polyhedra'" in res.stderr
