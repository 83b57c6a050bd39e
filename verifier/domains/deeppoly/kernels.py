"""Numba kernels of the DeepPoly domain: back-substitution of linear bounds over row blocks.

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
underflow. The relaxation lines and their `mag` come from verifier.domains.deeppoly.relax.

On a graph, the rows a layer receives from its several readers are parts of one sum:
join_rows puts them side by side, so a neuron may appear twice in a block. Every step above
is sound with repeats (each entry is one more of the n terms it counts), and sum_rows adds
repeats up before a relaxation, which must see a neuron's whole coefficient.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from verifier.numerics.rounding import TINY, U, gamma, widen_up  # noqa: F401  (kernels' API)


@njit(cache=True, nogil=True)
def _add_err(err: float, g: float, total: float) -> float:
    """err + g * total, rounded up (three operations, each at most one ulp)."""
    return (err + g * total) * (1.0 + 4.0 * U) + TINY


@njit(cache=True, nogil=True, inline="always")
def _open(c, b, cc, ee):
    """Start block b's constants cc (from c) and its rounding sums ee (|c|)."""
    for r in range(cc.shape[0]):
        cc[r] = c[b, r]
        ee[r] = abs(c[b, r])


@njit(cache=True, nogil=True, inline="always")
def _close(err, b, n, cc, ee, out_c, out_err):
    """Store block b's constants and add gamma(n + 1) * ee (n summed terms) to its err."""
    g = gamma(n + 1)
    for r in range(cc.shape[0]):
        out_c[b, r] = cc[r]
        out_err[b, r] = _add_err(err[b, r], g, widen_up(ee[r], n))


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
        _open(c, b, cc, ee)
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
        _close(err, b, bptr[b + 1] - bptr[b] + 1, cc, ee, out_c, out_err)
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
        _open(c, b, cc, ee)
        for s in range(lo, hi):
            bj = bias[sup[s]]
            mj = mag[sup[s]]
            ts = T[s]
            for r in range(k):
                cc[r] += ts[r] * bj
                ee[r] += abs(ts[r]) * mj
        _close(err, b, hi - lo + 1, cc, ee, out_c, out_err)
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
        _open(c, b, cc, ee)
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
        _close(err, b, bptr[b + 1] - bptr[b] + 1, cc, ee, out_c, out_err)
    return out_ptr, out_sup, out_T, out_c, out_err


@njit(cache=True, nogil=True)
def pool_step(bptr, sup, T, c, err, best, dominated, top, slope, off, mag, n_in):
    """Back through a max-pool: y_o >= x_best(o) always; y_o <= x_best(o) when that input
    dominates its window, else y_o <= slope_o x_top(o) + off_o. Inputs reached from several
    outputs are summed."""
    nb = bptr.shape[0] - 1
    k = T.shape[1]
    mark = np.full(n_in, -1, dtype=np.int64)
    out_ptr = np.empty(nb + 1, dtype=np.int64)
    out_ptr[0] = 0
    for b in range(nb):
        cnt = 0
        for s in range(bptr[b], bptr[b + 1]):
            o = sup[s]
            for i in (best[o], top[o]):
                if mark[i] != b and (i == best[o] or not dominated[o]):
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
        _open(c, b, cc, ee)
        for s in range(bptr[b], bptr[b + 1]):
            o = sup[s]
            for i in (best[o], top[o]):
                if mark[i] != b and (i == best[o] or not dominated[o]):
                    mark[i] = b
                    slot[i] = nu
                    out_sup[nu] = i
                    nu += 1
            row = out_T[slot[best[o]]]
            ts = T[s]
            mo = mag[o]
            if dominated[o]:
                for r in range(k):
                    row[r] += ts[r]
                    ee[r] += abs(ts[r]) * mo
            else:
                upper = out_T[slot[top[o]]]
                a = slope[o]
                bo = off[o]
                for r in range(k):
                    t = ts[r]
                    row[r] += max(t, 0.0)
                    upper[r] += min(t, 0.0) * a
                    cc[r] += min(t, 0.0) * bo
                    ee[r] += abs(t) * mo
        _close(err, b, bptr[b + 1] - bptr[b] + 1, cc, ee, out_c, out_err)
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


# ----------------------------------------------------------------------------- graphs


@njit(cache=True, nogil=True)
def join_rows(bptr, sup, T, c, err, bptr2, sup2, T2, c2, err2):
    """The sum of two sets of rows over one layer, with the same blocks and row count (the
    contributions of two paths of a graph): each block's entries side by side, so a neuron
    may appear twice (every step treats entries one by one or sums them, soundly either way).

    Only the constants are added: |fl(c + c2) - (c + c2)| <= U |c + c2| <= 2 U |fl(c + c2)|,
    which goes into err with the two errs; the factor (1 + 8U) rounds those three operations
    up, TINY covers underflow.
    """
    nb = bptr.shape[0] - 1
    k = T.shape[1]
    out_ptr = bptr + bptr2
    out_sup = np.empty(out_ptr[nb], dtype=np.int64)
    out_T = np.empty((out_ptr[nb], k))
    for b in range(nb):
        p, m = out_ptr[b], bptr[b + 1] - bptr[b]
        out_sup[p : p + m] = sup[bptr[b] : bptr[b + 1]]
        out_T[p : p + m] = T[bptr[b] : bptr[b + 1]]
        p += m
        m = bptr2[b + 1] - bptr2[b]
        out_sup[p : p + m] = sup2[bptr2[b] : bptr2[b + 1]]
        out_T[p : p + m] = T2[bptr2[b] : bptr2[b + 1]]
    out_c = c + c2
    out_err = (err + err2 + 2.0 * U * np.abs(out_c)) * (1.0 + 8.0 * U) + TINY
    return out_ptr, out_sup, out_T, out_c, out_err


@njit(cache=True, nogil=True)
def sum_rows(bptr, sup, T, c, err, mag):
    """One entry per neuron and block, its coefficient the float sum of the repeated ones, as
    a relaxation needs (it picks a neuron's line by the sign of the whole coefficient).

    Each neuron's sum of m <= n entries (n: the block's) is within gamma(n) sum |t| of the
    exact one, and |x_j| <= mag[j], so err grows by gamma(n) sum_s |T[s]| mag[sup[s]],
    itself a float sum of n products (widen_up) added with _add_err.
    """
    nb = bptr.shape[0] - 1
    k = T.shape[1]
    mark = np.full(mag.shape[0], -1, dtype=np.int64)
    out_ptr = np.empty(nb + 1, dtype=np.int64)
    out_ptr[0] = 0
    for b in range(nb):
        cnt = 0
        for s in range(bptr[b], bptr[b + 1]):
            if mark[sup[s]] != b:
                mark[sup[s]] = b
                cnt += 1
        out_ptr[b + 1] = out_ptr[b] + cnt
    out_sup = np.empty(out_ptr[nb], dtype=np.int64)
    out_T = np.zeros((out_ptr[nb], k))
    out_err = np.empty((nb, k))
    slot = np.empty(mag.shape[0], dtype=np.int64)
    mark[:] = -1
    ee = np.empty(k)
    for b in range(nb):
        nu = out_ptr[b]
        ee[:] = 0.0
        for s in range(bptr[b], bptr[b + 1]):
            j = sup[s]
            if mark[j] != b:
                mark[j] = b
                slot[j] = nu
                out_sup[nu] = j
                nu += 1
            row = out_T[slot[j]]
            ts = T[s]
            mj = mag[j]
            for r in range(k):
                row[r] += ts[r]
                ee[r] += abs(ts[r]) * mj
        n = bptr[b + 1] - bptr[b]
        g = gamma(n)
        for r in range(k):
            out_err[b, r] = _add_err(err[b, r], g, widen_up(ee[r], n))
    return out_ptr, out_sup, out_T, c.copy(), out_err
