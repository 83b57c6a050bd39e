"""What an abstract domain is: one table from layer kind to transfer function.

The walker (verifier.walk) knows no domain; a domain knows no graph. Adding a layer kind is
one entry in each domain's `transfers` (and `prepare` when the kernel wants derived arrays);
adding a domain is one new `Domain` value registered in verifier.domains.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from verifier.box import InputBox

State = Any  # a domain's abstract element; opaque to the walker
Prepared = Any  # a layer's derived arrays for one domain; opaque to the walker


@dataclass(frozen=True)
class Domain:
    """A sound abstract domain over float64 networks.

    start:        the abstract element of an input box.
    prepare:      layer kind -> (layer -> derived arrays), run once per network; kinds not
                  listed are passed the layer itself.
    transfers:    layer kind -> ((prepared, state) -> state), the abstract transformer; a
                  join (Add, Concat) takes the states of all its sources:
                  (prepared, state, state, ...) -> state. States reaching one join descend
                  from one input box; a domain that cannot tell what they share must treat
                  them as independent (sound, only looser).
    linear_lower: (state, C, d) -> sound lower bounds of C y + d over every concrete y that
                  the state contains (C has shape [k, n], d [k]); this is the property.
    bounds:       state -> sound (lower, upper) of every neuron the state holds.
    fast_path:    optional (prepared network, box, C, d) -> lower bounds or None; a fused
                  kernel for networks of a shape it recognises, returning what the walk
                  would (or something sound and at least as tight), None to fall back.
    """

    name: str
    start: Callable[[InputBox], State]
    transfers: Mapping[type, Callable[[Prepared, State], State]]
    linear_lower: Callable[[State, np.ndarray, np.ndarray], np.ndarray]
    bounds: Callable[[State], tuple[np.ndarray, np.ndarray]]
    prepare: Mapping[type, Callable[[Any], Prepared]] = field(default_factory=dict)
    fast_path: Callable[[Any, InputBox, np.ndarray, np.ndarray], np.ndarray | None] | None = None
    prepare_fast: Callable[[Any], Any] | None = None
