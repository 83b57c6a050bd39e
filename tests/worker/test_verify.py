"""`radiusguard verify`: holds only where no counterexample exists, on hand-written specs."""

import numpy as np
import pytest
from onnx import helper

from tests.verifier import onnx_builders as B
from verifier.onnx.importer import from_onnx_model
from verifier.settings import DOMAIN_NAMES
from verifier.vnnlib.parser import VnnlibError, parse
from worker.cli import main
from worker.verify import verify


def _spec(lower, upper, disjuncts: list[list[str]], n_out: int) -> str:
    """A VNN-LIB text: the box, then (or (and atoms...) ...) as the unsafe outputs."""
    lines = [f"(declare-const X_{i} Real)" for i in range(len(lower))]
    lines += [f"(declare-const Y_{j} Real)" for j in range(n_out)]
    for i, (lo, hi) in enumerate(zip(lower, upper, strict=True)):
        lines += [f"(assert (>= X_{i} {float(lo)!r}))", f"(assert (<= X_{i} {float(hi)!r}))"]
    ors = " ".join("(and " + " ".join(d) + ")" for d in disjuncts)
    lines.append(f"(assert (or {ors}))")
    return "\n".join(lines) + "\n"


def _other_wins(c: int, n_out: int) -> list[list[str]]:
    return [[f"(>= Y_{j} Y_{c})"] for j in range(n_out) if j != c]


def _unsafe_at(dis: list[list[str]], text: str, net, x) -> bool:
    """Whether the network's output at x satisfies some disjunct (evaluated by parse + C y + d)."""
    y = net.forward(x)
    spec = parse(text)
    return any(np.all(dj.C @ y + dj.d <= 0) for dj in spec.disjuncts)


@pytest.fixture(scope="module")
def model():
    return B.mlp(np.random.default_rng(5))


@pytest.fixture(scope="module")
def net(model):
    return from_onnx_model(model)


@pytest.mark.parametrize("domain", DOMAIN_NAMES)
def test_a_small_box_holds_and_sampling_agrees(net, domain):
    x = np.random.default_rng(0).uniform(size=12)
    c = net.predict(x)
    dis = _other_wins(c, 4)
    text = _spec(x - 1e-3, x + 1e-3, dis, 4)
    answer = verify(net, parse(text), domain)
    assert answer.result == "holds" and answer.proven == answer.disjuncts == 3
    pts = np.random.default_rng(1).uniform(x - 1e-3, x + 1e-3, size=(500, 12))
    assert np.all(np.argmax(net.forward(pts), axis=1) == c)


@pytest.mark.parametrize("domain", DOMAIN_NAMES)
def test_a_box_with_a_known_counterexample_is_unknown(net, domain):
    rng = np.random.default_rng(2)
    x = rng.uniform(size=12)
    c = net.predict(x)
    other = next(p for p in rng.uniform(size=(1000, 12)) if net.predict(p) != c)
    lower, upper = np.minimum(x, other), np.maximum(x, other)
    dis = _other_wins(c, 4)
    text = _spec(lower, upper, dis, 4)
    assert _unsafe_at(dis, text, net, other)  # the known point is a counterexample
    assert verify(net, parse(text), domain).result == "unknown"


def test_the_box_is_not_clipped_to_the_unit_range(net):
    """A counterexample at negative inputs: clipping the box to [0, 1] would hide it."""
    rng = np.random.default_rng(3)
    x = rng.uniform(size=12) - 3.0
    k = net.predict(x)
    dis = [[f"(>= Y_{k} Y_{j})" for j in range(4) if j != k]]
    text = _spec(x - 0.01, x + 0.01, dis, 4)
    assert _unsafe_at(dis, text, net, x)
    assert verify(net, parse(text)).result == "unknown"


@pytest.mark.parametrize("domain", DOMAIN_NAMES)
def test_random_specs_never_hold_where_a_sample_is_unsafe(net, domain):
    """Property: whenever verify says holds, no sampled point of any disjunct is unsafe."""
    rng = np.random.default_rng(4)
    held = 0
    for _ in range(30):
        x = rng.uniform(size=12)
        eps = rng.choice([1e-3, 1e-2, 5e-2])
        i, j = rng.choice(4, size=2, replace=False)
        dis = [[f"(<= (- Y_{i} Y_{j}) {rng.normal():.3f})"], [f"(>= Y_{j} {rng.normal():.3f})"]]
        text = _spec(x - eps, x + eps, dis, 4)
        spec = parse(text)
        if verify(net, spec, domain).result != "holds":
            continue
        held += 1
        ys = net.forward(rng.uniform(x - eps, x + eps, size=(300, 12)))
        for dj in spec.disjuncts:
            assert not np.any(np.all(ys @ dj.C.T + dj.d <= 0, axis=1))
    assert held > 0


def test_softmax_models_accept_only_pairwise_comparisons():
    rng = np.random.default_rng(6)
    nodes = [helper.make_node("Gemm", ["input", "w", "b"], ["z"], transB=1),
             helper.make_node("Softmax", ["z"], ["logits"], axis=1)]
    net = from_onnx_model(B._model(nodes, {"w": rng.normal(size=(3, 4)), "b": rng.normal(size=3)},
                                   (4,), 3))
    x = rng.uniform(size=4)
    c = net.predict(x)
    ok = _spec(x - 1e-3, x + 1e-3, _other_wins(c, 3), 3)
    assert verify(net, parse(ok)).result == "holds"
    with pytest.raises(VnnlibError, match="Softmax"):
        verify(net, parse(_spec(x - 1e-3, x + 1e-3, [[f"(>= Y_{c} 0.5)"]], 3)))


def test_cli_verify(tmp_path, model, net, capsys):
    x = np.random.default_rng(0).uniform(size=12)
    onnx_path, spec_path = tmp_path / "m.onnx", tmp_path / "p.vnnlib"
    onnx_path.write_bytes(model.SerializeToString())
    spec_path.write_text(_spec(x - 1e-3, x + 1e-3, _other_wins(net.predict(x), 4), 4))
    assert main(["verify", str(onnx_path), str(spec_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("holds time=") and "domain=deepzono" in out
    spec_path.write_text(_spec(x[:3] - 1e-3, x[:3] + 1e-3, [["(>= Y_1 Y_0)"]], 4))
    assert main(["verify", str(onnx_path), str(spec_path)]) == 2
    assert "3 inputs" in capsys.readouterr().err


@pytest.mark.parametrize("domain", DOMAIN_NAMES)
def test_colour_conv_model_with_normalisation(domain):
    """A [3, 6, 6] conv model with per-channel normalisation: a point's small box holds, a box
    reaching a differently classified point (found by sampling) does not."""
    rng = np.random.default_rng(8)
    inits = {"mean": np.array([0.5, 0.4, 0.3]).reshape(1, 3, 1, 1),
             "std": np.array([0.2, 0.25, 0.3]).reshape(1, 3, 1, 1),
             "k": rng.normal(size=(4, 3, 3, 3)) * 0.3, "c": rng.normal(size=4) * 0.1,
             "w": rng.normal(size=(3, 4 * 2 * 2)) * 0.3, "b": rng.normal(size=3) * 0.1}
    nodes = [helper.make_node("Sub", ["input", "mean"], ["s"]),
             helper.make_node("Div", ["s", "std"], ["d"]),
             helper.make_node("Conv", ["d", "k", "c"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["y"], ["r"]),
             helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[3, 3], strides=[3, 3]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "w", "b"], ["logits"], transB=1)]
    net = from_onnx_model(B._model(nodes, inits, (3, 6, 6), 3))
    x = rng.uniform(size=108)
    c = net.predict(x)
    assert verify(net, parse(_spec(x - 1e-3, x + 1e-3, _other_wins(c, 3), 3)), domain).result == "holds"
    other = next(p for p in rng.uniform(size=(2000, 108)) if net.predict(p) != c)
    text = _spec(np.minimum(x, other), np.maximum(x, other), _other_wins(c, 3), 3)
    assert _unsafe_at(_other_wins(c, 3), text, net, other)
    assert verify(net, parse(text), domain).result == "unknown"
