"""The memory cap of a pass: kernels check their estimate before allocating a big state.

The cap is a process setting, not a verifier setting: it never changes a result, only
whether a pass is attempted, so it is read from the environment (RADIUSGUARD_MEMORY_CAP_MB,
default 4096) and is no part of VerifierSettings or any cache key.
"""

from __future__ import annotations

import os

ENV = "RADIUSGUARD_MEMORY_CAP_MB"
DEFAULT_MB = 4096
MB = 1 << 20
GB = 1 << 30


class VerifierMemoryError(ValueError):
    """A pass would need more memory than the cap allows (raised before allocating)."""

    def __init__(self, need: int, cap: int, where: str = "") -> None:
        self.need, self.cap, self.where = need, cap, where
        at = f" at {where}" if where else ""
        super().__init__(
            f"zonotope{at} would need {_size(need)}, over the {_size(cap)} cap ({ENV})"
        )

    def at(self, where: str) -> VerifierMemoryError:
        """The same error saying where in the network it arose."""
        return VerifierMemoryError(self.need, self.cap, where)

    def at_layer(self, index: int, layer: object) -> VerifierMemoryError:
        """The same error naming the layer (index in the network, kind, output shape)."""
        shape = getattr(layer, "out_shape", None)
        if shape is None and hasattr(layer, "weight"):
            shape = layer.weight.shape[:1]
        dims = " " + "x".join(str(d) for d in shape) if shape else ""
        return self.at(f"layer {index} ({type(layer).__name__}{dims})")


def _size(n: int) -> str:
    return f"{n / GB:.1f} GB" if n >= GB else f"{n / MB:.3g} MB"


def cap_bytes() -> int:
    """The cap in bytes, from RADIUSGUARD_MEMORY_CAP_MB (a positive number of MiB)."""
    raw = os.environ.get(ENV)
    if raw is None or raw.strip() == "":
        return DEFAULT_MB * MB
    try:
        mb = float(raw)
    except ValueError:
        mb = -1.0
    if not mb > 0:
        raise ValueError(f"{ENV} must be a positive number of MiB, got {raw!r}")
    return int(mb * MB)


def ensure_fits(need: int) -> None:
    """Raise VerifierMemoryError when `need` bytes exceed the cap."""
    cap = cap_bytes()
    if need > cap:
        raise VerifierMemoryError(int(need), cap)


def csr_bytes(n: int, nnz: int) -> int:
    """A CSR zonotope of n neurons: ids and values per non-zero, five arrays per neuron."""
    return 16 * int(nnz) + 40 * int(n)


def dense_bytes(n: int, m: int) -> int:
    """A dense zonotope of n neurons over m generators."""
    return 8 * int(n) * int(m) + 24 * int(n)
