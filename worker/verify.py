"""`radiusguard verify MODEL.onnx SPEC.vnnlib`: prove a VNN-LIB property or answer unknown.

The spec states the unsafe region; `holds` means every disjunct of it was proven empty:
some output comparison has a sound lower bound of C y + d above 0 over the disjunct's box
(the box exactly as the spec gives it, in the model's input coordinates, not clipped).
Anything else is `unknown`: this command never claims a counterexample.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass

import numpy as np

from verifier.box import InputBox
from verifier.network import Network
from verifier.settings import DOMAIN_NAMES
from verifier.vnnlib.parser import Disjunct, Spec, VnnlibError, load
from worker.errors import CliError
from worker.modelfile import load_model


@dataclass(frozen=True)
class Answer:
    """`holds` or `unknown`, the disjuncts proven empty, and the wall time."""

    result: str
    proven: int
    disjuncts: int
    seconds: float


def domain_bounds(net: Network, name: str):
    """A function (box, C, d) -> sound lower bounds of C y + d, from the named domain."""
    from verifier.domains import get_domain
    from verifier.walk import Plan, linear_lower

    try:
        domain = get_domain(name)
    except ValueError as exc:
        raise VnnlibError(str(exc)) from None
    plan = Plan.of(net, domain)
    return lambda box, C, d: linear_lower(plan, box, C, d)


def check_outputs(net: Network, spec: Spec) -> None:
    """The spec must fit the network; after a dropped final Softmax only comparisons that
    the logits decide the same way are allowed."""
    if spec.n_inputs != net.input_size or spec.n_outputs != net.n_outputs:
        raise VnnlibError(f"the spec has {spec.n_inputs} inputs and {spec.n_outputs} outputs, "
                          f"the model {net.input_size} and {net.n_outputs}")
    dropped = net.meta.get("dropped_output_op")
    for dj in spec.disjuncts:
        for row, d in zip(dj.C, dj.d, strict=True):
            if dropped == "LogSoftmax" and math.fsum(row) != 0:
                raise VnnlibError("the model ends in LogSoftmax: only output comparisons whose "
                                  "coefficients sum to 0 (e.g. Y_i - Y_j) can be checked")
            nz = np.flatnonzero(row)
            pairwise = len(nz) == 2 and row[nz[0]] == -row[nz[1]] and d == 0
            if dropped == "Softmax" and not pairwise:
                raise VnnlibError("the model ends in Softmax: only comparisons of two outputs "
                                  "(Y_i against Y_j) can be checked")


def verify(net: Network, spec: Spec, domain: str = "deepzono") -> Answer:
    """Prove every disjunct of the unsafe region empty, or answer unknown.

    Disjuncts over the same box (the usual robustness property) share one pass: their rows
    are stacked into one C.
    """
    t0 = time.perf_counter()
    check_outputs(net, spec)
    bounds = domain_bounds(net, domain)
    groups: dict[bytes, list[Disjunct]] = {}
    for dj in spec.disjuncts:
        groups.setdefault(dj.lower.tobytes() + dj.upper.tobytes(), []).append(dj)
    proven = 0
    for group in groups.values():
        box = group[0]
        if np.any(box.lower > box.upper):
            proven += len(group)  # an empty input box
            continue
        if any(len(dj.d) == 0 for dj in group):
            break  # a whole box is unsafe as stated: nothing can prove that wrong
        C = np.concatenate([dj.C for dj in group])
        d = np.concatenate([dj.d for dj in group])
        low = bounds(InputBox(box.lower.copy(), box.upper.copy()), C, d)
        ends = np.cumsum([len(dj.d) for dj in group])[:-1]
        done = sum(bool(np.any(part > 0.0)) for part in np.split(low, ends))
        proven += done
        if done < len(group):
            break
    n = len(spec.disjuncts)
    result = "holds" if proven == n else "unknown"
    return Answer(result, proven, n, time.perf_counter() - t0)


def cmd_verify(args: argparse.Namespace) -> int:
    """Print `holds` or `unknown` with the time taken."""
    net = load_model(args.model)
    try:
        spec = load(args.spec)
        answer = verify(net, spec, args.domain)
    except VnnlibError as exc:
        raise CliError(str(exc)) from None
    print(f"{answer.result} time={answer.seconds:.4f}s disjuncts={answer.disjuncts} "
          f"proven={answer.proven} domain={args.domain}")
    return 0


def register(sub) -> None:
    """Add the `verify` subcommand to the CLI's subparsers."""
    p = sub.add_parser("verify", help="prove a VNN-LIB property (holds) or answer unknown")
    p.add_argument("model", help="ONNX model")
    p.add_argument("spec", help="VNN-LIB property (.vnnlib): input box and unsafe outputs")
    p.add_argument("--domain", choices=DOMAIN_NAMES, default="deepzono",
                   help="abstract domain (default deepzono)")
    p.set_defaults(func=cmd_verify)
