"""The gradient of a network's margins at a point, and the radius a linear network would have.

The radius search (verifier.search) starts deep networks' searches from it: where the margin
y_label - y_j falls like a linear function with slope ||grad||_1 per unit of eps, its root is
m_j / ||grad_j||_1; a ReLU network's certified radius lies below that by a factor that grows
with depth. It steers which eps values are probed, never what is certified, so plain float
arithmetic is enough here.

One vector-Jacobian product per layer kind (`VJPS`), all margins at once: G holds one row per
margin, the gradient of that margin with respect to the layer's output.
"""

from __future__ import annotations

import numpy as np

from verifier.network import (
    ACTIVATIONS,
    INPUT,
    Add,
    Concat,
    Conv,
    Dense,
    LeakyRelu,
    MaxPool,
    Network,
    Relu,
    Scale,
    Sigmoid,
    Tanh,
    layer_outputs,
    pool_windows,
)
from verifier.walk import margin_matrix


def _conv_vjp(layer: Conv, ins: tuple, out: np.ndarray, G: np.ndarray) -> tuple:
    """The transposed convolution of every row of G (col2im of W^T G)."""
    c, h, w = layer.in_shape
    oc, oh, ow = layer.out_shape
    _, _, kh, kw = layer.weight.shape
    pt, pl, pb, pr = layer.pads
    sh, sw = layer.stride
    k = G.shape[0]
    cols = layer.weight.reshape(oc, -1).T @ G.reshape(k, oc, oh * ow)
    cols = cols.reshape(k, c, kh, kw, oh, ow)
    img = np.zeros((k, c, h + pt + pb, w + pl + pr))
    for i in range(kh):
        for j in range(kw):
            img[:, :, i : i + sh * oh : sh, j : j + sw * ow : sw] += cols[:, :, i, j]
    return (img[:, :, pt : pt + h, pl : pl + w].reshape(k, -1),)


def _pool_vjp(layer: MaxPool, ins: tuple, out: np.ndarray, G: np.ndarray) -> tuple:
    """Each output's gradient goes to the first input of its window that attains the max."""
    c, h, w = layer.in_shape
    _, oh, ow = layer.out_shape
    kh, kw = layer.kernel
    sh, sw = layer.stride
    pt, pl, pb, pr = layer.pads
    arg = np.argmax(pool_windows(layer, ins[0]), axis=0)  # (c, oh, ow): which tap wins
    k = G.shape[0]
    grad = np.zeros((k, c, h + pt + pb, w + pl + pr))
    g = G.reshape(k, c, oh, ow)
    for t in range(kh * kw):
        i, j = divmod(t, kw)
        grad[:, :, i : i + sh * oh : sh, j : j + sw * ow : sw] += np.where(arg == t, g, 0.0)
    return (grad[:, :, pt : pt + h, pl : pl + w].reshape(k, -1),)


def _concat_vjp(layer: Concat, ins: tuple, out: np.ndarray, G: np.ndarray) -> tuple:
    return tuple(np.split(G, np.cumsum(layer.sizes)[:-1], axis=1))


VJPS = {
    Dense: lambda layer, ins, out, G: (G @ layer.weight,),
    Scale: lambda layer, ins, out, G: (G * layer.a,),
    Relu: lambda layer, ins, out, G: (G * (ins[0] > 0),),
    LeakyRelu: lambda layer, ins, out, G: (G * np.where(ins[0] > 0, 1.0, layer.alpha),),
    Sigmoid: lambda layer, ins, out, G: (G * (out * (1.0 - out)),),
    Tanh: lambda layer, ins, out, G: (G * (1.0 - out * out),),
    Add: lambda layer, ins, out, G: (G,) * len(ins),
    Concat: _concat_vjp,
    Conv: _conv_vjp,
    MaxPool: _pool_vjp,
}


def margin_gradients(net: Network, x: np.ndarray, C: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(d(C y)/dx at x, one row per row of C; the logits y): a forward pass, then VJPS."""
    v = np.asarray(x, dtype=np.float64).reshape(-1)
    n = len(net.layers)
    srcs = [net.sources_of(i) for i in range(n)]
    outs = layer_outputs(net, v)
    grads: dict[int, np.ndarray] = {n - 1: np.asarray(C, dtype=np.float64)}
    g_in = np.zeros((C.shape[0], v.shape[0]))
    for i in range(n - 1, -1, -1):
        G = grads.pop(i, None)
        if G is None:  # a layer nothing downstream reads
            continue
        ins = tuple(v if j == INPUT else outs[j] for j in srcs[i])
        for j, g in zip(srcs[i], VJPS[type(net.layers[i])](net.layers[i], ins, outs[i], G),
                        strict=True):
            if j == INPUT:
                g_in += g
            else:
                grads[j] = grads[j] + g if j in grads else g
    return g_in, outs[-1]


def linear_radius(net: Network, x: np.ndarray, label: int) -> float:
    """min over j != label of (y_label - y_j) / ||d(y_label - y_j)/dx||_1 at x: the L-infinity
    radius at which the margins of the network's linearisation at x reach 0 (inf if flat)."""
    C = margin_matrix(net.n_outputs, label)
    grads, logits = margin_gradients(net, x, C)
    margins = C @ logits
    slopes = np.abs(grads).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(slopes > 0, margins / slopes, np.inf)
    return float(max(0.0, r.min()))


def activation_depth(net: Network) -> int:
    """The most activation layers (ReLU, LeakyReLU, sigmoid, tanh) on any input-output path."""
    depth: list[int] = []
    for i, layer in enumerate(net.layers):
        before = max((0 if j == INPUT else depth[j] for j in net.sources_of(i)), default=0)
        depth.append(before + isinstance(layer, ACTIVATIONS))
    return depth[-1] if depth else 0
