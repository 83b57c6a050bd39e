"""VNN-LIB robustness properties: parse a spec into input boxes and linear output conditions.

A VNN-LIB file declares inputs X_i and outputs Y_j and asserts the UNSAFE region: input
bounds and a condition on the outputs, in any nesting of `and`/`or` of linear comparisons.
The asserts are put in disjunctive normal form; each disjunct is an input box and rows of
C y + d, one per output comparison, normalised so that the comparison reads C y + d <= 0.
The property holds when, in every disjunct, some row has a sound lower bound > 0 on its box.

Numbers are read exactly (as fractions) and rounded so that the float box contains the
spec's box and every d is at most the spec's constant: what is proven is never weaker than
what the file states.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

MAX_DISJUNCTS = 100_000
_VAR = re.compile(r"^([XY])_(\d+)$")
_COMPARE = {"<=": (1, False), "<": (1, True), ">=": (-1, False), ">": (-1, True)}

Linear = tuple[dict[str, Fraction | int], Fraction]  # coefficients by variable, constant


class VnnlibError(ValueError):
    """The file is not a VNN-LIB property radiusguard can read."""


@dataclass(frozen=True)
class Disjunct:
    """One part of the unsafe region: inputs in [lower, upper] whose outputs y satisfy every
    row C y + d <= 0 (< 0 where strict)."""

    lower: np.ndarray
    upper: np.ndarray
    C: np.ndarray
    d: np.ndarray
    strict: np.ndarray


@dataclass(frozen=True)
class Spec:
    """A parsed property: the unsafe region is the union of the disjuncts."""

    n_inputs: int
    n_outputs: int
    disjuncts: tuple[Disjunct, ...]


# ----------------------------------------------------------------------------- s-expressions


def _tokens(text: str) -> list[str]:
    text = re.sub(r";[^\n]*", " ", text)
    return re.findall(r"\(|\)|[^\s()]+", text)


def _sexprs(text: str) -> list:
    stack: list[list] = [[]]
    for tok in _tokens(text):
        if tok == "(":
            stack.append([])
        elif tok == ")":
            if len(stack) == 1:
                raise VnnlibError("unbalanced ')'")
            done = stack.pop()
            stack[-1].append(done)
        else:
            stack[-1].append(tok)
    if len(stack) != 1:
        raise VnnlibError("unbalanced '(': the file ends inside an expression")
    return stack[0]


def _show(e) -> str:
    text = e if isinstance(e, str) else "(" + " ".join(_show(x) for x in e) + ")"
    return text if len(text) <= 80 else text[:77] + "..."


# ----------------------------------------------------------------------------- terms


def _number(tok: str) -> Fraction | None:
    try:
        return Fraction(tok)
    except (ValueError, ZeroDivisionError):
        return None


def _linear(e, declared: set[str]) -> Linear:
    """A linear term: a number, a declared variable, (+ ...), (- ...), (* c term)."""
    if isinstance(e, str):
        num = _number(e)
        if num is not None:
            return {}, num
        if e not in declared:
            raise VnnlibError(f"undeclared variable {e!r}")
        return {e: Fraction(1)}, Fraction(0)
    if not e or not isinstance(e[0], str):
        raise VnnlibError(f"not a term: {_show(e)}")
    op, args = e[0], [_linear(a, declared) for a in e[1:]]
    if op == "+" and args:
        return _combine(args, [1] * len(args))
    if op == "-" and len(args) == 1:
        return _combine(args, [-1])
    if op == "-" and args:
        return _combine(args, [1] + [-1] * (len(args) - 1))
    if op == "*" and args:
        const = [a for a in args if not a[0]]
        if len(const) < len(args) - 1:
            raise VnnlibError(f"non-linear product: {_show(e)}")
        factor = Fraction(1)
        for _, c in const:
            factor *= c
        var = [a for a in args if a[0]]
        return _combine(var or [({}, Fraction(1))], [factor])
    raise VnnlibError(f"unsupported term {_show(e)}")


def _combine(terms: list[Linear], weights: list) -> Linear:
    coef: dict[str, Fraction] = {}
    const = Fraction(0)
    for (c, k), w in zip(terms, weights, strict=True):
        for v, a in c.items():
            coef[v] = coef.get(v, Fraction(0)) + w * a
        const += w * k
    return {v: a for v, a in coef.items() if a != 0}, const


# ----------------------------------------------------------------------------- formulas

Atom = tuple[dict[str, Fraction | int], Fraction, bool]  # sum a_v v + k <= 0 (< 0 if strict)


def _dnf(e, declared: set[str]) -> list[list[Atom]]:
    """The formula as a list of conjunctions of atoms."""
    if isinstance(e, str) or not e:
        raise VnnlibError(f"not a formula: {_show(e)}")
    op = e[0]
    if op == "and":
        parts = [_dnf(x, declared) for x in e[1:]]
        size = 1
        for p in parts:
            size *= len(p)
        if size > MAX_DISJUNCTS:
            raise VnnlibError(f"more than {MAX_DISJUNCTS} disjuncts in normal form")
        return [list(itertools.chain.from_iterable(c)) for c in itertools.product(*parts)]
    if op == "or":
        out = [c for x in e[1:] for c in _dnf(x, declared)]
        if len(out) > MAX_DISJUNCTS:
            raise VnnlibError(f"more than {MAX_DISJUNCTS} disjuncts in normal form")
        return out
    if op == "=" and len(e) == 3:
        return _dnf(["and", ["<=", e[1], e[2]], [">=", e[1], e[2]]], declared)
    if op in _COMPARE and len(e) == 3:
        sign, strict = _COMPARE[op]
        a, b = e[1], e[2]
        if isinstance(a, str) and isinstance(b, str) and a in declared:  # the usual bound
            num = _number(b)
            if num is not None:  # sign (a - num) <= 0
                return [[({a: sign}, -sign * num, strict)]]
        coef, const = _combine([_linear(a, declared), _linear(b, declared)], [sign, -sign])
        return [[(coef, const, strict)]]
    raise VnnlibError(f"unsupported formula {_show(e)} (and, or, <=, >=, <, >, = are read)")


# ----------------------------------------------------------------------------- rounding


def _down(q: Fraction) -> float:
    f = float(q)
    return float(np.nextafter(f, -np.inf)) if Fraction(f) > q else f


def _up(q: Fraction) -> float:
    f = float(q)
    return float(np.nextafter(f, np.inf)) if Fraction(f) < q else f


def _exact(q: Fraction, what: str) -> float:
    f = float(q)
    if Fraction(f) != q:
        raise VnnlibError(f"{what} = {q} is not exact in binary floating point")
    return f


# ----------------------------------------------------------------------------- the spec


def parse(text: str) -> Spec:
    """Parse VNN-LIB text into a Spec (see the module docstring)."""
    declared: dict[str, tuple[str, int]] = {}
    formulas = []
    for e in _sexprs(text):
        if not isinstance(e, list) or not e:
            raise VnnlibError(f"unexpected {_show(e)} at the top level")
        if e[0] == "declare-const":
            if len(e) != 3 or e[2] != "Real" or not isinstance(e[1], str) or not _VAR.match(e[1]):
                raise VnnlibError(f"only (declare-const X_i Real) or Y_j is read: {_show(e)}")
            m = _VAR.match(e[1])
            declared[e[1]] = (m.group(1), int(m.group(2)))
        elif e[0] == "assert" and len(e) == 2:
            formulas.append(e[1])
        else:
            raise VnnlibError(f"unsupported command {_show(e)}")
    n_in = _count(declared, "X")
    n_out = _count(declared, "Y")
    if not formulas:
        raise VnnlibError("the file asserts nothing")
    conjunctions = _dnf(["and", *formulas], set(declared))
    memo: dict = {}
    disjuncts = tuple(_disjunct(atoms, declared, n_in, n_out, memo) for atoms in conjunctions)
    return Spec(n_in, n_out, disjuncts)


def load(path: str | Path) -> Spec:
    """Read and parse a .vnnlib file."""
    path = Path(path)
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise VnnlibError(f"{path}: not a text file") from None
    try:
        return parse(text)
    except VnnlibError as exc:
        raise VnnlibError(f"{path}: {exc}") from None


def _count(declared: dict[str, tuple[str, int]], kind: str) -> int:
    idx = sorted(i for k, i in declared.values() if k == kind)
    if idx != list(range(len(idx))) or not idx:
        raise VnnlibError(f"{kind} variables must be declared as {kind}_0 .. {kind}_n-1")
    return len(idx)


def _disjunct(atoms: list[Atom], declared, n_in: int, n_out: int, memo: dict) -> Disjunct:
    lower = np.full(n_in, -np.inf)
    upper = np.full(n_in, np.inf)
    rows, ds, stricts = [], [], []
    for atom in atoms:
        if id(atom) not in memo:  # disjuncts share the atoms of the top-level asserts
            memo[id(atom)] = (atom, _atom(atom, declared, n_out))
        kind, i, value, strict = memo[id(atom)][1]
        if kind == "upper":
            upper[i] = min(upper[i], value)
        elif kind == "lower":
            lower[i] = max(lower[i], value)
        else:
            rows.append(i)
            ds.append(value)
            stricts.append(strict)
    missing = np.flatnonzero(~(np.isfinite(lower) & np.isfinite(upper)))
    if missing.size:
        raise VnnlibError(f"X_{missing[0]} has no lower or upper bound in a disjunct "
                          f"({len(missing)} inputs unbounded)")
    C = np.array(rows).reshape(len(rows), n_out)
    return Disjunct(lower, upper, C, np.array(ds, np.float64), np.array(stricts, bool))


def _atom(atom: Atom, declared, n_out: int) -> tuple:
    """("upper"|"lower", input index, bound, _) or ("row", C row, d, strict)."""
    coef, const, strict = atom
    kinds = {declared[v][0] for v in coef}
    if kinds == {"X"} and len(coef) == 1:
        (v, a), = coef.items()
        bound = -const / a  # a x + k <= 0: x <= -k/a for a > 0, x >= -k/a for a < 0
        if a > 0:
            return "upper", declared[v][1], _up(bound), strict
        return "lower", declared[v][1], _down(bound), strict
    if kinds <= {"Y"}:  # also a constant comparison k <= 0 (a zero row)
        row = np.zeros(n_out)
        for v, a in coef.items():
            row[declared[v][1]] = _exact(a, f"coefficient of {v}")
        return "row", row, _down(const), strict  # a smaller d only makes C y + d > 0 harder
    raise VnnlibError("only bounds on single inputs and linear conditions on outputs "
                      "are read; a comparison mixes them or several inputs")
