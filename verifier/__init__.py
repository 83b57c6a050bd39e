"""Sound verification of ONNX networks (DeepZono, DeepPoly, intervals) and certified
L-infinity radii.

The public names load on first use (PEP 562), so `import verifier.settings` or a CLI's
`--help` costs neither numba's compiler nor onnx.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_HOMES = {
    "InputBox": "verifier.box",
    "box_is_robust": "verifier.check",
    "box_margins": "verifier.check",
    "is_robust": "verifier.check",
    "linear_bounds": "verifier.check",
    "margins": "verifier.check",
    "output_bounds": "verifier.check",
    "DOMAINS": "verifier.domains",
    "get_domain": "verifier.domains",
    "Network": "verifier.network",
    "UnsupportedModelError": "verifier.network",
    "load_onnx": "verifier.onnx.importer",
    "RadiusResult": "verifier.score",
    "certified_radius": "verifier.score",
    "plan_for": "verifier.score",
    "radius_result": "verifier.score",
    "score_many": "verifier.score",
    "VerifierSettings": "verifier.settings",
    "Plan": "verifier.walk",
}
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

if TYPE_CHECKING:
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
    from verifier.network import Network, UnsupportedModelError
    from verifier.onnx.importer import load_onnx
    from verifier.score import RadiusResult, certified_radius, plan_for, radius_result, score_many
    from verifier.settings import VerifierSettings
    from verifier.walk import Plan


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use and keep the name here."""
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'verifier' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
