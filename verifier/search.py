"""Certified robustness radius: the largest eps at which robustness is proved, found by search.

`bisect` is the paper's Algorithm 1. `secant` probes the same grid of candidate eps values
that bisection can return, guided by the certified margin (a continuous function of eps),
and returns the largest grid point it proved robust; it needs fewer passes and, whenever
robustness is monotone in eps (the usual case), its answer is at least the bisection's. Both
only return eps values at which a full pass of the domain proved robustness.

The secant search may be given a `SearchHint`: the network's margin at x itself (m0, from a
plain forward pass), from which its model of the margin curve starts instead of a pass at
eps 0; the network's activation depth, which sets how steeply that model lets the margin
fall; and for deep networks the radius of the network's linearisation at x, below which
its first probe is placed. A hint only steers which grid points are probed, never what is
returned.

Searches are generators: each yields the eps it wants probed and receives the certified
margin there, so `score_many` can advance many inputs' searches in lockstep and evaluate
every round's probes as one batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator
from dataclasses import dataclass

Search = Generator[float, float, tuple[float, int]]


@dataclass(frozen=True)
class SearchHint:
    """What is known of an input before any pass: its margin m0 at x (a forward pass; None:
    the search probes eps 0 for it), the network's activation depth
    (verifier.gradient.activation_depth), and the L-infinity radius of the network's
    linearisation at x (verifier.gradient.linear_radius; None when not computed)."""

    m0: float | None = None
    depth: int = 0
    linear: float | None = None


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


def bisect_search(up: float, tol: float, hint: SearchHint | None = None) -> Search:
    """Algorithm 1 on the integer grid (same midpoints); returns (low, probes).

    The hint is not used: Algorithm 1 probes midpoints only.
    """
    n = grid_size(up, tol)
    low, high, calls = 0, n, 0
    while high - low > 1:
        mid = (low + high) // 2
        calls += 1
        if (yield up * mid / n) > 0:
            low = mid
        else:
            high = mid
    return up * low / n, calls


def secant_search(up: float, tol: float, hint: SearchHint | None = None) -> Search:
    """Margin-guided search on bisection's grid; returns (largest robust grid point, probes).

    The hint's m0, the margin at x estimated by a forward pass, replaces the probe at eps 0
    (which bisection never makes either): the search then needs one pass fewer.
    """
    n = grid_size(up, tol)  # grid points 0..n; n (= up) is never tested, as in bisection
    passes = 0
    hint = hint or SearchHint()
    m0 = hint.m0
    if m0 is None:
        m0 = yield 0.0
        passes = 1
        if m0 <= 0:
            return 0.0, 1
    probes: dict[int, float] = {0: m0}
    lo, hi = 0, n
    # a point not classified `label` (m0 <= 0) has radius 0: one pass at the first grid point
    guess = _first_guess(n, up, hint) if m0 > 0 else 1
    power = POWER + DEPTH_POWER * max(0, hint.depth - SHALLOW)
    stalls = 0
    while hi - lo > 1:
        k = min(max(guess, lo + 1), hi - 1)
        first = len(probes) == 1
        probes[k] = yield up * k / n
        passes += 1
        width = hi - lo
        if probes[k] > 0:
            lo = k
        else:
            hi = k
        if hi - lo <= 1:
            break
        # a probe that did not halve a bracket (one with a failed end) is a stall
        stalls = stalls + 1 if hi in probes and (hi - lo) * 2 > width else 0
        if stalls >= 3:  # bisect, in log eps once a robust probe is known
            guess = math.isqrt(lo * hi) if lo > 0 else (lo + hi) // 2
        elif first and 0 < m0 and probes[k] < m0:
            guess = _power_guess(m0, k, probes[k], lo, power)
        else:
            guess = _model_guess(probes, lo, hi)
    return up * lo / n, passes


SEARCH_FUNCTIONS: dict[str, Callable[[float, float, SearchHint | None], Search]] = {
    "bisect": bisect_search,
    "secant": secant_search,
}


def run_search(search: Search, margin: Callable[[float], float]) -> tuple[float, int]:
    """Drive one search with a scalar margin function; returns (radius, probes)."""
    try:
        eps = next(search)
        while True:
            eps = search.send(margin(eps))
    except StopIteration as done:
        return done.value


def bisect(margin: Callable[[float], float], up: float, tol: float) -> tuple[float, int]:
    """Algorithm 1 with a margin function: returns (low, calls)."""
    return run_search(bisect_search(up, tol), margin)


def secant(margin: Callable[[float], float], up: float, tol: float) -> tuple[float, int]:
    """The secant search with a margin function: returns (radius, calls)."""
    return run_search(secant_search(up, tol), margin)


POWER = 1.6  # the margin curve's typical shape near the root: m0 (1 - (k / K)^1.6)
SHALLOW = 3  # networks with up to this many activation layers take POWER as it is
DEPTH_POWER = 0.7  # each activation layer past SHALLOW steepens the curve by this power
CLIFF, CLIFF_POWER = 100.0, 5.0  # a first probe losing over 100 m0: a deep net's cliff, ~eps^5
FIRST = 1 / 16  # the first probe's eps as a fraction of up ...
FIRST_LINEAR = 1.25  # ... or, past SHALLOW, at most this / depth times the linear radius


def _first_guess(n: int, up: float, hint: SearchHint) -> int:
    """The first grid point to probe: up / 16, or for a deep network the lower
    FIRST_LINEAR / depth of its linearisation's radius when that is known.

    Certified radii fall below the linearisation's radius m0 / ||grad||_1 by a factor that
    grows with depth (about 2-4 for three activation layers, 5-20 for six to eleven on the
    reference networks): a probe there is near the root, and a deep network's probes above
    its root are the expensive ones (more unstable neurons, each a new generator).
    """
    k = round(n * FIRST)
    if hint.depth > SHALLOW and hint.linear is not None and math.isfinite(hint.linear):
        k = min(k, math.floor(FIRST_LINEAR / hint.depth * hint.linear * n / up))
    return max(1, min(n - 1, k))


def _power_guess(m0: float, k: int, mk: float, lo: int, power: float = POWER) -> int:
    """The grid point below the root K of m0 (1 - (k / K)^power) through the first probe.

    The certified margin of the reference networks with up to SHALLOW activation layers
    falls from m0 like eps^1.3..eps^2 up to its root (more steeply than the line through
    (0, m0), less than a parabola with its vertex at 0), so this guess is usually within a
    few grid steps; every further activation layer multiplies in another relaxation error
    and steepens the fall (the caller's power grows with depth). From the second probe on
    the search fits the probes themselves (_model_guess). A first probe whose loss m0 - mk
    exceeds CLIFF m0 is far above the root of a deep network, whose loss grows like eps^4..7
    there: a shallow power would guess the first grid point, CLIFF_POWER guesses near the
    root.
    """
    power = CLIFF_POWER if m0 - mk > CLIFF * m0 else power
    root = k / (1.0 - mk / m0) ** (1.0 / power)
    g = math.floor(root)
    return g if g > lo else lo + 1


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
    if lo > 0 and probes[hi] < -probes[0]:
        return _loss_guess(probes, lo, hi)
    near = sorted(probes, key=lambda k: (0 if k in (lo, hi) else min(abs(k - lo), abs(k - hi))))
    root = None
    if len(near) >= 3:
        inside = [r for r in _parabola_roots(near[:3], probes) if lo < r < hi]
        root = inside[0] if len(inside) == 1 else None
    if root is None:  # the chord across the bracket (probes[lo] > 0 >= probes[hi])
        drop = probes[lo] - probes[hi]
        root = lo + (hi - lo) * probes[lo] / drop if drop > 0 else (lo + hi) / 2
    k = math.floor(root)
    return k if k > lo else lo + 1


def _loss_guess(probes: dict[int, float], lo: int, hi: int) -> int:
    """The grid point below the root of a power law in the loss m0 - m through lo and hi.

    On deep networks the certified margin falls off a cliff (the loss m0 - m grows like
    eps^4..eps^7, and a failed probe's margin can be -1e5): the chord then creeps up one
    grid step at a time. Interpolating log loss in log eps lands at or below the root while
    the local exponent grows with eps (the deep networks' shape), so it probes from below.
    """
    m0, loss_lo, loss_hi = probes[0], probes[0] - probes[lo], probes[0] - probes[hi]
    if not 0 < loss_lo < m0 < loss_hi:
        return (lo + hi) // 2
    p = math.log(loss_hi / loss_lo) / math.log(hi / lo)
    k = math.floor(lo * (m0 / loss_lo) ** (1.0 / p))
    return min(max(k, lo + 1), hi - 1)


def _parabola_roots(ks: list[int], probes: dict[int, float]) -> list[float]:
    """Real roots of the parabola through three probes (closed form; a line if it is one)."""
    (k0, k1, k2), (y0, y1, y2) = ks, (probes[k] for k in ks)
    d01 = (y1 - y0) / (k1 - k0)
    a = ((y2 - y1) / (k2 - k1) - d01) / (k2 - k0)
    b = d01 - a * (k0 + k1)
    c = y0 - (a * k0 + b) * k0
    if a == 0:
        return [] if b == 0 else [-c / b]
    disc = b * b - 4 * a * c
    if disc < 0:
        return []
    q = -0.5 * (b + math.copysign(math.sqrt(disc), b))  # no cancellation
    return [q / a] + ([c / q] if q != 0 else [])
