"""Sound verification of ONNX networks (DeepZono, DeepPoly) and certified L-infinity radii."""

from verifier.box import InputBox
from verifier.check import (
    box_is_robust,
    box_margins,
    is_robust,
    linear_bounds,
    margins,
    output_bounds,
)
from verifier.domains import DOMAINS, get_domain
from verifier.network import Network, UnsupportedModelError, load_onnx
from verifier.score import RadiusResult, certified_radius, plan_for, radius_result, score_many
from verifier.settings import VerifierSettings
from verifier.walk import Plan

__all__ = [
    "DOMAINS",
    "InputBox",
    "Network",
    "Plan",
    "RadiusResult",
    "UnsupportedModelError",
    "VerifierSettings",
    "box_is_robust",
    "box_margins",
    "certified_radius",
    "get_domain",
    "is_robust",
    "linear_bounds",
    "load_onnx",
    "margins",
    "output_bounds",
    "plan_for",
    "radius_result",
    "score_many",
]
