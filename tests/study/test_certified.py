"""Certified training: its bounds contain what they bound, CROWN is exact on linear networks,
and two epochs of IBP training certify more inputs (by radiusguard's sound stages) than
standard training of the same network and seed."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from study.certified.bounds import crown_margins, ibp_margins  # noqa: E402
from study.certified.train import Schedule, train_certified  # noqa: E402


def _nets(seed: int):
    torch.manual_seed(seed)
    fnn = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                        nn.Linear(16, 4))
    sig = nn.Sequential(nn.Flatten(), nn.Linear(12, 10), nn.Sigmoid(), nn.Linear(10, 4))
    cnn = nn.Sequential(nn.Conv2d(1, 3, 2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                        nn.Linear(3 * 1 * 1, 8), nn.ReLU(), nn.Linear(8, 4))
    return {"fnn": (fnn, (1, 3, 4)), "sigmoid": (sig, (1, 3, 4)), "cnn": (cnn, (1, 3, 3))}


def _sampled_margins(model, x, eps, y, n=300):
    gen = torch.Generator().manual_seed(1)
    noise = (torch.rand((n, *x.shape[1:]), generator=gen) * 2 - 1) * eps
    z = (x + noise).clamp(0, 1)
    corners = (x + eps * torch.sign(torch.rand((n, *x.shape[1:]), generator=gen) - 0.5))
    z = torch.cat([z, corners.clamp(0, 1)])
    with torch.no_grad():
        out = model(z)
    return out[:, y][:, None] - out


@pytest.mark.parametrize("kind", ["fnn", "sigmoid", "cnn"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bounds_contain_sampled_margins(kind, seed) -> None:
    model, shape = _nets(seed)[kind]
    x = torch.rand((1, *shape), generator=torch.Generator().manual_seed(seed))
    y = int(model(x).argmax())
    for eps in (0.01, 0.1, 0.3):
        yy = torch.tensor([y])
        bounds = [ibp_margins(model, x, eps, yy)[0]]
        if kind != "sigmoid":
            bounds.append(crown_margins(model, x, eps, yy)[0])
        sampled = _sampled_margins(model, x, eps, y)
        for b in bounds:
            assert torch.all(b[None, :] <= sampled + 1e-5), (kind, eps)


def test_crown_is_exact_on_a_linear_network() -> None:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 5), nn.Linear(5, 3))
    x = torch.rand((1, 6))
    y = torch.tensor([int(model(x).argmax())])
    eps = 0.2
    w = (model[2].weight @ model[1].weight).detach()
    b = (model[2].weight @ model[1].bias + model[2].bias).detach()
    lo, hi = (x - eps).clamp(0, 1)[0], (x + eps).clamp(0, 1)[0]
    exact = []
    for j in range(3):
        a = w[y.item()] - w[j]
        exact.append(float((torch.where(a > 0, lo, hi) * a).sum() + b[y.item()] - b[j]))
    crown = crown_margins(model, x, eps, y)[0].detach().numpy()
    ibp = ibp_margins(model, x, eps, y)[0].detach().numpy()
    assert np.allclose(crown, exact, atol=1e-5)
    assert np.all(ibp <= crown + 1e-5)


def test_schedule_ramps_eps_kappa_and_beta() -> None:
    s = Schedule(0.2, "crown-ibp", epochs=10, warmup=2, ramp=4)
    assert s.at(0) == (0.0, 1.0, 1.0) and s.at(2) == (0.0, 1.0, 1.0)
    assert s.at(4) == pytest.approx((0.1, 0.5, 0.5))
    assert s.at(9) == pytest.approx((0.2, 0.0, 0.0))
    assert Schedule(0.2, "ibp").at(100)[1] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="method"):
        Schedule(0.2, "pgd")


def test_two_epochs_of_certified_training_certify_more_than_standard(tmp_path) -> None:
    from study.data import load_mnist
    from study.export import export_onnx
    from verifier.decide import decide_many
    from verifier.onnx.importer import load_onnx

    data = load_mnist()
    x, y = data.train_x[:10000], data.train_y[:10000]
    test_x, test_y = data.test_x[:150], data.test_y[:150]
    eps = 0.08
    proved = {}
    for name, kappa_end in (("standard", 1.0), ("certified", 0.0)):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(784, 50), nn.ReLU(), nn.Linear(50, 10))
        train_certified(model, x, y, Schedule(eps * 2, "ibp", epochs=2, warmup=0, ramp=1,
                                              kappa_end=kappa_end / 2 + 0.5), log=lambda _: None)
        path = tmp_path / f"{name}.onnx"
        export_onnx(model, path, check_x=test_x[:8])
        net = load_onnx(path)
        proofs = decide_many(net, test_x.reshape(150, -1), eps, jobs=1)
        correct = net.forward(test_x.reshape(150, -1)).argmax(1) == test_y
        proved[name] = sum(p.proved and c for p, c in zip(proofs, correct, strict=True))
    assert proved["certified"] > proved["standard"] + 20, proved
