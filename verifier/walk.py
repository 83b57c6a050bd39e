"""The one graph walker: runs any Domain's transfers over a Network's layers.

It knows no domain: `Plan.of(net, domain)` looks each layer up in the domain's tables once,
and `linear_lower` threads the domain's state through the layers and reads the property off
the end. On a graph, each layer's transfer is called with the states of its sources, in
order (two or more for Add and Concat), and a state is dropped after its last reader.
The property is always a set of linear functions of the logits (C y + d); margins
against every other class are the rows e_label - e_j.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from verifier.box import InputBox
from verifier.domains.base import Domain
from verifier.network import INPUT, Network, UnsupportedModelError
from verifier.numerics.memory import VerifierMemoryError


@dataclass(frozen=True)
class Plan:
    """A Network prepared once for repeated passes of one domain."""

    net: Network
    domain: Domain
    steps: tuple[tuple[Any, Any], ...]  # (transfer function, prepared layer)
    fast: Any = None  # the domain's fast-path arguments, when it recognised the network
    sources: tuple[tuple[int, ...], ...] = ()  # Network.sources (empty for a chain)
    last_use: tuple[int, ...] = ()  # per layer, the last layer that reads its output

    @classmethod
    def of(cls, net: Network, domain: Domain) -> Plan:
        """Look up every layer in the domain's tables (fails naming a layer it lacks)."""
        steps = []
        for layer in net.layers:
            kind = type(layer)
            if kind not in domain.transfers:
                raise UnsupportedModelError(
                    f"domain {domain.name} has no transfer for layer {kind.__name__}"
                )
            prep = domain.prepare.get(kind)
            steps.append((domain.transfers[kind], prep(layer) if prep else layer))
        fast = domain.prepare_fast(net) if domain.prepare_fast else None
        last_use = list(range(1, len(steps) + 1))
        for i, src in enumerate(net.sources):
            for j in src:
                if j != INPUT:
                    last_use[j] = max(last_use[j], i)
        return cls(net, domain, tuple(steps), fast, net.sources, tuple(last_use))

    def __repr__(self) -> str:
        return f"Plan({self.net.name or 'network'!r}, domain={self.domain.name!r})"


def analyse(plan: Plan, box: InputBox) -> Any:
    """The domain's abstract element of the network's outputs over the box."""
    state = plan.domain.start(box)
    if not plan.sources:
        for i, (transfer, prepared) in enumerate(plan.steps):
            try:
                state = transfer(prepared, state)
            except VerifierMemoryError as err:
                raise err.at_layer(i, plan.net.layers[i]) from None
        return state
    outs: dict[int, Any] = {INPUT: state}
    for i, (transfer, prepared) in enumerate(plan.steps):
        try:
            outs[i] = transfer(prepared, *(outs[j] for j in plan.sources[i]))
        except VerifierMemoryError as err:
            raise err.at_layer(i, plan.net.layers[i]) from None
        for j in plan.sources[i]:
            if j != INPUT and plan.last_use[j] == i:
                outs.pop(j, None)  # a join may read one layer twice
    return outs[len(plan.steps) - 1]


def linear_lower(plan: Plan, box: InputBox, C: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Sound lower bounds of C y + d over every output y of the network on the box."""
    C = np.ascontiguousarray(C, dtype=np.float64)
    d = np.ascontiguousarray(d, dtype=np.float64)
    if plan.fast is not None:
        out = plan.domain.fast_path(plan.fast, box, C, d)
        if out is not None:
            return out
    state = analyse(plan, box)
    try:
        return plan.domain.linear_lower(state, C, d)
    except VerifierMemoryError as err:
        raise err.at("the output property") from None


def margin_matrix(n_outputs: int, label: int) -> np.ndarray:
    """Rows e_label - e_j for every j != label: the robustness property as C y > 0."""
    others = [j for j in range(n_outputs) if j != label]
    C = np.zeros((len(others), n_outputs))
    C[:, label] = 1.0
    C[np.arange(len(others)), others] = -1.0
    return C


def margins(plan: Plan, box: InputBox, label: int) -> np.ndarray:
    """Sound lower bounds of y_label - y_j per class j over the box (inf at j = label)."""
    n = plan.net.n_outputs
    lows = linear_lower(plan, box, margin_matrix(n, label), np.zeros(n - 1))
    return np.insert(lows, label, np.inf)


def output_bounds(plan: Plan, box: InputBox) -> tuple[np.ndarray, np.ndarray]:
    """Sound interval bounds of every logit over the box."""
    eye = np.eye(plan.net.n_outputs)
    zero = np.zeros(plan.net.n_outputs)
    return linear_lower(plan, box, eye, zero), -linear_lower(plan, box, -eye, zero)
