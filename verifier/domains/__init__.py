"""The registry of abstract domains by name."""

from __future__ import annotations

from verifier.domains.base import Domain
from verifier.domains.deeppoly.transfers import DEEPPOLY
from verifier.domains.deepzono.transfers import DEEPZONO
from verifier.domains.interval import INTERVAL
from verifier.settings import DOMAIN_NAMES

DOMAINS: dict[str, Domain] = {d.name: d for d in (DEEPZONO, DEEPPOLY, INTERVAL)}
assert tuple(DOMAINS) == DOMAIN_NAMES, "verifier.settings.DOMAIN_NAMES lists the registry"


def get_domain(name: str) -> Domain:
    """The domain called `name` (a clear error naming the choices otherwise)."""
    try:
        return DOMAINS[name]
    except KeyError:
        raise ValueError(f"unknown domain {name!r}; choose one of {sorted(DOMAINS)}") from None
