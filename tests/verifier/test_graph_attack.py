"""PGD on a small random residual network never beats DeepZono's certified radius, and the
torch copy of a graph network (Add, Concat, LeakyRelu) computes what the verifier verifies."""

import numpy as np
import pytest

from verifier import VerifierSettings, certified_radius
from verifier.box import InputBox
from verifier.network import INPUT, Add, Concat, Conv, Dense, LeakyRelu, Network, Relu

torch = pytest.importorskip("torch")
from study.adaptive_attacks import TorchNet, pgd  # noqa: E402

SIDE = 6


def _conv(rng, cin, cout, k=3, pad=1, stride=1):
    out = (SIDE + 2 * pad - k) // stride + 1
    return Conv(rng.normal(size=(cout, cin, k, k)) * (1.5 / np.sqrt(cin * k * k)),
                rng.normal(size=cout) * 0.1, (cin, SIDE, SIDE), (cout, out, out),
                (stride, stride), (pad,) * 4)


def _residual_net(seed: int) -> Network:
    """conv-relu, a residual block with a LeakyReLU, a concat with a 1x1 branch, an average
    pool (a strided conv), a dense head of 5 logits."""
    rng = np.random.default_rng(seed)
    pool = np.zeros((5, 5, 2, 2))
    pool[np.arange(5), np.arange(5)] = 0.25
    n = 5 * (SIDE // 2) ** 2
    layers = [_conv(rng, 1, 3), Relu(), _conv(rng, 3, 3), LeakyRelu(0.1), _conv(rng, 3, 3),
              Add(), Relu(), _conv(rng, 3, 2, k=1, pad=0), Concat((3 * SIDE**2, 2 * SIDE**2)),
              Conv(pool, np.zeros(5), (5, SIDE, SIDE), (5, SIDE // 2, SIDE // 2), (2, 2),
                   (0,) * 4, 5),
              Dense(rng.normal(size=(5, n)) / np.sqrt(n), rng.normal(size=5) * 0.1)]
    sources = ((INPUT,), (0,), (1,), (2,), (3,), (1, 4), (5,), (6,), (6, 7), (8,), (9,))
    return Network(tuple(layers), (1, SIDE, SIDE), 5, sources=sources)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_torch_copy_of_a_graph_matches_and_its_ibp_is_sound():
    net = _residual_net(0)
    tnet = TorchNet(net)
    rng = np.random.default_rng(1)
    x = rng.uniform(size=(8, net.input_size))
    with torch.no_grad():
        got = tnet.logits(torch.as_tensor(x)).numpy()
    np.testing.assert_allclose(got, net.forward(x), rtol=1e-12, atol=1e-12)
    label = torch.as_tensor(np.argmax(got, 1))
    eps = 0.02
    with torch.no_grad():
        low = tnet.ibp_margins(torch.as_tensor(x), eps, label).numpy()
    for k in range(len(x)):
        box = InputBox.linf(x[k], eps)
        out = net.forward(rng.uniform(box.lower, box.upper, size=(200, net.input_size)))
        others = np.arange(net.n_outputs) != int(label[k])
        gaps = (out[:, [int(label[k])]] - out)[:, others]
        assert np.all(gaps >= low[k][others]) and np.isinf(low[k][~others]).all()


def test_pgd_never_beats_the_certified_radius_of_a_residual_net():
    net = _residual_net(3)
    tnet = TorchNet(net)
    rng = np.random.default_rng(4)
    xs = rng.uniform(size=(8, net.input_size))
    labels = np.argmax(net.forward(xs), 1)
    settings = VerifierSettings(domain="deepzono")
    radii = np.array([certified_radius(net, x, settings) for x in xs])
    assert np.all(radii > 0)
    far = 0
    for x, y, r in zip(xs, labels, radii, strict=True):
        adv = pgd(tnet, x[None], np.array([y]), float(r), kappa=10.0, steps=60, restarts=4)[0]
        assert InputBox.linf(x, r).contains(adv)
        assert net.predict(adv) == y, f"adversarial inside the certified radius {r}"
        adv = pgd(tnet, x[None], np.array([y]), float(2 * r), kappa=10.0, steps=60,
                  restarts=4)[0]
        far += net.predict(adv) != y
    # the same attack succeeds at twice the radius (8 of 8 when measured): its silence inside
    # the radius means something
    assert far >= 4
