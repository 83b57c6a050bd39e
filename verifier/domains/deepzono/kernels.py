"""Numba kernels of the DeepZono domain, one per layer kind, over plain arrays.

A zonotope over n neurons is  x = c + G e + d,  e in [-1, 1]^m,  |d_i| <= beta_i :
a centre c, a generator matrix G and a per-neuron error box beta that absorbs every
floating-point rounding error. G is kept sparse (CSR rows: indptr, idx, val) through
convolutions and pools, where each neuron depends on few generators, and dense through fully
connected layers, stored generator-major as gt = G^T (m x n, row-major): the products with a
layer's weights are then one BLAS call of the shape it runs fastest, and every per-neuron
loop runs over a contiguous row of gt.

Why the float result is sound: every kernel bounds the rounding error of what it computes
with the standard a-priori bound for a sum of n products, |fl(sum) - sum| <= gamma(n) *
sum |terms|, gamma(n) = n u / (1 - n u), u = 2^-53, which holds for any summation order and
with or without FMA, plus an absolute term for underflow. That bound is added to beta, so
the exact-arithmetic zonotope of the layer is contained in the computed one plus the box
beta. Interval bounds are c -/+ (sum |G| + beta) widened by a relative and an absolute
margin that covers the rounding of that sum. Relaxation parameters (slopes, offsets) may be
any float: each relaxation is checked against the bounds it is derived from and its offset
interval is widened outward, so a slightly wrong slope costs precision, never soundness.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from verifier.numerics.activations import RELU, SIGMOID
from verifier.numerics.rounding import TINY, U, gamma, next_up, widen_up  # noqa: F401  (kernels' API)


@njit(cache=True, nogil=True)
def box_to_csr(lo, hi):
    """Centre, and one generator per input of non-zero width, enclosing [lo, hi] exactly."""
    n = lo.shape[0]
    c = np.empty(n)
    ptr = np.empty(n + 1, dtype=np.int64)
    idx = np.empty(n, dtype=np.int64)
    val = np.empty(n)
    p = 0
    ptr[0] = 0
    for i in range(n):
        c[i] = 0.5 * (lo[i] + hi[i])
        r = max(hi[i] - c[i], c[i] - lo[i])
        if r > 0.0:
            idx[p] = i
            val[p] = np.nextafter(r, np.inf)
            p += 1
        ptr[i + 1] = p
    return c, ptr, idx[:p].copy(), val[:p].copy()


# ----------------------------------------------------------------------------- bounds


@njit(cache=True, nogil=True)
def csr_bounds(c, indptr, val, beta):
    """Sound lower/upper bounds and the radius upper bound (sum |G| + beta) per neuron."""
    n = c.shape[0]
    lo = np.empty(n)
    hi = np.empty(n)
    rad = np.empty(n)
    for i in range(n):
        s = 0.0
        for p in range(indptr[i], indptr[i + 1]):
            s += abs(val[p])
        r = widen_up(s, indptr[i + 1] - indptr[i]) + beta[i]
        r = r * (1.0 + 2.0 * U)
        rad[i] = r
        lo[i] = (c[i] - r) - (abs(c[i]) + r) * 2.0 * U - TINY
        hi[i] = (c[i] + r) + (abs(c[i]) + r) * 2.0 * U + TINY
    return lo, hi, rad


@njit(cache=True, nogil=True)
def bounds_from_sums(c, gsum, beta):
    """csr_bounds when the producing kernel already gave gsum >= the exact sum |G| per row."""
    n = c.shape[0]
    lo = np.empty(n)
    hi = np.empty(n)
    rad = np.empty(n)
    for i in range(n):
        r = (gsum[i] + beta[i]) * (1.0 + 2.0 * U)
        rad[i] = r
        lo[i] = (c[i] - r) - (abs(c[i]) + r) * 2.0 * U - TINY
        hi[i] = (c[i] + r) + (abs(c[i]) + r) * 2.0 * U + TINY
    return lo, hi, rad


@njit(cache=True, nogil=True)
def csr_abs_sums(indptr, val):
    """An upper bound of the exact sum |G| of every CSR row (the gsum the kernels return)."""
    n = indptr.shape[0] - 1
    out = np.empty(n)
    for i in range(n):
        s = 0.0
        for p in range(indptr[i], indptr[i + 1]):
            s += abs(val[p])
        out[i] = widen_up(s, indptr[i + 1] - indptr[i])
    return out


@njit(cache=True, nogil=True)
def col_abs_sums(gt, out):
    """out[i] += sum_j |gt[j, i]|: the row sums of |G| for G stored generator-major."""
    m, n = gt.shape
    for j in range(m):
        for i in range(n):
            out[i] += abs(gt[j, i])


@njit(cache=True, nogil=True)
def dense_bounds(c, gt, beta):
    """Sound bounds for a dense zonotope (gt = G^T); same contract as csr_bounds."""
    n = c.shape[0]
    m = gt.shape[0]
    sums = np.zeros(n)
    col_abs_sums(gt, sums)
    for i in range(n):
        sums[i] = widen_up(sums[i], m)
    return bounds_from_sums(c, sums, beta)


# ----------------------------------------------------------------------------- linear layers


@njit(cache=True, nogil=True)
def csr_scale(c, indptr, val, beta, rad, a, b):
    """Elementwise y = a x + b on a CSR zonotope (in place on copies)."""
    n = c.shape[0]
    out_c = np.empty(n)
    out_val = val.copy()
    out_beta = np.empty(n)
    for i in range(n):
        for p in range(indptr[i], indptr[i + 1]):
            out_val[p] = a[i] * val[p]
        out_c[i] = a[i] * c[i] + b[i]
        err = abs(a[i]) * (abs(c[i]) + rad[i]) + abs(b[i])
        out_beta[i] = (abs(a[i]) * beta[i] + 2.0 * gamma(2) * err) * (1.0 + 2.0 * U) + TINY
    return out_c, out_val, out_beta


@njit(cache=True, nogil=True)
def csr_to_dense_affine(c, indptr, idx, val, beta, rad, m, wt_t, aw, bias):
    """Dense layer applied to a CSR zonotope, giving a dense one (gt) over the used generators.

    wt_t is the weight transposed ([in, out]) so each non-zero adds one contiguous row of gt.
    """
    n_in, n_out = wt_t.shape
    col = np.full(m, -1, dtype=np.int64)
    mu = 0
    for q in range(indptr[n_in]):
        j = idx[q]
        if col[j] < 0:
            col[j] = mu
            mu += 1
    gt = np.zeros((mu, n_out))
    for k in range(n_in):  # indices, not row views: a view per non-zero costs refcounting
        for q in range(indptr[k], indptr[k + 1]):
            r = col[idx[q]]
            v = val[q]
            for i in range(n_out):
                gt[r, i] += v * wt_t[k, i]
    out_c, out_beta = _affine_centre(c, beta, rad, wt_t, aw, bias)
    return out_c, gt, out_beta


@njit(cache=True, nogil=True)
def _affine_centre(c, beta, rad, wt_t, aw, bias, extra=0):
    """Centre and error box of y = W x + b, with W given transposed ([in, out]).

    The error box covers the rounding of the centre and of generators computed as W G with
    gamma(n_in + 1); `extra` more roundings per product (e.g. W pre-scaled by a diagonal)
    raise it to gamma(n_in + 1 + extra). Every sum runs over the inputs with the outputs in
    the inner loop (independent accumulators that vectorise); the bounds hold in any order.
    aw (|W|, [out, in]) is kept in the signature for the callers; |wt_t| is used instead.
    """
    n_in, n_out = wt_t.shape
    out_c = bias.copy()
    bsum = np.zeros(n_out)
    err = np.abs(bias)
    for k in range(n_in):
        ck = c[k]
        bk = beta[k]
        vk = abs(ck) + rad[k]
        for i in range(n_out):
            w = wt_t[k, i]
            a = abs(w)
            out_c[i] += w * ck
            bsum[i] += a * bk
            err[i] += a * vk
    g = gamma(n_in + 1 + extra)
    out_beta = np.empty(n_out)
    for i in range(n_out):
        out_beta[i] = (bsum[i] + g * err[i]) * (1.0 + 2.0 * g) + (n_in + 1) * (1 + extra) * TINY
    return out_c, out_beta


@njit(cache=True, nogil=True)
def dense_affine(c, gt, beta, weight, wt_t, aw, bias):
    """Dense layer on a dense zonotope: gt' = gt W^T (BLAS, live neurons only), error in beta.

    The input's radius is dense_bounds' (from the same column sums, which also tell the
    neurons with no generator: a sum of |values| is 0.0 only when every value is).
    """
    m, n = gt.shape
    sums = np.zeros(n)
    col_abs_sums(gt, sums)
    rad = np.empty(n)
    for i in range(n):
        rad[i] = (widen_up(sums[i], m) + beta[i]) * (1.0 + 2.0 * U)
    keep = np.nonzero(sums != 0.0)[0]
    if keep.shape[0] == n:
        out = np.dot(gt, wt_t)
    else:
        nk = keep.shape[0]
        sub = np.empty((m, nk))
        for j in range(m):
            for t in range(nk):
                sub[j, t] = gt[j, keep[t]]
        out = np.dot(sub, np.ascontiguousarray(wt_t[keep]))
    out_c, out_beta = _affine_centre(c, beta, rad, wt_t, aw, bias)
    return out_c, out, out_beta


@njit(cache=True, nogil=True)
def dense_scale(c, gt, beta, rad, a, b):
    """Elementwise y = a x + b on a dense zonotope (gt = G^T)."""
    m, n = gt.shape
    out = np.empty((m, n))
    for j in range(m):
        for i in range(n):
            out[j, i] = a[i] * gt[j, i]
    out_c = np.empty(n)
    out_beta = np.empty(n)
    for i in range(n):
        out_c[i] = a[i] * c[i] + b[i]
        err = abs(a[i]) * (abs(c[i]) + rad[i]) + abs(b[i])
        out_beta[i] = (abs(a[i]) * beta[i] + 2.0 * gamma(2) * err) * (1.0 + 2.0 * U) + TINY
    return out_c, out, out_beta


# ----------------------------------------------------------------------------- activations


@njit(cache=True, nogil=True)
def _enclose(lo_off, hi_off):
    """Centre and half-width (rounded outward) of an offset interval [lo_off, hi_off]."""
    mid = 0.5 * (lo_off + hi_off)
    half = max(hi_off - mid, mid - lo_off)
    half = half * (1.0 + 4.0 * U) + abs(mid) * 4.0 * U + TINY
    return mid, half


@njit(cache=True, nogil=True)
def _sigmoid_slope(x):
    """sigmoid'(x) = e / (1 + e)^2 with e = exp(-|x|), accurate to a few ulp for any x."""
    e = np.exp(-abs(x))
    return e / ((1.0 + e) * (1.0 + e))


@njit(cache=True, nogil=True)
def relaxation(kind, lo, hi):
    """Per-neuron DeepZono relaxation y in lam * x + mu +/- nu, sound on [lo, hi].

    kind 0 = ReLU (slope up/(up-lw) on crossing neurons), 1 = sigmoid, 2 = tanh (slope the
    smaller end-point derivative). nu < 0 marks a stable neuron that needs no new generator.
    """
    n = lo.shape[0]
    lam = np.empty(n)
    mu = np.empty(n)
    nu = np.empty(n)
    for i in range(n):
        lw = lo[i]
        up = hi[i]
        if kind == RELU:
            if up <= 0.0:
                lam[i], mu[i], nu[i] = 0.0, 0.0, -1.0
            elif lw >= 0.0:
                lam[i], mu[i], nu[i] = 1.0, 0.0, -1.0
            else:
                s = up / (up - lw)
                s = min(max(s, 0.0), 1.0)
                # relu(x) - s x lies in [0, max(-s lw, (1 - s) up)] for any s in [0, 1]
                top = max(-s * lw, (1.0 - s) * up)
                top = top * (1.0 + 4.0 * U) + TINY
                mid, half = _enclose(0.0, top)
                lam[i], mu[i], nu[i] = s, mid, half
        else:
            if kind == SIGMOID:
                fl = 1.0 / (1.0 + np.exp(-lw))
                fu = 1.0 / (1.0 + np.exp(-up))
                s = min(_sigmoid_slope(lw), _sigmoid_slope(up))
            else:
                fl = np.tanh(lw)
                fu = np.tanh(up)
                s = min(4.0 * _sigmoid_slope(2.0 * lw), 4.0 * _sigmoid_slope(2.0 * up))
            # shrinking the slope keeps f(x) - s x non-decreasing despite rounding of s
            s = max(s * (1.0 - 1e-9), 0.0)
            # f(x) - s x is non-decreasing on [lw, up] when s <= min f'; a slope off by a few ulp
            # changes it by at most slack * (up - lw), and f itself is within 1e-14 of its value
            slack = 16.0 * U * s * (up - lw) + 1e-14
            lo_off = fl - s * lw - slack - 4.0 * U * abs(s * lw)
            hi_off = fu - s * up + slack + 4.0 * U * abs(s * up)
            mid, half = _enclose(lo_off, hi_off)
            lam[i], mu[i], nu[i] = s, mid, half
    return lam, mu, nu


@njit(cache=True, nogil=True)
def csr_activation(c, indptr, idx, val, beta, rad, gsum_in, m, lam, mu, nu):
    """Apply per-neuron relaxations to a CSR zonotope; crossing neurons get a new generator.

    Also returns gsum (see csr_conv) of the output rows from the input's: each stored
    fl(s v) is at most (1 + U) s |v|, so sum |fl(s v)| <= (1 + U) s gsum_in, which
    fl(fl(s gsum_in)(1 + 4U)) + TINY bounds; adding the new generator nu is widened by 4U.
    """
    n = c.shape[0]
    n_new = 0
    nnz = 0
    for i in range(n):
        if lam[i] != 0.0:
            nnz += indptr[i + 1] - indptr[i]
        if nu[i] >= 0.0:
            n_new += 1
    out_ptr = np.empty(n + 1, dtype=np.int64)
    out_idx = np.empty(nnz + n_new, dtype=np.int64)
    out_val = np.empty(nnz + n_new)
    out_c = np.empty(n)
    out_beta = np.empty(n)
    p = 0
    nxt = m
    out_ptr[0] = 0
    gsum = np.empty(n)
    for i in range(n):
        s = lam[i]
        ssum = 0.0
        if s != 0.0:
            for q in range(indptr[i], indptr[i + 1]):
                out_idx[p] = idx[q]
                out_val[p] = s * val[q]
                p += 1
            ssum = (s * gsum_in[i]) * (1.0 + 4.0 * U) + TINY
        if nu[i] >= 0.0:
            out_idx[p] = nxt
            out_val[p] = nu[i]
            ssum = (ssum + nu[i]) * (1.0 + 4.0 * U)
            nxt += 1
            p += 1
        out_ptr[i + 1] = p
        gsum[i] = ssum
        out_c[i] = s * c[i] + mu[i]
        err = s * (abs(c[i]) + rad[i]) + abs(mu[i])
        out_beta[i] = (s * beta[i] + 2.0 * gamma(2) * err) * (1.0 + 2.0 * U) + TINY
    return out_c, out_ptr, out_idx, out_val, out_beta, nxt, gsum


@njit(cache=True, nogil=True)
def dense_activation(c, gt, beta, rad, lam, mu, nu):
    """Apply per-neuron relaxations to a dense zonotope (gt = G^T); new generators become new
    rows of gt."""
    m, n = gt.shape
    n_new = 0
    for i in range(n):
        if nu[i] >= 0.0:
            n_new += 1
    out = np.empty((m + n_new, n))
    for j in range(m):
        for i in range(n):
            out[j, i] = lam[i] * gt[j, i]
    out[m:] = 0.0
    out_c = np.empty(n)
    out_beta = np.empty(n)
    nxt = m
    for i in range(n):
        s = lam[i]
        if nu[i] >= 0.0:
            out[nxt, i] = nu[i]
            nxt += 1
        out_c[i] = s * c[i] + mu[i]
        err = s * (abs(c[i]) + rad[i]) + abs(mu[i])
        out_beta[i] = (s * beta[i] + 2.0 * gamma(2) * err) * (1.0 + 2.0 * U) + TINY
    return out_c, out, out_beta


# ----------------------------------------------------------------------------- conversions


@njit(cache=True, nogil=True)
def dense_to_csr(G):
    """CSR rows of a dense generator matrix G (n x m, not gt), dropping zero entries."""
    n, m = G.shape
    nnz = 0
    for i in range(n):
        for j in range(m):
            if G[i, j] != 0.0:
                nnz += 1
    ptr = np.empty(n + 1, dtype=np.int64)
    idx = np.empty(nnz, dtype=np.int64)
    val = np.empty(nnz)
    p = 0
    ptr[0] = 0
    for i in range(n):
        for j in range(m):
            if G[i, j] != 0.0:
                idx[p] = j
                val[p] = G[i, j]
                p += 1
        ptr[i + 1] = p
    return ptr, idx, val
