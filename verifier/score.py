"""Scoring inputs: certified margins and radii under one VerifierSettings.

`score_many` is the one way to score many inputs (CLI, worker, calibration, study): the
inputs are split over `jobs` threads (the kernels release the GIL) and within a thread every
input's search advances in lockstep, one batch of passes per round.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from verifier.box import InputBox
from verifier.domains import get_domain
from verifier.gradient import activation_depth, linear_radius
from verifier.network import Network
from verifier.numerics.rounding import linf_box
from verifier.numerics.runtime import single_threaded
from verifier.search import SEARCH_FUNCTIONS, SHALLOW, SearchHint, run_search
from verifier.settings import VerifierSettings
from verifier.walk import Plan, linear_lower, margin_matrix

DEFAULT = VerifierSettings()


@dataclass(frozen=True)
class RadiusResult:
    """A certified radius with the class it certifies and the number of domain passes."""

    radius: float
    predicted: int
    calls: int


_PLANS: dict[tuple[int, str], Plan] = {}


def plan_for(net: Network | Plan, settings: VerifierSettings = DEFAULT) -> Plan:
    """The network prepared for the settings' domain (prepared once per network and domain)."""
    if isinstance(net, Plan):
        if net.domain.name == settings.domain:
            return net
        net = net.net
    key = (id(net), settings.domain)
    plan = _PLANS.get(key)
    if plan is None or plan.net is not net:
        if len(_PLANS) >= 32:
            _PLANS.clear()
        plan = _PLANS[key] = Plan.of(net, get_domain(settings.domain))
    return plan


def input_box(plan: Plan, x: np.ndarray, eps: float, settings: VerifierSettings) -> InputBox:
    """The L-infinity ball of radius eps around x, clipped to the valid input range."""
    lo = plan.net.input_lower if settings.input_lower is None else settings.input_lower
    hi = plan.net.input_upper if settings.input_upper is None else settings.input_upper
    return InputBox.linf(x, eps, lo, hi)


def certified_margin(
    plan: Plan, x: np.ndarray, eps: float, label: int, settings: VerifierSettings = DEFAULT
) -> float:
    """The smallest certified lower bound of y_label - y_j over the ball; > 0 is robust."""
    return margin_function(plan, x, label, settings)(eps)


def margin_function(
    plan: Plan, x: np.ndarray, label: int, settings: VerifierSettings = DEFAULT
) -> Callable[[float], float]:
    """eps -> certified_margin(plan, x, eps, label, settings), with everything that does not
    depend on eps (the property's matrix, the input range) made once for a whole search."""
    n = plan.net.n_outputs
    C = margin_matrix(n, label)
    d = np.zeros(n - 1)
    x = np.ascontiguousarray(x, dtype=np.float64).reshape(-1)
    lo = plan.net.input_lower if settings.input_lower is None else settings.input_lower
    hi = plan.net.input_upper if settings.input_upper is None else settings.input_upper
    lo, hi = float(lo), float(hi)

    def margin(eps: float) -> float:
        if not eps >= 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        box = InputBox(*linf_box(x, float(eps), lo, hi))  # as InputBox.linf
        return float(np.min(linear_lower(plan, box, C, d)))

    return margin


def _point_margin(logits: np.ndarray, label: int) -> float:
    """y_label - max_{j != label} y_j of a float forward pass: where the search's model of
    the margin curve starts (it steers the search; it certifies nothing)."""
    ys = logits.tolist()
    others = ys[:label] + ys[label + 1:]
    return ys[label] - max(others) if others else float("inf")


def search_hints(plan: Plan, xs: Sequence[np.ndarray], logits: np.ndarray,
                 labels: Sequence[int], settings: VerifierSettings) -> list[SearchHint | None]:
    """What steers each input's search: its margin at x, the network's activation depth and,
    for the secant search on a deep network, the radius of its linearisation at x."""
    if settings.search != "secant":
        return [None] * len(xs)
    depth = activation_depth(plan.net)
    hints: list[SearchHint | None] = []
    for x, y, label in zip(xs, logits, labels, strict=True):
        m0 = _point_margin(y, label)
        deep = depth > SHALLOW and m0 > 0 and plan.net.n_outputs > 1
        hints.append(SearchHint(m0, depth, linear_radius(plan.net, x, label) if deep else None))
    return hints


def radius_result(
    net: Network | Plan,
    x: np.ndarray,
    settings: VerifierSettings = DEFAULT,
    label: int | None = None,
) -> RadiusResult:
    """The certified radius of one input (label defaults to the predicted class)."""
    plan = plan_for(net, settings)
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    logits = np.asarray(plan.net.forward(x), dtype=np.float64).reshape(-1)
    label = int(np.argmax(logits)) if label is None else int(label)
    search = SEARCH_FUNCTIONS[settings.search](
        settings.up, settings.tol, search_hints(plan, [x], [logits], [label], settings)[0]
    )
    with single_threaded():
        radius, calls = run_search(search, margin_function(plan, x, label, settings))
    return RadiusResult(radius, label, calls)


def certified_radius(
    net: Network | Plan, x: np.ndarray, settings: VerifierSettings = DEFAULT,
    label: int | None = None,
) -> float:
    """The certified L-infinity radius of x (Algorithm 1's `low`, or a search at least as good)."""
    return radius_result(net, x, settings, label).radius


def _score_group(plan: Plan, xs: list[np.ndarray], labels: list[int], logits: np.ndarray,
                 settings: VerifierSettings) -> list[RadiusResult]:
    """Every input's search in lockstep: one round probes the next eps of each open search."""
    hints = search_hints(plan, xs, logits, labels, settings)
    searches = [SEARCH_FUNCTIONS[settings.search](settings.up, settings.tol, h) for h in hints]
    fns = [margin_function(plan, x, label, settings) for x, label in zip(xs, labels, strict=True)]
    pending = {i: next(s) for i, s in enumerate(searches)}
    results: list[RadiusResult | None] = [None] * len(xs)
    with single_threaded():
        while pending:
            margins = {i: fns[i](eps) for i, eps in pending.items()}
            for i, m in margins.items():
                try:
                    pending[i] = searches[i].send(m)
                except StopIteration as done:
                    radius, calls = done.value
                    results[i] = RadiusResult(radius, labels[i], calls)
                    del pending[i]
    return results  # type: ignore[return-value]


def score_many(
    net: Network | Plan,
    inputs: Sequence[np.ndarray] | np.ndarray,
    settings: VerifierSettings = DEFAULT,
    jobs: int | None = None,
) -> list[RadiusResult]:
    """Certified radii of many inputs, in input order, on `jobs` threads (default: all cores)."""
    plan = plan_for(net, settings)
    xs = [np.asarray(x, dtype=np.float64).reshape(-1) for x in inputs]
    if not xs:
        return []
    logits = np.atleast_2d(plan.net.forward(np.stack(xs)))
    labels = [int(v) for v in np.argmax(logits, axis=1)]
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(xs)))
    if jobs == 1:
        return _score_group(plan, xs, labels, logits, settings)
    parts = [list(range(k, len(xs), jobs)) for k in range(jobs)]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        def group(idx: list[int]) -> list[RadiusResult]:
            return _score_group(plan, [xs[i] for i in idx], [labels[i] for i in idx],
                                logits[idx], settings)

        done = pool.map(group, parts)
        out: list[RadiusResult | None] = [None] * len(xs)
        for idx, res in zip(parts, done, strict=True):
            for i, r in zip(idx, res, strict=True):
                out[i] = r
    return out  # type: ignore[return-value]
