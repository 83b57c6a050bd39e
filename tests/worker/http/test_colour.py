"""Colour inputs over HTTP: a [3, 4, 5] model takes [N, C, H, W], channels-last [N, H, W, C]
and flat tensors with the same verdicts as the offline scorer, and other shapes get a 400 with
the shapes it takes; the request parser agrees with the Kafka codec, ambiguous shapes included.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.worker.http.test_server import _call, _columns, _tensor, serving
from tests.worker.test_layout import SHAPE, _colour_model
from verifier.onnx.importer import load_onnx
from verifier.score import score_many
from worker.calibrate import calibrate
from worker.formats.codec import InputRecord, Invalid, decode_input, encode_input
from worker.http.oip import RequestError, parse_infer
from worker.profile import save_profile

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

NAME = "colour"


@pytest.fixture(scope="module")
def colour(tmp_path_factory):
    """The model, a profile calibrated on 24 images, and 6 other images uint8 [6, 3, 4, 5]."""
    tmp = tmp_path_factory.mktemp("colour")
    model = _colour_model(tmp / "colour.onnx")
    net = load_onnx(model)
    x = np.random.default_rng(3).integers(0, 256, size=(30, *SHAPE), dtype=np.uint8)
    labels = net.forward(x[:24].reshape(24, -1) / 255.0).argmax(1)
    save_profile(calibrate(net, x[:24], labels, 0.2, window_size=8, jobs=1, name=NAME),
                 tmp / "p.json")
    return model, tmp / "p.json", x[24:]


@pytest.fixture(scope="module")
def server(colour):
    model, profile, _ = colour
    with serving(model, profile, "--jobs", "1") as url:
        yield url


def _infer(base: str, body: dict) -> tuple[int, dict]:
    return _call(f"{base}/v2/models/{NAME}/infer", "POST", body)


def _nested(xs: np.ndarray, datatype: str) -> dict:
    """A tensor whose data is nested lists in the tensor's shape, as many clients send."""
    return {**_tensor(xs, datatype), "data": xs.tolist()}


def test_every_layout_gets_the_offline_verdicts(server, colour):
    model, _, x = colour
    want = score_many(load_onnx(model), x.reshape(len(x), -1) / 255.0, jobs=1)
    bodies = {
        "nchw": _nested(x, "UINT8"),
        "nhwc": _nested(x.transpose(0, 2, 3, 1), "UINT8"),
        "flat": _tensor(x.reshape(len(x), -1) / 255.0, "FP64"),
        "nhwc floats": _tensor(x.transpose(0, 2, 3, 1) / 255.0, "FP64"),
    }
    for name, tensor in bodies.items():  # the distribution policy reports every radius
        status, resp = _infer(server, {"inputs": [tensor],
                                       "parameters": {"policy": "distribution"}})
        assert status == 200, (name, resp)
        got = _columns(resp)
        assert got["radius"] == [r.radius for r in want], name
        assert got["predicted"] == [r.predicted for r in want], name
    assert all(r.radius > 0 for r in want)
    # the channels-last bytes read as [C, H, W] are other inputs: the layout is not a no-op
    wrong = {**bodies["nhwc"], "shape": [len(x), *SHAPE]}
    assert _columns(_infer(server, {"inputs": [wrong]})[1])["radius"] != [r.radius for r in want]


def test_metadata_lists_the_accepted_shapes(server):
    status, meta = _call(f"{server}/v2/models/{NAME}")
    assert status == 200
    assert meta["inputs"][0]["shape"] == [-1, 3, 4, 5]
    assert meta["inputs"][0]["parameters"]["accepted_shapes"] == [
        [-1, 3, 4, 5], [-1, 4, 5, 3], [-1, 60]]


@pytest.mark.parametrize("shape,words", [
    ([6, 5, 4, 3], "items of shape [5, 4, 3] do not fit the model; it takes [3, 4, 5] or "
                   "channels last [4, 5, 3]"),
    ([6, 3, 5, 4], "items of shape [3, 5, 4] do not fit"),
    ([6, 3, 20], "items of shape [3, 20] do not fit"),
    ([3, 4, 5], "the first axis is the batch: send [1, 3, 4, 5]"),
    ([6, 4, 5, 2], "items have 40 values, the model expects 60"),
])
def test_other_shapes_get_400_and_the_shapes_taken(server, colour, shape, words):
    x = colour[2]
    n = int(np.prod(shape))
    tensor = {"name": "input", "shape": shape, "datatype": "UINT8",
              "data": x.reshape(-1)[:n].tolist()}
    status, resp = _infer(server, {"inputs": [tensor]})
    assert status == 400 and set(resp) == {"error"} and words in resp["error"], resp


@pytest.mark.parametrize("model_shape,shape,fits", [
    ((3, 4, 5), (3, 4, 5), True), ((3, 4, 5), (4, 5, 3), True), ((3, 4, 5), (1, 60), True),
    ((3, 4, 5), (5, 4, 3), False), ((1, 4, 5), (4, 5, 1), True), ((1, 4, 5), (20,), True),
    # [3, 3, 3] reads both as [C, H, W] and as channels last: flat only
    ((3, 3, 3), (3, 3, 3), False), ((3, 3, 3), (27,), True), ((3, 1, 3), (1, 3, 3), False),
])
def test_request_parser_and_codec_take_the_same_shapes(model_shape, shape, fits):
    x = np.arange(int(np.prod(shape)), dtype=np.uint8).reshape(shape)
    body = {"inputs": [_tensor(x[None], "UINT8")]}
    rec = decode_input(*encode_input("a", x, dtype="uint8"), None, model_shape)
    if fits:
        got = parse_infer(body, model_shape, 8).xs
        assert isinstance(rec, InputRecord)
        np.testing.assert_array_equal(got, rec.x.reshape(1, -1))
    else:
        with pytest.raises(RequestError, match="do not fit") as err:
            parse_infer(body, model_shape, 8)
        assert err.value.status == 400 and isinstance(rec, Invalid)
        assert ("flat" in rec.reason) == (model_shape[0] == model_shape[2])
