"""Sound DeepZono verification of ONNX networks and certified L-infinity robustness radii."""

from verifier.box import InputBox
from verifier.network import Network, UnsupportedModelError, load_onnx
from verifier.radius import RadiusResult, certified_radii, certified_radius, radius_result
from verifier.zonotope import ZonoNet, is_robust, margins, output_bounds

__all__ = [
    "InputBox",
    "Network",
    "RadiusResult",
    "UnsupportedModelError",
    "ZonoNet",
    "certified_radii",
    "certified_radius",
    "is_robust",
    "load_onnx",
    "margins",
    "output_bounds",
    "radius_result",
]
