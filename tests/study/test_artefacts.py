"""The shipped artefacts: calibrated profiles and the demo stream recording."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import msgpack
import numpy as np
import pytest

from verifier.onnx.importer import load_onnx
from worker.formats.codec import decode_input
from worker.formats.recording import read_recording
from worker.profile import check_model, load_profile

MODELS = Path(__file__).resolve().parents[2] / "models"
STREAM = MODELS / "demo-stream.rgr"
CATEGORIES = {"valid", "misclassified", "fgsm_0.1", "fgsm_0.05", "cw", "hop"}


@pytest.mark.parametrize("onnx_path", sorted(MODELS.glob("*.onnx")), ids=lambda p: p.stem)
def test_profile_belongs_to_its_model(onnx_path: Path) -> None:
    path = onnx_path.with_name(f"{onnx_path.stem}.profile.json")
    if not path.is_file():
        pytest.skip(f"{path.name} not generated (python -m study.artefacts)")
    profile = load_profile(path)
    check_model(profile, load_onnx(onnx_path))
    assert profile.window_size == 50
    assert profile.calibration.false_alarm_target == 0.03
    assert profile.calibration.false_alarm_measured <= 0.03
    assert {"fgsm_0.1", "cw", "hop"} <= set(profile.attacks)


@pytest.mark.skipif(not STREAM.is_file(), reason="demo-stream.rgr not generated")
def test_demo_stream_records_are_labelled_and_adversarial_where_claimed() -> None:
    assert STREAM.stat().st_size < 2_000_000
    net = load_onnx(MODELS / "cnn-6-16-128-relu.onnx")
    counts: Counter[str] = Counter()
    ids = set()
    for rec in read_recording(STREAM):
        assert rec.key == b"cam-1"
        inp = decode_input(rec.key, rec.value, expected_size=net.input_size)
        assert not hasattr(inp, "reason"), inp
        category = inp.meta["category"]
        assert category in CATEGORIES
        counts[category] += 1
        wire = msgpack.unpackb(rec.value, raw=False)["x"]["dtype"]
        assert wire == ("uint8" if category in ("valid", "misclassified") else "float32")
        ids.add(inp.id)
        predicted = net.predict(np.asarray(inp.x))
        assert (predicted == inp.label) == (category == "valid"), (inp.id, category)
    assert len(ids) == sum(counts.values())
    assert 110 <= counts["valid"] <= 130
    assert counts["misclassified"] >= 1
    for attack in ("fgsm_0.1", "fgsm_0.05", "cw", "hop"):
        assert 10 <= counts[attack] <= 20
