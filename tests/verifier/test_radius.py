"""Radius search: Algorithm 1 on its grid, the secant search never below it, the batch API."""

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from verifier import VerifierSettings, is_robust, plan_for, radius_result, score_many
from verifier.onnx.importer import load_onnx
from verifier.score import certified_margin
from verifier.search import SearchHint, bisect, grid_size, run_search, secant, secant_search

MODELS = Path(__file__).resolve().parents[2] / "models"


@pytest.fixture(scope="module")
def fnn():
    return plan_for(load_onnx(MODELS / "fnn-3x30-relu.onnx"))


@pytest.fixture(scope="module")
def images():
    data = np.load(MODELS / "mnist_test_1000.npz")
    return data["x"].reshape(len(data["x"]), -1) / 255.0, data["y"]


def test_grid_matches_algorithm_1():
    # 0.256 halves 9 times before the width 0.0005 is below 0.001
    assert grid_size(0.256, 0.001) == 512
    assert grid_size(1.0, 0.3) == 4


@pytest.mark.parametrize("root", [0.0, 0.0004, 0.0123, 0.1, 0.2555, 0.3])
def test_searches_on_a_known_margin(root):
    margin = lambda eps: (root - eps) * (1 + 40 * eps)  # noqa: E731  (decreasing, concave-ish)
    low_b, calls_b = bisect(margin, 0.256, 0.001)
    low_s, calls_s = secant(margin, 0.256, 0.001)
    low_m, calls_m = run_search(secant_search(0.256, 0.001, SearchHint(margin(0.0))), margin)
    step = 0.256 / 512
    assert low_b == low_s == low_m
    if root > 0:  # the margin at x replaces the pass at eps 0, the probes are the same
        assert calls_m == calls_s - 1
    assert low_b <= root and (root >= 0.256 - step or low_b + step >= root)
    assert calls_b == 9


@pytest.fixture(params=[0.0012, 0.0037, 0.006, 0.0213, 0.05])
def cliff_root(request):
    return request.param


def test_a_margin_falling_off_a_cliff_takes_few_passes(cliff_root):
    """A deep network's margin: loss ~ eps^5, failed probes at -1e5. The chord alone crept up
    a grid step at a time (up to 13 passes); the loss model in log eps needs at most 4."""
    margin = lambda eps: 7.0 * (1.0 - (eps / cliff_root) ** 5)  # noqa: E731
    low_b, _ = bisect(margin, 0.256, 0.001)
    low_s, calls = run_search(secant_search(0.256, 0.001, SearchHint(margin(0.0))), margin)
    assert low_s == low_b
    assert calls <= 4


@settings(max_examples=200, deadline=None)
@given(root=st.one_of(st.just(0.0), st.floats(1e-5, 0.3)), power=st.floats(1.0, 7.0), depth=st.integers(0, 12),
       linear=st.one_of(st.none(), st.floats(0.0, 1.0)))
def test_a_hint_steers_probes_never_the_radius(root, power, depth, linear):
    """Whatever the hint says of depth and linear radius, the secant search returns what
    bisection returns on a monotone margin."""
    margin = lambda eps: 3.0 * (1.0 - (eps / root) ** power) if root > 0 else -1.0  # noqa: E731
    low_b, _ = bisect(margin, 0.256, 0.001)
    low_s, calls = run_search(
        secant_search(0.256, 0.001, SearchHint(margin(0.0), depth, linear)), margin)
    assert low_s == low_b
    assert calls <= 12


@pytest.mark.parametrize("root", [0.0011, 0.0023, 0.0051, 0.0204])
def test_a_deep_networks_hint_puts_the_first_probe_near_the_root(root):
    """Depth 11, linear radius 8x the root (as on the 4-block ResNet): the first probe lands
    below the root, where passes are cheap, and the search ends in a few."""
    margin = lambda eps: 2.0 * (1.0 - (eps / root) ** 4)  # noqa: E731
    search = secant_search(0.256, 0.001, SearchHint(margin(0.0), 11, 8 * root))
    first = next(search)
    assert first <= root
    low, calls = run_search(secant_search(0.256, 0.001, SearchHint(margin(0.0), 11, 8 * root)),
                            margin)
    assert low == bisect(margin, 0.256, 0.001)[0]
    assert calls <= 5


def test_a_shallow_networks_search_ignores_the_linear_radius():
    margin = lambda eps: (0.05 - eps) * 4  # noqa: E731
    probes = {}
    for linear in (None, 0.001, 0.5):
        s = secant_search(0.256, 0.001, SearchHint(margin(0.0), 3, linear))
        probes[linear] = next(s)
    assert len(set(probes.values())) == 1


def test_secant_at_least_bisect_with_fewer_passes(fnn, images):
    xs, _ = images
    s, b = [], []
    for x in xs[:60]:
        s.append(radius_result(fnn, x, VerifierSettings(search="secant")))
        b.append(radius_result(fnn, x, VerifierSettings(search="bisect")))
    assert all(a.radius >= c.radius for a, c in zip(s, b, strict=True))
    assert np.mean([r.calls for r in s]) < np.mean([r.calls for r in b])


def test_margin_at_x_saves_passes_never_radius(fnn, images):
    xs, _ = images
    with_m0 = score_many(fnn, xs[:40], jobs=1)
    plain = []
    for x in xs[:40]:
        label = fnn.net.predict(x)
        margin = lambda eps, x=x, label=label: certified_margin(fnn, x, eps, label)  # noqa: E731
        plain.append(run_search(secant_search(0.256, 0.001), margin))
    assert [r.radius for r in with_m0] == [r for r, _ in plain]
    assert np.mean([r.calls for r in with_m0]) <= np.mean([c for _, c in plain]) - 1
    assert np.mean([r.calls for r in with_m0]) < 4.5


def test_a_label_the_network_does_not_predict_costs_one_pass(fnn, images):
    xs, _ = images
    x = xs[0]
    other = (fnn.net.predict(x) + 1) % fnn.net.n_outputs
    r = radius_result(fnn, x, label=other)
    assert (r.radius, r.predicted, r.calls) == (0.0, other, 1)


def test_radius_is_certified_and_tight_on_the_grid(fnn, images):
    xs, _ = images
    step = 0.256 / 512
    for x in xs[:10]:
        r = radius_result(fnn, x)
        assert r.radius == 0.0 or is_robust(fnn, x, r.radius, r.predicted)
        assert not is_robust(fnn, x, r.radius + step, r.predicted)


def test_batch_api_keeps_order_on_two_threads(fnn, images):
    xs, _ = images
    one = score_many(fnn, xs[:16], jobs=1)
    two = score_many(fnn, xs[:16], jobs=2)
    assert [r.radius for r in one] == [r.radius for r in two]
    assert [r.predicted for r in one] == [int(np.argmax(fnn.net.forward(x))) for x in xs[:16]]


def test_valid_inputs_have_larger_radii_than_misclassified(fnn, images):
    xs, ys = images
    res = score_many(fnn, xs[:300], jobs=2)
    radii = np.array([r.radius for r in res])
    ok = np.array([r.predicted for r in res]) == ys[:300]
    assert (~ok).sum() >= 3
    assert radii[ok].mean() > 2 * radii[~ok].mean()


def test_batched_radii_equal_one_at_a_time(fnn, images):
    xs, _ = images
    batched = score_many(fnn, xs[:20], jobs=1)
    single = [radius_result(fnn, x) for x in xs[:20]]
    assert batched == single
    assert score_many(fnn, xs[:1], jobs=2) == single[:1]  # one input, more threads than inputs


def test_settings_are_checked_once_with_clear_errors():
    with pytest.raises(ValueError, match="domain must be one of"):
        VerifierSettings(domain="polyhedra")
    with pytest.raises(ValueError, match="search must be one of"):
        VerifierSettings(search="linear")
    with pytest.raises(ValueError, match="positive"):
        VerifierSettings(tol=0.0)
    with pytest.raises(ValueError, match="input_lower must be below"):
        VerifierSettings(input_lower=1.0, input_upper=0.0)


def test_parabola_roots_match_numpy():
    from verifier.search import _parabola_roots

    rng = np.random.default_rng(5)
    for _ in range(200):
        ks = sorted(rng.choice(100, size=3, replace=False).tolist())
        probes = {k: float(v) for k, v in zip(ks, rng.normal(size=3), strict=True)}
        a, b, c = np.polyfit(ks, [probes[k] for k in ks], 2)
        want = sorted(r.real for r in np.roots([a, b, c]) if abs(r.imag) < 1e-9)
        got = sorted(_parabola_roots(ks, probes))
        assert got == pytest.approx(want, rel=1e-6, abs=1e-6)
