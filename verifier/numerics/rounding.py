"""The float64 rounding model every domain's kernels share: unit roundoff, an underflow
allowance, and the a-priori bound gamma(n) of a sum of n products in any order, with or
without FMA (|fl(sum) - sum| <= gamma(n) * sum |terms|); and the outward-rounded input box
(next_up/next_down, linf_box) every domain starts from."""

from __future__ import annotations

import numpy as np
from numba import njit

U = 2.0**-53
TINY = 1e-300  # covers underflow of one operation, with room to spare


@njit(cache=True, nogil=True)
def gamma(n: int) -> float:
    """Relative error bound of a sum of n products in float64."""
    nu = (n + 2) * U
    return nu / (1.0 - nu)


@njit(cache=True, nogil=True)
def widen_up(x: float, n: int) -> float:
    """An upper bound of the exact value of a non-negative sum of n terms computed as x."""
    return x * (1.0 + 2.0 * gamma(n)) + (n + 1) * TINY


@njit(cache=True, nogil=True)
def next_up(a):
    """In place, a[i] -> np.nextafter(a[i], inf), bit for bit: for a finite non-zero float
    the neighbour is one integer step of its bit pattern (a libm call per element costs 4x)."""
    bits = a.view(np.int64)
    for i in range(a.shape[0]):
        v = a[i]
        if 0.0 < v < np.inf:
            bits[i] += 1
        elif -np.inf < v < 0.0:
            bits[i] -= 1
        else:  # zeros, infinities, NaN
            a[i] = np.nextafter(v, np.inf)


@njit(cache=True, nogil=True)
def next_down(a):
    """In place, a[i] -> np.nextafter(a[i], -inf), bit for bit (as next_up)."""
    bits = a.view(np.int64)
    for i in range(a.shape[0]):
        v = a[i]
        if 0.0 < v < np.inf:
            bits[i] -= 1
        elif -np.inf < v < 0.0:
            bits[i] += 1
        else:
            a[i] = np.nextafter(v, -np.inf)


@njit(cache=True, nogil=True)
def linf_box(x, eps, lower, upper):
    """clip(x - eps) .. clip(x + eps) rounded outward (nextafter) before clipping."""
    n = x.shape[0]
    lo = np.empty(n)
    hi = np.empty(n)
    for i in range(n):
        lo[i] = x[i] - eps
        hi[i] = x[i] + eps
    if eps > 0.0:
        next_down(lo)
        next_up(hi)
    for i in range(n):
        lo[i] = min(max(lo[i], lower), upper, x[i])
        hi[i] = max(min(hi[i], upper), lower, x[i])
    return lo, hi
