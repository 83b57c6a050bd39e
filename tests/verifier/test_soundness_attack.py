"""A strong L-infinity PGD attack never beats a certified radius on the shipped MNIST models.

The attack (random restarts, projected sign-gradient ascent on the logit margin, float64
torch copy of the ONNX model) is shown to be strong by succeeding a few radii further out.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from verifier import VerifierSettings, certified_radius
from verifier.box import InputBox
from verifier.network import Network
from verifier.onnx.importer import load_onnx

torch = pytest.importorskip("torch")
onnx2torch = pytest.importorskip("onnx2torch")
onnx = pytest.importorskip("onnx")

MODELS_DIR = Path(__file__).resolve().parents[2] / "models"
SLICE_PATH = MODELS_DIR / "mnist_test_1000.npz"
# model name -> number of correctly classified test images attacked
CASES = {
    "cnn-6-16-128-relu": 30,
    "fnn-3x30-relu": 50,
    "fnn-3x30-sigmoid": 50,
    "fnn-3x30-tanh": 50,
}
RESTARTS, STEPS = 10, 100
# Multiple of the certified radius at which PGD must succeed on >= STRONG_SHARE of the
# images. Measured shares at 3x: relu 100%, sigmoid 90%, tanh 26%, cnn 3% (DeepZono is
# looser there); at 4x tanh 78%; at 5x / 6x cnn 43% / 80%.
STRONG_FACTOR = {
    "cnn-6-16-128-relu": 6.0,
    "fnn-3x30-relu": 3.0,
    "fnn-3x30-sigmoid": 3.0,
    "fnn-3x30-tanh": 4.0,
}
STRONG_SHARE = 0.3


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Small batches run faster on one thread than on contended cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@dataclass(frozen=True)
class Case:
    """A model with its float64 torch copy, attacked images, labels and certified radii."""

    net: Network
    model: torch.nn.Module
    images: np.ndarray  # [N, 784] in [0, 1]
    labels: np.ndarray
    indices: np.ndarray  # positions in the test slice
    radii: np.ndarray  # max of the bisect and secant certified radii


_CACHE: dict[str, Case] = {}


def _case(name: str) -> Case:
    """Load the model and certify its first correctly classified images (cached per module)."""
    if name in _CACHE:
        return _CACHE[name]
    path = MODELS_DIR / f"{name}.onnx"
    if not path.is_file():
        pytest.skip(f"{path.name} is not shipped")
    net = load_onnx(path)
    model = onnx2torch.convert(onnx.load(str(path))).double().eval()
    with np.load(SLICE_PATH, allow_pickle=False) as z:
        x_all = z["x"].reshape(len(z["x"]), -1).astype(np.float64) / 255.0
        y_all = z["y"].astype(np.int64)
    correct = np.flatnonzero(np.argmax(net.forward(x_all), axis=1) == y_all)[: CASES[name]]
    images, labels = x_all[correct], y_all[correct]
    radii = np.array(
        [
            max(certified_radius(net, x, VerifierSettings(search=s), int(y)) for s in ("bisect", "secant"))
            for x, y in zip(images, labels, strict=True)
        ]
    )
    _CACHE[name] = Case(net, model, images, labels, correct, radii)
    return _CACHE[name]


def pgd(
    model: torch.nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    eps: np.ndarray,
    restarts: int = RESTARTS,
    steps: int = STEPS,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """L-infinity PGD on max_{j != y} z_j - z_y with step eps/10, projected onto the clipped
    eps-ball; restart 0 starts at x, the others uniformly in the ball.

    Returns (found [N] bool, points [N, 784]) where points are the first misclassified
    iterates (or x where none was found).
    """
    gen = torch.Generator().manual_seed(seed)
    n = len(images)
    x = torch.tensor(images, dtype=torch.float64).repeat(restarts, 1)
    y = torch.tensor(labels, dtype=torch.int64).repeat(restarts)
    e = torch.tensor(eps, dtype=torch.float64).repeat(restarts)[:, None]
    lo, hi = (x - e).clamp(0.0, 1.0), (x + e).clamp(0.0, 1.0)
    start = lo + (hi - lo) * torch.rand(x.shape, generator=gen, dtype=torch.float64)
    start[:n] = x[:n]
    adv = start.clone()
    found = torch.zeros(len(x), dtype=torch.bool)
    best = x.clone()
    rows = torch.arange(len(x))
    for _ in range(steps + 1):
        adv.requires_grad_(True)
        logits = model(adv.view(-1, 1, 28, 28))
        hit = (logits.argmax(dim=1) != y) & ~found
        best[hit] = adv.detach()[hit]
        found |= hit
        others = logits.clone()
        others[rows, y] = -torch.inf
        margin = others.max(dim=1).values - logits[rows, y]
        (grad,) = torch.autograd.grad(margin.sum(), adv)
        with torch.no_grad():
            adv = torch.minimum(torch.maximum(adv + (e / 10) * grad.sign(), lo), hi)
    found_img = found.view(restarts, n).any(dim=0).numpy()
    first = found.view(restarts, n).float().argmax(dim=0)
    points = best.view(restarts, n, -1)[first, torch.arange(n)].numpy()
    return found_img, points


def _confirmed(
    net: Network, images: np.ndarray, labels: np.ndarray, eps: np.ndarray, points: np.ndarray
) -> np.ndarray:
    """Which points lie in the verifier's input box for eps (InputBox.linf: the clipped ball,
    rounded outward) and are misclassified by the numpy forward."""
    inside = np.array(
        [InputBox.linf(x, e).contains(p) for x, e, p in zip(images, eps, points, strict=True)]
    )
    return inside & (np.argmax(net.forward(points), axis=1) != labels)


@pytest.mark.parametrize("name", list(CASES))
def test_pgd_never_beats_certified_radius(name: str) -> None:
    """No PGD point in the certified ball changes the class: a hit would be a soundness bug."""
    case = _case(name)
    assert len(case.images) >= min(CASES[name], 30)
    found, points = pgd(case.model, case.images, case.labels, case.radii)
    broken = np.flatnonzero(_confirmed(case.net, case.images, case.labels, case.radii, points))
    assert broken.size == 0, "certified radius beaten by PGD: " + "; ".join(
        f"{name} test index {case.indices[k]}: radius {case.radii[k]}, adversarial at "
        f"L-inf {np.max(np.abs(points[k] - case.images[k])):.6g}, "
        f"class {np.argmax(case.net.forward(points[k]))} != {case.labels[k]}"
        for k in broken
    )
    assert not found.any(), f"PGD misclassified {found.sum()} points the numpy forward does not"


@pytest.mark.parametrize("name", list(CASES))
def test_pgd_is_strong_a_few_radii_out(name: str) -> None:
    """The same PGD does succeed a few radii out, so its silence above is meaningful."""
    case = _case(name)
    keep = case.radii > 0
    images, labels = case.images[keep], case.labels[keep]
    eps = STRONG_FACTOR[name] * case.radii[keep]
    found, points = pgd(case.model, images, labels, eps)
    confirmed = _confirmed(case.net, images, labels, eps, points)
    assert np.array_equal(found, confirmed)
    share = confirmed.mean()
    assert share >= STRONG_SHARE, (
        f"{name}: PGD succeeds on only {share:.0%} at {STRONG_FACTOR[name]}x the radius"
    )
