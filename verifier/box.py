"""The input set: an L-infinity ball around x, clipped to the valid input range."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from verifier.numerics.rounding import linf_box


@dataclass(frozen=True)
class InputBox:
    """Axis-aligned box lower <= y <= upper, stored as float64 flat vectors.

    Built with outward rounding: the float box contains the exact real box
    clip(x - eps, lo, hi) .. clip(x + eps, lo, hi).
    """

    lower: np.ndarray
    upper: np.ndarray

    @classmethod
    def linf(cls, x: np.ndarray, eps: float, lower: float = 0.0, upper: float = 1.0) -> InputBox:
        """The clipped L-infinity ball of radius eps around x (flattened)."""
        x = np.ascontiguousarray(x, dtype=np.float64).reshape(-1)
        if not eps >= 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        return cls(*linf_box(x, float(eps), float(lower), float(upper)))

    def center_radius(self) -> tuple[np.ndarray, np.ndarray]:
        """Centre c and radius r with [c - r, c + r] containing [lower, upper] exactly."""
        c = 0.5 * (self.lower + self.upper)
        r = np.maximum(self.upper - c, c - self.lower)
        r = np.where(r > 0, np.nextafter(r, np.inf), 0.0)
        return c, r

    def contains(self, y: np.ndarray) -> bool:
        """Whether the point y lies in the box."""
        y = np.asarray(y, dtype=np.float64).reshape(-1)
        return bool(np.all(y >= self.lower) and np.all(y <= self.upper))
