"""Reference networks: the plain ones and the ResNets (graphs) import and match torch."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from study.data import MnistData, mnist_colour  # noqa: E402
from study.export import export_onnx  # noqa: E402
from study.nets import parse_net_name  # noqa: E402
from study.refnets import NETS, neurons  # noqa: E402
from verifier.network import Add, Conv  # noqa: E402
from verifier.onnx.importer import load_onnx  # noqa: E402


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


def test_resnets_import_as_graphs_and_match_torch(tmp_path):
    model, path, x = _export("resnet2b", tmp_path)
    net = load_onnx(path)
    assert not net.is_chain and sum(isinstance(v, Add) for v in net.layers) == 2
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(net.forward(x), want, rtol=1e-4, atol=1e-4)


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


def test_colour_stand_in_study_data_and_training(tmp_path, monkeypatch):
    """`data = "mnist-colour"`: the study's test set is 3x32x32 and an ERAN net trains on it,
    exports, imports and gets a positive radius (MNIST replaced by 64 synthetic images)."""
    import study.data
    from study.run import STANDIN, config_from_dict, ensure_network, load_dataset
    from verifier.score import certified_radius, plan_for

    rng = np.random.default_rng(0)
    y = np.arange(64) % 10
    x = (rng.random((64, 1, 28, 28)) * 0.2 + (y / 10.0)[:, None, None, None]).astype(np.float32)
    monkeypatch.setattr(study.data, "load_mnist", lambda *a, **k: MnistData(x, y, x[:16], y[:16]))
    cfg = config_from_dict({"study": {"data": STANDIN}, "networks": [
        {"name": "convsmall-relu", "train": {"epochs": 1}}]}, base=tmp_path)
    assert cfg.data == STANDIN
    data = load_dataset(cfg.data)
    assert data.x.shape == (16, 3, 32, 32) and data.x.dtype == np.uint8
    path = ensure_network(cfg.networks[0], tmp_path, cfg.data, threads=1)
    net = load_onnx(path)
    assert net.input_shape == (3, 32, 32)
    assert certified_radius(plan_for(net), data.floats([0])[0]) > 0
