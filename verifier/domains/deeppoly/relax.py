"""Numba kernels of the DeepPoly relaxations: per neuron, a lower and an upper line
lo_slope x + lo_off <= f(x) <= up_slope x + up_off that hold for every real x in the neuron's
sound bounds [lo, hi], and the max-pool's choice of input.

Soundness in floating point: a line's slope may be any float; its offset comes from where
f(x) - slope x is extremal on [lo, hi] (an end point, by convexity or monotonicity, argued
in each kernel), evaluated in floats and widened outward by the rounding of those few
operations and by F_ERR, the accuracy assumed of float sigmoid and tanh values. Each kernel
also returns the neurons' output bounds and `mag`, an upper bound of
max(|slopes|) max|x| + max(|offsets|) that back-substitution uses to bound its rounding
(see verifier.domains.deeppoly.kernels).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from verifier.domains.deeppoly.kernels import TINY, U
from verifier.numerics.activations import SIGMOID, TANH

F_ERR = 1e-14  # absolute accuracy assumed of float sigmoid and tanh values (a few ulp)


@njit(cache=True, nogil=True)
def _relax_mag(ls, lf, us, uf, lo, hi):
    """Upper bound of max(|slopes|) max|x| + max(|offsets|) per neuron."""
    n = lo.shape[0]
    out = np.empty(n)
    for j in range(n):
        a = max(abs(lo[j]), abs(hi[j]))
        out[j] = (max(abs(ls[j]), abs(us[j])) * a + max(abs(lf[j]), abs(uf[j]))) * (
            1.0 + 4.0 * U
        ) + TINY
    return out


@njit(cache=True, nogil=True)
def relu_relax(lo, hi):
    """DeepPoly ReLU on [lo, hi]: upper line the chord, lower line 0 or x by the area heuristic
    (x when hi > -lo). Returns lo_slope, lo_off, up_slope, up_off, out_lo, out_hi, mag.

    The chord's float slope s is clipped to [0, 1]; relu(x) - s x is convex, so its maximum on
    [lo, hi] is max(-s lo, (1 - s) hi), which the offset rounds up: sound for any such s.
    """
    n = lo.shape[0]
    ls = np.zeros(n)
    lf = np.zeros(n)
    us = np.zeros(n)
    uf = np.zeros(n)
    out_lo = np.maximum(lo, 0.0)
    out_hi = np.maximum(hi, 0.0)
    for j in range(n):
        lw, up = lo[j], hi[j]
        if up <= 0.0:
            continue
        if lw >= 0.0:
            ls[j] = 1.0
            us[j] = 1.0
            continue
        s = min(max(up / (up - lw), 0.0), 1.0)
        us[j] = s
        uf[j] = max(-s * lw, (1.0 - s) * up) * (1.0 + 4.0 * U) + TINY
        ls[j] = 1.0 if up > -lw else 0.0
    return ls, lf, us, uf, out_lo, out_hi, _relax_mag(ls, lf, us, uf, lo, hi)


@njit(cache=True, nogil=True)
def leaky_relax(alpha, lo, hi):
    """max(x, alpha x) on [lo, hi], 0 <= alpha < 1: exact (slope alpha or 1) when stable; else
    the chord from (lo, alpha lo) to (hi, hi) above and, by the area heuristic, y >= x when
    hi >= -lo, else y >= alpha x (both hold for every x). Same return values as relu_relax.

    The chord's float slope s is clipped to [alpha, 1]; f(x) - s x is convex, so its maximum
    on [lo, hi] is max((alpha - s) lo, (1 - s) hi), two non-negative values of two rounded
    operations each, which the offset rounds up. alpha lo and alpha hi, single products, are
    rounded outward by one ulp (nextafter) for the output bounds.
    """
    n = lo.shape[0]
    ls = np.empty(n)
    lf = np.zeros(n)
    us = np.empty(n)
    uf = np.zeros(n)
    out_lo = np.empty(n)
    out_hi = np.empty(n)
    for j in range(n):
        lw, up = lo[j], hi[j]
        if lw >= 0.0:
            ls[j] = us[j] = 1.0
            out_lo[j], out_hi[j] = lw, up
            continue
        out_lo[j] = np.nextafter(alpha * lw, -np.inf)
        if up <= 0.0:
            ls[j] = us[j] = alpha
            out_hi[j] = np.nextafter(alpha * up, np.inf)
            continue
        out_hi[j] = up
        s = min(max((up - alpha * lw) / (up - lw), alpha), 1.0)
        us[j] = s
        uf[j] = max((alpha - s) * lw, (1.0 - s) * up) * (1.0 + 4.0 * U) + TINY
        ls[j] = 1.0 if up >= -lw else alpha
    return ls, lf, us, uf, out_lo, out_hi, _relax_mag(ls, lf, us, uf, lo, hi)


@njit(cache=True, nogil=True)
def _f(kind, x):
    """sigmoid (kind 1) or tanh (kind 2), within F_ERR of the exact value."""
    if kind == SIGMOID:
        return 1.0 / (1.0 + np.exp(-x))
    return np.tanh(x)


@njit(cache=True, nogil=True)
def _df(kind, x):
    """f'(x) to a few ulp: sigmoid' = e / (1 + e)^2, e = exp(-|x|); tanh'(x) = 4 sigmoid'(2x)."""
    if kind == TANH:
        x = 2.0 * x
    e = np.exp(-abs(x))
    d = e / ((1.0 + e) * (1.0 + e))
    return 4.0 * d if kind == TANH else d


@njit(cache=True, nogil=True)
def smooth_relax(kind, lo, hi):
    """DeepPoly sigmoid (kind 1) / tanh (kind 2) on [lo, hi], as the DeepPoly paper and ERAN:
    lower line the chord when lo >= 0 (f concave there), else slope d = min(f'(lo), f'(hi))
    through (lo, f(lo)); upper line the chord when hi <= 0 (f convex), else slope d through
    (hi, f(hi)). Same return values as relu_relax.

    Soundness: on a concave (convex) stretch f(x) - s x is concave (convex) for any s, so its
    minimum (maximum) is at an end point, whatever float the chord slope is. f' is unimodal
    with its peak at 0, so d <= f' on all of [lo, hi]; d is shrunk by 1e-9 relative (its
    float error is a few ulp) and set to 0 when subnormal, so f(x) - d x is non-decreasing
    and extremal at lo (lower) or hi (upper). End-point values f(lo), f(hi) are trusted to
    F_ERR; each offset is then widened by F_ERR and the rounding of its two operations.
    """
    n = lo.shape[0]
    ls = np.empty(n)
    lf = np.empty(n)
    us = np.empty(n)
    uf = np.empty(n)
    out_lo = np.empty(n)
    out_hi = np.empty(n)
    dmax = 0.25 if kind == SIGMOID else 1.0
    for j in range(n):
        lw, up = lo[j], hi[j]
        fl, fu = _f(kind, lw), _f(kind, up)
        out_lo[j] = fl - F_ERR
        out_hi[j] = fu + F_ERR
        d = min(_df(kind, lw), _df(kind, up)) * (1.0 - 1e-9)
        if not d > 1e-290:
            d = 0.0
        chord = d
        if up > lw:
            chord = min(max((fu - fl) / (up - lw), 0.0), dmax)
        slack = 16.0 * U * d * (up - lw)
        # lower line: s x + off <= f(x) on [lw, up]
        if lw >= 0.0:
            s = chord
            a = fl - s * lw
            b = fu - s * up
            off = min(a, b) - 4.0 * U * (abs(fl) + abs(fu) + abs(s * lw) + abs(s * up))
        else:
            s = d
            off = fl - s * lw - slack - 4.0 * U * (abs(fl) + abs(s * lw))
        ls[j] = s
        lf[j] = off - F_ERR - TINY
        # upper line: f(x) <= s x + off on [lw, up]
        if up <= 0.0:
            s = chord
            a = fl - s * lw
            b = fu - s * up
            off = max(a, b) + 4.0 * U * (abs(fl) + abs(fu) + abs(s * lw) + abs(s * up))
        else:
            s = d
            off = fu - s * up + slack + 4.0 * U * (abs(fu) + abs(s * up))
        us[j] = s
        uf[j] = off + F_ERR + TINY
    return ls, lf, us, uf, out_lo, out_hi, _relax_mag(ls, lf, us, uf, lo, hi)


@njit(cache=True, nogil=True)
def pool_relax(lo, hi, windows):
    """DeepPoly (ERAN) max-pool over windows [n_out, taps] of input ids (-1 = padding).

    best: the input with the largest lower bound (of those, the largest upper bound, so that
    a live input beats dead ReLUs stuck at 0): y >= x_best. dominated: its lower bound is
    >= every other input's upper bound (then y = x_best). Otherwise the upper line is
    y <= a x_top + b, x_top the input with the largest upper bound u and U the largest upper
    bound of the others: a = (u - U) / (u - l_top) (a hull facet of max over the box, as
    ELINA's; at most max u on the box, so never looser than that constant).
    Returns best, dominated, top, a, b, out_lo, out_hi, mag.

    Soundness of the line for any float a in [0, 1]: x_j <= U <= a x_top + U - a l_top for
    j != top, and x_top <= a x_top + (1 - a) u; b is the larger of the two offsets, rounded
    up. mag bounds max|x| over the window and |a| max|x| + |b|.
    """
    n_out, taps = windows.shape
    best = np.empty(n_out, dtype=np.int64)
    top = np.empty(n_out, dtype=np.int64)
    dominated = np.empty(n_out, dtype=np.bool_)
    slope = np.zeros(n_out)
    off = np.empty(n_out)
    umax = np.empty(n_out)
    out_lo = np.empty(n_out)
    mag = np.empty(n_out)
    for o in range(n_out):
        b = -1
        tp = -1
        blo = -np.inf
        m = 0.0
        for t in range(taps):
            i = windows[o, t]
            if i < 0:
                continue
            if b < 0 or lo[i] > blo or (lo[i] == blo and hi[i] > hi[b]):
                b = i
                blo = lo[i]
            if tp < 0 or hi[i] > hi[tp]:
                tp = i
            m = max(m, abs(lo[i]), abs(hi[i]))
        dom = True
        second = -np.inf
        for t in range(taps):
            i = windows[o, t]
            if i >= 0 and i != b and hi[i] > blo:
                dom = False
            if i >= 0 and i != tp:
                second = max(second, hi[i])
        ut, lt = hi[tp], lo[tp]
        a = 0.0
        if ut > lt and second > -np.inf:
            a = min(max((ut - second) / (ut - lt), 0.0), 1.0)
        p1 = second - a * lt if second > -np.inf else -np.inf
        bo = max(p1, (1.0 - a) * ut) + 4.0 * U * (
            abs(ut) + abs(a * lt) + (abs(second) if second > -np.inf else 0.0)
        ) + TINY
        best[o] = b
        top[o] = tp
        dominated[o] = dom
        slope[o] = a
        off[o] = bo
        umax[o] = ut
        out_lo[o] = blo
        mag[o] = max(m, a * m + abs(bo)) * (1.0 + 4.0 * U) + TINY
    return best, dominated, top, slope, off, out_lo, umax, mag


@njit(cache=True, nogil=True)
def scale_bounds(a, b, lo, hi):
    """Bounds of a x + b elementwise over [lo, hi], rounded outward."""
    n = lo.shape[0]
    out_lo = np.empty(n)
    out_hi = np.empty(n)
    for j in range(n):
        p = a[j] * lo[j]
        q = a[j] * hi[j]
        e = (max(abs(p), abs(q)) + abs(b[j])) * 4.0 * U + TINY
        out_lo[j] = min(p, q) + b[j] - e
        out_hi[j] = max(p, q) + b[j] + e
    return out_lo, out_hi


@njit(cache=True, nogil=True)
def pool_pair_rows(lo, hi, windows, best, dominated, npos):
    """Rows x_best - x_k (k another input of the window) for proving x_best >= x_k
    relationally, as ELINA does. Outputs o = channel * npos + position; the windows of one
    position share their receptive field, so each position with an undecided window is one
    block with (taps - 1) rows per channel. A row that needs no proof (a window already known
    dominated, padding, or hi_k <= lo_best) is the constant 1.
    Returns the rows and the positions they belong to."""
    n_out, taps = windows.shape
    nch = n_out // npos
    kw = max(taps - 1, 1)
    k = nch * kw
    open_pos = np.zeros(npos, dtype=np.bool_)
    for o in range(n_out):
        if not dominated[o]:
            open_pos[o % npos] = True
    todo = np.flatnonzero(open_pos)
    nb = todo.shape[0]
    size = nch * taps
    bptr = np.arange(nb + 1) * size
    sup = np.empty(nb * size, dtype=np.int64)
    T = np.zeros((nb * size, k))
    c = np.ones((nb, k))
    for b in range(nb):
        for ch in range(nch):
            o = ch * npos + todo[b]
            bi = best[o]
            base = b * size + ch * taps
            sup[base] = bi
            r = 0
            for t in range(taps):
                i = windows[o, t]
                if i == bi or r >= kw:
                    continue
                p = base + 1 + r
                sup[p] = bi if i < 0 else i
                if not dominated[o] and i >= 0 and hi[i] > lo[bi]:
                    T[base, ch * kw + r] = 1.0
                    T[p, ch * kw + r] = -1.0
                    c[b, ch * kw + r] = 0.0
                r += 1
            for q in range(base + 1 + r, base + taps):
                sup[q] = bi
    return (bptr, sup, T, c, np.zeros((nb, k))), todo
