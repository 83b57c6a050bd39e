"""The adaptive study: the torch network and its IBP bound against the verifier's network, and
`python -m study.adaptive --quick` end to end with its report checked."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("art")
pytest.importorskip("matplotlib")

from study.adaptive import AdaptiveConfig, attack_plan  # noqa: E402
from study.adaptive_attacks import TorchNet, pgd  # noqa: E402
from verifier.check import margins  # noqa: E402
from verifier.onnx.importer import load_onnx  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
NETWORKS = ("cnn-6-16-128-relu", "fnn-3x30-relu")
MNIST = ROOT / "models" / "mnist_test_1000.npz"


@pytest.mark.parametrize("name", NETWORKS)
def test_torch_network_and_ibp_bound_are_sound(name: str) -> None:
    net = load_onnx(ROOT / "models" / f"{name}.onnx")
    x = np.load(MNIST)["x"][:4].reshape(4, -1) / 255.0
    tnet = TorchNet(net)
    logits = tnet.logits(torch.as_tensor(x)).numpy()
    assert np.allclose(logits, net.forward(x), atol=1e-9)
    label = torch.as_tensor(logits.argmax(1))
    eps = 0.005
    low = tnet.ibp_margins(torch.as_tensor(x), eps, label).numpy()
    rng = np.random.default_rng(0)
    for i in range(4):
        pts = np.clip(x[i] + rng.uniform(-eps, eps, size=(64, x.shape[1])), 0, 1)
        pts[0] = np.clip(x[i] + eps * np.sign(rng.standard_normal(x.shape[1])), 0, 1)
        out = net.forward(pts)
        real = out[:, label[i]][:, None] - out
        others = np.arange(out.shape[1]) != int(label[i])
        assert (real[:, others] >= low[i][others] - 1e-9).all()  # a lower bound everywhere
        zono = margins(net, x[i], eps, int(label[i]))
        assert np.isfinite(low[i][others]).all() and np.isfinite(zono[others]).all()


def test_pgd_reaches_the_confidence_it_is_asked_for() -> None:
    net = load_onnx(ROOT / "models" / "fnn-3x30-relu.onnx")
    z = np.load(MNIST)
    x, y = z["x"][:6].reshape(6, -1) / 255.0, z["y"][:6].astype(np.int64)
    adv = pgd(TorchNet(net), x, y, eps=0.3, kappa=5.0, steps=60, restarts=1)
    assert np.abs(adv - x).max() <= 0.3 + 1e-12 and adv.min() >= 0 and adv.max() <= 1
    out = net.forward(adv)
    wrong = out.argmax(1) != y
    assert wrong.all()
    other = out.copy()
    other[np.arange(6), y] = -np.inf
    assert np.median(other.max(1) - out[np.arange(6), y]) >= 4.9


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("adaptive")
    proc = subprocess.run([sys.executable, "-m", "study.adaptive", "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=1800, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith("report.md")
    return out


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_every_set_is_judged_by_every_policy(quick: Path) -> None:
    rows = _rows(quick / "rejection.csv")
    plan = [p[0] for p in attack_plan(AdaptiveConfig.quick())]
    assert [(r["network"], r["attack"]) for r in rows] == [
        (n, a) for n in NETWORKS for a in ["valid (held-out)", *plan]]
    policies = ("threshold", "distribution", "consistency")
    for r in rows:
        for p in policies:
            v = float(r[f"rejected_{p}"])
            assert (math.isnan(v) and r["n"] == "0") or 0.0 <= v <= 1.0, (r["attack"], p)
        assert int(r["n"]) <= int(r["tried"])
    for net in NETWORKS:
        got = {r["attack"]: r for r in rows if r["network"] == net}
        valid = got["valid (held-out)"]
        for p in policies:  # false alarms near the 3 % target on 80 held-out images
            assert float(valid[f"rejected_{p}"]) <= 0.1
        weak = got["pgd_0.3_k0"]  # a low-confidence attack lands next to the boundary
        assert int(weak["n"]) > 0 and float(weak["rejected_threshold"]) >= 0.5
        assert float(weak["mean_radius"]) < 0.5 * float(valid["mean_radius"])


def test_radii_parameters_and_figures_are_recorded(quick: Path) -> None:
    rows = _rows(quick / "rejection.csv")
    radii = _rows(quick / "radii.csv")
    assert len(radii) == sum(int(r["n"]) for r in rows)
    assert all(float(r["radius"]) >= 0 for r in radii)
    attacks = json.loads((quick / "attacks.json").read_text())
    for net in NETWORKS:
        ra = attacks[net]["radius_aware_0.3_k10"]
        assert ra["params"]["cert_eps"] == 0.02 and ra["params"]["eps"] == 0.3
        assert attacks[net]["pgd_0.3_k15"]["params"]["kappa"] == 15.0
        assert attacks[net]["cw_k40"]["params"]["confidence"] == 40.0
        for kind in ("rejection", "radii"):
            png = quick / f"{kind}_{net}.png"
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    runs = _rows(quick / "algorithm2_attack.csv")
    assert [(r["network"], r["run"]) for r in runs] == [
        (n, k) for n in NETWORKS
        for k in ("matched to the valid radii", "unmatched (random order)")]
    for net in NETWORKS:
        matched, plain = (r for r in runs if r["network"] == net)
        assert float(matched["mean_radius"]) >= float(plain["mean_radius"])
    report = (quick / "report.md").read_text()
    assert all(f"## {n}" in report and f"rejection_{n}.png" in report for n in NETWORKS)
    assert "nan %" not in report


def test_candidate_signals_are_reported(quick: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "study.adaptive_signals", "--quick", "--out",
                           str(quick), "--network", "fnn-3x30-relu"],
                          capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = _rows(quick / "signals_fnn-3x30-relu.csv")
    rules = [r["rule"] for r in rows]
    assert rules[:2] == ["radius (threshold)", "radius + logit margin (consistency, shipped)"]
    assert len(rules) == 8
    judged = {r["attack"]: r for r in _rows(quick / "rejection.csv")
              if r["network"] == "fnn-3x30-relu"}
    for r in rows:
        assert set(r) - {"rule"} <= set(judged)
        assert all(0.0 <= float(v) <= 1.0 for k, v in r.items() if k != "rule")
    # the shipped policies' rows agree with the study's own verdicts
    for rule, policy in (("radius (threshold)", "threshold"),
                         ("radius + logit margin (consistency, shipped)", "consistency")):
        row = next(r for r in rows if r["rule"] == rule)
        for name, value in row.items():
            if name != "rule":
                assert float(value) == pytest.approx(float(judged[name][f"rejected_{policy}"]),
                                                     abs=1e-3), (rule, name)


def test_deeppoly_signals_are_reported(quick: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "study.adaptive_poly", "--quick", "--out",
                           str(quick), "--network", "fnn-3x30-relu", "--cost", "2"],
                          capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "median thread CPU ms per input: r_zono" in proc.stdout
    rows = _rows(quick / "signals_poly_fnn-3x30-relu.csv")
    rules = [r["rule"] for r in rows]
    assert rules[:2] == ["r_zono (threshold)", "margin, r_zono (consistency, shipped)"]
    assert rules[-1] == "n" and len(rules) == 18
    held = "valid 0..79 (held-out)"
    judged = {("valid 0..79 (held-out)" if r["attack"] == "valid (held-out)" else r["attack"]): r
              for r in _rows(quick / "rejection.csv") if r["network"] == "fnn-3x30-relu"}
    sizes = rows[-1]
    for name in set(sizes) - {"rule", "calibration"}:
        assert int(sizes[name]) == int(judged[name]["n"]), name
    for r in rows[:-1]:
        assert set(r) - {"rule", "calibration"} <= set(judged)
        assert all(0.0 <= float(v) <= 1.0 for k, v in r.items() if k != "rule")
        # every rule is fitted to the calibration inputs alone at the 3 % target
        assert float(r["calibration"]) <= 0.03, r["rule"]
        assert float(r[held]) <= 0.15, r["rule"]
    for rule, policy in (("r_zono (threshold)", "threshold"),
                         ("margin, r_zono (consistency, shipped)", "consistency")):
        row = next(r for r in rows if r["rule"] == rule)
        for name, value in row.items():
            if name not in ("rule", "calibration"):
                assert float(value) == pytest.approx(float(judged[name][f"rejected_{policy}"]),
                                                     abs=1e-3), (rule, name)
