"""Numba kernels of DeepZono joins (the sum of two zonotopes) and of the LeakyReLU relaxation.

The operands of a join are already in one generator numbering (deepzono.transfers aligns
them); a generator both hold is the same noise symbol, so its coefficients add and can
cancel. Same rounding model as deepzono.kernels: round-to-nearest float64, every error
bounded with verifier.numerics.rounding and added to the error box beta.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from verifier.domains.deepzono.kernels import _enclose, col_abs_sums
from verifier.numerics.rounding import TINY, U, widen_up


@njit(cache=True, nogil=True)
def _sum_centre(c_a, beta_a, sum_a, c_b, beta_b, sum_b):
    """Centre c_a + c_b and the error box of a sum whose generator entries are fl(a_j + b_j).

    Each of those additions errs by at most U (|a_j| + |b_j|), and so does the centre's, so
    the exact sum lies within beta_a + beta_b + U E of the computed zonotope, where
    E = |c_a| + |c_b| + sum_a + sum_b (sum_a, sum_b: upper bounds of the operands' sums of
    |generators|). E and the sum are computed in float: E by three additions of non-negative
    terms (at least E (1 - U)^3, so 2U fl(E) >= U E), the rest by two more additions and the
    final product by 1 + 4U, and (1 - U)^3 (1 + 4U) >= 1; TINY covers underflow.
    """
    n = c_a.shape[0]
    out_c = np.empty(n)
    out_beta = np.empty(n)
    for i in range(n):
        out_c[i] = c_a[i] + c_b[i]
        e = abs(c_a[i]) + abs(c_b[i]) + sum_a[i] + sum_b[i]
        out_beta[i] = ((beta_a[i] + beta_b[i]) + 2.0 * U * e) * (1.0 + 4.0 * U) + TINY
    return out_c, out_beta


@njit(cache=True, nogil=True)
def csr_add(c_a, ptr_a, idx_a, val_a, beta_a, sum_a, c_b, ptr_b, idx_b, val_b, beta_b, sum_b,
            m):
    """The sum of two CSR zonotopes over ids < m; returns (c, indptr, idx, val, beta, gsum).

    A generator in both rows is stored as fl(a_j + b_j) (error in beta, see _sum_centre); one
    in a single row is copied exactly; an entry that cancels to exactly 0.0 is dropped (it
    contributes nothing). Rows hold each id at most once, as every kernel writes them, and so
    do the output rows. gsum is widen_up of the float sum of the stored |values|, an upper
    bound of their exact sum (verifier.numerics.rounding).
    """
    n = c_a.shape[0]
    out_ptr = np.empty(n + 1, dtype=np.int64)
    out_idx = np.empty(ptr_a[n] + ptr_b[n], dtype=np.int64)
    out_val = np.empty(ptr_a[n] + ptr_b[n])
    gsum = np.empty(n)
    slot = np.full(m, -1, dtype=np.int64)
    p = 0
    out_ptr[0] = 0
    for i in range(n):
        start = p
        for q in range(ptr_a[i], ptr_a[i + 1]):
            slot[idx_a[q]] = p
            out_idx[p] = idx_a[q]
            out_val[p] = val_a[q]
            p += 1
        for q in range(ptr_b[i], ptr_b[i + 1]):
            j = idx_b[q]
            if slot[j] >= 0:
                out_val[slot[j]] += val_b[q]
            else:
                out_idx[p] = j
                out_val[p] = val_b[q]
                p += 1
        w = start  # drop exact zeros, clear the slots
        s = 0.0
        for q in range(start, p):
            slot[out_idx[q]] = -1
            if out_val[q] != 0.0:
                out_idx[w] = out_idx[q]
                out_val[w] = out_val[q]
                s += abs(out_val[q])
                w += 1
        p = w
        out_ptr[i + 1] = p
        gsum[i] = widen_up(s, p - start)
    out_c, out_beta = _sum_centre(c_a, beta_a, sum_a, c_b, beta_b, sum_b)
    return out_c, out_ptr, out_idx[:p], out_val[:p], out_beta, gsum


@njit(cache=True, nogil=True)
def csr_add_within(c_a, ptr_a, idx_a, val_a, beta_a, sum_a, c_b, ptr_b, idx_b, val_b, beta_b,
                   sum_b, m):
    """csr_add when every row of a holds only ids of the same row of b (a residual Add: the
    skip's generators are all in the body's rows), keeping b's indptr and idx: returns (ok,
    c, val, beta, gsum), ok False (and the rest unusable) when some id of a is not in b.

    Each entry is fl(b_j + a_j) = fl(a_j + b_j), or b_j copied exactly, as in csr_add; an
    entry that cancels to 0.0 is kept (it contributes nothing). gsum and the error box are
    csr_add's (widen_up of the float sum of the stored |values|; _sum_centre).
    """
    n = c_b.shape[0]
    out_val = val_b.copy()
    gsum = np.empty(n)
    slot = np.full(m, -1, dtype=np.int64)
    for i in range(n):
        for q in range(ptr_b[i], ptr_b[i + 1]):
            slot[idx_b[q]] = q
        for q in range(ptr_a[i], ptr_a[i + 1]):
            s = slot[idx_a[q]]
            if s < 0:
                return False, c_b, out_val, beta_b, gsum
            out_val[s] += val_a[q]
        s = 0.0
        for q in range(ptr_b[i], ptr_b[i + 1]):
            slot[idx_b[q]] = -1
            s += abs(out_val[q])
        gsum[i] = widen_up(s, ptr_b[i + 1] - ptr_b[i])
    out_c, out_beta = _sum_centre(c_a, beta_a, sum_a, c_b, beta_b, sum_b)
    return True, out_c, out_val, out_beta, gsum


@njit(cache=True, nogil=True)
def dense_add(c_a, gt_a, beta_a, c_b, gt_b, beta_b):
    """The sum of two dense zonotopes in one numbering (gt = G^T, m x n): gt_a + gt_b.

    Each entry is one addition; the error box is _sum_centre's with the operands' sums of
    |generators| from dense_bounds' column sums (widen_up: upper bounds of the exact sums).
    """
    m, n = gt_a.shape
    sum_a = np.zeros(n)
    sum_b = np.zeros(n)
    col_abs_sums(gt_a, sum_a)
    col_abs_sums(gt_b, sum_b)
    for i in range(n):
        sum_a[i] = widen_up(sum_a[i], m)
        sum_b[i] = widen_up(sum_b[i], m)
    out = np.empty((m, n))
    for j in range(m):
        for i in range(n):
            out[j, i] = gt_a[j, i] + gt_b[j, i]
    out_c, out_beta = _sum_centre(c_a, beta_a, sum_a, c_b, beta_b, sum_b)
    return out_c, out, out_beta


@njit(cache=True, nogil=True)
def leaky_relaxation(alpha, lo, hi):
    """Per-neuron DeepZono relaxation of max(x, alpha x), 0 <= alpha < 1, as kernels.relaxation
    gives it for ReLU (alpha = 0 gives the same numbers): y in lam x + mu +/- nu.

    Stable neurons are exact: slope alpha when hi <= 0, 1 when lo >= 0 (nu < 0: no generator).
    On a crossing neuron the minimal-area slope is s = (hi - alpha lo) / (hi - lo); for any
    float s in [alpha, 1], f(x) - s x is (alpha - s) x >= 0 on [lo, 0] and (1 - s) x >= 0 on
    [0, hi], so it lies in [0, max((alpha - s) lo, (1 - s) hi)]. Each bound is two roundings
    from its exact value; widening by 4U (and TINY) makes it an upper bound, and _enclose
    rounds the offset interval outward.
    """
    n = lo.shape[0]
    lam = np.empty(n)
    mu = np.empty(n)
    nu = np.empty(n)
    for i in range(n):
        lw = lo[i]
        up = hi[i]
        if up <= 0.0:
            lam[i], mu[i], nu[i] = alpha, 0.0, -1.0
        elif lw >= 0.0:
            lam[i], mu[i], nu[i] = 1.0, 0.0, -1.0
        else:
            s = (up - alpha * lw) / (up - lw)
            s = min(max(s, alpha), 1.0)
            top = max((alpha - s) * lw, (1.0 - s) * up)
            top = top * (1.0 + 4.0 * U) + TINY
            mid, half = _enclose(0.0, top)
            lam[i], mu[i], nu[i] = s, mid, half
    return lam, mu, nu


@njit(cache=True, nogil=True)
def keeps_ids(idx, m):
    """Whether numbering the ids < m by first use in idx (csr_to_dense_affine's compaction)
    gives every id its own number back: all m used, each first met in increasing order."""
    seen = np.zeros(m, dtype=np.bool_)
    nxt = 0
    for q in range(idx.shape[0]):
        j = idx[q]
        if not seen[j]:
            if j != nxt:
                return False
            seen[j] = True
            nxt += 1
    return nxt == m
