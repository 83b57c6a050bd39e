"""One question about one input set: is the network robust on it, and by what margin.

Every call takes a Network (or a Plan from verifier.score.plan_for) and VerifierSettings
(the domain and the valid input range); boxes are either the clipped L-infinity ball x +/- eps
or an explicit InputBox with any lower and upper arrays.
"""

from __future__ import annotations

import numpy as np

from verifier.box import InputBox
from verifier.network import Network
from verifier.numerics.runtime import single_threaded
from verifier.score import DEFAULT, input_box, plan_for
from verifier.settings import VerifierSettings
from verifier.walk import Plan, linear_lower, margin_matrix
from verifier.walk import margins as _box_margins
from verifier.walk import output_bounds as _output_bounds


def margins(
    net: Network | Plan, x: np.ndarray, eps: float, label: int,
    settings: VerifierSettings = DEFAULT,
) -> np.ndarray:
    """Sound lower bounds of y_label - y_j over the clipped eps-ball around x (inf at label)."""
    plan = plan_for(net, settings)
    with single_threaded():
        return _box_margins(plan, input_box(plan, x, eps, settings), label)


def is_robust(
    net: Network | Plan, x: np.ndarray, eps: float, label: int | None = None,
    settings: VerifierSettings = DEFAULT,
) -> bool:
    """True when the domain proves every input of the clipped eps-ball keeps class `label`.

    label defaults to the class the network predicts for x.
    """
    plan = plan_for(net, settings)
    label = plan.net.predict(x) if label is None else label
    return bool(np.min(margins(plan, x, eps, label, settings)) > 0.0)


def box_margins(
    net: Network | Plan, box: InputBox, label: int, settings: VerifierSettings = DEFAULT
) -> np.ndarray:
    """Margins over an explicit input box (InputBox(lower, upper)): inf at label."""
    plan = plan_for(net, settings)
    with single_threaded():
        return _box_margins(plan, box, label)


def box_is_robust(
    net: Network | Plan, box: InputBox, label: int, settings: VerifierSettings = DEFAULT
) -> bool:
    """True when every point of the explicit box is classified `label` (proved)."""
    return bool(np.min(box_margins(net, box, label, settings)) > 0.0)


def linear_bounds(
    net: Network | Plan, box: InputBox, C: np.ndarray, d: np.ndarray,
    settings: VerifierSettings = DEFAULT,
) -> np.ndarray:
    """Sound lower bounds of C y + d over every output y of the network on the box."""
    plan = plan_for(net, settings)
    with single_threaded():
        return linear_lower(plan, box, C, d)


def output_bounds(
    net: Network | Plan, box: InputBox, settings: VerifierSettings = DEFAULT
) -> tuple[np.ndarray, np.ndarray]:
    """Sound interval bounds of every logit over the box."""
    plan = plan_for(net, settings)
    with single_threaded():
        return _output_bounds(plan, box)


__all__ = ["box_is_robust", "box_margins", "is_robust", "linear_bounds", "margin_matrix",
           "margins", "output_bounds"]
