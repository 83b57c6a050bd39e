"""ONNX import of graphs (residual Add, Sub, Concat, LeakyRelu) against onnxruntime."""

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper

from tests.verifier import onnx_builders as B
from verifier.box import InputBox
from verifier.domains.deepzono.transfers import DEEPZONO
from verifier.network import (
    INPUT,
    Add,
    Concat,
    Conv,
    Dense,
    LeakyRelu,
    Scale,
    UnsupportedModelError,
)
from verifier.onnx.importer import from_onnx_model
from verifier.walk import Plan, output_bounds

RNG = np.random.default_rng(11)


def _w(*shape, s=0.4):
    return RNG.normal(size=shape) * s


def _check(model, in_shape, n=6):
    """The imported network's forward pass equals onnxruntime's, and DeepZono's bounds hold."""
    net = from_onnx_model(model)
    x = np.random.default_rng(0).uniform(size=(n, *in_shape))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    want = sess.run(None, {"input": x.astype(np.float32)})[0]
    np.testing.assert_allclose(net.forward(x), want.reshape(n, -1), rtol=1e-4, atol=1e-5)
    box = InputBox.linf(x[0].reshape(-1), 0.02)
    lo, hi = output_bounds(Plan.of(net, DEEPZONO), box)
    out = net.forward(np.random.default_rng(1).uniform(box.lower, box.upper,
                                                       size=(100, net.input_size)))
    assert np.all(out >= lo) and np.all(out <= hi)
    return net


def _conv(inits, name, src, dst, oc, ic, k=3, **kw):
    inits[f"{name}w"], inits[f"{name}b"] = _w(oc, ic, k, k), _w(oc, s=0.1)
    return helper.make_node("Conv", [src, f"{name}w", f"{name}b"], [dst], kernel_shape=[k, k],
                            **kw)


def _head(inits, src, size, out=3):
    inits["wh"], inits["bh"] = _w(out, size), _w(out, s=0.1)
    return [helper.make_node("Flatten", [src], ["fh"]),
            helper.make_node("Gemm", ["fh", "wh", "bh"], ["logits"], transB=1)]


def _bn(inits, name, src, dst, c):
    inits.update({f"{name}s": RNG.uniform(0.5, 2, c), f"{name}t": _w(c), f"{name}m": _w(c),
                  f"{name}v": RNG.uniform(0.5, 2, c)})
    return helper.make_node("BatchNormalization", [src, *(f"{name}{k}" for k in "stmv")], [dst])


def _block(inits, name, src, dst, c, bn=False):
    """relu(x + conv(relu(conv(x)))), both convs 3x3 pad 1 (optionally with BatchNorm)."""
    nodes = [_conv(inits, f"{name}1", src, f"{name}y1", c, c, pads=[1, 1, 1, 1])]
    y1 = f"{name}y1"
    if bn:
        nodes.append(_bn(inits, f"{name}n1", y1, f"{name}z1", c))
        y1 = f"{name}z1"
    nodes += [helper.make_node("Relu", [y1], [f"{name}r"]),
              _conv(inits, f"{name}2", f"{name}r", f"{name}y2", c, c, pads=[1, 1, 1, 1])]
    y2 = f"{name}y2"
    if bn:
        nodes.append(_bn(inits, f"{name}n2", y2, f"{name}z2", c))
        y2 = f"{name}z2"
    return [*nodes, helper.make_node("Add", [src, y2], [f"{name}s"]),
            helper.make_node("Relu", [f"{name}s"], [dst])]


def test_residual_block():
    inits = {}
    nodes = [*_block(inits, "b", "input", "o", 2), *_head(inits, "o", 2 * 6 * 6)]
    net = _check(B.model(nodes, inits, (2, 6, 6), 3), (2, 6, 6))
    kinds = [type(v).__name__ for v in net.layers]
    assert kinds == ["Conv", "Relu", "Conv", "Add", "Relu", "Dense"]
    assert net.sources == ((INPUT,), (0,), (1,), (INPUT, 2), (3,), (4,))


def test_downsampling_residual_block():
    inits = {}
    nodes = [_conv(inits, "a", "input", "a1", 4, 2, strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a1"], ["ar"]),
             _conv(inits, "b", "ar", "a2", 4, 4, pads=[1, 1, 1, 1]),
             _conv(inits, "s", "input", "sk", 4, 2, k=1, strides=[2, 2]),
             helper.make_node("Add", ["a2", "sk"], ["sum"]),
             helper.make_node("Relu", ["sum"], ["o"]), *_head(inits, "o", 4 * 3 * 3)]
    net = _check(B.model(nodes, inits, (2, 6, 6), 3), (2, 6, 6))
    assert sum(isinstance(v, Conv) for v in net.layers) == 3 and not net.is_chain


def test_concat_of_two_conv_branches():
    inits = {}
    nodes = [_conv(inits, "a", "input", "ya", 3, 2, pads=[1, 1, 1, 1]),
             _conv(inits, "b", "input", "yb", 2, 2, k=1),
             helper.make_node("Relu", ["ya"], ["ra"]),
             helper.make_node("Concat", ["ra", "yb"], ["cat"], axis=1),
             _conv(inits, "c", "cat", "yc", 2, 5),
             helper.make_node("Relu", ["yc"], ["o"]), *_head(inits, "o", 2 * 3 * 3)]
    net = _check(B.model(nodes, inits, (2, 5, 5), 3), (2, 5, 5))
    cat = next(v for v in net.layers if isinstance(v, Concat))
    assert cat.sizes == (3 * 25, 2 * 25)


def test_concat_on_a_negative_channel_axis_of_flat_tensors():
    inits = {"w1": _w(4, 6), "b1": _w(4), "w2": _w(3, 6), "b2": _w(3)}
    nodes = [helper.make_node("Gemm", ["input", "w1", "b1"], ["a"], transB=1),
             helper.make_node("Gemm", ["input", "w2", "b2"], ["b"], transB=1),
             helper.make_node("LeakyRelu", ["a"], ["la"], alpha=0.2),
             helper.make_node("Concat", ["la", "b"], ["c"], axis=-1),
             helper.make_node("Relu", ["c"], ["o"]), *_head(inits, "o", 7)]
    _check(B.model(nodes, inits, (6,), 3), (6,))


def test_sub_of_two_data_tensors():
    inits = {}
    nodes = [_conv(inits, "a", "input", "ya", 2, 2, pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["ya"], ["ra"]),
             helper.make_node("Sub", ["ra", "input"], ["d"]), *_head(inits, "d", 2 * 4 * 4)]
    net = _check(B.model(nodes, inits, (2, 4, 4), 3), (2, 4, 4))
    add = next(i for i, v in enumerate(net.layers) if isinstance(v, Add))
    neg = net.layers[net.sources[add][1]]
    assert isinstance(neg, Scale) and np.all(neg.a == -1) and np.all(neg.b == 0)


@pytest.mark.parametrize("alpha", [None, 0.0, 0.3])
def test_leaky_relu(alpha):
    inits = {}
    kw = {} if alpha is None else {"alpha": alpha}
    nodes = [_conv(inits, "a", "input", "y", 3, 1),
             helper.make_node("LeakyRelu", ["y"], ["r"], **kw), *_head(inits, "r", 3 * 3 * 3)]
    net = _check(B.model(nodes, inits, (1, 5, 5), 3), (1, 5, 5))
    want = float(np.float32(0.01 if alpha is None else alpha))  # attributes are float32
    assert net.is_chain and net.layers[1] == LeakyRelu(want)


def test_resnet_like_two_blocks_with_batch_norm_and_pools():
    inits = {}
    nodes = [_conv(inits, "stem", "input", "s", 4, 1, pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["s"], ["sr"]),
             *_block(inits, "p", "sr", "b1", 4, bn=True),
             *_block(inits, "q", "b1", "b2", 4, bn=True),
             helper.make_node("AveragePool", ["b2"], ["ap"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Dropout", ["ap"], ["dp"]),
             *_head(inits, "dp", 4 * 3 * 3)]
    net = _check(B.model(nodes, inits, (1, 6, 6), 3), (1, 6, 6))
    kinds = [type(v).__name__ for v in net.layers]
    assert "Scale" not in kinds  # every BatchNormalization folded into its conv
    assert kinds.count("Add") == 2 and kinds.count("Conv") == 6


def test_chain_models_still_import_as_chains():
    rng = np.random.default_rng(0)
    for model in (B.mlp(rng), B.cnn(rng)):
        net = from_onnx_model(model)
        assert net.is_chain and net.sources == ()


def test_no_fold_into_a_layer_another_node_reads():
    """BatchNorm, a constant Add, a Pad and a Scale each have a sibling reading the same
    layer; folding them into it would change what the sibling sees (onnxruntime disagrees)."""
    inits = {"pads": np.array([0, 0, 1, 1, 0, 0, 1, 1]), "k": _w(3 * 5 * 5), "half": [0.5]}
    nodes = [_conv(inits, "a", "input", "y", 3, 2, pads=[1, 1, 1, 1]),
             _bn(inits, "n", "y", "yn", 3),
             helper.make_node("Relu", ["y"], ["yr"]),
             helper.make_node("Add", ["yn", "yr"], ["s1"]),
             helper.make_node("Pad", ["s1", "pads"], ["p"]),
             _conv(inits, "b", "p", "pb", 3, 3),
             helper.make_node("MaxPool", ["p"], ["pm"], kernel_shape=[3, 3], strides=[1, 1]),
             helper.make_node("Add", ["pb", "pm"], ["s2"]),
             helper.make_node("Flatten", ["s2"], ["f"]),
             helper.make_node("Mul", ["f", "half"], ["h"]),
             helper.make_node("Add", ["h", "k"], ["hk"]),
             helper.make_node("Relu", ["h"], ["hr"]),
             helper.make_node("Sub", ["hk", "hr"], ["d"]), *_head(inits, "d", 3 * 5 * 5)]
    _check(B.model(nodes, inits, (2, 5, 5), 3), (2, 5, 5))


@pytest.mark.parametrize("op", ["Sum", "Concat"])
def test_a_join_of_one_tensor_is_that_tensor(op):
    # the BatchNorm after Sum(y) must not fold into y's conv, which the Relu also reads
    inits = {}
    kw = {"axis": 1} if op == "Concat" else {}
    nodes = [_conv(inits, "a", "input", "y", 2, 2, pads=[1, 1, 1, 1]),
             helper.make_node(op, ["y"], ["s"], **kw), _bn(inits, "n", "s", "sn", 2),
             helper.make_node("Relu", ["y"], ["r"]),
             helper.make_node("Add", ["sn", "r"], ["o"]), *_head(inits, "o", 2 * 16)]
    net = _check(B.model(nodes, inits, (2, 4, 4), 3), (2, 4, 4))
    assert [type(v) for v in net.layers][:2] == [Conv, Scale]


def test_folds_along_single_reader_edges_of_a_graph():
    """A BatchNorm in a branch folds into its conv; a constant Add into its branch's Gemm."""
    inits = {"w1": _w(5, 6), "b1": _w(5), "w2": _w(5, 6), "b2": _w(5), "c": _w(5)}
    nodes = [helper.make_node("Gemm", ["input", "w1", "b1"], ["a"], transB=1),
             helper.make_node("Gemm", ["input", "w2", "b2"], ["b"], transB=1),
             helper.make_node("Add", ["a", "c"], ["ac"]),
             helper.make_node("Relu", ["b"], ["br"]),
             helper.make_node("Add", ["ac", "br"], ["o"]), *_head(inits, "o", 5)]
    net = _check(B.model(nodes, inits, (6,), 3), (6,))
    assert [type(v) for v in net.layers] == [Dense, Dense, type(net.layers[2]), Add, Dense]


def test_a_transpose_read_by_two_dense_layers():
    inits = {"w1": _w(12, 4), "w2": _w(12, 4), "shape": np.array([-1, 12])}
    nodes = [helper.make_node("Transpose", ["input"], ["t"], perm=[0, 2, 3, 1]),
             helper.make_node("Reshape", ["t", "shape"], ["f"]),
             helper.make_node("MatMul", ["f", "w1"], ["a"]),
             helper.make_node("MatMul", ["f", "w2"], ["b"]),
             helper.make_node("Relu", ["b"], ["br"]),
             helper.make_node("Add", ["a", "br"], ["o"]), *_head(inits, "o", 4)]
    net = _check(B.model(nodes, inits, (3, 2, 2), 3), (3, 2, 2))
    assert [type(v) for v in net.layers][:2] == [Dense, Dense]


@pytest.mark.parametrize("op", ["Add", "Concat", "Sum"])
def test_a_tensor_joined_with_itself(op):
    inits = {}
    kw = {"axis": 1} if op == "Concat" else {}
    nodes = [_conv(inits, "a", "input", "y", 2, 1),
             helper.make_node(op, ["y", "y"], ["s"], **kw),
             helper.make_node("Relu", ["s"], ["r"]),
             *_head(inits, "r", (4 if op == "Concat" else 2) * 9)]
    net = _check(B.model(nodes, inits, (1, 5, 5), 3), (1, 5, 5))
    assert net.sources[1] == (0, 0)


def test_unsupported_graph_forms_name_the_node():
    inits = {}
    conv = _conv(inits, "a", "input", "y", 2, 2, pads=[1, 1, 1, 1])
    cases = {
        "axis": ([conv, helper.make_node("Concat", ["input", "y"], ["c"], axis=2, name="cat")],
                 r"Concat 'cat': only along channels.*axis 2"),
        "broadcast": ([_conv(inits, "p", "input", "q", 1, 2, pads=[1, 1, 1, 1]),
                       helper.make_node("Add", ["input", "q"], ["c"], name="plus")],
                      r"Add 'plus': data tensors of shapes \(2, 4, 4\), \(1, 4, 4\); broadcasting"),
        "mul": ([conv, helper.make_node("Mul", ["input", "y"], ["c"], name="times")],
                r"op Mul \(node 'times'\) combines 2 data tensors"),
        "constant": ([conv, helper.make_node("Concat", ["y", "wh"], ["c"], axis=1, name="cc")],
                     r"Concat 'cc': mixes data tensors with constants"),
        "op": ([conv, helper.make_node("Relu", ["input"], ["r"]),
                helper.make_node("Elu", ["r"], ["e"], name="elu"),
                helper.make_node("Add", ["e", "y"], ["c"])], r"unsupported ONNX op Elu \(node 'elu'\)"),
        "alpha": ([helper.make_node("LeakyRelu", ["input"], ["c"], alpha=1.5, name="lk")],
                  r"LeakyRelu 'lk': alpha 1.5"),
    }
    for name, (nodes, message) in cases.items():
        inits["wh"] = _w(2, 2, 4, 4)
        body = [*nodes, helper.make_node("Flatten", ["c"], ["logits"])]
        size = 64 if name == "axis" else 32
        with pytest.raises(UnsupportedModelError, match=message):
            from_onnx_model(B.model(body, dict(inits), (2, 4, 4), size))


def _random_onnx_dag(rng):
    """Random nodes over [2, 4, 4] tensors, each reading random earlier tensors (so many are
    read twice): convs, a zero Pad read by one or two convs, BatchNorm, constant Add/Mul,
    activations, Identity, Add/Sub/Sum and a Concat (back to 2 channels by a 1x1 conv); the
    tensors nobody read are summed into a dense head."""
    inits, nodes, live, read = {}, [], ["input"], set()
    for k in range(int(rng.integers(3, 9))):
        pick = [live[int(i)] for i in rng.integers(0, len(live), size=3)]
        a, b, c = pick
        out, kind = f"t{k}", rng.integers(0, 9)
        if kind == 0:
            nodes.append(_conv(inits, f"c{k}", a, out, 2, 2, pads=[1, 1, 1, 1]))
        elif kind == 1:
            inits[f"p{k}"] = np.array([0, 0, 1, 1, 0, 0, 1, 1])
            nodes += [helper.make_node("Pad", [a, f"p{k}"], [f"{out}p"]),
                      _conv(inits, f"c{k}", f"{out}p", out, 2, 2)]
            if rng.random() < 0.5:
                nodes += [_conv(inits, f"d{k}", f"{out}p", f"{out}q", 2, 2),
                          helper.make_node("Add", [f"{out}q", b], [f"{out}r"])]
                live.append(f"{out}r")
        elif kind == 2:
            nodes.append(_bn(inits, f"n{k}", a, out, 2))
        elif kind in (3, 4):
            inits[f"k{k}"] = _w(1, 2, 1, 1)
            nodes.append(helper.make_node("Add" if kind == 3 else "Mul", [a, f"k{k}"], [out]))
        elif kind == 5:
            op = ["Relu", "LeakyRelu", "Identity"][int(rng.integers(0, 3))]
            nodes.append(helper.make_node(op, [a], [out]))
        elif kind == 6:
            nodes.append(helper.make_node(["Add", "Sub"][int(rng.integers(0, 2))], [a, b], [out]))
        elif kind == 7:
            nodes.append(helper.make_node("Sum", [a, b, c], [out]))
        else:
            nodes += [helper.make_node("Concat", [a, b], [f"{out}c"], axis=1),
                      _conv(inits, f"c{k}", f"{out}c", out, 2, 4, k=1)]
        read.update(pick if kind in (6, 7, 8) else [a])
        read.update([b] if kind == 1 and f"{out}r" in live else [])
        live.append(out)
    sinks = [t for t in live if t not in read and t != "input"] or [live[-1]]
    if len(sinks) > 1:
        nodes.append(helper.make_node("Sum", sinks, ["sink"]))
        sinks = ["sink"]
    return B.model([*nodes, *_head(inits, sinks[0], 32)], inits, (2, 4, 4), 3)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_random_graphs_match_onnxruntime(seed):
    _check(_random_onnx_dag(np.random.default_rng(seed)), (2, 4, 4), n=3)
