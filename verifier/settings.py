"""How a radius is computed: the one frozen settings object, its defaults defined here once."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

DOMAIN_NAMES = ("deepzono", "deeppoly")
# Part of every cache key of computed radii: raised whenever a change may move a radius.
VERIFIER_VERSION = 5  # 5: the secant search steered by depth and the linearisation radius
SEARCHES = ("bisect", "secant")


@dataclass(frozen=True)
class VerifierSettings:
    """Domain, radius search, its range [0, up) and tolerance, and the valid input range.

    input_lower/input_upper (None: the network's, [0, 1] for images) clip every L-infinity
    ball. A profile stores these; a worker must score with the settings it was calibrated with.
    """

    domain: str = "deepzono"
    search: str = "secant"
    up: float = 0.256
    tol: float = 0.001
    input_lower: float | None = None
    input_upper: float | None = None

    def __post_init__(self) -> None:
        if self.domain not in DOMAIN_NAMES:
            raise ValueError(f"domain must be one of {DOMAIN_NAMES}, got {self.domain!r}")
        if self.search not in SEARCHES:
            raise ValueError(f"search must be one of {SEARCHES}, got {self.search!r}")
        if not (self.up > 0 and self.tol > 0 and math.isfinite(self.up)):
            raise ValueError(f"up and tol must be positive, got {self.up}, {self.tol}")
        lo, hi = self.input_lower, self.input_upper
        if lo is not None and hi is not None and not lo < hi:
            raise ValueError(f"input_lower must be below input_upper, got {lo}, {hi}")

    def as_dict(self) -> dict:
        return asdict(self)
