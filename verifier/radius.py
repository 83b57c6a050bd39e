"""Certified robustness radius: the largest eps at which is_robust holds, found by search.

`bisect` is the paper's Algorithm 1. `secant` probes the same grid of candidate eps values
that bisection can return, guided by the certified margin (a continuous function of eps),
and returns the largest grid point it proved robust; it needs fewer zonotope passes and,
whenever robustness is monotone in eps (the usual case for DeepZono), its answer is at least
the bisection's. Both only return eps values at which a full DeepZono pass proved robustness.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from verifier.network import Network
from verifier.runtime import single_threaded
from verifier.zonotope import ZonoNet, robustness_margin

SEARCHES = ("bisect", "secant")


@dataclass(frozen=True)
class RadiusResult:
    """A certified radius with the class it certifies and the cost of finding it."""

    radius: float
    predicted: int
    calls: int


def grid_size(up: float, tol: float) -> int:
    """Bisection from [0, up] halves until the width is below tol: 2^k intervals of up / 2^k.

    Every eps either search tests is a grid point up * k / 2^k (one rounding), so the two
    searches compare exactly.
    """
    if not (up > 0 and tol > 0):
        raise ValueError("up and tol must be positive")
    n = 1
    while up / n >= tol:
        n *= 2
    return n


def bisect(margin: Callable[[float], float], up: float, tol: float) -> tuple[float, int]:
    """Algorithm 1 (on the integer grid, same midpoints): returns (low, calls)."""
    n = grid_size(up, tol)
    low, high, calls = 0, n, 0
    while high - low > 1:
        mid = (low + high) // 2
        calls += 1
        if margin(up * mid / n) > 0:
            low = mid
        else:
            high = mid
    return up * low / n, calls


def secant(margin: Callable[[float], float], up: float, tol: float) -> tuple[float, int]:
    """Margin-guided search on bisection's grid; returns (largest robust grid point, calls)."""
    n = grid_size(up, tol)  # grid points 0..n; n (= up) is never tested, as in bisection
    probes: dict[int, float] = {0: margin(0.0)}
    if probes[0] <= 0:
        return 0.0, 1
    lo, hi = 0, n
    guess = max(1, min(n - 1, round(n / 16)))
    stalls = 0
    while hi - lo > 1:
        k = min(max(guess, lo + 1), hi - 1)
        probes[k] = margin(up * k / n)
        width = hi - lo
        if probes[k] > 0:
            lo = k
        else:
            hi = k
        stalls = stalls + 1 if (hi - lo) * 2 > width else 0
        guess = (lo + hi) // 2 if stalls >= 3 else _model_guess(probes, lo, hi)
    return up * lo / n, len(probes)


def _model_guess(probes: dict[int, float], lo: int, hi: int) -> int:
    """The grid point just below where a model of the margin crosses zero.

    The certified margin falls smoothly and faster than linearly with eps: a parabola through
    the three probes nearest the bracket usually lands within a grid step of the root, so the
    search ends with the two probes lo, lo + 1. Before any probe has failed, the line through
    the two largest robust probes overshoots, which is what is wanted to find an upper end.
    """
    if hi not in probes:
        below = max(k for k in probes if k < lo) if lo > 0 else None
        if below is None or probes[below] <= probes[lo]:
            return 2 * lo
        root = lo + (lo - below) * probes[lo] / (probes[below] - probes[lo])
        return min(math.ceil(root), 4 * lo)
    near = sorted(probes, key=lambda k: (0 if k in (lo, hi) else min(abs(k - lo), abs(k - hi))))
    ks = np.array(near[:3], dtype=np.float64)
    root = None
    if len(ks) == 3:
        a, b, c = np.polyfit(ks, [probes[int(k)] for k in ks], 2)
        roots = np.roots([a, b, c]) if a != 0 else np.array([-c / b])
        inside = [r.real for r in roots if abs(r.imag) < 1e-12 and lo < r.real < hi]
        root = inside[0] if len(inside) == 1 else None
    if root is None:  # the chord across the bracket
        root = lo + (hi - lo) * probes[lo] / (probes[lo] - probes[hi])
    k = math.floor(root)
    return k if k > lo else lo + 1


def certified_radius(
    net: Network | ZonoNet,
    x: np.ndarray,
    up: float = 0.256,
    tol: float = 0.001,
    search: str = "secant",
    label: int | None = None,
) -> float:
    """The certified L-infinity radius of x (Algorithm 1's `low` or a search at least as good)."""
    return radius_result(net, x, up, tol, search, label).radius


def radius_result(
    net: Network | ZonoNet,
    x: np.ndarray,
    up: float = 0.256,
    tol: float = 0.001,
    search: str = "secant",
    label: int | None = None,
) -> RadiusResult:
    """Like certified_radius, with the certified class and the number of zonotope passes."""
    znet = ZonoNet.of(net)
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    if label is None:
        label = znet.net.predict(x)
    if search not in SEARCHES:
        raise ValueError(f"search must be one of {SEARCHES}, got {search!r}")
    fn = bisect if search == "bisect" else secant
    with single_threaded():
        radius, calls = fn(lambda eps: robustness_margin(znet, x, eps, label), up, tol)
    return RadiusResult(radius, int(label), calls)


def certified_radii(
    net: Network | ZonoNet,
    xs: Sequence[np.ndarray] | np.ndarray,
    up: float = 0.256,
    tol: float = 0.001,
    search: str = "secant",
    jobs: int | None = None,
) -> list[RadiusResult]:
    """Radii of many inputs, in input order, on `jobs` threads (the kernels release the GIL)."""
    znet = ZonoNet.of(net)
    jobs = jobs or os.cpu_count() or 1
    items = [np.asarray(x, dtype=np.float64).reshape(-1) for x in xs]
    if jobs <= 1 or len(items) <= 1:
        return [radius_result(znet, x, up, tol, search) for x in items]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(lambda x: radius_result(znet, x, up, tol, search), items))
