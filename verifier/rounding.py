"""The float64 rounding model every domain's kernels share: unit roundoff, an underflow
allowance, and the a-priori bound gamma(n) of a sum of n products in any order, with or
without FMA (|fl(sum) - sum| <= gamma(n) * sum |terms|)."""

from __future__ import annotations

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
