"""Rows of a CSR zonotope that share their generator ids, and the dense layer that uses them.

After a convolution every output channel at one position has the same generator ids in the
same order, and a ReLU keeps that list (scaling it, dropping dead rows, appending one fresh
generator to a crossing row); after a residual Add such private generators may sit anywhere
in a row. `row_groups` finds rows sharing ids without knowing the shapes: each row is
reordered (in a copy, when needed) into its shared ids, in their order, then its private
ids (used by no other row); rows whose shared parts are equal (ids compared exactly, hashing
only proposes candidates) form a group. A group's shared values form a dense block, so a
dense layer over it is one BLAS product instead of one scattered row update per non-zero.

Rounding: every entry of the result is still a sum of at most n_in products w v, now added
in a different order and grouping (BLAS partial sums, then the scatter); the a-priori bound
gamma(n) sum |terms| holds for any order and parenthesisation, with or without FMA, so the
error box of deepzono.kernels._affine_centre (gamma(n_in + 1) over |W| (|c| + rad)) covers
it exactly as it covers csr_to_dense_affine's.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from verifier.domains.deepzono.kernels import _affine_centre

MIN_GROUP = 4  # smaller groups are applied entry by entry: a BLAS call costs more than it saves


@njit(cache=True, nogil=True)
def shared_first(indptr, idx, val, m):
    """(idx, val, plen): the rows with their shared entries first (in order), then the ids
    no other row uses; plen the number of shared entries per row. A row with one entry
    counts it as shared. The input arrays are returned when no row needs reordering."""
    n = indptr.shape[0] - 1
    uses = np.zeros(m, dtype=np.int64)
    for q in range(indptr[n]):
        uses[idx[q]] += 1
    plen = np.empty(n, dtype=np.int64)
    mixed = False
    for r in range(n):
        a, b = indptr[r], indptr[r + 1]
        if b - a <= 1:
            plen[r] = b - a
            continue
        cnt = 0
        private_seen = False
        for q in range(a, b):
            if uses[idx[q]] > 1:
                cnt += 1
                mixed = mixed or private_seen
            else:
                private_seen = True
        plen[r] = cnt if cnt > 0 else b - a
    if not mixed:
        return idx, val, plen
    idx2 = np.empty_like(idx)
    val2 = np.empty_like(val)
    for r in range(n):
        a, b = indptr[r], indptr[r + 1]
        p, t = a, a + plen[r]
        for q in range(a, b):
            if uses[idx[q]] > 1 or plen[r] == b - a:
                idx2[p], val2[p] = idx[q], val[q]
                p += 1
            else:
                idx2[t], val2[t] = idx[q], val[q]
                t += 1
    return idx2, val2, plen


@njit(cache=True, nogil=True)
def _same_set(indptr, idx, plen, stamp, a, b):
    """Whether row b's shared ids are row a's (stamp[id] == a marks a's; ids within a row
    are distinct, so equal counts and inclusion mean equal sets)."""
    if plen[a] != plen[b]:
        return False
    for q in range(indptr[b], indptr[b] + plen[b]):
        if stamp[idx[q]] != a:
            return False
    return True


@njit(cache=True, nogil=True)
def group_blocks(indptr, idx, val, plen, order, gptr, m, min_group, vt):
    """Per row its group (-1: none) and place in it; each group's shared values as one
    contiguous plen x size block at voff[g] of vt (as long as the input's values at least),
    rows in the order of the group's first row's ids, so the group is one BLAS operand."""
    n = indptr.shape[0] - 1
    ng = gptr.shape[0] - 1
    grp = np.full(n, -1, dtype=np.int64)
    mem = np.zeros(n, dtype=np.int64)
    voff = np.zeros(ng + 1, dtype=np.int64)
    for g in range(ng):
        a, b = gptr[g], gptr[g + 1]
        size = b - a if b - a >= min_group else 0
        voff[g + 1] = voff[g] + plen[order[a]] * size
    col = np.empty(m, dtype=np.int64)
    for g in range(ng):
        a, b = gptr[g], gptr[g + 1]
        if b - a < min_group:
            continue
        lead = order[a]
        pl = plen[lead]
        for u in range(pl):
            col[idx[indptr[lead] + u]] = u
        for t in range(b - a):
            r = order[a + t]
            grp[r] = g
            mem[r] = t
            o = voff[g] + t
            size = b - a
            for q in range(indptr[r], indptr[r] + pl):
                vt[o + col[idx[q]] * size] = val[q]
    return grp, mem, voff


@njit(cache=True, nogil=True)
def row_groups(indptr, idx, val, m, min_group=MIN_GROUP):
    """(idx, val, plen, order, gptr): with the rows reordered by shared_first, the rows
    order[gptr[g]:gptr[g + 1]] have the same first plen ids (exactly, in any order).

    Empty rows are left out; rows in no group of min_group or more come as groups of one.
    """
    n = indptr.shape[0] - 1
    idx, val, plen = shared_first(indptr, idx, val, m)
    key = np.empty(n, dtype=np.uint64)
    for r in range(n):  # a key of the set of shared ids (any order): compared exactly later
        h = np.uint64(plen[r]) * np.uint64(0x9E3779B97F4A7C15)
        for q in range(indptr[r], indptr[r] + plen[r]):
            x = np.uint64(idx[q]) * np.uint64(0xBF58476D1CE4E5B9)
            h += x ^ (x >> np.uint64(31))
        key[r] = h
    by_key = np.argsort(key, kind="mergesort")
    order = np.empty(n, dtype=np.int64)
    gptr = np.empty(n + 1, dtype=np.int64)
    gptr[0] = 0
    no = 0
    ng = 0
    singles = np.empty(n, dtype=np.int64)
    ns = 0
    stamp = np.full(m, -1, dtype=np.int64)
    s = 0
    while s < n:
        e = s + 1
        while e < n and key[by_key[e]] == key[by_key[s]]:
            e += 1
        lead = by_key[s]
        if plen[lead] > 0:
            start = no
            for q in range(indptr[lead], indptr[lead] + plen[lead]):
                stamp[idx[q]] = lead
            for t in range(s, e):  # rows matching the run's first (hash collisions stay out)
                r = by_key[t]
                if _same_set(indptr, idx, plen, stamp, lead, r):
                    order[no] = r
                    no += 1
                elif indptr[r + 1] > indptr[r]:
                    singles[ns] = r
                    ns += 1
            if no - start >= min_group:
                ng += 1
                gptr[ng] = no
            else:
                for t in range(start, no):
                    singles[ns] = order[t]
                    ns += 1
                no = start
        else:
            for t in range(s, e):
                r = by_key[t]
                if indptr[r + 1] > indptr[r]:
                    singles[ns] = r
                    ns += 1
        s = e
    for t in range(ns):
        order[no] = singles[t]
        no += 1
        ng += 1
        gptr[ng] = no
    return idx, val, plen, order[:no], gptr[: ng + 1]


@njit(cache=True, nogil=True)
def _used_columns(indptr, idx, m):
    """The dense column of every generator id in order of first use (-1: unused), and their
    number (csr_to_dense_affine's numbering)."""
    col = np.full(m, -1, dtype=np.int64)
    mu = 0
    for q in range(indptr[indptr.shape[0] - 1]):
        j = idx[q]
        if col[j] < 0:
            col[j] = mu
            mu += 1
    return col, mu


def grouped_dense_affine(c, indptr, idx, val, beta, rad, m, wt_t, aw, bias, min_group=MIN_GROUP):
    """csr_to_dense_affine (same columns, same error box) with row groups as BLAS products.
    The output is allocated here: numpy's allocator asks for huge pages on big arrays."""
    col, mu = _used_columns(indptr, idx, m)
    gt = np.zeros((mu, wt_t.shape[1]))
    return _grouped_dense_affine(c, indptr, idx, val, beta, rad, m, wt_t, aw, bias, min_group,
                                 col, gt)


@njit(cache=True, nogil=True)
def _grouped_dense_affine(c, indptr, idx, val, beta, rad, m, wt_t, aw, bias, min_group, col, gt):
    n_out = wt_t.shape[1]
    idx, val, plen, order, gptr = row_groups(indptr, idx, val, m, min_group)
    at = np.empty(m, dtype=np.int64)  # place of each shared id in the group's first row
    for g in range(gptr.shape[0] - 1):
        a, b = gptr[g], gptr[g + 1]
        lead = order[a]
        pl = plen[lead] if b - a >= min_group else 0
        if pl > 0:
            for u in range(pl):
                at[idx[indptr[lead] + u]] = u
            vt = np.empty((pl, b - a))
            wg = np.empty((b - a, n_out))
            for t in range(b - a):
                r = order[a + t]
                for q in range(indptr[r], indptr[r] + pl):
                    vt[at[idx[q]], t] = val[q]
                wg[t, :] = wt_t[r, :]
            p0 = indptr[lead]
            chunk = max(16, 32768 // n_out)  # rows of the product that stay in cache
            for u0 in range(0, pl, chunk):
                u1 = min(pl, u0 + chunk)
                res = np.dot(vt[u0:u1], wg)
                for u in range(u0, u1):
                    rr = col[idx[p0 + u]]
                    for i in range(n_out):
                        gt[rr, i] += res[u - u0, i]
        for t in range(b - a):  # the rest of each row (tails; whole rows of small groups)
            k = order[a + t]
            for q in range(indptr[k] + pl, indptr[k + 1]):
                rr = col[idx[q]]
                v = val[q]
                for i in range(n_out):
                    gt[rr, i] += v * wt_t[k, i]
    out_c, out_beta = _affine_centre(c, beta, rad, wt_t, aw, bias)
    return out_c, gt, out_beta
