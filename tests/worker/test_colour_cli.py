"""`radiusguard radius`, `calibrate` and `score` on a 3x32x32 model with ERAN's per-channel
normalisation: uint8 .npz files [N, 3, 32, 32] and channels last [N, 32, 32, 3] give the same
radii, profiles and verdicts, all in [0, 1] pixel space."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from onnx import helper

from tests.verifier.onnx_builders import _model
from verifier.onnx.importer import load_onnx
from verifier.score import score_many
from worker.cli import main

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "models" / "refnets" / "test_20.npz"  # uint8 [20, 3, 32, 32]
SHAPE = (3, 32, 32)


def _normalised_model(path: Path) -> Path:
    """(x - mean) / std per channel, conv 4 4x4/4, relu, dense 10."""
    rng = np.random.default_rng(4)
    inits = {"mean": np.array([0.4914, 0.4822, 0.4465]).reshape(1, 3, 1, 1),
             "std": np.array([0.2023, 0.1994, 0.2010]).reshape(1, 3, 1, 1),
             "k": rng.normal(size=(4, 3, 4, 4)) * 0.15, "c": rng.normal(size=4) * 0.1,
             "w": rng.normal(size=(10, 4 * 8 * 8)) * 0.03, "b": rng.normal(size=10)}
    nodes = [helper.make_node("Sub", ["input", "mean"], ["s"]),
             helper.make_node("Div", ["s", "std"], ["d"]),
             helper.make_node("Conv", ["d", "k", "c"], ["y"], kernel_shape=[4, 4],
                              strides=[4, 4]),
             helper.make_node("Relu", ["y"], ["r"]), helper.make_node("Flatten", ["r"], ["f"]),
             helper.make_node("Gemm", ["f", "w", "b"], ["logits"], transB=1)]
    path.write_bytes(_model(nodes, inits, SHAPE, 10).SerializeToString())
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The model, its labels for the 20 images, and the images in both layouts (.npz)."""
    tmp = tmp_path_factory.mktemp("colour-cli")
    model = _normalised_model(tmp / "colour.onnx")
    with np.load(IMAGES) as z:
        x = z["x"]
    assert x.dtype == np.uint8 and x.shape == (20, *SHAPE)
    np.savez(tmp / "nchw.npz", x=x)
    np.savez(tmp / "nhwc.npz", x=x.transpose(0, 2, 3, 1))
    net = load_onnx(model)
    np.save(tmp / "labels.npy", net.forward(x.reshape(20, -1) / 255.0).argmax(1))
    return tmp, model, x


def _rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_radius_in_both_layouts_is_the_pixel_space_radius(files, capsys):
    tmp, model, x = files
    net = load_onnx(model)
    assert (net.input_lower, net.input_upper) == (0.0, 1.0)
    want = [r.radius for r in score_many(net, x.reshape(20, -1) / 255.0, jobs=1)]
    assert min(want) > 0
    for layout in ("nchw", "nhwc"):
        assert main(["radius", str(model), str(tmp / f"{layout}.npz"), "--jobs", "1"]) == 0
        rows = _rows(capsys.readouterr().out)
        assert [float(r["radius"]) for r in rows] == pytest.approx(want, rel=1e-5), layout


def test_calibrate_and_score_in_both_layouts_agree(files, capsys):
    tmp, model, x = files
    profiles, verdicts = [], []
    for layout in ("nchw", "nhwc"):
        out = tmp / f"{layout}.profile.json"
        assert main(["calibrate", str(model), str(tmp / f"{layout}.npz"), "--labels",
                     str(tmp / "labels.npy"), "--window", "8", "--max-false-alarm", "0.2",
                     "--name", "colour", "--jobs", "1", "--out", str(out)]) == 0
        capsys.readouterr()
        profile = json.loads(out.read_text())
        profile.pop("created", None)
        profiles.append(profile)
        assert main(["score", str(model), str(tmp / f"{layout}.npz"), "--profile", str(out),
                     "--jobs", "1"]) == 0
        verdicts.append(_rows(capsys.readouterr().out))
    assert profiles[0] == profiles[1]
    assert verdicts[0] == verdicts[1] and len(verdicts[0]) == 20
    budget = profiles[0]["guaranteed_budget"]
    assert all(float(r["eps"]) == budget for r in verdicts[0])  # decided at the budget
    assert all((r["stage"] != "") == (r["verdict"] == "accept") for r in verdicts[0])
    assert {r["verdict"] for r in verdicts[0]} == {"accept", "reject"}
    assert main(["score", str(model), str(tmp / "nhwc.npz"), "--profile", str(out),
                 "--jobs", "1", "--policy", "distribution"]) == 0
    with_radii = _rows(capsys.readouterr().out)
    want = [r.radius for r in score_many(load_onnx(model), x.reshape(20, -1) / 255.0, jobs=1)]
    assert [float(r["radius"]) for r in with_radii] == pytest.approx(want, rel=1e-5)
