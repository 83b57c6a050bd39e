"""Colour inputs: [C, H, W] and channels-last [H, W, C] items through files, the codec, the CLI."""

import numpy as np
import pytest
from onnx import helper

from tests.verifier.onnx_builders import _model
from worker.cli import main
from worker.formats.codec import InputRecord, Invalid, decode_input, encode_input
from worker.inputs import InputFileError, _load_png_dir, load_inputs
from worker.layout import AS_IS, CHANNELS_LAST, layout_of

SHAPE = (3, 4, 5)


@pytest.mark.parametrize("shape,want", [
    ((3, 4, 5), AS_IS), ((60,), AS_IS), ((1, 3, 4, 5), AS_IS), ((4, 5, 3), CHANNELS_LAST),
    ((5, 4, 3), None), ((3, 20), None), ((4, 5, 2), None),
])
def test_layout_of_a_colour_model(shape, want):
    assert layout_of(shape, SHAPE) == want


def test_grey_and_flat_models_take_any_fitting_shape():
    assert layout_of((28, 28), (1, 28, 28)) == AS_IS
    assert layout_of((28, 28, 1), (1, 28, 28)) == AS_IS
    assert layout_of((28, 28), (784,)) == AS_IS


def test_a_model_whose_layouts_coincide_takes_flat_inputs_only(tmp_path):
    """[3, 3, 3] reads both as [C, H, W] and as channels last: refused, not guessed."""
    assert layout_of((3, 3, 3), (3, 3, 3)) is None and layout_of((1, 3, 3, 3), (3, 3, 3)) is None
    assert layout_of((27,), (3, 3, 3)) == AS_IS and layout_of((1, 27), (3, 3, 3)) == AS_IS
    x = np.arange(54, dtype=np.uint8).reshape(2, 3, 3, 3)
    np.save(tmp_path / "cube.npy", x)
    with pytest.raises(InputFileError, match=r"flat \[27\] in C order"):
        load_inputs(tmp_path / "cube.npy", (3, 3, 3))
    np.save(tmp_path / "flat.npy", x.reshape(2, 27))
    np.testing.assert_array_equal(load_inputs(tmp_path / "flat.npy", (3, 3, 3)),
                                  x.reshape(2, 27) / 255.0)


def _nchw(n=4, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, *SHAPE), dtype=np.uint8)


def test_files_in_either_layout_give_the_same_inputs(tmp_path):
    x = _nchw()
    np.save(tmp_path / "nchw.npy", x)
    np.save(tmp_path / "nhwc.npy", x.transpose(0, 2, 3, 1))
    a = load_inputs(tmp_path / "nchw.npy", SHAPE)
    b = load_inputs(tmp_path / "nhwc.npy", SHAPE)
    np.testing.assert_array_equal(a, x.reshape(4, -1) / 255.0)
    np.testing.assert_array_equal(a, b)
    np.save(tmp_path / "bad.npy", x.reshape(4, 5, 4, 3))
    with pytest.raises(InputFileError, match=r"items have shape \[5, 4, 3\].*channels last"):
        load_inputs(tmp_path / "bad.npy", SHAPE)


def test_png_folder_is_rgb_for_a_colour_model(tmp_path):
    from PIL import Image

    x = _nchw(2)
    for i, img in enumerate(x.transpose(0, 2, 3, 1)):
        Image.fromarray(img, "RGB").save(tmp_path / f"{i}.png")
    np.testing.assert_array_equal(load_inputs(tmp_path, SHAPE), x.reshape(2, -1) / 255.0)
    # without a model (radiusguard produce) colour images stay colour, channels last
    assert _load_png_dir(tmp_path).shape == (2, 4, 5, 3)
    grey = tmp_path / "grey"
    grey.mkdir()
    Image.fromarray(x[0, 0], "L").save(grey / "0.png")
    assert _load_png_dir(grey).shape == (1, 4, 5)


def test_codec_transposes_channels_last_and_refuses_other_shapes():
    x = _nchw(1)[0]
    rec = decode_input(*encode_input("a", x.transpose(1, 2, 0), dtype="uint8"), None, SHAPE)
    assert isinstance(rec, InputRecord) and rec.shape == SHAPE
    np.testing.assert_array_equal(rec.x, x / 255.0)
    same = decode_input(*encode_input("a", x, dtype="uint8"), None, SHAPE)
    np.testing.assert_array_equal(same.x, rec.x)
    bad = decode_input(*encode_input("a", x.reshape(5, 4, 3), dtype="uint8"), None, SHAPE)
    assert isinstance(bad, Invalid) and "shape [5, 4, 3]" in bad.reason


def _colour_model(path):
    """conv(4, 3x3) after per-channel mean subtraction, relu, dense 3, on [3, 4, 5] inputs."""
    rng = np.random.default_rng(1)
    inits = {"k": rng.normal(size=(4, 3, 3, 3)) * 0.4, "c": rng.normal(size=4) * 0.1,
             "mean": np.array([0.5, 0.4, 0.3]).reshape(1, 3, 1, 1),
             "w": rng.normal(size=(3, 4 * 2 * 3)) * 0.3, "b": rng.normal(size=3) * 0.1}
    nodes = [helper.make_node("Sub", ["input", "mean"], ["s"]),
             helper.make_node("Conv", ["s", "k", "c"], ["y"], kernel_shape=[3, 3]),
             helper.make_node("Relu", ["y"], ["r"]), helper.make_node("Flatten", ["r"], ["f"]),
             helper.make_node("Gemm", ["f", "w", "b"], ["logits"], transB=1)]
    path.write_bytes(_model(nodes, inits, SHAPE, 3).SerializeToString())
    return path


def test_cli_radius_on_a_colour_conv_model_in_both_layouts(tmp_path, capsys):
    model = _colour_model(tmp_path / "colour.onnx")
    x = _nchw(3, seed=2)
    np.save(tmp_path / "nchw.npy", x)
    np.save(tmp_path / "nhwc.npy", x.transpose(0, 2, 3, 1))
    outs = []
    for name in ("nchw", "nhwc"):
        assert main(["radius", str(model), str(tmp_path / f"{name}.npy"), "--jobs", "1"]) == 0
        rows = capsys.readouterr().out.strip().splitlines()[1:]
        outs.append([r.split(",")[:3] for r in rows])
    assert outs[0] == outs[1] and len(outs[0]) == 3
    assert all(float(r[2]) > 0 for r in outs[0])


def test_colour_calibration_and_worker_processing(tmp_path):
    """Calibrate from a channels-last file through the CLI, then the worker's processor gives
    the same verdicts for records in either layout and refuses other shapes."""
    from verifier.onnx.importer import load_onnx
    from verifier.score import plan_for
    from worker.processor import Processor, Record, Scorer, process_all
    from worker.profile import load_profile

    model = _colour_model(tmp_path / "colour.onnx")
    net = load_onnx(model)
    x = _nchw(24, seed=5)
    np.save(tmp_path / "valid.npy", x.transpose(0, 2, 3, 1))
    np.save(tmp_path / "labels.npy", net.forward(x / 255.0).argmax(1))
    assert main(["calibrate", str(model), str(tmp_path / "valid.npy"), "--labels",
                 str(tmp_path / "labels.npy"), "--window", "8", "--max-false-alarm", "0.2",
                 "--jobs", "1", "--out", str(tmp_path / "p.json")]) == 0
    profile = load_profile(tmp_path / "p.json")
    assert profile.calibration.n == 24
    plan = plan_for(net, profile.verifier)
    scorer = Scorer(plan, profile.verifier, jobs=1)
    try:
        proc = Processor(plan, profile, "threshold", scorer)
        verdicts = []
        for items in (x[:6], x[:6].transpose(0, 2, 3, 1)):
            recs = [Record("in", 0, i, *encode_input(f"i{i}", v, stream="cam", dtype="uint8"))
                    for i, v in enumerate(items)]
            verdicts.append([(v.predicted, v.certificate["proved"], v.verdict)
                             for _, v in process_all(proc, recs).verdicts])
        bad = Record("in", 0, 0, *encode_input("bad", x[0].reshape(5, 4, 3), dtype="uint8"))
        [(_, invalid)] = process_all(proc, [bad]).verdicts
    finally:
        scorer.close()
    assert verdicts[0] == verdicts[1]
    assert all(proved == (verdict == "accept") for _, proved, verdict in verdicts[0])
    assert invalid.verdict == "invalid" and "shape [5, 4, 3]" in invalid.reason
