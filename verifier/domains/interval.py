"""The interval domain (interval bound propagation), sound in float64.

Each neuron carries [lower, upper]. Affine layers map the box's centre and radius, with the
a-priori rounding bound gamma(n) of their sums added outward; monotone activations map the
end points; max pooling takes window maxima, which is exact. The last Dense layer is kept
pending so the property C y + d is folded into it (C W x + C b + d over the box), which is how
interval-trained networks are certified: much tighter than bounding C against a logit box.
On networks trained with interval bounds this domain can prove what zonotopes cannot.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from verifier.box import InputBox
from verifier.domains.base import Domain
from verifier.network import (
    Add,
    Concat,
    Conv,
    Dense,
    LeakyRelu,
    MaxPool,
    Relu,
    Scale,
    Sigmoid,
    Tanh,
    pool_windows,
)
from verifier.numerics.rounding import TINY, gamma

# |computed - exact| of sigmoid and tanh through libm, as the zonotope kernels assume
ACTIVATION_SLACK = 1e-14


def _up(x: np.ndarray, n: int) -> np.ndarray:
    """An upper bound of the exact value of non-negative sums of n terms computed as x."""
    return x * (1.0 + 2.0 * gamma(n)) + (n + 1) * TINY


@dataclass(frozen=True)
class Affine:
    """An affine layer as the interval domain needs it: v -> M v (no bias), v -> |M| v, the
    bias, its magnitude, the number of products per output, and (W, b) for a Dense layer."""

    mul: Callable[[np.ndarray], np.ndarray]
    mul_abs: Callable[[np.ndarray], np.ndarray]
    bias: np.ndarray
    n: int
    dense: tuple[np.ndarray, np.ndarray] | None = None


@dataclass(frozen=True)
class Interval:
    """Bounds of every neuron, and a Dense layer not yet applied (folded into the property)."""

    lower: np.ndarray
    upper: np.ndarray
    pending: Affine | None = None


def affine_bounds(lower: np.ndarray, upper: np.ndarray, layer: Affine,
                  extra: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Sound bounds of M x + b over the box; extra bounds a further |error| per output."""
    c, r = InputBox(lower, upper).center_radius()  # [c - r, c + r] holds the box exactly
    yc = layer.mul(c) + layer.bias  # within gamma(n + 1) (|M| |c| + |b|) of exact
    yr = layer.mul_abs(r)
    ya = layer.mul_abs(np.abs(c)) + np.abs(layer.bias)
    rad = _up(yr, layer.n) + _up(gamma(layer.n + 1) * _up(ya, layer.n + 1), 1)
    if extra is not None:
        rad = rad + extra
    rad = _up(rad, 3)  # the additions above
    lo = np.nextafter(yc - rad, -np.inf)
    hi = np.nextafter(yc + rad, np.inf)
    return lo, hi


def _settle(state: Interval) -> tuple[np.ndarray, np.ndarray]:
    """The state's bounds with any pending Dense layer applied."""
    if state.pending is None:
        return state.lower, state.upper
    return affine_bounds(state.lower, state.upper, state.pending)


def _prepare_dense(layer: Dense) -> Affine:
    w = np.ascontiguousarray(layer.weight, dtype=np.float64)
    aw = np.abs(w)
    return Affine(w.__matmul__, aw.__matmul__, np.asarray(layer.bias, np.float64), w.shape[1],
                  (w, np.asarray(layer.bias, np.float64)))


def _columns(layer: Conv, v: np.ndarray) -> np.ndarray:
    """im2col of one flat input: [c * kh * kw, oh * ow], zero padding."""
    c, h, w = layer.in_shape
    _, oh, ow = layer.out_shape
    _, _, kh, kw = layer.weight.shape
    pt, pl, pb, pr = layer.pads
    sh, sw = layer.stride
    img = np.zeros((c, h + pt + pb, w + pl + pr))
    img[:, pt : pt + h, pl : pl + w] = v.reshape(c, h, w)
    cols = np.empty((c, kh, kw, oh, ow))
    for i in range(kh):
        for j in range(kw):
            cols[:, i, j] = img[:, i : i + sh * oh : sh, j : j + sw * ow : sw]
    return cols.reshape(c * kh * kw, oh * ow)


def _conv(weight: np.ndarray, layer: Conv) -> Callable[[np.ndarray], np.ndarray]:
    """v -> the convolution of v by weight (no bias), flat, as the network's forward pass."""
    w = np.ascontiguousarray(weight.reshape(weight.shape[0], -1), dtype=np.float64)
    return lambda v: (w @ _columns(layer, v)).reshape(-1)


def _prepare_conv(layer: Conv) -> Affine:
    _, in_c, kh, kw = layer.weight.shape
    _, oh, ow = layer.out_shape
    bias = np.repeat(np.asarray(layer.bias, np.float64), oh * ow)  # per channel -> per output
    return Affine(_conv(layer.weight, layer), _conv(np.abs(layer.weight), layer),
                  bias, int(in_c * kh * kw))


def _prepare_scale(layer: Scale) -> Affine:
    a = np.asarray(layer.a, np.float64)
    aa = np.abs(a)
    return Affine(a.__mul__, aa.__mul__, np.asarray(layer.b, np.float64), 1)


def _dense(prep: Affine, state: Interval) -> Interval:
    lo, hi = _settle(state)
    return Interval(lo, hi, prep)


def _affine(prep: Affine, state: Interval) -> Interval:
    return Interval(*affine_bounds(*_settle(state), prep))


def _relu(_layer: Relu, state: Interval) -> Interval:
    lo, hi = _settle(state)
    return Interval(np.maximum(lo, 0.0), np.maximum(hi, 0.0))


def _leaky(layer: LeakyRelu, state: Interval) -> Interval:
    lo, hi = _settle(state)
    a = float(layer.alpha)
    # alpha x rounded to nearest is within one ulp; step outward so the product is covered
    low = np.where(lo >= 0, lo, np.nextafter(a * lo, -np.inf))
    high = np.where(hi >= 0, hi, np.nextafter(a * hi, np.inf))
    return Interval(low, high)


def _monotone(f: Callable[[np.ndarray], np.ndarray], low_end: float, high_end: float):
    def transfer(_layer, state: Interval) -> Interval:
        lo, hi = _settle(state)
        return Interval(np.maximum(f(lo) - ACTIVATION_SLACK, low_end),
                        np.minimum(f(hi) + ACTIVATION_SLACK, high_end))

    return transfer


def _sigmoid(v: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-v))


def _max_pool(layer: MaxPool, state: Interval) -> Interval:
    lo, hi = _settle(state)
    return Interval(pool_windows(layer, lo).max(axis=0).reshape(-1),
                    pool_windows(layer, hi).max(axis=0).reshape(-1))


def _add(_layer: Add, *states: Interval) -> Interval:
    bounds = [_settle(s) for s in states]
    lo, hi = bounds[0]
    for other_lo, other_hi in bounds[1:]:
        lo = np.nextafter(lo + other_lo, -np.inf)
        hi = np.nextafter(hi + other_hi, np.inf)
    return Interval(lo, hi)


def _concat(_layer: Concat, *states: Interval) -> Interval:
    bounds = [_settle(s) for s in states]
    return Interval(np.concatenate([b[0] for b in bounds]),
                    np.concatenate([b[1] for b in bounds]))


def linear_lower(state: Interval, C: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Sound lower bounds of C y + d; a pending layer y = W x + b is folded in as C W."""
    C = np.asarray(C, dtype=np.float64)
    d = np.asarray(d, dtype=np.float64)
    if state.pending is not None and state.pending.dense is not None:
        w, b = state.pending.dense
        k = C.shape[1]
        cw = C @ w  # within gamma(k) |C| |W| of exact C W, entrywise
        folded = Affine(cw.__matmul__, np.abs(cw).__matmul__, C @ b + d, w.shape[1])
        x_abs = np.maximum(np.abs(state.lower), np.abs(state.upper))
        product_error = _up(gamma(k) * _up(np.abs(C) @ (np.abs(w) @ x_abs), k + w.shape[1]), 1)
        bias_error = _up(gamma(k + 1) * _up(np.abs(C) @ np.abs(b) + np.abs(d), k + 1), 1)
        lo, _ = affine_bounds(state.lower, state.upper, folded, product_error + bias_error)
        return lo
    lo, hi = _settle(state)
    identity = Affine(C.__matmul__, np.abs(C).__matmul__, d, C.shape[1])
    return affine_bounds(lo, hi, identity)[0]


def bounds(state: Interval) -> tuple[np.ndarray, np.ndarray]:
    """Sound (lower, upper) of every neuron of the state."""
    return _settle(state)


INTERVAL = Domain(
    name="interval",
    start=lambda box: Interval(np.asarray(box.lower, np.float64),
                               np.asarray(box.upper, np.float64)),
    transfers={
        Dense: _dense,
        Conv: _affine,
        Scale: _affine,
        Relu: _relu,
        LeakyRelu: _leaky,
        Sigmoid: _monotone(_sigmoid, 0.0, 1.0),
        Tanh: _monotone(np.tanh, -1.0, 1.0),
        MaxPool: _max_pool,
        Add: _add,
        Concat: _concat,
    },
    linear_lower=linear_lower,
    bounds=bounds,
    prepare={Dense: _prepare_dense, Conv: _prepare_conv, Scale: _prepare_scale},
)

__all__ = ["INTERVAL", "Interval", "affine_bounds"]
