"""Reference networks: the plain ones import and match onnxruntime; ResNets name what they need."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from study.data import MnistData, mnist_colour  # noqa: E402
from study.nets import parse_net_name  # noqa: E402
from study.refnets import NETS, neurons  # noqa: E402
from study.train import export_onnx  # noqa: E402
from verifier.network import Conv, UnsupportedModelError, load_onnx  # noqa: E402


def _export(name, tmp_path):
    torch.manual_seed(0)
    model = NETS[name]().eval()
    path = tmp_path / f"{name}.onnx"
    x = np.random.default_rng(0).random((4, 3, 32, 32), dtype=np.float32)
    export_onnx(model, path, check_x=x, input_shape=(3, 32, 32))
    return model, path, x


@pytest.mark.parametrize("name", ["convsmall", "convmed"])
def test_plain_reference_nets_import_and_match_torch(name, tmp_path):
    model, path, x = _export(name, tmp_path)
    net = load_onnx(path)
    assert net.input_shape == (3, 32, 32) and net.n_outputs == 10
    # the per-channel normalisation is folded into the first (unpadded) conv, or kept as a Scale
    kinds = [type(v).__name__ for v in net.layers]
    assert kinds[-1] == "Dense" and ("Conv" in kinds[:2])
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(net.forward(x), want, rtol=1e-4, atol=1e-4)
    if name == "convsmall":
        assert isinstance(net.layers[0], Conv)


def test_resnets_are_refused_naming_the_residual_add(tmp_path):
    _, path, _ = _export("resnet2b", tmp_path)
    with pytest.raises(UnsupportedModelError, match=r"op Add \(node .*graph walker"):
        load_onnx(path)


def test_sizes_and_names():
    assert neurons(NETS["convsmall"]()) == 16 * 15 * 15 + 32 * 6 * 6 + 100
    assert neurons(NETS["convbig"]()) == 62464
    spec = parse_net_name("convmed-relu")
    assert spec.kind == "eran" and spec.input_shape == (3, 32, 32)
    assert isinstance(list(spec.build().children())[-1], torch.nn.Linear)


def test_colour_stand_in_pads_and_repeats():
    x = np.random.default_rng(0).random((5, 1, 28, 28), dtype=np.float32)
    y = np.arange(5)
    data = mnist_colour(MnistData(x, y, x[:2], y[:2]), n_train=3)
    assert data.train_x.shape == (3, 3, 32, 32) and data.test_x.shape == (2, 3, 32, 32)
    np.testing.assert_array_equal(data.train_x[:, 1, 2:30, 2:30], x[:3, 0])
    assert data.train_x[:, :, :2].max() == 0 and np.array_equal(data.train_y, y[:3])
