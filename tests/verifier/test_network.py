"""ONNX import: the numpy forward pass matches onnxruntime; unsupported ops name themselves."""

import numpy as np
import onnxruntime as ort
import pytest

from tests.verifier import onnx_builders as B
from verifier.network import Conv, Dense, MaxPool, Relu, UnsupportedModelError
from verifier.onnx.importer import from_onnx_model, load_onnx


def _ort(model, x):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x.astype(np.float32)})[0]


@pytest.mark.parametrize("act", ["Relu", "Sigmoid", "Tanh"])
def test_mlp_matches_onnxruntime(act):
    rng = np.random.default_rng(1)
    model = B.mlp(rng, act=act)
    net = from_onnx_model(model)
    x = rng.uniform(size=(20, 12))
    np.testing.assert_allclose(net.forward(x), _ort(model, x), rtol=1e-4, atol=1e-5)


def test_normalisation_is_folded_into_the_first_dense_layer():
    net = from_onnx_model(B.mlp(np.random.default_rng(2)))
    assert isinstance(net.layers[0], Dense)
    assert [type(layer).__name__ for layer in net.layers] == ["Dense", "Relu", "Dense", "Relu", "Dense"]


@pytest.mark.parametrize("pads", [(0, 0, 0, 0), (1, 1, 1, 1)])
@pytest.mark.parametrize("act", ["Relu", "Tanh"])
def test_cnn_matches_onnxruntime(act, pads):
    rng = np.random.default_rng(3)
    model = B.cnn(rng, act=act, pads=pads)
    net = from_onnx_model(model)
    assert [type(x) for x in net.layers[:3]] == [Conv, type(net.layers[1]), MaxPool]
    x = rng.uniform(size=(8, 1, 10, 10))
    np.testing.assert_allclose(net.forward(x), _ort(model, x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("op", ["HardSigmoid", "Selu", "Elu"])
def test_unsupported_op_names_itself(op):
    with pytest.raises(UnsupportedModelError, match=op):
        from_onnx_model(B.with_op(op))


def test_not_an_onnx_file(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not a model")
    with pytest.raises(UnsupportedModelError, match="not a readable ONNX model"):
        load_onnx(bad)


def test_load_records_sha256(tmp_path):
    model = B.mlp(np.random.default_rng(4))
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    net = load_onnx(path)
    import hashlib

    assert net.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert net.input_shape == (12,) and net.n_outputs == 4
    assert isinstance(net.layers[1], Relu)
