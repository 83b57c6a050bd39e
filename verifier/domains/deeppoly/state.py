"""The DeepPoly state: a graph of the layers seen so far, and back-substitution through it.

Each node is one layer: the layers it reads, how to back-substitute linear bounds through it
(its matrix, or its lower and upper relaxation lines) and its concrete bounds, computed when
first needed for affine layers and joins. Back-substitution of rows to the input box walks
a chain node by node; on a graph it takes the nodes deepest first and sums what every
reader of a node passed to it before that node's step (as CROWN and ERAN do for residual
networks), so correlations along a skip connection cancel.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from verifier.box import InputBox
from verifier.domains.deeppoly import kernels as K
from verifier.domains.deeppoly.prepare import Rows


@dataclass(eq=False)
class Node:
    """One layer of the graph: the layers it reads (None: the input box), its
    back-substitution step (a join's returns one set of rows per source) and its (lazy)
    bounds."""

    back: Callable[[Rows], Rows | tuple[Rows, ...]]
    parents: tuple[Node | None, ...]
    size: int
    npos: int = 1  # positions per channel (neuron = channel * npos + position), for blocks
    lower: np.ndarray | None = None
    upper: np.ndarray | None = None
    own: Callable[[], Rows] | None = None  # rows of +x and -x, over the input (a join: output)
    lo_pos: np.ndarray | None = None  # where each neuron's +x row lands in the flat result
    hi_pos: np.ndarray | None = None  # ... and its -x row
    derive: Callable[[], tuple[np.ndarray, np.ndarray]] | None = None  # bounds otherwise
    settles: bool = False  # a ReLU after it may settle stable neurons early (see lower_of)
    sums: bool = False  # its step bounds entries one by one: repeated neurons are summed first
    passes: bool = False  # its step passes entries on unsummed (joins)
    depth: int = 0  # longest path from the input; every parent is shallower
    chain: bool = True  # its ancestors form a chain (one parent each)


@dataclass(frozen=True)
class PolyState:
    """The input box and the last layer seen (None: no layer yet)."""

    box: InputBox
    last: Node | None = None


def start(box: InputBox) -> PolyState:
    """The abstract element of an input box: no layers yet."""
    return PolyState(box)


def _depth(node: Node | None) -> int:
    return -1 if node is None else node.depth


def node_bounds(
    box: InputBox, node: Node | None, settle: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Bounds of a node's outputs (the box for None); settle: see lower_of (a ReLU's input)."""
    if node is None:
        return box.lower, box.upper
    _ensure(box, node, settle)
    return node.lower, node.upper


def _gather(box: InputBox, node: Node | None, parts: list, repeats: bool) -> tuple[Rows, bool]:
    """The sum of the rows that reached a node from its readers, and whether a neuron may
    appear twice in a block; repeats are summed where the step needs it (and at the input)."""
    rows = parts[0]
    for more in parts[1:]:
        rows = K.join_rows(*rows, *more)
    repeats = repeats or len(parts) > 1
    if repeats and (node is None or node.sums):
        lo, hi = node_bounds(box, node)
        return K.sum_rows(*rows, K.magnitude(lo, hi)), False
    return rows, repeats


def _cut(box: InputBox, pending: dict, repeats: dict) -> np.ndarray:
    """The pending rows concretised on their nodes' bounds and summed, rounded down: interval
    arithmetic on a cut of the graph."""
    low = None
    for node, parts in pending.items():
        rows, repeats[node] = _gather(box, node, parts, repeats.get(node, False))
        pending[node] = [rows]
        part = K.concretise(*rows, *node_bounds(box, node))
        low = part if low is None else np.nextafter(low + part, -np.inf)
    return low


def _settled(first: np.ndarray) -> np.ndarray:
    """The rows to go on with under settle (see lower_of): those of neurons that may change
    sign."""
    n = first.shape[1] // 2
    fixed = (first[0, :n] >= 0.0) | (first[0, n:] >= 0.0)
    return np.flatnonzero(np.concatenate([~fixed, ~fixed]))


def _columns(rows: Rows, keep: np.ndarray) -> Rows:
    bptr, sup, T, c, err = rows
    return bptr, sup, np.ascontiguousarray(T[:, keep]), c[:, keep].copy(), err[:, keep].copy()


def _back_chain(box: InputBox, node: Node | None, rows: Rows, settle: bool) -> tuple:
    """Rows over the input from rows over a node whose ancestors form a chain, the first
    node with known bounds' concretisation and the rows kept (None: none kept)."""
    first = keep = None
    while node is not None:
        if first is None and node.lower is not None:
            first = K.concretise(*rows, node.lower, node.upper)
            if settle:
                keep = _settled(first)
                if keep.size == 0:
                    return first, keep, None
                rows = _columns(rows, keep)
        rows = node.back(rows)
        node = node.parents[0]
    return first, keep, rows


def _readers(node: Node) -> dict:
    """How many sets of rows each ancestor of a node receives in back-substitution from it:
    the number of times the node's ancestors read it."""
    count: dict = {}
    stack, seen = [node], {node}
    while stack:
        for parent in stack.pop().parents:
            count[parent] = count.get(parent, 0) + 1
            if parent is not None and parent not in seen:
                seen.add(parent)
                stack.append(parent)
    return count


def _back_graph(box: InputBox, node: Node | None, rows: Rows, settle: bool) -> tuple:
    """As _back_chain on a graph. A node's step runs once every reader has passed it rows,
    on their sum; nodes without bounds go first, so that the first concretisation happens on
    the first cut of the graph whose nodes all have bounds (as the chain's first node)."""
    if node is None:
        return None, None, rows
    need = _readers(node)  # node -> how many readers have yet to pass it rows
    pending: dict = {node: [rows]}  # node -> rows its readers passed to it, not yet summed
    repeats: dict = {}  # node -> whether those rows may name a neuron twice in a block
    ready = [node]  # nodes that every reader has passed rows to
    first = keep = None
    while ready:
        if first is None and all(n is None or n.lower is not None for n in pending):
            first = _cut(box, pending, repeats)
            if settle:
                keep = _settled(first)
                if keep.size == 0:
                    return first, keep, None
                pending = {n: [_columns(parts[0], keep)] for n, parts in pending.items()}
        top = next((n for n in ready if n.lower is None), None) or max(ready, key=_depth)
        ready.remove(top)
        rows, rep = _gather(box, top, pending.pop(top), repeats.pop(top, False))
        out = top.back(rows)
        for parent, part in zip(top.parents, out if top.passes else (out,), strict=True):
            pending.setdefault(parent, []).append(part)
            repeats[parent] = repeats.get(parent, False) or (rep and top.passes)
            need[parent] -= 1
            if parent is not None and not need[parent]:
                ready.append(parent)
    rows, _ = _gather(box, None, pending[None], repeats.get(None, False))
    return first, keep, rows


def lower_of(box: InputBox, node: Node | None, rows: Rows, settle: bool = False) -> np.ndarray:
    """Sound lower bounds [blocks, k] of rows over the outputs of `node` (None: the input).

    Back-substitutes to the input box (DeepPoly's bound) and keeps the larger of that and
    the rows concretised on the first known bounds on the way (interval arithmetic).
    settle: the rows are +x_j (first n) and -x_j (last n) of the n inputs of a ReLU, whose
    relaxation needs exact bounds only where x_j may change sign; rows already showing that
    it cannot stop there, and those neurons keep the interval bounds.
    """
    back = _back_chain if node is None or node.chain else _back_graph
    first, keep, rows = back(box, node, rows, settle)
    if rows is None:
        return np.where(np.isnan(first), -np.inf, first)
    low = K.concretise(*rows, box.lower, box.upper)
    if first is not None:
        if settle:
            first[:, keep] = np.maximum(first[:, keep], low)
            low = first
        else:
            low = np.maximum(first, low)
    return np.where(np.isnan(low), -np.inf, low)  # overflowed bounds claim nothing


def _ensure(box: InputBox, node: Node, settle: bool = False) -> None:
    """Compute the bounds of a node if they are not known yet (affine layers and joins)."""
    if node.lower is not None:
        return
    if node.derive is not None:
        node.lower, node.upper = node.derive()
        return
    at = node if node.passes else node.parents[0]
    flat = lower_of(box, at, node.own(), settle and node.settles).reshape(-1)
    node.lower = flat[node.lo_pos]
    node.upper = -flat[node.hi_pos]


def bounds(state: PolyState) -> tuple[np.ndarray, np.ndarray]:
    """Sound (lower, upper) of every neuron of the last layer."""
    return node_bounds(state.box, state.last)


def linear_lower(state: PolyState, C: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Sound lower bounds of C y + d over every output y the state contains."""
    k, n = C.shape
    rows = (
        np.array([0, n], dtype=np.int64),
        np.arange(n, dtype=np.int64),
        np.ascontiguousarray(C.T, dtype=np.float64),
        np.asarray(d, dtype=np.float64).reshape(1, k).copy(),
        np.zeros((1, k)),
    )
    return lower_of(state.box, state.last, rows)[0]


def size_of(state: PolyState) -> int:
    return state.box.lower.shape[0] if state.last is None else state.last.size


def npos_of(state: PolyState) -> int:
    return 1 if state.last is None else state.last.npos


def push(
    states: tuple[PolyState, ...], back: Callable, size: int, passes: bool = False, **fields
) -> PolyState:
    """The state after a layer that reads `states` (one, or a join's sources: passes)."""
    if not passes:
        last = states[0].last
        if last is None:
            node = Node(back, (None,), size, depth=0, **fields)
        else:
            node = Node(back, (last,), size, depth=last.depth + 1, chain=last.chain, **fields)
    else:
        parents = tuple(s.last for s in states)
        node = Node(back, parents, size, depth=1 + max(map(_depth, parents)), chain=False,
                    passes=True, **fields)
    return PolyState(states[0].box, node)
