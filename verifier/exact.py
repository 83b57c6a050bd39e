"""Complete verification by MILP: the exact minimal adversarial L-infinity distance.

`exact_radius` encodes a small piecewise-linear network (Dense, Conv, Scale, Relu, MaxPool)
as a mixed-integer linear program per target class and solves it with HiGHS
(scipy.optimize.milp). It is the referee for the incomplete radii of every domain: the certified
radius of a sound verifier never exceeds the exact one.

The big-M constants come from this module's own bounds (intervals intersected with
back-substituted linear bounds, as in CROWN/DeepPoly), not from the domains it referees
(verifier.domains: DeepZono, DeepPoly): a soundness bug in a domain's table would otherwise
also loosen the MILP meant to catch it.

Cost: a PGD attack, then one MILP per target class that the linear bounds cannot rule out,
each with one binary per ReLU left unstable over the box of the running best distance (and
per live max-pool candidate); the worst case is exponential in that number. On MNIST
fnn-3x30-relu (2 cores) deciding "is there an adversarial point within r" at r near the
certified radius takes about 0.05-0.7 s per image (call with max_eps=r), while the full
minimum takes from about 10 s to several minutes per image, most of it proving that no
other class is closer; small synthetic nets (20 inputs, 26 ReLUs) take 0.05-3 s. Nets with
thousands of unstable ReLUs (the MNIST CNN) are out of reach except in tiny balls: pass
`time_limit`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.optimize import Bounds, LinearConstraint, milp

from verifier.network import (
    Conv,
    Dense,
    MaxPool,
    Network,
    Relu,
    Scale,
    UnsupportedModelError,
)

# Relative outward padding of every computed bound: float64 rounding in the bound
# arithmetic is many orders of magnitude below it, so each big-M constraint stays valid.
_PAD = 1e-9
# HiGHS' relative optimality gap on the distance t.
_MIP_GAP = 1e-7
# Largest L-infinity step used to push a solver point across the decision boundary.
_NUDGE = 1e-6

STATUSES = ("optimal", "misclassified", "beyond_max_eps", "time_limit", "unconfirmed")


@dataclass(frozen=True)
class ExactResult:
    """Minimal adversarial distance with its witness.

    status: "optimal" (radius = eps*, the MILP optimum; adversarial within radius + 1e-6 of x with
    argmax != label), "misclassified" (label is not the prediction at x; radius 0),
    "beyond_max_eps" (no adversarial point within max_eps; radius = max_eps is a lower
    bound), "time_limit" (radius is the best distance found, only an upper bound, or
    max_eps if none was found), "unconfirmed" (a MILP optimum at `radius` that forward()
    did not confirm as adversarial, even after the tolerance nudge; adversarial may be None).
    """

    radius: float
    adversarial: np.ndarray | None
    target: int | None
    status: str


# ----------------------------------------------------------------------------- lowering


@dataclass(frozen=True)
class _Affine:
    matrix: np.ndarray | sp.csr_matrix  # [out, in]
    bias: np.ndarray


@dataclass(frozen=True)
class _Relu:
    pass


@dataclass(frozen=True)
class _Pool:
    windows: np.ndarray  # [out, k] flat input indices, -1 for padding


_Op = _Affine | _Relu | _Pool


def _lower(net: Network) -> list[_Op]:
    """The network as affine maps, ReLUs and max-pools over flat vectors."""
    if not net.is_chain:
        raise UnsupportedModelError("exact_radius takes chains only, not graphs (Add, Concat)")
    ops: list[_Op] = []
    for i, layer in enumerate(net.layers):
        if isinstance(layer, Dense):
            op: _Op = _Affine(np.asarray(layer.weight, np.float64), np.asarray(layer.bias, float))
        elif isinstance(layer, Scale):
            op = _Affine(sp.diags(np.asarray(layer.a, np.float64)).tocsr(), np.asarray(layer.b))
        elif isinstance(layer, Conv):
            op = _Affine(_conv_matrix(layer), np.repeat(layer.bias, np.prod(layer.out_shape[1:])))
        elif isinstance(layer, MaxPool):
            op = _Pool(_pool_windows(layer))
        elif isinstance(layer, Relu):
            op = _Relu()
        else:
            raise UnsupportedModelError(
                f"exact_radius needs a piecewise-linear network (Dense, Conv, Scale, Relu, "
                f"MaxPool); layer {i} is {type(layer).__name__}"
            )
        prev = ops[-1] if ops else None
        if isinstance(op, _Affine) and isinstance(prev, _Affine):
            ops[-1] = _Affine(_as_matrix(op.matrix @ prev.matrix), op.matrix @ prev.bias + op.bias)
        else:
            ops.append(op)
    return ops


def _as_matrix(m) -> np.ndarray | sp.csr_matrix:
    return m.tocsr() if sp.issparse(m) else np.asarray(m)


def _conv_matrix(layer: Conv) -> sp.csr_matrix:
    c, h, w = layer.in_shape
    oc, oh, ow = layer.out_shape
    _, _, kh, kw = layer.weight.shape
    (sh, sw), (pt, pl) = layer.stride, layer.pads[:2]
    o, i, a, b, r, s = np.meshgrid(
        *(np.arange(k) for k in (oc, c, kh, kw, oh, ow)), indexing="ij", sparse=False
    )
    rows, cols = r * sh + a - pt, s * sw + b - pl
    ok = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
    out_idx = ((o * oh + r) * ow + s)[ok]
    in_idx = ((i * h + rows) * w + cols)[ok]
    vals = np.asarray(layer.weight, np.float64)[o, i, a, b][ok]
    return sp.csr_matrix((vals, (out_idx, in_idx)), shape=(oc * oh * ow, c * h * w))


def _pool_windows(layer: MaxPool) -> np.ndarray:
    c, h, w = layer.in_shape
    _, oh, ow = layer.out_shape
    (kh, kw), (sh, sw), (pt, pl) = layer.kernel, layer.stride, layer.pads[:2]
    ch, r, s, a, b = np.meshgrid(*(np.arange(k) for k in (c, oh, ow, kh, kw)), indexing="ij")
    rows, cols = r * sh + a - pt, s * sw + b - pl
    ok = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
    idx = np.where(ok, (ch * h + rows) * w + cols, -1)
    return idx.reshape(c * oh * ow, kh * kw)


def _pos(m):
    return m.maximum(0).tocsr() if sp.issparse(m) else np.maximum(m, 0.0)


def _neg(m):
    return m.minimum(0).tocsr() if sp.issparse(m) else np.minimum(m, 0.0)


# ----------------------------------------------------------------------------- evaluation


def _forward(ops: list[_Op], y: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Logits and the input of every op."""
    v, inputs = y, []
    for op in ops:
        inputs.append(v)
        if isinstance(op, _Affine):
            v = op.matrix @ v + op.bias
        elif isinstance(op, _Relu):
            v = np.maximum(v, 0.0)
        else:
            v = np.where(op.windows >= 0, v[op.windows], -np.inf).max(axis=1)
    return v, inputs


def _margin_grad(ops: list[_Op], y: np.ndarray, label: int) -> tuple[float, int, np.ndarray]:
    """max_j z_j - z_label at y, the maximising j, and the gradient (piecewise-linear net)."""
    z, inputs = _forward(ops, y)
    others = z.copy()
    others[label] = -np.inf
    j = int(np.argmax(others))
    g = np.zeros_like(z)
    g[j], g[label] = 1.0, -1.0
    for op, v in zip(reversed(ops), reversed(inputs), strict=True):
        if isinstance(op, _Affine):
            g = op.matrix.T @ g
        elif isinstance(op, _Relu):
            g = g * (v > 0)
        else:
            vals = np.where(op.windows >= 0, v[op.windows], -np.inf)
            win = op.windows[np.arange(len(g)), np.argmax(vals, axis=1)]
            g = np.bincount(win, weights=g, minlength=v.size)
    return float(z[j] - z[label]), j, np.asarray(g).reshape(-1)


# ----------------------------------------------------------------------------- bounds


@dataclass(frozen=True)
class _Relax:
    """Linear relaxation of a ReLU or max-pool over its input bounds:
    dl @ v + el <= op(v) <= du @ v + eu."""

    dl: sp.csr_matrix
    el: np.ndarray
    du: sp.csr_matrix
    eu: np.ndarray


def _relax(op: _Relu | _Pool, lb: np.ndarray, ub: np.ndarray) -> _Relax:
    if isinstance(op, _Relu):
        live, unstable = lb >= 0, (lb < 0) & (ub > 0)
        slope = np.where(unstable, ub / np.where(unstable, ub - lb, 1.0), live.astype(float))
        alpha = np.where(unstable, (ub >= -lb).astype(float), live.astype(float))
        shift = np.where(unstable, -slope * lb, 0.0)
        return _Relax(sp.diags(alpha).tocsr(), np.zeros(lb.size), sp.diags(slope).tocsr(), shift)
    w = op.windows
    n_out = len(w)
    lw = np.where(w >= 0, lb[w], -np.inf)
    uw = np.where(w >= 0, ub[w], -np.inf)
    top = np.argmax(lw, axis=1)
    best = w[np.arange(n_out), top]
    others = uw.copy()
    others[np.arange(n_out), top] = -np.inf
    dominant = lw.max(axis=1) >= others.max(axis=1)
    rows = np.arange(n_out)
    select = sp.csr_matrix((np.ones(n_out), (rows, best)), shape=(n_out, lb.size))
    upper = sp.csr_matrix(
        (np.ones(dominant.sum()), (rows[dominant], best[dominant])), shape=(n_out, lb.size)
    )
    return _Relax(select, np.zeros(n_out), upper, np.where(dominant, 0.0, uw.max(axis=1)))


def _backward(ops, relax, k, lam, const, mid, rad, upper: bool) -> np.ndarray:
    """Bound of lam @ (input of op k) + const over the box |y - mid| <= rad.

    Back-substitution through the linear relaxations of ops k-1 .. 0 (as in CROWN and
    DeepPoly); the result is padded outward by a relative 1e-9 of the magnitudes summed.
    """
    mag = np.abs(const)
    for i in range(k - 1, -1, -1):
        op = ops[i]
        if isinstance(op, _Affine):
            mag = mag + np.abs(lam) @ np.abs(op.bias)
            const = const + lam @ op.bias
            lam = np.asarray((op.matrix.T @ lam.T).T)
            continue
        r = relax[i]
        pos, neg = np.maximum(lam, 0.0), np.minimum(lam, 0.0)
        (dp, ep), (dn, en) = ((r.du, r.eu), (r.dl, r.el)) if upper else ((r.dl, r.el), (r.du, r.eu))
        mag = mag + pos @ np.abs(ep) - neg @ np.abs(en)
        const = const + pos @ ep + neg @ en
        lam = np.asarray((dp.T @ pos.T).T + (dn.T @ neg.T).T)
    spread = np.abs(lam) @ rad
    pad = _PAD * (1.0 + np.abs(lam) @ np.abs(mid) + spread + mag)
    centre = lam @ mid + const
    return centre + spread + pad if upper else centre - spread - pad


def _dense(m) -> np.ndarray:
    return m.toarray() if sp.issparse(m) else np.asarray(m)


def _bounds(ops: list[_Op], lo: np.ndarray, hi: np.ndarray):
    """Sound (lower, upper) of every op's output over lo <= y <= hi (intervals intersected
    with back-substituted linear bounds), and the relaxation of every nonlinear op."""
    mid = 0.5 * (lo + hi)
    rad = np.maximum(hi - mid, mid - lo)
    il, iu = lo.copy(), hi.copy()
    out: list[tuple[np.ndarray, np.ndarray]] = []
    relax: list[_Relax | None] = []
    for i, op in enumerate(ops):
        if isinstance(op, _Affine):
            mp, mn, b = _pos(op.matrix), _neg(op.matrix), op.bias
            ipad = _PAD * (1.0 + abs(op.matrix) @ np.maximum(np.abs(il), np.abs(iu)) + abs(b))
            lam = _dense(op.matrix)
            lo_v = np.maximum(
                mp @ il + mn @ iu + b - ipad, _backward(ops, relax, i, lam, b, mid, rad, False)
            )
            hi_v = np.minimum(
                mp @ iu + mn @ il + b + ipad, _backward(ops, relax, i, lam, b, mid, rad, True)
            )
            relax.append(None)
        elif isinstance(op, _Relu):
            relax.append(_relax(op, il, iu))
            lo_v, hi_v = np.maximum(il, 0.0), np.maximum(iu, 0.0)
        else:
            relax.append(_relax(op, il, iu))
            w = op.windows
            lo_v = np.where(w >= 0, il[w], -np.inf).max(axis=1)
            hi_v = np.where(w >= 0, iu[w], -np.inf).max(axis=1)
        out.append((lo_v, np.maximum(hi_v, lo_v)))
        il, iu = out[-1]
    return out, relax


# ----------------------------------------------------------------------------- MILP


class _Program:
    """Columns with bounds and integrality, and sparse rows lo <= A x <= hi."""

    def __init__(self) -> None:
        self.col_lo: list[np.ndarray] = []
        self.col_hi: list[np.ndarray] = []
        self.col_int: list[np.ndarray] = []
        self.ncols = 0
        self.r: list[np.ndarray] = []
        self.c: list[np.ndarray] = []
        self.v: list[np.ndarray] = []
        self.row_lo: list[np.ndarray] = []
        self.row_hi: list[np.ndarray] = []
        self.nrows = 0

    def cols(self, lo, hi, integer: bool = False) -> np.ndarray:
        lo, hi = np.atleast_1d(np.asarray(lo, float)), np.atleast_1d(np.asarray(hi, float))
        idx = np.arange(self.ncols, self.ncols + lo.size)
        self.col_lo.append(lo)
        self.col_hi.append(hi)
        self.col_int.append(np.full(lo.size, 1 if integer else 0))
        self.ncols += lo.size
        return idx

    def rows(self, r_local, cols, vals, lo, hi) -> None:
        """Add len(lo) rows; entries (r_local[k], cols[k], vals[k]) with local row numbers."""
        lo, hi = np.atleast_1d(np.asarray(lo, float)), np.atleast_1d(np.asarray(hi, float))
        lo, hi = np.broadcast_arrays(lo, hi)
        self.r.append(np.asarray(r_local) + self.nrows)
        self.c.append(np.asarray(cols))
        self.v.append(np.asarray(vals, float))
        self.row_lo.append(lo)
        self.row_hi.append(hi)
        self.nrows += lo.size

    def solve(self, objective_col: int, time_limit: float | None):
        cost = np.zeros(self.ncols)
        cost[objective_col] = 1.0
        a = sp.csr_matrix(
            (np.concatenate(self.v), (np.concatenate(self.r), np.concatenate(self.c))),
            shape=(self.nrows, self.ncols),
        )
        options: dict = {"mip_rel_gap": _MIP_GAP}
        if time_limit is not None:
            options["time_limit"] = max(time_limit, 0.01)
        return milp(
            cost,
            integrality=np.concatenate(self.col_int),
            bounds=Bounds(np.concatenate(self.col_lo), np.concatenate(self.col_hi)),
            constraints=LinearConstraint(
                a, np.concatenate(self.row_lo), np.concatenate(self.row_hi)
            ),
            options=options,
        )


def _encode(ops, bounds, x, lo, hi, t_lo, t_hi, upto: int):
    """|y - x| <= t, lo <= y <= hi, t_lo <= t <= t_hi and ops[:upto]; returns the program,
    the columns holding the output of ops[upto - 1] (y if upto = 0) and t's column."""
    p = _Program()
    n = x.size
    y = p.cols(lo, hi)
    t = int(p.cols(t_lo, t_hi)[0])
    k = np.arange(n)
    ts = np.full(n, t)
    p.rows(np.r_[k, k], np.r_[y, ts], np.r_[np.ones(n), -np.ones(n)], -np.inf, x)  # y - t <= x
    p.rows(np.r_[k, k], np.r_[y, ts], np.r_[np.ones(n), np.ones(n)], x, np.inf)  # y + t >= x
    cur = y
    zero = int(p.cols(0.0, 0.0)[0])
    cur_lo, cur_hi = lo, hi
    for op, (lb, ub) in zip(ops[:upto], bounds[:upto], strict=True):
        if isinstance(op, _Affine):
            cur = _affine_rows(p, op.matrix, op.bias, cur, lb, ub)
        elif isinstance(op, _Relu):
            cur = _relu_rows(p, cur, cur_lo, cur_hi, zero)
        else:
            cur = _pool_rows(p, op.windows, cur, cur_lo, cur_hi)
        cur_lo, cur_hi = lb, ub
    return p, cur, t


def _build(ops, bounds, x, lo, hi, t_lo, t_hi, label, target, kappa):
    """min t s.t. |y - x| <= t, lo <= y <= hi, z_target - z_label >= kappa."""
    last = ops[-1]
    if isinstance(last, _Affine):
        p, cur, t = _encode(ops, bounds, x, lo, hi, t_lo, t_hi, len(ops) - 1)
        row = _dense(last.matrix[[target]] - last.matrix[[label]]).ravel()
        nz = np.flatnonzero(row)
        rhs = kappa + last.bias[label] - last.bias[target]
        p.rows(np.zeros(nz.size, int), cur[nz], row[nz], rhs, np.inf)
    else:
        p, cur, t = _encode(ops, bounds, x, lo, hi, t_lo, t_hi, len(ops))
        p.rows([0, 0], [cur[target], cur[label]], [1.0, -1.0], kappa, np.inf)
    return p, t


def _affine_rows(p: _Program, m, b, cur, lb, ub) -> np.ndarray:
    """New columns z in [lb, ub] with z = M cur + b."""
    z = p.cols(lb, ub)
    coo = sp.coo_matrix(m)
    nout = m.shape[0]
    p.rows(
        np.r_[coo.row, np.arange(nout)],
        np.r_[cur[coo.col], z],
        np.r_[-coo.data, np.ones(nout)],
        b,
        b,
    )
    return z


def _relu_rows(p: _Program, cur, lb, ub, zero: int) -> np.ndarray:
    """Big-M ReLU on the columns cur with pre-activation bounds [lb, ub]."""
    out = cur.copy()
    out[ub <= 0] = zero
    unstable = np.flatnonzero((lb < 0) & (ub > 0))
    if unstable.size == 0:
        return out
    k = unstable.size
    lu, uu, z = lb[unstable], ub[unstable], cur[unstable]
    a = p.cols(np.zeros(k), uu)
    d = p.cols(np.zeros(k), np.ones(k), integer=True)
    r = np.arange(k)
    # a >= z; a <= z - l (1 - d); a <= u d  (a >= 0 is a column bound)
    p.rows(np.r_[r, r], np.r_[a, z], np.r_[np.ones(k), -np.ones(k)], 0.0 * lu, np.inf)
    p.rows(
        np.r_[r, r, r],
        np.r_[a, z, d],
        np.r_[np.ones(k), -np.ones(k), -lu],
        np.full(k, -np.inf),
        -lu,
    )
    p.rows(np.r_[r, r], np.r_[a, d], np.r_[np.ones(k), -uu], np.full(k, -np.inf), 0.0 * uu)
    out[unstable] = a
    return out


def _pool_rows(p: _Program, windows, cur, lb, ub) -> np.ndarray:
    """Max-pool with one binary per window input that can be the maximum."""
    out = np.empty(len(windows), dtype=np.int64)
    for o, win in enumerate(windows):
        win = win[win >= 0]
        lw, uw = lb[win], ub[win]
        top = int(np.argmax(lw))
        if lw[top] >= np.max(np.delete(uw, top), initial=-np.inf):
            out[o] = cur[win[top]]  # one input dominates: the max is that input
            continue
        cand = uw > lw[top]
        cand[top] = True
        win, lw, uw = win[cand], lw[cand], uw[cand]
        k, big = win.size, float(uw.max())
        m = int(p.cols(lw.max(), big)[0])
        d = p.cols(np.zeros(k), np.ones(k), integer=True)
        r = np.arange(k)
        # m >= v_i; m <= v_i + (U - l_i)(1 - d_i); sum d_i = 1
        p.rows(
            np.r_[r, r],
            np.r_[np.full(k, m), cur[win]],
            np.r_[np.ones(k), -np.ones(k)],
            np.zeros(k),
            np.inf,
        )
        p.rows(
            np.r_[r, r, r],
            np.r_[np.full(k, m), cur[win], d],
            np.r_[np.ones(k), -np.ones(k), big - lw],
            np.full(k, -np.inf),
            big - lw,
        )
        p.rows(np.zeros(k, int), d, np.ones(k), 1.0, 1.0)
        out[o] = m
    return out


# ----------------------------------------------------------------------------- attack


def _pgd(ops, x, label, eps, lo, hi, steps: int = 40) -> np.ndarray | None:
    """Sign-gradient ascent on max_j z_j - z_label in the clipped eps-ball; first success."""
    blo, bhi = np.maximum(x - eps, lo), np.minimum(x + eps, hi)
    y = x.copy()
    for _ in range(steps):
        margin, _, g = _margin_grad(ops, y, label)
        if margin > 0:
            return y
        y = np.clip(y + (eps / 8) * np.sign(g), blo, bhi)
    return y if _margin_grad(ops, y, label)[0] > 0 else None


def _attack(ops, x, label, max_eps, lo, hi) -> np.ndarray | None:
    """A small-distance adversarial point (PGD at bisected radii), or None."""
    best = _pgd(ops, x, label, max_eps, lo, hi)
    if best is None:
        return None
    low, high = 0.0, float(np.max(np.abs(best - x)))
    for _ in range(6):
        mid = 0.5 * (low + high)
        adv = _pgd(ops, x, label, mid, lo, hi)
        if adv is None:
            low = mid
        else:
            best, high = adv, float(np.max(np.abs(adv - x)))
    return best


def _confirm(net, ops, x, y, t, label, lo, hi) -> np.ndarray | None:
    """A point within t + 1e-6 of x near the solver point y that forward() classifies != label."""
    for delta in (0.0, 1e-9, 1e-8, 1e-7, 3e-7, _NUDGE):
        blo, bhi = np.maximum(x - (t + delta), lo), np.minimum(x + (t + delta), hi)
        cand = np.clip(y, blo, bhi)
        if delta:
            cand = np.clip(cand + delta * np.sign(_margin_grad(ops, cand, label)[2]), blo, bhi)
        if int(np.argmax(net.forward(cand))) != label:
            return cand
    return None


# ----------------------------------------------------------------------------- public API


def exact_radius(
    net: Network,
    x: np.ndarray,
    max_eps: float = 0.256,
    label: int | None = None,
    lower_bracket: float | None = None,
    upper_bracket: float | None = None,
    time_limit: float | None = None,
) -> ExactResult:
    """The minimal L-infinity distance eps* from x to a point of the input range whose
    argmax differs from `label` (default: the prediction at x), by one MILP per target j:
    min t s.t. |y - x| <= t, y in range, z_j(y) >= z_label(y). eps* is an infimum: at the
    optimum the two logits may tie, so the witness is nudged across (see Tolerance).

    lower_bracket: a distance believed to have no adversarial point below it (e.g. a
    certified radius), added as the cut t >= lower_bracket. It is dropped as soon as it is
    refuted (the attack's point or a MILP optimum lies at or below it) but otherwise
    trusted: leave it None when checking the method that produced it.
    upper_bracket: a distance believed to have an adversarial point; it sets the box for
    the big-M bounds (default: a built-in PGD attack, else max_eps); if nothing is found
    within it, the search is repeated with max_eps.
    time_limit: seconds for the whole call; when hit, status is "time_limit".

    Tolerance: HiGHS works with feasibility tolerances of about 1e-7 (1e-6 on
    integrality), so its optimum may sit exactly on, or a hair short of, the decision
    boundary. The returned adversarial point is the solver point pushed by at most 1e-6
    along the sign of the margin gradient: it lies within radius + 1e-6 of x and
    net.forward confirms argmax != label there; `radius` is the MILP optimum (relative
    gap 1e-7). If forward still disagrees, the target is solved again with the margin
    z_j - z_label >= 1e-6.
    """
    if not max_eps > 0:
        raise ValueError(f"max_eps must be positive, got {max_eps}")
    ops = _lower(net)
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    pred = int(np.argmax(net.forward(x)))
    label = pred if label is None else int(label)
    if pred != label:
        return ExactResult(0.0, x.copy(), pred, "misclassified")
    search = _Search(
        net,
        ops,
        x,
        label,
        float(net.input_lower),
        float(net.input_upper),
        max(0.0, float(lower_bracket or 0.0)),
        None if time_limit is None else time.monotonic() + time_limit,
    )
    adv = None
    if upper_bracket is None:
        adv = _attack(ops, x, label, max_eps, search.lo_in, search.hi_in)
        if adv is not None and int(np.argmax(net.forward(adv))) == label:
            adv = None
        radius_box = float(max_eps) if adv is None else float(np.max(np.abs(adv - x)))
    else:
        radius_box = min(float(upper_bracket), float(max_eps))
    result = search.run(radius_box, adv)
    if result.status == "beyond_max_eps" and radius_box < max_eps:
        result = search.run(float(max_eps), None)  # the upper bracket held no adversarial
    return result


@dataclass
class _Search:
    """The per-target MILP loop of one exact_radius call."""

    net: Network
    ops: list
    x: np.ndarray
    label: int
    lo_in: float
    hi_in: float
    t_floor: float
    deadline: float | None

    def run(self, radius_box: float, adv: np.ndarray | None) -> ExactResult:
        """One MILP per target with t <= the running best distance; the minimum wins."""
        x, label = self.x, self.label
        logits = self.net.forward(x)
        order = sorted((j for j in range(logits.size) if j != label), key=lambda j: -logits[j])
        best: tuple[float, np.ndarray | None, int | None] = (radius_box, None, None)
        if adv is not None:  # the attack's class first: its MILP sets a tight cap early
            best = (radius_box, adv, int(np.argmax(self.net.forward(adv))))
            order.remove(best[2])
            order.insert(0, best[2])
        cap = radius_box * (1 + 1e-9) + 1e-12  # t <= cap; the slack lets the attack point fit
        if adv is not None and radius_box < self.t_floor:
            self.t_floor = 0.0  # the attack refutes the lower bracket
        status = "optimal"
        box_r = None
        for j in order:
            if box_r is None or cap < 0.9 * box_r:  # a smaller box gives smaller big-Ms
                box_r = cap
                lo, hi = np.maximum(x - box_r, self.lo_in), np.minimum(x + box_r, self.hi_in)
                bnds, relax = _bounds(self.ops, lo, hi)
            if _target_impossible(self.ops, bnds, relax, lo, hi, j, label):
                continue
            outcome, t, point = self._target(bnds, lo, hi, cap, j)
            if outcome != "optimal":
                status = outcome
            if t is not None and (best[1] is None or t <= best[0]):
                best = (t, point, j)
                cap = min(cap, t)
            if outcome == "time_limit" and self._remaining() == 0.0:
                break
        radius, point, target = best
        if status == "optimal" and point is None:
            return ExactResult(radius_box, None, None, "beyond_max_eps")
        return ExactResult(radius, point, target, status)

    def _remaining(self) -> float | None:
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())

    def _target(self, bnds, lo, hi, cap, j):
        """(outcome, t, point) of target j's MILP; t is None when nothing lies within cap."""
        floor = min(self.t_floor, cap)
        kappa = 0.0
        while True:
            remaining = self._remaining()
            if remaining == 0.0:
                return "time_limit", None, None
            p, t_col = _build(self.ops, bnds, self.x, lo, hi, floor, cap, self.label, j, kappa)
            res = p.solve(t_col, remaining)
            if res.status not in (0, 1, 2):
                raise RuntimeError(f"HiGHS failed on target {j}: {res.message}")
            outcome = "time_limit" if res.status == 1 else "optimal"
            if res.x is None:
                return outcome, None, None  # no adversarial of class j within the cap
            t = float(res.x[t_col])
            if floor > 0 and t <= floor * (1 + 1e-7) + 1e-12:
                floor = self.t_floor = 0.0  # an optimum on the lower bracket refutes it
                continue
            point = _confirm(
                self.net,
                self.ops,
                self.x,
                res.x[: self.x.size],
                t,
                self.label,
                self.lo_in,
                self.hi_in,
            )
            if point is not None:
                return outcome, t, point
            if kappa > 0:
                return "unconfirmed", t, None
            kappa = _NUDGE  # ask for a positive margin so forward() agrees


def _target_impossible(ops, bnds, relax, lo, hi, j, label) -> bool:
    """Whether the linear relaxation already proves z_j < z_label over the box."""
    last = ops[-1]
    if not isinstance(last, _Affine):
        return bool(bnds[-1][1][j] < bnds[-1][0][label])
    m = last.matrix
    w = _dense(m[[j]] - m[[label]])
    mid = 0.5 * (lo + hi)
    rad = np.maximum(hi - mid, mid - lo)
    const = np.atleast_1d(last.bias[j] - last.bias[label])
    return bool(_backward(ops, relax, len(ops) - 1, w, const, mid, rad, True)[0] < 0)
