"""One decision per input: is the network proved robust on the clipped eps-ball around x?

The threshold policy needs only this, not a radius. A decision runs the settings' stages (sound
domains, cheapest first) on the same closed ball for the same label and stops at the first that
proves it; every stage is sound, so a proof by any of them is a proof. The work is counted in
passes, never in time, so a decision is the same on every worker, after a crash or a replay.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np

from verifier.box import InputBox
from verifier.network import Network
from verifier.numerics.runtime import single_threaded
from verifier.score import DEFAULT, RadiusResult, plan_for
from verifier.search import SEARCH_FUNCTIONS, run_search
from verifier.settings import VerifierSettings
from verifier.walk import Plan, linear_lower, margin_matrix


@dataclass(frozen=True)
class Proof:
    """The answer for one input at eps: proved or not, by which stage, with what margin.

    margin is the largest certified lower bound of y_label - y_j (min over j) any stage found;
    passes counts the stages run. stage is None when no stage proved the ball.
    """

    eps: float
    label: int
    proved: bool
    stage: str | None
    margin: float
    passes: int


def stage_plans(net: Network | Plan, settings: VerifierSettings = DEFAULT) -> tuple[Plan, ...]:
    """The network prepared once for every stage of the settings' cascade, in order."""
    return tuple(plan_for(net, replace(settings, domain=name)) for name in settings.stages)


def _limits(plan: Plan, settings: VerifierSettings) -> tuple[float, float]:
    lo = plan.net.input_lower if settings.input_lower is None else settings.input_lower
    hi = plan.net.input_upper if settings.input_upper is None else settings.input_upper
    return float(lo), float(hi)


def cascade(plans: Sequence[Plan], x: np.ndarray, label: int,
            settings: VerifierSettings = DEFAULT) -> Callable[[float], Proof]:
    """eps -> Proof for one input and label, everything that does not depend on eps made once."""
    if not plans:
        raise ValueError("a decision needs at least one stage")
    C = margin_matrix(plans[0].net.n_outputs, label)
    d = np.zeros(C.shape[0])
    x = np.ascontiguousarray(x, dtype=np.float64).reshape(-1)
    lo, hi = _limits(plans[0], settings)

    def prove(eps: float) -> Proof:
        if not eps >= 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        box = InputBox.linf(x, float(eps), lo, hi)
        best = -np.inf
        for k, plan in enumerate(plans):
            m = float(np.min(linear_lower(plan, box, C, d))) if C.shape[0] else np.inf
            best = max(best, m)
            if m > 0.0:
                return Proof(float(eps), label, True, plan.domain.name, m, k + 1)
        return Proof(float(eps), label, False, None, float(best), len(plans))

    return prove


def decide(net: Network | Plan, x: np.ndarray, eps: float,
           settings: VerifierSettings = DEFAULT, label: int | None = None) -> Proof:
    """The decision for one input at eps (label defaults to the predicted class)."""
    plans = stage_plans(net, settings)
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    label = plans[0].net.predict(x) if label is None else int(label)
    with single_threaded():
        return cascade(plans, x, label, settings)(eps)


def decide_many(net: Network | Plan, inputs: Sequence[np.ndarray] | np.ndarray, eps: float,
                settings: VerifierSettings = DEFAULT, jobs: int | None = None) -> list[Proof]:
    """Decisions for many inputs at one eps, in input order, on `jobs` threads."""
    plans = stage_plans(net, settings)
    xs = [np.asarray(x, dtype=np.float64).reshape(-1) for x in inputs]
    if not xs:
        return []
    labels = np.argmax(np.atleast_2d(plans[0].net.forward(np.stack(xs))), axis=1)

    def one(i: int) -> Proof:
        with single_threaded():
            return cascade(plans, xs[i], int(labels[i]), settings)(eps)

    jobs = max(1, min(jobs or os.cpu_count() or 1, len(xs)))
    if jobs == 1:
        return [one(i) for i in range(len(xs))]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(one, range(len(xs))))


def cascade_radius(net: Network | Plan, x: np.ndarray, settings: VerifierSettings = DEFAULT,
                   label: int | None = None) -> RadiusResult:
    """The largest grid eps the cascade proves (the settings' search over cascade margins):
    the radius that is consistent with decisions, for choosing a budget from false alarms."""
    plans = stage_plans(net, settings)
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    label = plans[0].net.predict(x) if label is None else int(label)
    prove = cascade(plans, x, label, settings)
    passes = 0

    def margin(eps: float) -> float:
        nonlocal passes
        proof = prove(eps)
        passes += proof.passes
        return proof.margin

    search = SEARCH_FUNCTIONS[settings.search](settings.up, settings.tol, None)
    with single_threaded():
        radius, _ = run_search(search, margin)
    return RadiusResult(radius, label, passes)


__all__ = ["Proof", "cascade", "cascade_radius", "decide", "decide_many", "stage_plans"]
