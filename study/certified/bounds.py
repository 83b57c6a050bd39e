"""Bound propagation in torch for training: interval bounds (IBP) and CROWN's backward bounds.

These bounds choose weights; they are float32 and make no soundness claim. The property is the
margin y_true - y_j, folded into the last Linear layer as Gowal et al. (2018) do. CROWN runs
backward through the network's fully connected tail (the Linear and ReLU layers after the last
Flatten) from the interval box of the tail's input, with interval bounds for the tail's ReLUs,
as in CROWN-IBP (Zhang et al. 2020); through max pooling no tight linear bound exists, so the
layers before the tail are bounded by intervals.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

MONOTONE = (nn.ReLU, nn.Sigmoid, nn.Tanh, nn.MaxPool2d, nn.Flatten, nn.AvgPool2d)


def _affine(layer: nn.Module, mid: torch.Tensor, rad: torch.Tensor):
    """Centre and radius of an affine layer's image of a box."""
    if isinstance(layer, nn.Linear):
        return layer(mid), F.linear(rad, layer.weight.abs())
    if isinstance(layer, nn.Conv2d):
        r = F.conv2d(rad, layer.weight.abs(), None, layer.stride, layer.padding,
                     layer.dilation, layer.groups)
        return layer(mid), r
    if isinstance(layer, nn.BatchNorm2d):
        scale = layer.weight / torch.sqrt(layer.running_var + layer.eps)
        return layer(mid), rad * scale.abs()[None, :, None, None]
    raise TypeError(f"no interval transfer for {type(layer).__name__}")


def interval(layers: list[nn.Module], lo: torch.Tensor, hi: torch.Tensor):
    """Interval bounds of the layers' output over the box [lo, hi] (batched)."""
    for layer in layers:
        if isinstance(layer, MONOTONE) or getattr(layer, "increasing", False):
            lo, hi = layer(lo), layer(hi)
        else:
            mid, rad = _affine(layer, (hi + lo) / 2, (hi - lo) / 2)
            lo, hi = mid - rad, mid + rad
    return lo, hi


def margin_matrix(y: torch.Tensor, n: int) -> torch.Tensor:
    """[B, n, n] rows e_y - e_j (the row j = y is zero)."""
    eye = torch.eye(n, device=y.device)
    return eye[y].unsqueeze(1) - eye.unsqueeze(0)


def _fold(last: nn.Linear, C: torch.Tensor):
    """The property C y over y = W h + b as (C W, C b)."""
    return C @ last.weight, C @ last.bias


def ibp_margins(model: nn.Sequential, x: torch.Tensor, eps: float, y: torch.Tensor,
                lower: float = 0.0, upper: float = 1.0) -> torch.Tensor:
    """Interval lower bounds of y_true - y_j over the clipped eps-ball: [B, n] (0 at y_true)."""
    layers = list(model)
    lo = (x - eps).clamp(lower, upper)
    hi = (x + eps).clamp(lower, upper)
    lo, hi = interval(layers[:-1], lo, hi)
    A, c = _fold(layers[-1], margin_matrix(y, layers[-1].out_features))
    mid, rad = (hi + lo) / 2, (hi - lo) / 2
    return (A @ mid.unsqueeze(-1)).squeeze(-1) - (A.abs() @ rad.unsqueeze(-1)).squeeze(-1) + c


def _tail_start(layers: list[nn.Module]) -> int:
    """Index after which only Linear and ReLU layers follow (the CROWN tail)."""
    i = len(layers)
    while i > 0 and isinstance(layers[i - 1], nn.Linear | nn.ReLU):
        i -= 1
    return i


def crown_margins(model: nn.Sequential, x: torch.Tensor, eps: float, y: torch.Tensor,
                  lower: float = 0.0, upper: float = 1.0) -> torch.Tensor:
    """CROWN lower bounds of y_true - y_j: backward through the fully connected tail with
    interval bounds for its ReLUs and for its input box: [B, n]."""
    layers = list(model)
    start = _tail_start(layers)
    lo = (x - eps).clamp(lower, upper)
    hi = (x + eps).clamp(lower, upper)
    lo, hi = interval(layers[:start], lo, hi)
    lo, hi = lo.flatten(1), hi.flatten(1)
    tail = layers[start:]
    # interval bounds before every tail ReLU
    pre: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    a, b = lo, hi
    for k, layer in enumerate(tail):
        if isinstance(layer, nn.ReLU):
            pre[k] = (a, b)
        a, b = interval([layer], a, b)
    A, const = _fold(tail[-1], margin_matrix(y, tail[-1].out_features))
    for k in range(len(tail) - 2, -1, -1):
        layer = tail[k]
        if isinstance(layer, nn.Linear):
            const = const + A @ layer.bias
            A = A @ layer.weight
        else:  # ReLU: the lower bound keeps A's sign in mind
            lw, u = pre[k]
            unstable = (lw < 0) & (u > 0)
            width = (u - lw).clamp_min(1e-12)
            up_slope = torch.where(unstable, u / width, (lw >= 0).to(u.dtype))
            up_icpt = torch.where(unstable, -u * lw / width, torch.zeros_like(u))
            lo_slope = torch.where(unstable, (u > -lw).to(u.dtype), (lw >= 0).to(u.dtype))
            pos, neg = A.clamp_min(0), A.clamp_max(0)
            const = const + (neg * up_icpt.unsqueeze(1)).sum(-1)
            A = pos * lo_slope.unsqueeze(1) + neg * up_slope.unsqueeze(1)
    mid, rad = (hi + lo) / 2, (hi - lo) / 2
    return (A @ mid.unsqueeze(-1)).squeeze(-1) - (A.abs() @ rad.unsqueeze(-1)).squeeze(-1) + const


def worst_case_loss(margins: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the worst-case logits -margins (Gowal et al.'s robust loss)."""
    return F.cross_entropy(-margins, y)
