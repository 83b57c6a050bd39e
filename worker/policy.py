"""The validation policies, in one registry: policy name -> validator built from a profile.

Every validator takes the same per-input signals (radius, logit margin) and a state, so a
stream runs any policy the same way; a new policy is one entry in POLICIES.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from worker.profile import POLICIES as POLICY_NAMES
from worker.profile import Profile
from worker.validate import (
    BudgetValidator,
    Decision,
    DistributionValidator,
)

if TYPE_CHECKING:  # annotations only: the CLI imports policies without loading the verifier
    from verifier.decide import Proof

__all__ = ["POLICIES", "PolicyValidator", "Signals", "buildable_policies", "logit_margins",
           "make_validator"]


@dataclass(frozen=True)
class Signals:
    """What the verifier and the network say about one input: its radius (policies that need
    one), its decision at the budget (the threshold policy) and its logit margin."""

    radius: float | None
    margin: float | None = None
    proof: Proof | None = None


@dataclass(frozen=True)
class PolicyValidator:
    """A policy bound to a profile: `step` decides one input and returns the next state;
    rule is the underlying validator object (e.g. a BudgetValidator). A policy with a budget
    decides from a Proof at that budget and needs no radius."""

    name: str
    rule: Any
    initial: Any
    decide: Callable[[Any, Signals, int | None], tuple[Decision, Any]]
    needs_margin: bool = False
    budget: float | None = None

    def initial_state(self) -> Any:
        """The state of a new stream."""
        return self.initial

    def step(
        self, state: Any, signals: Signals, offset: int | None = None
    ) -> tuple[Decision, Any]:
        """Decide one input in stream order."""
        return self.decide(state, signals, offset)


def _threshold(profile: Profile) -> PolicyValidator:
    budget = profile.guaranteed_budget
    v = BudgetValidator(profile.threshold if budget is None else budget)
    return PolicyValidator("threshold", v, None, lambda s, sig, off: (v.check(sig.proof), s),
                           budget=v.budget)


def _distribution(profile: Profile) -> PolicyValidator:
    v = DistributionValidator(profile.sigma0, profile.sigma1, profile.window_size)
    return PolicyValidator(
        "distribution", v, v.initial_state(profile.seed_window),
        lambda s, sig, off: v.step(s, sig.radius, off),
    )


def _consistency(profile: Profile) -> PolicyValidator:
    if profile.consistency is None:
        raise ValueError(
            f"profile {profile.name} has no consistency parameters (recalibrate it with this "
            "version of radiusguard)"
        )
    v = profile.consistency
    return PolicyValidator(
        "consistency", v, None, lambda s, sig, off: (v.check(sig.radius, sig.margin), s), True
    )


POLICIES: dict[str, Callable[[Profile], PolicyValidator]] = {
    "threshold": _threshold,
    "distribution": _distribution,
    "consistency": _consistency,
}
assert tuple(POLICIES) == POLICY_NAMES, "worker.profile.POLICIES names the registry"


def make_validator(profile: Profile, policy: str | None = None) -> PolicyValidator:
    """The validator of `policy` (default: the profile's own) with the profile's parameters."""
    name = policy or profile.policy
    if name not in POLICIES:
        raise ValueError(f"policy must be one of {tuple(POLICIES)}, got {name!r}")
    return POLICIES[name](profile)


def logit_margins(logits: np.ndarray) -> np.ndarray:
    """Top logit minus the runner-up, per row of [N, classes] logits."""
    top2 = np.sort(np.atleast_2d(np.asarray(logits, np.float64)), axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def buildable_policies(profile: Profile) -> list[str]:
    """The registry's policies this profile has the parameters for, in registry order."""
    out = []
    for name in POLICIES:
        try:
            make_validator(profile, name)
        except ValueError:
            continue
        out.append(name)
    return out
