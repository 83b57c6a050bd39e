"""DeepZono convolution of a CSR zonotope, its taps prepared once per network.

Same contract and rounding argument as deepzono.kernels: the error of every sum of products
is bounded by gamma(n) times the sum of the absolute terms and added to the error box.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from verifier.domains.deepzono.group_kernels import MIN_GROUP, group_blocks, row_groups
from verifier.domains.deepzono.kernels import TINY, gamma, widen_up
from verifier.numerics.memory import csr_bytes, ensure_fits

CHUNK = 256  # generator ids per BLAS product in the grouped convolution


@njit(cache=True, nogil=True)
def conv_taps(weight, in_shape, out_shape, stride, pads):
    """Per output position, the input neuron of every tap (-1 in padding), and the weight per
    tap contiguous over output channels: derived once per network (deepzono's prepare)."""
    ci_n, h, w = in_shape[0], in_shape[1], in_shape[2]
    co_n, oh, ow = out_shape[0], out_shape[1], out_shape[2]
    kh, kw = weight.shape[2], weight.shape[3]
    sh, sw, pt, pl = stride[0], stride[1], pads[0], pads[1]
    npos = oh * ow
    ntap = kh * kw * ci_n
    tap_k = np.full((npos, ntap), -1, dtype=np.int64)
    for y in range(oh):
        for x in range(ow):
            t = 0
            for ky in range(kh):
                iy = y * sh + ky - pt
                for kx in range(kw):
                    ix = x * sw + kx - pl
                    for ci in range(ci_n):
                        if 0 <= iy < h and 0 <= ix < w:
                            tap_k[y * ow + x, t] = (ci * h + iy) * w + ix
                        t += 1
    wtap = np.empty((ntap, co_n))
    for co in range(co_n):
        t = 0
        for ky in range(kh):
            for kx in range(kw):
                for ci in range(ci_n):
                    wtap[t, co] = weight[co, ci, ky, kx]
                    t += 1
    return tap_k, wtap


@njit(cache=True, nogil=True)
def _one_generator_each(indptr, idx):
    """Whether every row has at most one generator and no two rows share one (an input box)."""
    last = -1
    for i in range(indptr.shape[0] - 1):
        if indptr[i + 1] - indptr[i] > 1:
            return False
        if indptr[i + 1] > indptr[i]:
            if idx[indptr[i]] <= last:
                return False
            last = idx[indptr[i]]
    return True


@njit(cache=True, nogil=True)
def _conv_centre(c, beta, rad, tap_k, wtap, bias):
    """Centre, error box (before generators) of every output of a convolution (im2col).

    The taps' centres times W, and (|c| + rad), beta times |W| (padding taps give 0); with the
    bias one more term, the rounding is within gamma(ntap + 1) like the taps' own sums.
    """
    npos, ntap = tap_k.shape
    co_n = wtap.shape[1]
    xc = np.zeros((npos, ntap))
    xa = np.zeros((npos, ntap))
    xb = np.zeros((npos, ntap))
    for pos in range(npos):
        for t in range(ntap):
            k = tap_k[pos, t]
            if k >= 0:
                xc[pos, t] = c[k]
                xa[pos, t] = abs(c[k]) + rad[k]
                xb[pos, t] = beta[k]
    awtap = np.abs(wtap)
    cc = np.dot(xc, wtap)
    err = np.dot(xa, awtap)
    bsum = np.dot(xb, awtap)
    g = gamma(ntap + 1)
    out_c = np.empty(co_n * npos)
    out_beta = np.empty(co_n * npos)
    for co in range(co_n):
        for pos in range(npos):
            o = co * npos + pos
            out_c[o] = cc[pos, co] + bias[co]
            e = err[pos, co] + abs(bias[co])
            out_beta[o] = (bsum[pos, co] + g * e) * (1.0 + 2.0 * g) + ntap * TINY
    return out_c, out_beta


@njit(cache=True, nogil=True)
def _conv_distinct(c, indptr, idx, val, beta, rad, tap_k, wtap, bias):
    """csr_conv when no two input rows share a generator and each has at most one: every
    output entry is a single product w v, written in tap order (as csr_conv would)."""
    npos, ntap = tap_k.shape
    co_n = wtap.shape[1]
    n_out = co_n * npos
    cnt = np.zeros(npos, dtype=np.int64)
    for pos in range(npos):
        for t in range(ntap):
            k = tap_k[pos, t]
            if k >= 0 and indptr[k + 1] > indptr[k]:
                cnt[pos] += 1
    out_ptr = np.empty(n_out + 1, dtype=np.int64)
    out_ptr[0] = 0
    for co in range(co_n):
        for pos in range(npos):
            o = co * npos + pos
            out_ptr[o + 1] = out_ptr[o] + cnt[pos]
    out_idx = np.empty(out_ptr[n_out], dtype=np.int64)
    out_val = np.empty(out_ptr[n_out])
    gsum = np.empty(n_out)
    for co in range(co_n):
        for pos in range(npos):
            o = co * npos + pos
            p = out_ptr[o]
            s = 0.0
            for t in range(ntap):
                k = tap_k[pos, t]
                if k >= 0 and indptr[k + 1] > indptr[k]:
                    q = indptr[k]
                    v = wtap[t, co] * val[q]
                    out_idx[p] = idx[q]
                    out_val[p] = v
                    s += abs(v)
                    p += 1
            gsum[o] = widen_up(s, cnt[pos])
    out_c, out_beta = _conv_centre(c, beta, rad, tap_k, wtap, bias)
    return out_c, out_ptr, out_idx, out_val, out_beta, gsum



@njit(cache=True, nogil=True)
def conv_union_sizes(indptr, idx, m, tap_k, grp, plen, order, gptr):
    """Per output position, the number of distinct generators in its input window (the
    length of every output row at that position); a group's shared prefix is read once."""
    npos, ntap = tap_k.shape
    seen = np.full(m, -1, dtype=np.int64)
    gseen = np.full(gptr.shape[0] - 1, -1, dtype=np.int64)
    usize = np.zeros(npos, dtype=np.int64)
    for pos in range(npos):
        cnt = 0
        for t in range(ntap):
            k = tap_k[pos, t]
            if k < 0:
                continue
            start = indptr[k]
            g = grp[k]
            if g >= 0:
                if gseen[g] != pos:
                    gseen[g] = pos
                    lead = order[gptr[g]]
                    for q in range(indptr[lead], indptr[lead] + plen[lead]):
                        j = idx[q]
                        if seen[j] != pos:
                            seen[j] = pos
                            cnt += 1
                start += plen[k]
            for q in range(start, indptr[k + 1]):
                j = idx[q]
                if seen[j] != pos:
                    seen[j] = pos
                    cnt += 1
        usize[pos] = cnt
    return usize


@njit(cache=True, nogil=True)
def _conv_grouped(c, indptr, idx, val, beta, rad, m, tap_k, wtap, bias, usize, groups, out_idx,
                  out_val):
    """csr_conv's general case. Per output position, the window's generators get slots in a
    dense accumulator (slot x channel, no sorting or merging of ids); taps whose input rows
    form a group (group_kernels.row_groups, whose reordered idx, val this is given) add
    their shared prefix as BLAS products (prefix x members) @ (members x channels), a
    chunk of the prefix at a time (a member outside the window has weight 0, which adds
    exact zeros);
    every other entry is added one by one into all channels in a contiguous loop.
    out_idx, out_val: the output's arrays (allocated by the caller, sized from usize)."""
    npos, ntap = tap_k.shape
    co_n = wtap.shape[1]
    plen, order, gptr, grp, mem, voff, vt = groups
    n_out = co_n * npos
    out_ptr = np.empty(n_out + 1, dtype=np.int64)
    out_ptr[0] = 0
    for co in range(co_n):
        for pos in range(npos):
            o = co * npos + pos
            out_ptr[o + 1] = out_ptr[o] + usize[pos]
    gsum = np.empty(n_out)
    umax = 1
    for pos in range(npos):
        umax = max(umax, usize[pos])
    buf = np.zeros((umax, co_n))
    ids = np.empty(umax, dtype=np.int64)
    slot = np.empty(m, dtype=np.int64)
    seen = np.full(m, -1, dtype=np.int64)
    ssum = np.empty(co_n)
    p0s = np.empty(co_n, dtype=np.int64)
    run_t = np.empty(ntap, dtype=np.int64)
    pair_g = np.empty(ntap, dtype=np.int64)
    pair_t = np.empty(ntap, dtype=np.int64)
    ng = gptr.shape[0] - 1
    out_c, out_beta = _conv_centre(c, beta, rad, tap_k, wtap, bias)
    for pos in range(npos):
        nu = 0
        # the window's taps: grouped rows by group (stable: tap order within one), others as
        # groups of their own
        npair = 0
        for t in range(ntap):
            k = tap_k[pos, t]
            if k >= 0 and indptr[k + 1] > indptr[k]:
                pair_g[npair] = grp[k] if grp[k] >= 0 else ng + t
                pair_t[npair] = t
                npair += 1
        by_g = np.argsort(pair_g[:npair], kind="mergesort")
        s = 0
        while s < npair:
            g = pair_g[by_g[s]]
            e = s
            nr = 0
            while e < npair and pair_g[by_g[e]] == g:
                run_t[nr] = pair_t[by_g[e]]
                nr += 1
                e += 1
            s = e
            if g >= ng:
                g = -1
            lead = order[gptr[g]] if g >= 0 else tap_k[pos, run_t[0]]
            pl = plen[lead] if g >= 0 else 0
            if pl > 0:
                size = gptr[g + 1] - gptr[g]
                block = vt[voff[g]: voff[g + 1]].reshape((pl, size))
                wsel = np.zeros((size, co_n))  # members not in the window: weight 0, exact
                for i in range(nr):
                    r = mem[tap_k[pos, run_t[i]]]
                    for co in range(co_n):
                        wsel[r, co] = wtap[run_t[i], co]
                q0 = indptr[lead]
                for u0 in range(0, pl, CHUNK):  # a chunk of the product stays in cache
                    u1 = min(pl, u0 + CHUNK)
                    res = np.dot(block[u0:u1], wsel)
                    for u in range(u0, u1):
                        j = idx[q0 + u]
                        if seen[j] != pos:
                            seen[j] = pos
                            slot[j] = nu
                            ids[nu] = j
                            for co in range(co_n):
                                buf[nu, co] = 0.0
                            nu += 1
                        sj = slot[j]
                        for co in range(co_n):
                            buf[sj, co] += res[u - u0, co]
            for i in range(nr):  # entries past the shared prefix (all of an ungrouped row)
                tt = run_t[i]
                kk = tap_k[pos, tt]
                for q in range(indptr[kk] + pl, indptr[kk + 1]):
                    j = idx[q]
                    if seen[j] != pos:
                        seen[j] = pos
                        slot[j] = nu
                        ids[nu] = j
                        for co in range(co_n):
                            buf[nu, co] = 0.0
                        nu += 1
                    sj = slot[j]
                    v = val[q]
                    for co in range(co_n):
                        buf[sj, co] += wtap[tt, co] * v
        for co in range(co_n):
            p0s[co] = out_ptr[co * npos + pos]
            ssum[co] = 0.0
        for u in range(nu):  # channels inner: independent sums, sequential streams
            j = ids[u]
            for co in range(co_n):
                v = buf[u, co]
                out_idx[p0s[co] + u] = j
                out_val[p0s[co] + u] = v
                ssum[co] += abs(v)
        for co in range(co_n):
            o = co * npos + pos
            gsum[o] = widen_up(ssum[co], nu)
    return out_c, out_ptr, out_idx, out_val, out_beta, gsum


def csr_conv(c, indptr, idx, val, beta, rad, m, tap_k, wtap, bias, min_group=MIN_GROUP):
    """Convolution of a CSR zonotope; tap_k, wtap from conv_taps. Returns (c, indptr, idx,
    val, beta, gsum), gsum a sound upper bound of each output row's sum |G| (widen_up of the
    sum of the stored values). Checks the memory cap (verifier.numerics.memory) before allocating.
    min_group: the smallest row group taken as one BLAS product (larger than the input: none).

    Rounding: every output coefficient is a sum over the taps of products w v, added in any
    order and grouping (BLAS partial sums per group, then the accumulator); the a-priori
    bound gamma(ntap) sum |w v| holds for each, and sum_j |w v_j| <= |w| rad of the tap's
    input, so _conv_centre's error box gamma(ntap + 1) sum |w| (|c| + rad) covers it.
    """
    npos, ntap = tap_k.shape
    co_n = wtap.shape[1]
    n_in = c.shape[0]
    held = csr_bytes(n_in, indptr[-1])
    if _one_generator_each(indptr, idx):
        ensure_fits(held + csr_bytes(co_n * npos, co_n * npos * ntap))
        return _conv_distinct(c, indptr, idx, val, beta, rad, tap_k, wtap, bias)
    work = 24 * indptr[-1] + 48 * n_in + 24 * m  # reordered rows, grouped values, id maps
    ensure_fits(held + work)
    idx, val, plen, order, gptr = row_groups(indptr, idx, val, m, min_group)
    vt = np.empty(indptr[-1])  # numpy's allocator: huge pages, cheap first touch
    grp, mem, voff = group_blocks(indptr, idx, val, plen, order, gptr, m, min_group, vt)
    usize = conv_union_sizes(indptr, idx, m, tap_k, grp, plen, order, gptr)
    nnz = co_n * int(usize.sum())
    ensure_fits(held + work + csr_bytes(co_n * npos, nnz))
    # numpy's allocator asks for huge pages on big arrays: first touch costs far less
    return _conv_grouped(c, indptr, idx, val, beta, rad, m, tap_k, wtap, bias, usize,
                         (plen, order, gptr, grp, mem, voff, vt),
                         np.empty(nnz, dtype=np.int64), np.empty(nnz))
