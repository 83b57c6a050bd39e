"""The budget a threshold profile guarantees, and the false alarms it costs.

A profile's threshold policy accepts x' only when a sound stage proves the clipped ball of
radius tau (the guaranteed budget) around x' keeps its class; then no x within tau of x' is
classified otherwise, so no adversarial example of budget <= tau made from a correctly
classified input is accepted, whatever the attack. Calibration either takes tau as given
(`--budget`) and measures the false alarms, or takes the largest tau whose false alarms stay
within a target, measured with the same decisions as serving makes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from verifier.decide import cascade_radius, decide_many
from verifier.network import Network
from verifier.settings import VerifierSettings
from worker.progress import progress

__all__ = ["BudgetFit", "false_alarm_threshold", "fit_budget", "order_stages"]


def false_alarm_threshold(radii: Sequence[float] | np.ndarray, max_false_alarm: float) -> float:
    """The largest t with #{r < t} / n <= max_false_alarm: sorted(radii)[k] (0-based), where k
    is the largest integer with k / n <= max_false_alarm. Accepting r >= t rejects <= that share.
    """
    r = np.sort(np.asarray(radii, dtype=np.float64))
    n = r.size
    if n == 0:
        raise ValueError("no radii to take a threshold from")
    if not 0.0 <= max_false_alarm < 1.0:
        raise ValueError(f"max_false_alarm must be in [0, 1), got {max_false_alarm}")
    k = math.floor(max_false_alarm * n)
    while k + 1 < n and (k + 1) / n <= max_false_alarm:
        k += 1
    while k > 0 and k / n > max_false_alarm:
        k -= 1
    return float(r[k])


@dataclass(frozen=True)
class BudgetFit:
    """tau, the share of the valid inputs it rejects, and the stages' proofs there."""

    budget: float
    false_alarm: float
    settings: VerifierSettings
    proved_by: dict[str, int]


def _share_proved(proofs) -> float:
    return float(np.mean([p.proved for p in proofs])) if proofs else 0.0


# Relative cost of one pass per domain, a fixed model so that calibration is reproducible:
# 0.9, 3.3 and 6.9 ms per pass on the shipped CNN, 0.15, 0.45 and 0.34 ms on the FNN.
PASS_COST = {"interval": 1.0, "deepzono": 3.5, "deeppoly": 7.0}


def _cost(proofs, order: tuple[str, ...]) -> float:
    weights = [PASS_COST.get(s, 10.0) for s in order]
    return sum(sum(weights[: p.passes]) for p in proofs)


def order_stages(net: Network, xs: Sequence[np.ndarray], budget: float,
                 settings: VerifierSettings, jobs: int | None = None) -> VerifierSettings:
    """The settings with the stage order that costs least (PASS_COST) on xs at the budget.

    Every order holds the same stages, so it proves the same inputs; only the work differs.
    Candidates: the given order and each stage moved to the front.
    """
    stages = settings.stages
    orders = [stages] + [(s, *[t for t in stages if t != s]) for s in stages if s != stages[0]]
    best, best_cost = settings, math.inf
    for order in orders:
        candidate = replace(settings, stages=order)
        cost = _cost(decide_many(net, xs, budget, candidate, jobs), order)
        if cost < best_cost:
            best, best_cost = candidate, cost
    return best


def fit_budget(net: Network, xs: Sequence[np.ndarray], settings: VerifierSettings, *,
               budget: float | None = None, max_false_alarm: float | None = None,
               jobs: int | None = None) -> BudgetFit:
    """Fix tau by `budget`, or as the largest grid eps whose false alarms on xs (the correctly
    classified calibration inputs) are at most `max_false_alarm`; measure the false alarms
    with the decisions serving makes, in the cheapest stage order."""
    if (budget is None) == (max_false_alarm is None):
        raise ValueError("give exactly one of budget and max_false_alarm")
    if not len(xs):
        raise ValueError("no inputs to fit a budget on")
    if budget is None:
        radii = []
        for x in progress(xs, total=len(xs), desc="budget radii"):
            radii.append(cascade_radius(net, x, settings).radius)
        budget = false_alarm_threshold(radii, float(max_false_alarm))
    if not (math.isfinite(budget) and budget >= 0):
        raise ValueError(f"budget must be a finite number >= 0, got {budget}")
    settings = order_stages(net, xs, budget, settings, jobs)
    proofs = decide_many(net, xs, budget, settings, jobs)
    proved_by = {s: sum(p.stage == s for p in proofs) for s in settings.stages}
    return BudgetFit(float(budget), 1.0 - _share_proved(proofs), prune_stages(settings, proved_by),
                     proved_by)


def prune_stages(settings: VerifierSettings, proved_by: dict[str, int]) -> VerifierSettings:
    """The settings without the stages that proved no calibration input (the first stage is
    always kept). A stage runs only where the earlier ones failed, so dropping one that proved
    nothing changes no calibration decision; it spares every unproved input its pass, and
    costs at most the few served inputs only it would prove. Soundness is unaffected."""
    kept = tuple(s for i, s in enumerate(settings.stages) if i == 0 or proved_by.get(s, 0))
    return replace(settings, stages=kept)
