"""Trained reference networks for 3x32x32 inputs: L-inf PGD finds no misclassified input inside
the certified radius of a ConvMed (DeepZono and DeepPoly) and of a ResNet with two residual
blocks (DeepZono), and finds one at a few times that radius; onnxruntime, torch and the
imported Network agree.

resnet2b is shipped in models/refnets (see study.refnets for the command that made it). ConvMed
(8 MB of weights) is trained here in about a second, on the shipped MNIST slice padded to
3x32x32, images 20..999; both are tested on the slice's first 20 images (test_20.npz).
Both networks carry ERAN's per-channel normalisation, so every radius is in [0, 1] pixel space.
"""

import hashlib
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from verifier import VerifierSettings
from verifier.box import InputBox
from verifier.network import Add
from verifier.onnx.importer import load_onnx
from verifier.score import radius_result

torch = pytest.importorskip("torch")
from study.adaptive_attacks import TorchNet, pgd  # noqa: E402
from study.data import MnistData, from_uint8, mnist_colour  # noqa: E402
from study.export import export_onnx  # noqa: E402
from study.refnets import INPUT_SHAPE, NETS, train  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
REFNETS = ROOT / "models" / "refnets"
SLICE = ROOT / "models" / "mnist_test_1000.npz"
IMAGES = 3  # correctly classified test images attacked per network and domain
TOL = 0.002  # radius search tolerance
# PGD (margin loss, 50 steps of 2.5 eps / 50, 3 restarts) at the radius, then at these
# multiples of it until it succeeds: one of them must, or the silence inside proves nothing.
FACTORS = (2, 4, 8, 16, 32)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def images() -> tuple[np.ndarray, np.ndarray]:
    """The 20 shipped test images, float64 [20, 3072] (uint8 / 255), and their labels."""
    with np.load(REFNETS / "test_20.npz") as z:
        x, y = z["x"], z["y"]
    assert x.dtype == np.uint8 and x.shape == (20, *INPUT_SHAPE)
    return x.reshape(20, -1) / 255.0, y.astype(np.int64)


@pytest.fixture(scope="module")
def convmed(tmp_path_factory) -> Path:
    """ConvMed trained for 3 epochs (seed 0) on images 20..999 of the MNIST slice in colour."""
    with np.load(SLICE) as z:
        x, y = from_uint8(z["x"]), z["y"].astype(np.int64)
    data = mnist_colour(MnistData(x[20:], y[20:], x[:20], y[:20]))
    torch.manual_seed(0)
    model = NETS["convmed"]()
    train(model, data, epochs=3, train_n=len(data.train_x), seed=0)
    path = tmp_path_factory.mktemp("refnets") / "convmed.onnx"
    export_onnx(model, path, check_x=data.test_x, input_shape=INPUT_SHAPE)
    return path


@pytest.fixture(scope="module")
def refnet(request) -> Path:
    name = request.param
    return request.getfixturevalue("convmed") if name == "convmed" else REFNETS / f"{name}.onnx"


def test_shipped_resnet_matches_its_index():
    index = json.loads((REFNETS / "refnets.json").read_text())
    rec = index["resnet2b"]
    path = REFNETS / rec["file"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == rec["sha256"]
    assert path.stat().st_size == rec["bytes"] < 3_000_000
    assert rec["test_accuracy_2000"] > 0.7 and "Add" in rec["ops"]
    net = load_onnx(path)
    assert not net.is_chain and sum(isinstance(v, Add) for v in net.layers) == 2


@pytest.mark.parametrize("refnet", ["convmed", "resnet2b"], indirect=True)
def test_onnxruntime_torch_and_network_agree(refnet, images):
    x, y = images
    net = load_onnx(refnet)
    assert net.input_shape == INPUT_SHAPE and (net.input_lower, net.input_upper) == (0.0, 1.0)
    sess = ort.InferenceSession(str(refnet), providers=["CPUExecutionProvider"])
    want = sess.run(None, {sess.get_inputs()[0].name: x.reshape(-1, *INPUT_SHAPE).astype(
        np.float32)})[0]
    got = net.forward(x)
    scale = np.abs(want).max()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * scale)
    with torch.no_grad():
        np.testing.assert_allclose(TorchNet(net).logits(torch.as_tensor(x)).numpy(), got,
                                   rtol=1e-10, atol=1e-10 * scale)
    assert np.array_equal(got.argmax(1), want.argmax(1))
    assert (got.argmax(1) == y).mean() >= 0.7  # chance is 0.1


@pytest.mark.parametrize("refnet,domain", [
    ("convmed", "deepzono"), ("convmed", "deeppoly"), ("resnet2b", "deepzono"),
], indirect=["refnet"])
def test_pgd_finds_nothing_inside_the_certified_radius(refnet, domain, images):
    x, y = images
    net = load_onnx(refnet)
    tnet = TorchNet(net)
    settings = VerifierSettings(domain=domain, tol=TOL)
    correct = np.flatnonzero(net.forward(x).argmax(1) == y)[:IMAGES]
    assert len(correct) == IMAGES
    for i in correct:
        res = radius_result(net, x[i], settings)
        assert res.predicted == y[i] and res.radius > 0, (i, res)

        def attack(eps: float, i=i) -> np.ndarray:
            return pgd(tnet, x[i][None], y[i][None], eps, kappa=10.0, steps=50, restarts=3)[0]

        adv = attack(res.radius)
        assert InputBox.linf(x[i], res.radius, 0.0, 1.0).contains(adv)
        assert net.predict(adv) == y[i], f"image {i}: misclassified inside radius {res.radius}"
        found = next((k for k in FACTORS if net.predict(attack(k * res.radius)) != y[i]), None)
        assert found is not None, f"image {i}: PGD found nothing up to {FACTORS[-1]} x radius"
