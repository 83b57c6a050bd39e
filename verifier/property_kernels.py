"""DeepZono's property: lower bounds of linear functions C y + d of a dense zonotope y, and
the fused kernel that runs a whole Dense/activation chain and the property in one call.

Rounding of the property: with k inputs per row, fl(C G) differs from C G by at most
gamma(k) |C| |G| entrywise, whose row sums are bounded by gamma(k) |C| rad (rad bounds the
row sums of |G| plus beta); the centre C c + d by gamma(k + 1) (|C| |c| + |d|); the error box
enters as |C| beta; the final sum of |fl(C G)| is widened by widen_up.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from verifier.kernels import (
    TINY,
    U,
    abs_row_sums,
    box_to_csr,
    csr_bounds,
    csr_to_dense_affine,
    dense_activation,
    dense_affine,
    dense_bounds,
    gamma,
    relaxation,
    widen_up,
)


@njit(cache=True, nogil=True)
def dense_linear_lower(c, G, beta, rad, C, d):
    """Sound lower bounds of C y + d over y = c + G e + delta, |e| <= 1, |delta| <= beta."""
    k_out, n = C.shape
    m = G.shape[1]
    rows = np.dot(C, G)
    sums = abs_row_sums(rows)
    g = gamma(n + 1)
    res = np.empty(k_out)
    for i in range(k_out):
        centre = d[i]
        absum = abs(d[i])
        slack = 0.0
        for k in range(n):
            a = abs(C[i, k])
            centre += C[i, k] * c[k]
            absum += a * abs(c[k])
            slack += a * (beta[k] + g * rad[k])
        total = widen_up(sums[i], m) + (slack + g * absum) * (1.0 + 2.0 * g) + (n + 2) * TINY
        res[i] = centre - total - (abs(centre) + total) * 2.0 * U - TINY
    return res


@njit(cache=True, nogil=True)
def dense_chain_lower(lo, hi, weights, wts, aws, biases, kinds, C, d):
    """A whole pass through Dense (activation) ... Dense layers, then C y + d, in one call.

    The same kernels as the layer-by-layer walk, composed so a pass over a small fully
    connected network pays one dispatch and never holds the GIL. kinds[i] is the
    activation after dense layer i (0 ReLU, 1 sigmoid, 2 tanh, -1 none).
    """
    c, ptr, idx, val = box_to_csr(lo, hi)
    beta = np.zeros(c.shape[0])
    _, _, rad = csr_bounds(c, ptr, val, beta)
    c, G, beta = csr_to_dense_affine(
        c, ptr, idx, val, beta, rad, c.shape[0], wts[0], aws[0], biases[0]
    )
    for i in range(len(weights)):
        if i > 0:
            _, _, rad = dense_bounds(c, G, beta)
            c, G, beta = dense_affine(c, G, beta, rad, weights[i], wts[i], aws[i], biases[i])
        if kinds[i] >= 0:
            lw, up, rad = dense_bounds(c, G, beta)
            lam, mu, nu = relaxation(kinds[i], lw, up)
            c, G, beta = dense_activation(c, G, beta, rad, lam, mu, nu)
    _, _, rad = dense_bounds(c, G, beta)
    return dense_linear_lower(c, G, beta, rad, C, d)
