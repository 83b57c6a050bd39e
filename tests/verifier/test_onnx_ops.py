"""Ops lowered onto the existing layer kinds: import vs onnxruntime, and sound bounds after."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from verifier.box import InputBox
from verifier.domains import get_domain
from verifier.network import Conv, Dense, MaxPool, Scale, UnsupportedModelError
from verifier.onnx.importer import from_onnx_model
from verifier.settings import DOMAIN_NAMES
from verifier.walk import Plan, output_bounds

RNG = np.random.default_rng(7)


def _model(nodes, inits, in_shape, out_size, opset=13) -> onnx.ModelProto:
    """Like onnx_builders._model, but integer constants (pads, shapes, axes) stay int64."""
    tensors = [numpy_helper.from_array(v.astype(np.int64) if v.dtype.kind == "i" else
                                       v.astype(np.float32), k)
               for k, v in ((k, np.asarray(v)) for k, v in inits.items())]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *in_shape])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", out_size])], tensors)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    onnx.checker.check_model(model)
    return model


def _w(*shape, s=0.4):
    return RNG.normal(size=shape) * s


def _ort(model, x):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x.astype(np.float32)})[0]


def _check(model, in_shape, n=6):
    """The imported network's forward pass equals onnxruntime's on random inputs in [0, 1]."""
    net = from_onnx_model(model)
    x = np.random.default_rng(0).uniform(size=(n, *in_shape))
    want = _ort(model, x)
    np.testing.assert_allclose(net.forward(x), want.reshape(n, -1), rtol=1e-4, atol=1e-5)
    return net


def _head(cur: str, size: int, inits: dict, out=3) -> list:
    """Flatten then a Gemm to `out` logits."""
    inits["wh"], inits["bh"] = _w(out, size), _w(out, s=0.1)
    return [helper.make_node("Flatten", [cur], ["fh"]),
            helper.make_node("Gemm", ["fh", "wh", "bh"], ["logits"], transB=1)]


def _conv(name, src, dst, oc, ic, k=3, **kw):
    return {f"{name}w": _w(oc, ic, k, k), f"{name}b": _w(oc, s=0.1)}, helper.make_node(
        "Conv", [src, f"{name}w", f"{name}b"], [dst], kernel_shape=[k, k], **kw)


def test_zero_pad_before_conv_is_folded_into_its_padding():
    inits, conv = _conv("c", "p", "y", 4, 2, pads=[0, 1, 0, 1])
    inits["pads"] = np.array([0, 0, 1, 2, 0, 0, 2, 0])
    nodes = [helper.make_node("Pad", ["input", "pads"], ["p"]), conv, *_head("y", 4 * 9 * 8, inits)]
    net = _check(_model(nodes, inits, (2, 8, 6), 3), (2, 8, 6))
    assert isinstance(net.layers[0], Conv) and net.layers[0].pads == (1, 3, 2, 1)
    assert net.layers[0].in_shape == (2, 8, 6)


def test_zero_pad_before_maxpool_stays_an_identity_conv():
    inits = {"pads": np.array([0, 0, 1, 1, 0, 0, 1, 1])}
    nodes = [helper.make_node("Pad", ["input", "pads"], ["p"]),
             helper.make_node("MaxPool", ["p"], ["m"], kernel_shape=[2, 2], strides=[2, 2]),
             *_head("m", 2 * 4 * 4, inits)]
    net = _check(_model(nodes, inits, (2, 6, 6), 3), (2, 6, 6))
    assert [type(v) for v in net.layers[:2]] == [Conv, MaxPool]


def test_nonzero_or_reflect_pad_is_refused():
    inits = {"pads": np.array([0, 0, 1, 1, 0, 0, 1, 1])}
    nodes = [helper.make_node("Pad", ["input", "pads"], ["p"], mode="reflect"),
             *_head("p", 2 * 8 * 8, inits)]
    with pytest.raises(UnsupportedModelError, match="Pad"):
        from_onnx_model(_model(nodes, inits, (2, 6, 6), 3))


@pytest.mark.parametrize("pads,count_pad", [((0, 0, 0, 0), 0), ((1, 1, 1, 1), 0),
                                            ((1, 0, 1, 1), 1)])
def test_average_pool(pads, count_pad):
    inits, conv = _conv("c", "input", "y", 3, 2)
    oh = (6 + pads[0] + pads[2] - 3) // 2 + 1
    ow = (6 + pads[1] + pads[3] - 3) // 2 + 1
    nodes = [conv, helper.make_node("Relu", ["y"], ["r"]),
             helper.make_node("AveragePool", ["r"], ["a"], kernel_shape=[3, 3], strides=[2, 2],
                              pads=list(pads), count_include_pad=count_pad),
             *_head("a", 3 * oh * ow, inits)]
    _check(_model(nodes, inits, (2, 8, 8), 3), (2, 8, 8))


def test_global_average_pool_then_squeeze():
    inits, conv = _conv("c", "input", "y", 4, 3)
    inits["axes"] = np.array([2, 3])
    inits["wh"], inits["bh"] = _w(3, 4), _w(3)
    nodes = [conv, helper.make_node("Relu", ["y"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["g"]),
             helper.make_node("Squeeze", ["g", "axes"], ["s"]),
             helper.make_node("Gemm", ["s", "wh", "bh"], ["logits"], transB=1)]
    _check(_model(nodes, inits, (3, 7, 7), 3), (3, 7, 7))


@pytest.mark.parametrize("group,oc", [(2, 4), (4, 4), (4, 8)])
def test_grouped_and_depthwise_conv(group, oc):
    inits = {"gw": _w(oc, 4 // group, 3, 3), "gb": _w(oc, s=0.1)}
    nodes = [helper.make_node("Conv", ["input", "gw", "gb"], ["y"], kernel_shape=[3, 3],
                              group=group, pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["y"], ["r"]), *_head("r", oc * 5 * 5, inits)]
    net = _check(_model(nodes, inits, (4, 5, 5), 3), (4, 5, 5))
    assert net.layers[0].groups == group and net.layers[0].weight.shape == (oc, 4, 3, 3)


@pytest.mark.parametrize("after", ["MaxPool", "Relu"])
def test_batch_normalization_after_pool_or_activation_is_a_scale(after):
    inits, conv = _conv("c", "input", "y", 3, 2)
    inits.update(s=RNG.uniform(0.5, 2, 3), t=_w(3), mu=_w(3), var=RNG.uniform(0.5, 2, 3))
    kw = {"kernel_shape": [2, 2], "strides": [2, 2]} if after == "MaxPool" else {}
    side = 3 if after == "MaxPool" else 6
    nodes = [conv, helper.make_node("Relu", ["y"], ["r"]), helper.make_node(after, ["r"], ["a"], **kw),
             helper.make_node("BatchNormalization", ["a", "s", "t", "mu", "var"], ["n"]),
             helper.make_node("Relu", ["n"], ["n2"]), *_head("n2", 3 * side * side, inits)]
    net = _check(_model(nodes, inits, (2, 8, 8), 3), (2, 8, 8))
    assert any(isinstance(v, Scale) for v in net.layers)


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
def test_final_softmax_is_dropped_and_recorded(op):
    inits = {"w": _w(4, 6), "b": _w(4)}
    nodes = [helper.make_node("Gemm", ["input", "w", "b"], ["z"], transB=1),
             helper.make_node(op, ["z"], ["logits"], axis=1)]
    model = _model(nodes, inits, (6,), 4)
    net = from_onnx_model(model)
    x = np.random.default_rng(1).uniform(size=(5, 6))
    z = net.forward(x)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    want = p if op == "Softmax" else np.log(p)
    np.testing.assert_allclose(want, _ort(model, x), rtol=1e-4, atol=1e-5)
    assert net.meta["dropped_output_op"] == op
    assert [type(v) for v in net.layers] == [Dense]


def test_softmax_before_the_end_is_refused():
    inits = {"w": _w(4, 6), "b": _w(4)}
    nodes = [helper.make_node("Softmax", ["input"], ["s"], axis=1),
             helper.make_node("Gemm", ["s", "w", "b"], ["logits"], transB=1)]
    with pytest.raises(UnsupportedModelError, match="Softmax"):
        from_onnx_model(_model(nodes, inits, (6,), 4))


def test_tf2onnx_layout_nhwc_input_and_nhwc_flatten():
    """NHWC input transposed to NCHW, conv, back to NHWC, flattened, dense (tf2onnx's form)."""
    inits, conv = _conv("c", "t", "y", 3, 2, pads=[1, 1, 1, 1])
    inits["shape"] = np.array([-1, 5 * 4 * 3])
    inits["wd"], inits["bd"] = _w(5 * 4 * 3, 3), _w(3)
    nodes = [helper.make_node("Transpose", ["input"], ["t"], perm=[0, 3, 1, 2]), conv,
             helper.make_node("Relu", ["y"], ["r"]),
             helper.make_node("Transpose", ["r"], ["rt"], perm=[0, 2, 3, 1]),
             helper.make_node("Reshape", ["rt", "shape"], ["f"]),
             helper.make_node("MatMul", ["f", "wd"], ["m"]),
             helper.make_node("Add", ["m", "bd"], ["logits"])]
    net = _check(_model(nodes, inits, (5, 4, 2), 3), (5, 4, 2))
    assert net.input_shape == (5, 4, 2)
    assert [type(v).__name__ for v in net.layers] == ["Dense", "Conv", "Relu", "Dense"]


def test_reshape_flat_input_to_image():
    inits, conv = _conv("c", "r", "y", 2, 3)
    inits["shape"] = np.array([-1, 3, 4, 4])
    nodes = [helper.make_node("Reshape", ["input", "shape"], ["r"]), conv,
             *_head("y", 2 * 2 * 2, inits)]
    _check(_model(nodes, inits, (48,), 3), (48,))


@pytest.mark.parametrize("pads", [(0, 0, 0, 0), (1, 1, 1, 1)])
def test_per_channel_normalisation(pads):
    inits, conv = _conv("c", "d", "y", 4, 3, pads=list(pads))
    inits["mean"] = np.array([0.49, 0.48, 0.45]).reshape(1, 3, 1, 1)
    inits["std"] = np.array([0.2, 0.25, 0.3]).reshape(1, 3, 1, 1)
    side = 6 + pads[0] + pads[2] - 2
    nodes = [helper.make_node("Sub", ["input", "mean"], ["s"]),
             helper.make_node("Div", ["s", "std"], ["d"]), conv, helper.make_node("Relu", ["y"], ["r"]),
             *_head("r", 4 * side * side, inits)]
    net = _check(_model(nodes, inits, (3, 6, 6), 3), (3, 6, 6))
    folded = not any(pads)
    assert isinstance(net.layers[0], Conv) == folded and isinstance(net.layers[0], Scale) != folded


@pytest.mark.parametrize("domain", DOMAIN_NAMES)
def test_lowered_ops_keep_bounds_sound(domain):
    """Every domain's bounds contain the outputs of sampled points in the box."""
    inits = {"gw": _w(4, 1, 3, 3), "gb": _w(4, s=0.1), "pads": np.array([0, 0, 1, 1, 0, 0, 1, 1])}
    nodes = [helper.make_node("Pad", ["input", "pads"], ["p"]),
             helper.make_node("Conv", ["p", "gw", "gb"], ["y"], kernel_shape=[3, 3], group=4),
             helper.make_node("Relu", ["y"], ["r"]),
             helper.make_node("AveragePool", ["r"], ["a"], kernel_shape=[2, 2], strides=[2, 2]),
             *_head("a", 4 * 3 * 3, inits), ]
    net = _check(_model(nodes, inits, (4, 6, 6), 3), (4, 6, 6))
    x = np.random.default_rng(3).uniform(size=net.input_size)
    box = InputBox.linf(x, 0.05)
    lo, hi = output_bounds(Plan.of(net, get_domain(domain)), box)
    pts = np.random.default_rng(4).uniform(box.lower, box.upper, size=(200, net.input_size))
    out = net.forward(pts)
    assert np.all(out >= lo - 1e-12) and np.all(out <= hi + 1e-12)


@pytest.mark.parametrize("op", ["Selu", "Elu", "HardSigmoid"])
def test_unsupported_op_names_itself(op):
    nodes = [helper.make_node("Flatten", ["input"], ["f"]), helper.make_node(op, ["f"], ["logits"])]
    with pytest.raises(UnsupportedModelError, match=f"{op} \\(node"):
        from_onnx_model(_model(nodes, {}, (4,), 4))


@pytest.mark.parametrize("op", ["Mul", "Max"])
def test_two_tensor_ops_name_themselves(op):
    nodes = [helper.make_node("Relu", ["input"], ["a"]), helper.make_node("Sigmoid", ["a"], ["b"]),
             helper.make_node(op, ["a", "b"], ["logits"], name="join")]
    with pytest.raises(UnsupportedModelError, match=f"op {op} \\(node 'join'\\) combines 2"):
        from_onnx_model(_model(nodes, {}, (4,), 4))


def test_batch_normalization_after_a_dense_layer_reshaped_to_an_image():
    inits = {"w": _w(2 * 3 * 3, 5), "b": _w(2 * 3 * 3), "shape": np.array([-1, 2, 3, 3]),
             "s": RNG.uniform(0.5, 2, 2), "t": _w(2), "mu": _w(2), "var": RNG.uniform(0.5, 2, 2)}
    nodes = [helper.make_node("Gemm", ["input", "w", "b"], ["z"], transB=1),
             helper.make_node("Reshape", ["z", "shape"], ["r"]),
             helper.make_node("BatchNormalization", ["r", "s", "t", "mu", "var"], ["n"]),
             helper.make_node("Relu", ["n"], ["a"]), *_head("a", 18, inits)]
    net = _check(_model(nodes, inits, (5,), 3), (5,))
    assert [type(v).__name__ for v in net.layers] == ["Dense", "Relu", "Dense"]


@pytest.mark.parametrize("domain", DOMAIN_NAMES)
@pytest.mark.parametrize("lo,hi", [(0.0, 6.0), (-0.5, 0.7), (0.2, None), (None, 0.3)])
def test_clip_is_a_chain_of_relus_and_sound(lo, hi, domain):
    """Clip (ReLU6 and others) lowers exactly; sampled outputs stay in the domain's bounds."""
    inits, conv = _conv("c", "input", "y", 3, 2)
    names = ["y", "lo" if lo is not None else "", "hi" if hi is not None else ""]
    if lo is not None:
        inits["lo"] = np.array(lo)
    if hi is not None:
        inits["hi"] = np.array(hi)
    nodes = [conv, helper.make_node("Clip", names, ["k"]), *_head("k", 3 * 4 * 4, inits)]
    net = _check(_model(nodes, inits, (2, 6, 6), 3), (2, 6, 6), n=20)
    x = np.random.default_rng(5).uniform(size=net.input_size)
    box = InputBox.linf(x, 0.1)
    lo_b, hi_b = output_bounds(Plan.of(net, get_domain(domain)), box)
    out = net.forward(np.random.default_rng(6).uniform(box.lower, box.upper, (300, net.input_size)))
    assert np.all(out >= lo_b - 1e-12) and np.all(out <= hi_b + 1e-12)


def test_unsqueeze_identity_and_dropout_keep_the_values():
    inits = {"axes": np.array([2, 3]), "w": _w(3, 6), "b": _w(3)}
    nodes = [helper.make_node("Identity", ["input"], ["i"]),
             helper.make_node("Unsqueeze", ["i", "axes"], ["u"]),
             helper.make_node("Dropout", ["u"], ["d"]),
             helper.make_node("Flatten", ["d"], ["f"]),
             helper.make_node("Gemm", ["f", "w", "b"], ["logits"], transB=1)]
    net = _check(_model(nodes, inits, (6,), 3), (6,))
    assert [type(v) for v in net.layers] == [Dense]


def test_shape_arithmetic_flatten_of_older_torch_exports():
    """x.view(x.size(0), -1) as Shape, Gather, Unsqueeze, Concat, Reshape: folded to a shape."""
    inits, conv = _conv("c", "input", "y", 2, 3)
    inits.update(idx=np.array(0), ax=np.array([0]), w=_w(3, 2 * 3 * 3), b=_w(3))
    nodes = [conv,
             helper.make_node("Shape", ["y"], ["sh"]),
             helper.make_node("Gather", ["sh", "idx"], ["n"], axis=0),
             helper.make_node("Unsqueeze", ["n", "ax"], ["n1"]),
             helper.make_node("Constant", [], ["m1"], value_ints=[-1]),
             helper.make_node("Concat", ["n1", "m1"], ["target"], axis=0),
             helper.make_node("Reshape", ["y", "target"], ["f"]),
             helper.make_node("Gemm", ["f", "w", "b"], ["logits"], transB=1)]
    net = _check(_model(nodes, inits, (3, 5, 5), 3), (3, 5, 5))
    assert [type(v) for v in net.layers] == [Conv, Dense]


def test_random_ops_are_not_constants():
    nodes = [helper.make_node("RandomNormal", [], ["r"], shape=[1, 4]),
             helper.make_node("Add", ["input", "r"], ["logits"])]
    with pytest.raises(UnsupportedModelError, match="RandomNormal"):
        from_onnx_model(_model(nodes, {}, (4,), 4))
