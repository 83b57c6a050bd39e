"""The input set: an L-infinity ball around x, clipped to the valid input range."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        lo = np.nextafter(x - eps, -np.inf) if eps > 0 else x.copy()
        hi = np.nextafter(x + eps, np.inf) if eps > 0 else x.copy()
        lo = np.clip(lo, lower, upper)
        hi = np.clip(hi, lower, upper)
        return cls(np.minimum(lo, x), np.maximum(hi, x))

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
