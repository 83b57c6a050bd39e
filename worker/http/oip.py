"""Open Inference Protocol v2 (REST) messages: an infer request's tensor in, verdict tensors out.

Pure functions, no server: `parse_infer` turns a decoded JSON request into float64 inputs in
[0, 1] (uint8 pixels scaled by 1/255, as the Kafka codec does) or raises `RequestError` with
a one-line reason; `infer_response` and `model_metadata` build the answers. The tensor is
[N, ...] with items in the model's layout, channels last ([N, H, W, C] for a [C, H, W] model,
transposed here) or flat, as the codec takes them (worker.layout).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from worker.formats.codec import DEFAULT_STREAM
from worker.layout import CHANNELS_LAST, describe, layout_of, shapes, to_model_layout
from worker.policy import POLICIES

__all__ = [
    "DATATYPES",
    "OUTPUTS",
    "InferRequest",
    "Outcome",
    "RequestError",
    "infer_response",
    "model_metadata",
    "parse_infer",
]

# OIP tensor datatypes accepted for the input, and how each becomes float64 in [0, 1].
DATATYPES: dict[str, np.dtype] = {
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "UINT8": np.dtype(np.uint8),
}
# Output tensors: name -> (OIP datatype, field of Outcome).
OUTPUTS: dict[str, str] = {
    "verdict": "BYTES",
    "radius": "FP64",
    "predicted": "INT64",
    "rule": "BYTES",
    "reason": "BYTES",
    "eps": "FP64",
    "stage": "BYTES",
    "certificate": "BYTES",
}
MAX_STREAM_CHARS = 256


class RequestError(ValueError):
    """A request the server cannot take; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class InferRequest:
    """A checked infer request: xs is float64 [N, input_size] in [0, 1], in the model's C order."""

    xs: np.ndarray
    id: str | None = None
    policy: str | None = None
    stream: str = DEFAULT_STREAM
    outputs: tuple[str, ...] = tuple(OUTPUTS)
    input_name: str = "input"
    preprocessing: str = "float64"  # how the tensor's values became xs, as in the certificate


@dataclass(frozen=True)
class Outcome:
    """The verdict for one input; radius, eps and predicted -1 when there is none (the
    threshold policy decides at its budget and computes no radius); certificate is JSON."""

    verdict: str
    radius: float
    predicted: int
    rule: str
    reason: str = ""
    eps: float = -1.0
    stage: str = ""
    certificate: str = ""


def parse_infer(body: Any, input_shape: tuple[int, ...], max_batch: int) -> InferRequest:
    """Check a decoded infer request against the model's input shape; RequestError if wrong."""
    if not isinstance(body, dict):
        raise RequestError(f"the request must be a JSON object, got {_kind(body)}")
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise RequestError("'inputs' must be a non-empty list of tensors")
    if len(inputs) != 1:
        raise RequestError(f"the model takes one input tensor, got {len(inputs)}")
    tensor = inputs[0]
    if not isinstance(tensor, dict):
        raise RequestError(f"inputs[0] must be a tensor object, got {_kind(tensor)}")
    name = tensor.get("name", "input")
    if not isinstance(name, str):
        raise RequestError("inputs[0].name must be a string")
    xs, prep = _tensor(tensor, tuple(input_shape), max_batch)
    params = _parameters(body.get("parameters"), "parameters")
    policy = params.get("policy")
    if policy is not None and policy not in POLICIES:
        raise RequestError(f"parameters.policy must be one of {list(POLICIES)}, got {policy!r}")
    stream = params.get("stream", DEFAULT_STREAM)
    if not isinstance(stream, str) or not 1 <= len(stream) <= MAX_STREAM_CHARS:
        raise RequestError(f"parameters.stream must be a string of 1 to {MAX_STREAM_CHARS} "
                           "characters")
    rid = body.get("id")
    if rid is not None and not isinstance(rid, str):
        raise RequestError(f"'id' must be a string, got {_kind(rid)}")
    return InferRequest(xs, rid, policy, stream, _outputs(body.get("outputs")), name, prep)


def _tensor(tensor: dict, input_shape: tuple[int, ...],
            max_batch: int) -> tuple[np.ndarray, str]:
    """The input tensor's data as float64 [N, input_size] in the model's layout, checked, and
    how its values were mapped there."""
    shape = tensor.get("shape")
    if (not isinstance(shape, list) or len(shape) < 2
            or not all(type(d) is int and d >= 1 for d in shape)):
        raise RequestError(f"inputs[0].shape must be [N, ...] of integers >= 1, got {shape!r:.80}")
    n, item, input_size = shape[0], math.prod(shape[1:]), math.prod(input_shape)
    if item != input_size:
        hint = (f" (the first axis is the batch: send [1, {', '.join(map(str, shape))}])"
                if math.prod(shape) == input_size else "")
        raise RequestError(f"inputs[0].shape {shape}: items have {item} values, the model "
                           f"expects {input_size}{hint}")
    layout = layout_of(tuple(shape[1:]), input_shape)
    if layout is None:
        raise RequestError(f"inputs[0].shape {shape}: items of shape {shape[1:]} do not fit the "
                           f"model; it takes {describe(input_shape)}")
    if n > max_batch:
        raise RequestError(f"inputs[0].shape {shape}: {n} inputs, at most {max_batch} per request",
                           413)
    datatype = tensor.get("datatype")
    if datatype not in DATATYPES:
        raise RequestError(f"inputs[0].datatype must be one of {sorted(DATATYPES)}, "
                           f"got {datatype!r:.40}")
    data = tensor.get("data")
    if not isinstance(data, list):
        raise RequestError(f"inputs[0].data must be a list, got {_kind(data)}")
    flat = _flatten(data, n * item)
    if any(type(v) not in (int, float) for v in flat):
        raise RequestError("inputs[0].data must hold numbers only")
    if datatype == "UINT8":
        if any(type(v) is not int or not 0 <= v <= 255 for v in flat):
            raise RequestError("inputs[0].data: UINT8 values must be integers 0..255")
        arr = np.asarray(flat, dtype=np.uint8).astype(np.float64) / 255.0
    else:
        arr = np.asarray(flat, dtype=np.float64).astype(DATATYPES[datatype]).astype(np.float64)
        bad = ~(np.isfinite(arr) & (arr >= 0.0) & (arr <= 1.0))
        if bad.any():
            i = int(np.argmax(bad))
            raise RequestError(f"inputs[0].data has {int(bad.sum())} values that are not finite "
                               f"numbers in [0, 1] (first at index {i}: {arr[i]!r})")
    prep = "uint8/255" if datatype == "UINT8" else DATATYPES[datatype].name
    if layout == CHANNELS_LAST:
        prep += "; channels last to channels first"
    return to_model_layout(arr.reshape(n, *shape[1:]), input_shape, layout), prep


def _flatten(data: list, expected: int) -> list:
    """Row-major values of a flat or nested list; RequestError unless there are `expected`."""
    flat: list = []
    _collect(data, flat, 0)
    if len(flat) != expected:
        raise RequestError(f"inputs[0].data has {len(flat)} values, its shape needs {expected}")
    return flat


def _collect(data: list, out: list, depth: int) -> None:
    if depth > 8:
        raise RequestError("inputs[0].data is nested too deeply")
    for v in data:
        if isinstance(v, list):
            _collect(v, out, depth + 1)
        else:
            out.append(v)


def _parameters(params: Any, where: str) -> dict:
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise RequestError(f"'{where}' must be an object, got {_kind(params)}")
    return params


def _outputs(requested: Any) -> tuple[str, ...]:
    """The output names asked for (all when the request names none)."""
    if requested is None:
        return tuple(OUTPUTS)
    if not isinstance(requested, list) or not all(
            isinstance(o, dict) and isinstance(o.get("name"), str) for o in requested):
        raise RequestError("'outputs' must be a list of {\"name\": ...} objects")
    names = tuple(o["name"] for o in requested)
    unknown = [n for n in names if n not in OUTPUTS]
    if unknown:
        raise RequestError(f"unknown outputs {unknown}; this model has {list(OUTPUTS)}")
    return names


def infer_response(
    model: str, request: InferRequest, outcomes: list[Outcome], parameters: dict
) -> dict[str, Any]:
    """The OIP infer response: one tensor [N] per requested output."""
    n = len(outcomes)
    columns = {
        "verdict": [o.verdict for o in outcomes],
        "radius": [float(o.radius) for o in outcomes],
        "predicted": [int(o.predicted) for o in outcomes],
        "rule": [o.rule for o in outcomes],
        "reason": [o.reason for o in outcomes],
        "eps": [float(o.eps) for o in outcomes],
        "stage": [o.stage for o in outcomes],
        "certificate": [o.certificate for o in outcomes],
    }
    out: dict[str, Any] = {
        "model_name": model,
        "outputs": [
            {"name": name, "datatype": OUTPUTS[name], "shape": [n], "data": columns[name]}
            for name in request.outputs
        ],
        "parameters": parameters,
    }
    if request.id is not None:
        out["id"] = request.id
    return out


def model_metadata(name: str, input_shape: tuple[int, ...], parameters: dict) -> dict[str, Any]:
    """GET /v2/models/{name}: the input tensor (FP64 shown; FP32 and UINT8 accepted too, and
    the other shapes the items may have) and the output tensors."""
    return {
        "name": name,
        "versions": [],
        "platform": "radiusguard",
        "inputs": [{"name": "input", "datatype": "FP64", "shape": [-1, *input_shape],
                    "parameters": {"accepted_datatypes": sorted(DATATYPES),
                                   "accepted_shapes": [[-1, *s] for s in shapes(input_shape)]}}],
        "outputs": [{"name": k, "datatype": v, "shape": [-1]} for k, v in OUTPUTS.items()],
        "parameters": parameters,
    }


def _kind(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", type(None): "null",
            bool: "a boolean"}.get(type(v), "a number" if isinstance(v, int | float) else
                                   type(v).__name__)
