"""Numba kernels of the DeepPoly domain: relaxations and back-substitution over row blocks.

Back-substitution carries k linear functions of one layer's neurons, each a claimed lower
bound:  Q_r >= sum_s T[s, r] x[sup[s]] + c_r - err_r  for every reachable x of that layer.
Rows are grouped in blocks that share a column support (all channels of one convolution
position, or every row of a fully connected layer): block b owns the support entries
bptr[b] .. bptr[b+1] (sup: neuron ids, T: their coefficients, one column per row) and
c[b], err[b] (the constant and the accumulated rounding bound of each row).

Why the float result is sound: each step replaces x by the layer below (x = W x' + bias, or
a relaxation a x' + o), computing new coefficients and constants in floats. By the a-priori
bound for a sum of n products, |fl(sum) - sum| <= gamma(n) sum |terms| for any order and with
or without FMA, the rounding of both is at most gamma(n + 2) (|c| + sum_s |T[s, r]| mag[s])
over all x' in the layer's sound bounds, where mag[j] >= sum_k |W[j, k]| max|x'_k| + |bias_j|
(or |slope| max|x'| + |offset| for relaxations) is computed once per layer and rounded up.
That bound is added to err (rounded up), so the claim holds for the exact reals after every
step; concretising on a box adds the same kind of bound for its own sums. TINY terms cover
underflow. Relaxation lines may have any float slope: their offsets are derived from where
f(x) - slope x is extremal on [l, u] and widened outward, so a slightly wrong slope costs
precision, never soundness.
"""

from __future__ import annotations

import numpy as np
from numba import njit

U = 2.0**-53
TINY = 1e-300  # covers underflow of one operation, with room to spare
F_ERR = 1e-14  # absolute accuracy assumed of float sigmoid and tanh values (a few ulp)


@njit(cache=True, nogil=True)
def gamma(n: int) -> float:
    """Relative error bound of a sum of n products in float64."""
    nu = (n + 2) * U
    return nu / (1.0 - nu)


@njit(cache=True, nogil=True)
def widen_up(x: float, n: int) -> float:
    """An upper bound of the exact value of a non-negative sum of n products computed as x."""
    return x * (1.0 + 2.0 * gamma(n)) + (n + 1) * TINY


@njit(cache=True, nogil=True)
def _add_err(err: float, g: float, total: float) -> float:
    """err + g * total, rounded up (three operations, each at most one ulp)."""
    return (err + g * total) * (1.0 + 4.0 * U) + TINY


# ----------------------------------------------------------------------------- magnitudes


@njit(cache=True, nogil=True)
def magnitude(lo, hi):
    """max(|lo|, |hi|) per neuron: a bound of |x| (exact)."""
    return np.maximum(np.abs(lo), np.abs(hi))


@njit(cache=True, nogil=True)
def csr_mag(indptr, idx, val, bias, a):
    """Upper bound of sum_k |W[j, k]| a_k + |bias_j| per row j of a CSR matrix."""
    n = indptr.shape[0] - 1
    out = np.empty(n)
    for j in range(n):
        s = abs(bias[j])
        for q in range(indptr[j], indptr[j + 1]):
            s += abs(val[q]) * a[idx[q]]
        out[j] = widen_up(s, indptr[j + 1] - indptr[j] + 1)
    return out


@njit(cache=True, nogil=True)
def dense_mag(aw, bias, a):
    """Upper bound of |W| a + |bias| for a dense W given as aw = |W|."""
    n, m = aw.shape
    out = np.dot(aw, a)
    for j in range(n):
        out[j] = widen_up(out[j] + abs(bias[j]), m + 1)
    return out


# ----------------------------------------------------------------------------- back-substitution


@njit(cache=True, nogil=True)
def csr_step(bptr, sup, T, c, err, indptr, idx, val, bias, mag, n_in):
    """Back through x = W x' + bias with W as CSR rows ([n_out, n_in]).

    A block's new support is the union of its entries' rows of W; each non-zero adds
    w * T[s] to one contiguous coefficient row.
    """
    nb = bptr.shape[0] - 1
    k = T.shape[1]
    mark = np.full(n_in, -1, dtype=np.int64)
    out_ptr = np.empty(nb + 1, dtype=np.int64)
    out_ptr[0] = 0
    for b in range(nb):
        cnt = 0
        for s in range(bptr[b], bptr[b + 1]):
            j = sup[s]
            for q in range(indptr[j], indptr[j + 1]):
                if mark[idx[q]] != b:
                    mark[idx[q]] = b
                    cnt += 1
        out_ptr[b + 1] = out_ptr[b] + cnt
    out_sup = np.empty(out_ptr[nb], dtype=np.int64)
    out_T = np.zeros((out_ptr[nb], k))
    out_c = np.empty((nb, k))
    out_err = np.empty((nb, k))
    slot = np.empty(n_in, dtype=np.int64)
    mark[:] = -1
    cc = np.empty(k)
    ee = np.empty(k)
    for b in range(nb):
        nu = out_ptr[b]
        for r in range(k):
            cc[r] = c[b, r]
            ee[r] = abs(c[b, r])
        for s in range(bptr[b], bptr[b + 1]):
            j = sup[s]
            bj = bias[j]
            mj = mag[j]
            ts = T[s]
            for r in range(k):
                cc[r] += ts[r] * bj
                ee[r] += abs(ts[r]) * mj
            for q in range(indptr[j], indptr[j + 1]):
                i = idx[q]
                if mark[i] != b:
                    mark[i] = b
                    slot[i] = nu
                    out_sup[nu] = i
                    nu += 1
                row = out_T[slot[i]]
                w = val[q]
                for r in range(k):
                    row[r] += w * ts[r]
        n = bptr[b + 1] - bptr[b] + 1
        g = gamma(n + 1)
        for r in range(k):
            out_c[b, r] = cc[r]
            out_err[b, r] = _add_err(err[b, r], g, widen_up(ee[r], n))
    return out_ptr, out_sup, out_T, out_c, out_err


@njit(cache=True, nogil=True)
def dense_step(bptr, sup, T, c, err, wt, bias, mag):
    """Back through x = W x' + bias with W dense, given transposed (wt: [n_in, n_out]).

    Every block's new support is all n_in inputs; its coefficients are one BLAS product.
    """
    nb = bptr.shape[0] - 1
    k = T.shape[1]
    n_in, n_out = wt.shape
    out_ptr = np.arange(nb + 1) * n_in
    out_sup = np.empty(nb * n_in, dtype=np.int64)
    out_T = np.empty((nb * n_in, k))
    out_c = np.empty((nb, k))
    out_err = np.empty((nb, k))
    cc = np.empty(k)
    ee = np.empty(k)
    for b in range(nb):
        lo, hi = bptr[b], bptr[b + 1]
        ids = sup[lo:hi]
        full = hi - lo == n_out
        if full:
            for s in range(hi - lo):
                if ids[s] != s:
                    full = False
                    break
        if full:
            out_T[b * n_in : (b + 1) * n_in] = np.dot(wt, T[lo:hi])
        else:
            out_T[b * n_in : (b + 1) * n_in] = np.dot(np.ascontiguousarray(wt[:, ids]), T[lo:hi])
        for i in range(n_in):
            out_sup[b * n_in + i] = i
        for r in range(k):
            cc[r] = c[b, r]
            ee[r] = abs(c[b, r])
        for s in range(lo, hi):
            bj = bias[sup[s]]
            mj = mag[sup[s]]
            ts = T[s]
            for r in range(k):
                cc[r] += ts[r] * bj
                ee[r] += abs(ts[r]) * mj
        n = hi - lo + 1
        g = gamma(n + 1)
        for r in range(k):
            out_c[b, r] = cc[r]
            out_err[b, r] = _add_err(err[b, r], g, widen_up(ee[r], n))
    return out_ptr, out_sup, out_T, out_c, out_err


@njit(cache=True, nogil=True)
def relax_step(bptr, sup, T, c, err, lo_slope, lo_off, up_slope, up_off, mag):
    """Back through an elementwise activation: a coefficient t >= 0 takes the lower line
    (t lo_slope, offset t lo_off), t < 0 the upper one. Neurons whose two slopes are zero
    (dead ReLUs, saturated units) leave the support; their offsets stay in c."""
    nb = bptr.shape[0] - 1
    k = T.shape[1]
    out_ptr = np.empty(nb + 1, dtype=np.int64)
    out_ptr[0] = 0
    for b in range(nb):
        cnt = 0
        for s in range(bptr[b], bptr[b + 1]):
            if lo_slope[sup[s]] != 0.0 or up_slope[sup[s]] != 0.0:
                cnt += 1
        out_ptr[b + 1] = out_ptr[b] + cnt
    out_sup = np.empty(out_ptr[nb], dtype=np.int64)
    out_T = np.empty((out_ptr[nb], k))
    out_c = np.empty((nb, k))
    out_err = np.empty((nb, k))
    cc = np.empty(k)
    ee = np.empty(k)
    for b in range(nb):
        p = out_ptr[b]
        for r in range(k):
            cc[r] = c[b, r]
            ee[r] = abs(c[b, r])
        for s in range(bptr[b], bptr[b + 1]):
            j = sup[s]
            ls, lf, us, uf, mj = lo_slope[j], lo_off[j], up_slope[j], up_off[j], mag[j]
            ts = T[s]
            # max(t, 0) a + min(t, 0) b is one product (the other term is an exact 0)
            for r in range(k):
                t = ts[r]
                cc[r] += max(t, 0.0) * lf + min(t, 0.0) * uf
                ee[r] += abs(t) * mj
            if ls != 0.0 or us != 0.0:
                out_sup[p] = j
                row = out_T[p]
                for r in range(k):
                    t = ts[r]
                    row[r] = max(t, 0.0) * ls + min(t, 0.0) * us
                p += 1
        n = bptr[b + 1] - bptr[b] + 1
        g = gamma(n + 1)
        for r in range(k):
            out_c[b, r] = cc[r]
            out_err[b, r] = _add_err(err[b, r], g, widen_up(ee[r], n))
    return out_ptr, out_sup, out_T, out_c, out_err


@njit(cache=True, nogil=True)
def pool_step(bptr, sup, T, c, err, best, dominated, umax, mag, n_in):
    """Back through a max-pool: y_o >= x_best(o) always, y_o <= x_best(o) when that input
    dominates its window, else y_o <= umax_o. Outputs sharing a best input are summed."""
    nb = bptr.shape[0] - 1
    k = T.shape[1]
    mark = np.full(n_in, -1, dtype=np.int64)
    out_ptr = np.empty(nb + 1, dtype=np.int64)
    out_ptr[0] = 0
    for b in range(nb):
        cnt = 0
        for s in range(bptr[b], bptr[b + 1]):
            i = best[sup[s]]
            if mark[i] != b:
                mark[i] = b
                cnt += 1
        out_ptr[b + 1] = out_ptr[b] + cnt
    out_sup = np.empty(out_ptr[nb], dtype=np.int64)
    out_T = np.zeros((out_ptr[nb], k))
    out_c = np.empty((nb, k))
    out_err = np.empty((nb, k))
    slot = np.empty(n_in, dtype=np.int64)
    mark[:] = -1
    cc = np.empty(k)
    ee = np.empty(k)
    for b in range(nb):
        nu = out_ptr[b]
        for r in range(k):
            cc[r] = c[b, r]
            ee[r] = abs(c[b, r])
        for s in range(bptr[b], bptr[b + 1]):
            o = sup[s]
            i = best[o]
            if mark[i] != b:
                mark[i] = b
                slot[i] = nu
                out_sup[nu] = i
                nu += 1
            row = out_T[slot[i]]
            ts = T[s]
            dom = dominated[o]
            uo = umax[o]
            mo = mag[o]
            if dom:
                for r in range(k):
                    row[r] += ts[r]
                    ee[r] += abs(ts[r]) * mo
            else:
                for r in range(k):
                    t = ts[r]
                    row[r] += max(t, 0.0)
                    cc[r] += min(t, 0.0) * uo
                    ee[r] += abs(t) * mo
        n = bptr[b + 1] - bptr[b] + 1
        g = gamma(n + 1)
        for r in range(k):
            out_c[b, r] = cc[r]
            out_err[b, r] = _add_err(err[b, r], g, widen_up(ee[r], n))
    return out_ptr, out_sup, out_T, out_c, out_err


@njit(cache=True, nogil=True)
def concretise(bptr, sup, T, c, err, lo, hi):
    """Sound lower bound of every row over the box lo <= x <= hi, shape [blocks, k]."""
    nb = bptr.shape[0] - 1
    k = T.shape[1]
    out = np.empty((nb, k))
    acc = np.empty(k)
    ee = np.empty(k)
    for b in range(nb):
        for r in range(k):
            acc[r] = c[b, r]
            ee[r] = abs(c[b, r])
        for s in range(bptr[b], bptr[b + 1]):
            lj = lo[sup[s]]
            hj = hi[sup[s]]
            aj = max(abs(lj), abs(hj))
            ts = T[s]
            for r in range(k):
                t = ts[r]
                acc[r] += max(t, 0.0) * lj + min(t, 0.0) * hj
                ee[r] += abs(t) * aj
        n = bptr[b + 1] - bptr[b] + 1
        g = gamma(n + 1)
        for r in range(k):
            tot = _add_err(err[b, r], g, widen_up(ee[r], n))
            out[b, r] = acc[r] - tot - (abs(acc[r]) + tot) * 2.0 * U - TINY
    return out


# ----------------------------------------------------------------------------- relaxations


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
def _f(kind, x):
    """sigmoid (kind 1) or tanh (kind 2), within F_ERR of the exact value."""
    if kind == 1:
        return 1.0 / (1.0 + np.exp(-x))
    return np.tanh(x)


@njit(cache=True, nogil=True)
def _df(kind, x):
    """f'(x) to a few ulp: sigmoid' = e / (1 + e)^2 with e = exp(-|x|); tanh'(x) = 4 sigmoid'(2x)."""
    if kind == 2:
        x = 2.0 * x
    e = np.exp(-abs(x))
    d = e / ((1.0 + e) * (1.0 + e))
    return 4.0 * d if kind == 2 else d


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
    dmax = 0.25 if kind == 1 else 1.0
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

    best: the input with the largest lower bound; dominated: its lower bound is >= every
    other input's upper bound (then y = x_best exactly); umax: the largest upper bound.
    Returns best, dominated, umax, out_lo, out_hi, mag (max |x| over the window).
    """
    n_out, taps = windows.shape
    best = np.empty(n_out, dtype=np.int64)
    dominated = np.empty(n_out, dtype=np.bool_)
    umax = np.empty(n_out)
    out_lo = np.empty(n_out)
    mag = np.empty(n_out)
    for o in range(n_out):
        b = -1
        blo = -np.inf
        top = -np.inf
        m = 0.0
        for t in range(taps):
            i = windows[o, t]
            if i < 0:
                continue
            if b < 0 or lo[i] > blo:
                b = i
                blo = lo[i]
            top = max(top, hi[i])
            m = max(m, abs(lo[i]), abs(hi[i]))
        dom = True
        for t in range(taps):
            i = windows[o, t]
            if i >= 0 and i != b and hi[i] > blo:
                dom = False
        best[o] = b
        dominated[o] = dom
        umax[o] = top
        out_lo[o] = blo
        mag[o] = m
    return best, dominated, umax, out_lo, umax.copy(), mag


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
