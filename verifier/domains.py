"""The registry of abstract domains by name."""

from __future__ import annotations

from verifier.deepzono import DEEPZONO
from verifier.domain import Domain

DOMAINS: dict[str, Domain] = {DEEPZONO.name: DEEPZONO}


def get_domain(name: str) -> Domain:
    """The domain called `name` (a clear error naming the choices otherwise)."""
    try:
        return DOMAINS[name]
    except KeyError:
        raise ValueError(f"unknown domain {name!r}; choose one of {sorted(DOMAINS)}") from None
