"""How a radius is computed: the one frozen settings object, its defaults defined here once."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

DOMAIN_NAMES = ("deepzono", "deeppoly", "interval")
# Part of every cache key of computed radii: raised whenever a change may move a radius.
VERIFIER_VERSION = 6  # 6: the interval domain and decisions at a budget by a cascade of stages
SEARCHES = ("bisect", "secant")
# The decision's stages, cheapest first; any sound domain may be a stage.
STAGES = ("deepzono", "deeppoly", "interval")


@dataclass(frozen=True)
class VerifierSettings:
    """Domain, radius search, its range [0, up) and tolerance, the valid input range, and the
    stages that decide robustness at a budget (verifier.decide), in the order they run.

    input_lower/input_upper (None: the network's, [0, 1] for images) clip every L-infinity
    ball. A profile stores these; a worker must score with the settings it was calibrated with.
    """

    domain: str = "deepzono"
    search: str = "secant"
    up: float = 0.256
    tol: float = 0.001
    input_lower: float | None = None
    input_upper: float | None = None
    stages: tuple[str, ...] = STAGES

    def __post_init__(self) -> None:
        if self.domain not in DOMAIN_NAMES:
            raise ValueError(f"domain must be one of {DOMAIN_NAMES}, got {self.domain!r}")
        if self.search not in SEARCHES:
            raise ValueError(f"search must be one of {SEARCHES}, got {self.search!r}")
        if not (self.up > 0 and self.tol > 0 and math.isfinite(self.up)):
            raise ValueError(f"up and tol must be positive, got {self.up}, {self.tol}")
        object.__setattr__(self, "stages", tuple(self.stages))
        bad = [s for s in self.stages if s not in DOMAIN_NAMES]
        if bad or not self.stages or len(set(self.stages)) != len(self.stages):
            raise ValueError(f"stages must be distinct names of {DOMAIN_NAMES}, got {self.stages}")
        lo, hi = self.input_lower, self.input_upper
        if lo is not None and hi is not None and not lo < hi:
            raise ValueError(f"input_lower must be below input_upper, got {lo}, {hi}")

    def as_dict(self) -> dict:
        d = asdict(self)
        d["stages"] = list(self.stages)
        return d
