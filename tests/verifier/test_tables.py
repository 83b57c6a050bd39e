"""The tables that make an op or a domain one entry: every layer kind has a transfer in every
domain and a VJP, and every activation a domain treats as smooth or piecewise has a code."""

from __future__ import annotations

from typing import get_args

import pytest

from verifier.domains import DOMAINS
from verifier.gradient import VJPS
from verifier.network import Layer, LeakyRelu
from verifier.numerics.activations import CODES, RELU, SIGMOID, TANH

KINDS = set(get_args(Layer))


@pytest.mark.parametrize("name", sorted(DOMAINS))
def test_every_layer_kind_has_a_transfer_in_every_domain(name: str) -> None:
    missing = KINDS - set(DOMAINS[name].transfers)
    assert not missing, f"{name} has no transfer for {sorted(k.__name__ for k in missing)}"


def test_every_layer_kind_has_a_vjp() -> None:
    assert set(VJPS) == KINDS


def test_activation_codes_are_distinct_and_cover_the_activations() -> None:
    assert sorted(CODES.values()) == [RELU, SIGMOID, TANH]
    assert set(CODES) | {LeakyRelu} <= KINDS
