"""Small ONNX models built in code, so verifier tests need no shipped files."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _model(nodes, inits, in_shape, out_size, opset=13) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *in_shape])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", out_size])],
        [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    onnx.checker.check_model(model)
    return model


def mlp(rng: np.random.Generator, sizes=(12, 8, 8, 4), act="Relu", normalise=True):
    """Sub/Div normalisation, Flatten, then Gemm/MatMul+Add layers with an activation."""
    nodes, inits = [], {}
    cur = "input"
    if normalise:
        inits["mean"] = np.array([0.13], np.float32)
        inits["std"] = np.array([0.31], np.float32)
        nodes += [helper.make_node("Sub", [cur, "mean"], ["s"]), helper.make_node("Div", ["s", "std"], ["d"])]
        cur = "d"
    nodes.append(helper.make_node("Flatten", [cur], ["f"]))
    cur = "f"
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        w = rng.normal(size=(a, b)) / np.sqrt(a)
        bias = rng.normal(size=b) * 0.1
        if i % 2 == 0:
            inits[f"w{i}"], inits[f"b{i}"] = w.T, bias
            nodes.append(helper.make_node("Gemm", [cur, f"w{i}", f"b{i}"], [f"y{i}"], transB=1))
        else:
            inits[f"w{i}"], inits[f"b{i}"] = w, bias
            nodes += [helper.make_node("MatMul", [cur, f"w{i}"], [f"m{i}"]),
                      helper.make_node("Add", [f"m{i}", f"b{i}"], [f"y{i}"])]
        cur = f"y{i}"
        if i < len(sizes) - 2:
            nodes.append(helper.make_node(act, [cur], [f"a{i}"]))
            cur = f"a{i}"
    nodes[-1].output[0] = "logits"
    return _model(nodes, inits, (sizes[0],), sizes[-1])


def cnn(rng: np.random.Generator, act="Relu", pads=(0, 0, 0, 0)):
    """conv(3,3x3) -> act -> maxpool 2 -> conv(4,3x3, stride 1) -> act -> flatten -> dense 5."""
    inits = {
        "k1": rng.normal(size=(3, 1, 3, 3)) * 0.5, "c1": rng.normal(size=3) * 0.1,
        "k2": rng.normal(size=(4, 3, 3, 3)) * 0.3, "c2": rng.normal(size=4) * 0.1,
    }
    h = 10 + pads[0] + pads[2] - 2
    h2 = h // 2 - 2
    inits["w"] = rng.normal(size=(5, 4 * h2 * h2)) * 0.2
    inits["b"] = rng.normal(size=5) * 0.1
    nodes = [
        helper.make_node("Conv", ["input", "k1", "c1"], ["x1"], kernel_shape=[3, 3], pads=list(pads)),
        helper.make_node(act, ["x1"], ["a1"]),
        helper.make_node("MaxPool", ["a1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "k2", "c2"], ["x2"], kernel_shape=[3, 3]),
        helper.make_node(act, ["x2"], ["a2"]),
        helper.make_node("Flatten", ["a2"], ["f"]),
        helper.make_node("Gemm", ["f", "w", "b"], ["logits"], transB=1),
    ]
    return _model(nodes, inits, (1, 10, 10), 5)


def with_op(op_type: str) -> onnx.ModelProto:
    """A model whose second node is the given (unsupported) op."""
    nodes = [
        helper.make_node("Flatten", ["input"], ["f"]),
        helper.make_node(op_type, ["f"], ["logits"]),
    ]
    return _model(nodes, {}, (4,), 4)


def model(nodes, inits, in_shape, out_size, opset=13) -> onnx.ModelProto:
    """Like _model, but integer constants (pads, shapes, axes) stay int64."""
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *in_shape])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", out_size])],
        [numpy_helper.from_array(v.astype(np.int64 if v.dtype.kind == "i" else np.float32), k)
         for k, v in ((k, np.asarray(v)) for k, v in inits.items())],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    onnx.checker.check_model(m)
    return m
