"""Accept or reject an input from its certified radius: by threshold, by distribution, or by
the consistency of radius and logit margin.

`DistributionValidator` is Algorithm 2: a window Q of the s radii believed valid; a new radius
r forms Q' = Q + [r] and is accepted iff Q'[s] >= sigma0 or
pvalue(Q'[0:s]) - pvalue(Q'[1:s+1]) <= sigma1 (pvalue: D'Agostino-Pearson normality test).
Acceptance slides the window (drops Q'[0]); rejection drops r. The window state is plain data.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import numpy as np

__all__ = [
    "MIN_WINDOW",
    "BudgetValidator",
    "ConsistencyValidator",
    "Decision",
    "DistributionValidator",
    "ThresholdValidator",
    "WindowState",
    "normality_pvalue",
    "replay",
]

MIN_WINDOW = 8  # the normality test needs at least 8 values


def normality_pvalue(radii: Sequence[float] | np.ndarray) -> float:
    """p-value of D'Agostino and Pearson's test (scipy.stats.normaltest's formulas); NaN when
    the radii are all equal.

    Written out in numpy because scipy's wrapper costs 1-2.5 ms per call, as much as a radius
    of the FNN; tests check it against scipy.stats.normaltest.
    """
    a = np.asarray(radii, dtype=np.float64)
    n = a.size
    if n < MIN_WINDOW:
        raise ValueError(f"the normality test needs at least {MIN_WINDOW} values, got {n}")
    if a.min() == a.max():
        return math.nan  # zero variance: the test is undefined (scipy would also return NaN)
    d = a - a.mean()
    d2 = d * d
    m2 = d2.mean()
    m3 = (d2 * d).mean()
    m4 = (d2 * d2).mean()
    z_skew = _skew_z(m3 / m2**1.5, n)
    z_kurt = _kurtosis_z(m4 / (m2 * m2), n)
    return math.exp(-0.5 * (z_skew * z_skew + z_kurt * z_kurt))  # chi2(2) survival


def _skew_z(b2: float, n: int) -> float:
    """scipy.stats.skewtest's z statistic for the sample skewness b2."""
    y = b2 * math.sqrt(((n + 1) * (n + 3)) / (6.0 * (n - 2)))
    beta2 = 3.0 * (n * n + 27 * n - 70) * (n + 1) * (n + 3) / (
        (n - 2.0) * (n + 5) * (n + 7) * (n + 9)
    )
    w2 = -1 + math.sqrt(2 * (beta2 - 1))
    delta = 1 / math.sqrt(0.5 * math.log(w2))
    alpha = math.sqrt(2.0 / (w2 - 1))
    y = 1.0 if y == 0 else y
    return delta * math.log(y / alpha + math.sqrt((y / alpha) ** 2 + 1))


def _kurtosis_z(b2: float, n: int) -> float:
    """scipy.stats.kurtosistest's z statistic for the sample (Pearson) kurtosis b2."""
    e = 3.0 * (n - 1) / (n + 1)
    varb2 = 24.0 * n * (n - 2) * (n - 3) / ((n + 1) * (n + 1.0) * (n + 3) * (n + 5))
    x = (b2 - e) / math.sqrt(varb2)
    sqrtbeta1 = (
        6.0 * (n * n - 5 * n + 2) / ((n + 7) * (n + 9))
        * math.sqrt((6.0 * (n + 3) * (n + 5)) / (n * (n - 2) * (n - 3)))
    )
    a = 6.0 + 8.0 / sqrtbeta1 * (2.0 / sqrtbeta1 + math.sqrt(1 + 4.0 / (sqrtbeta1**2)))
    term1 = 1 - 2 / (9.0 * a)
    denom = 1 + x * math.sqrt(2 / (a - 4.0))
    if denom == 0.0:
        return math.nan
    term2 = math.copysign(((1 - 2.0 / a) / abs(denom)) ** (1 / 3.0), denom)
    return (term1 - term2) / math.sqrt(2 / (9.0 * a))


@dataclass(frozen=True)
class Decision:
    """What a validator decided for one radius and why; pvalue is that of Q'[1:s+1] (the window
    with the new radius in) and drop is p(Q'[0:s]) - pvalue, for the distribution rule only;
    score is a policy's own statistic (the consistency distance).
    """

    verdict: str
    rule: str
    reason: str
    pvalue: float | None = None
    drop: float | None = None
    score: float | None = None


_NO_RADIUS = Decision("invalid", "no-radius", "no certified radius: the input is invalid")


@dataclass(frozen=True)
class WindowState:
    """Algorithm 2's window for one stream, with the number of radii stepped and the last
    input offset; pvalue caches normality_pvalue(radii) (None: not computed yet).
    """

    radii: tuple[float, ...]
    count: int = 0
    last_offset: int = -1
    pvalue: float | None = None


@dataclass(frozen=True)
class ThresholdValidator:
    """Accept iff radius >= threshold: stateless, rule "threshold"."""

    threshold: float

    def __post_init__(self) -> None:
        if not math.isfinite(self.threshold):
            raise ValueError(f"threshold must be finite, got {self.threshold}")

    def check(self, radius: float | None) -> Decision:
        """The decision for one radius (None: the input was invalid)."""
        if radius is None:
            return _NO_RADIUS
        radius = _checked(radius)
        if radius >= self.threshold:
            return Decision("accept", "threshold", f"radius {radius:.6g} >= {self.threshold:.6g}")
        return Decision("reject", "threshold", f"radius {radius:.6g} < {self.threshold:.6g}")

    def step(
        self, state: WindowState | None, radius: float | None, offset: int | None = None
    ) -> tuple[Decision, WindowState | None]:
        """Same signature as DistributionValidator.step; the state passes through unchanged."""
        return self.check(radius), state


@dataclass(frozen=True)
class BudgetValidator:
    """Accept iff a sound stage proved the input robust at the budget: rule "threshold".

    It needs no radius, only the decision at the budget (verifier.decide.Proof), and it is
    what makes the guarantee: no accepted input has another class within the budget.
    """

    budget: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.budget) and self.budget >= 0):
            raise ValueError(f"budget must be a finite number >= 0, got {self.budget}")

    def check(self, proof) -> Decision:
        """The decision for one Proof at the budget (None: the input was invalid)."""
        if proof is None:
            return _NO_RADIUS
        if proof.eps != self.budget:
            raise ValueError(f"a proof at eps {proof.eps} cannot decide at budget {self.budget}")
        if proof.proved:
            return Decision("accept", "threshold",
                            f"proved robust at eps {self.budget:.6g} by {proof.stage}")
        return Decision("reject", "threshold",
                        f"not proved robust at eps {self.budget:.6g} (best margin "
                        f"{proof.margin:.4g} after {proof.passes} stages)")


@dataclass(frozen=True)
class DistributionValidator:
    """Algorithm 2 with window size s; `step` is pure and makes one normality test per call."""

    sigma0: float
    sigma1: float
    s: int

    def __post_init__(self) -> None:
        if not (math.isfinite(self.sigma0) and math.isfinite(self.sigma1)):
            raise ValueError("sigma0 and sigma1 must be finite")
        if isinstance(self.s, bool) or not isinstance(self.s, int) or self.s < MIN_WINDOW:
            raise ValueError(f"window size s must be an integer >= {MIN_WINDOW}, got {self.s!r}")

    def initial_state(self, seed_window: Sequence[float]) -> WindowState:
        """The state before any input: the seed window (s radii) and its p-value."""
        radii = tuple(_checked(r) for r in seed_window)
        if len(radii) != self.s:
            raise ValueError(f"seed window has {len(radii)} radii, the window size is {self.s}")
        return WindowState(radii, 0, -1, normality_pvalue(radii))

    def step(
        self, state: WindowState, radius: float | None, offset: int | None = None
    ) -> tuple[Decision, WindowState]:
        """Decide one radius and return the next state; radius None leaves the state as is.

        p(Q'[0:s]) is the state's cached p-value and p(Q'[1:s+1]) is computed once; it is also
        the cached p-value of the next state when r is accepted (the window becomes Q'[1:s+1]).
        """
        if radius is None:
            return _NO_RADIUS, state
        r = _checked(radius)
        if len(state.radii) != self.s:
            raise ValueError(f"window has {len(state.radii)} radii, the window size is {self.s}")
        p_old = normality_pvalue(state.radii) if state.pvalue is None else state.pvalue
        slid = state.radii[1:] + (r,)
        p_new = normality_pvalue(slid)
        drop = p_old - p_new
        last = state.last_offset if offset is None else int(offset)
        if r >= self.sigma0:
            decision = Decision(
                "accept", "sigma0", f"radius {r:.6g} >= sigma0 {self.sigma0:.6g}", p_new, drop
            )
        elif drop <= self.sigma1:
            decision = Decision(
                "accept",
                "pvalue",
                f"radius {r:.6g} < sigma0 {self.sigma0:.6g}, but the window's normality p-value "
                f"drops by {drop:.4g} <= sigma1 {self.sigma1:.4g} ({p_old:.4g} -> {p_new:.4g})",
                p_new,
                drop,
            )
        else:
            reason = (
                f"radius {r:.6g} < sigma0 {self.sigma0:.6g}, and the window's normality p-value "
                + (
                    f"would drop by {drop:.4g} > sigma1 {self.sigma1:.4g} "
                    f"({p_old:.4g} -> {p_new:.4g})"
                    if not math.isnan(drop)
                    else f"is undefined ({p_old:.4g} -> {p_new:.4g})"
                )
            )
            decision = Decision("reject", "pvalue-drop", reason, p_new, drop)
            return decision, replace(state, count=state.count + 1, last_offset=last, pvalue=p_old)
        return decision, WindowState(slid, state.count + 1, last, p_new)


@dataclass(frozen=True)
class ConsistencyValidator:
    """Reject an input whose (log logit margin, log radius) lies far from the valid inputs'.

    On valid inputs the certified radius grows with the logit margin; a confident adversarial
    example has a large margin but a small radius for it (and a weak one a small margin).
    The score is the squared Mahalanobis distance of (log max(margin, FLOOR), log(radius +
    FLOOR)) from the valid mean; reject iff score > cutoff. Stateless, rule "consistency".
    """

    mean: tuple[float, float]
    inv_cov: tuple[tuple[float, float], tuple[float, float]]
    cutoff: float

    FLOOR = 1e-3

    def __post_init__(self) -> None:
        values = [*self.mean, *self.inv_cov[0], *self.inv_cov[1], self.cutoff]
        if len(values) != 7 or not all(math.isfinite(v) for v in values):
            raise ValueError("consistency mean, inv_cov (2x2) and cutoff must be finite")

    @classmethod
    def features(cls, radius: np.ndarray, margin: np.ndarray) -> np.ndarray:
        """[N, 2] (log margin, log radius), floored so that zeros stay finite."""
        m = np.maximum(np.asarray(margin, np.float64), cls.FLOOR)
        return np.column_stack([np.log(m), np.log(np.asarray(radius, np.float64) + cls.FLOOR)])

    def scores(self, radius: np.ndarray, margin: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distances of many (radius, margin) pairs."""
        d = self.features(radius, margin) - np.asarray(self.mean)
        return np.einsum("ij,jk,ik->i", d, np.asarray(self.inv_cov), d)

    def check(self, radius: float | None, margin: float | None = None) -> Decision:
        """The decision for one radius and the logit margin of the predicted class."""
        if radius is None:
            return _NO_RADIUS
        radius = _checked(radius)
        if margin is None or not math.isfinite(margin):
            raise ValueError("the consistency policy needs the input's logit margin")
        score = float(self.scores(np.array([radius]), np.array([margin]))[0])
        verdict = "accept" if score <= self.cutoff else "reject"
        sign = "<=" if verdict == "accept" else ">"
        return Decision(
            verdict, "consistency",
            f"radius {radius:.6g} at logit margin {margin:.4g}: distance {score:.4g} {sign} "
            f"{self.cutoff:.4g}", score=score,
        )


def replay(
    validator: DistributionValidator | ThresholdValidator,
    state: WindowState | None,
    radii: Iterable[float],
) -> tuple[list[Decision], WindowState | None]:
    """Step a sequence of radii in order; the decisions and the final state."""
    decisions = []
    for r in radii:
        decision, state = validator.step(state, r)  # type: ignore[arg-type]
        decisions.append(decision)
    return decisions, state


def _checked(radius: float) -> float:
    r = float(radius)
    if not (math.isfinite(r) and r >= 0.0):
        raise ValueError(f"a radius must be a finite number >= 0, got {radius!r}")
    return r
