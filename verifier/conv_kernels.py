"""DeepZono convolution of a CSR zonotope, its taps prepared once per network.

Same contract and rounding argument as verifier.kernels: the error of every sum of products
is bounded by gamma(n) times the sum of the absolute terms and added to the error box.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from verifier.kernels import TINY, gamma, widen_up


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
def csr_conv(c, indptr, idx, val, beta, rad, m, tap_k, wtap, bias):
    """Convolution of a CSR zonotope; tap_k, wtap from conv_taps.

    All output channels at one position read the same input window, so the window's
    generators are gathered once per position (their union gives the row pattern shared by
    the channels) and each non-zero is applied to every channel in one contiguous loop.
    Also returns gsum, a sound upper bound of each output row's sum |G| (widen_up of the sum
    of the stored values), computed as the row is written.
    """
    npos, ntap = tap_k.shape
    co_n = wtap.shape[1]
    if _one_generator_each(indptr, idx):
        return _conv_distinct(c, indptr, idx, val, beta, rad, tap_k, wtap, bias)
    # pass 1: size of the generator union of each position's window
    seen = np.full(m, -1, dtype=np.int64)
    usize = np.zeros(npos, dtype=np.int64)
    for pos in range(npos):
        cnt = 0
        for t in range(ntap):
            k = tap_k[pos, t]
            if k < 0:
                continue
            for q in range(indptr[k], indptr[k + 1]):
                j = idx[q]
                if seen[j] != pos:
                    seen[j] = pos
                    cnt += 1
        usize[pos] = cnt
    n_out = co_n * npos
    out_ptr = np.empty(n_out + 1, dtype=np.int64)
    out_ptr[0] = 0
    for co in range(co_n):
        for pos in range(npos):
            o = co * npos + pos
            out_ptr[o + 1] = out_ptr[o] + usize[pos]
    out_idx = np.empty(out_ptr[n_out], dtype=np.int64)
    out_val = np.empty(out_ptr[n_out])
    gsum = np.empty(n_out)
    umax = 1
    for pos in range(npos):
        umax = max(umax, usize[pos])
    buf = np.zeros((umax, co_n))
    ids = np.empty(umax, dtype=np.int64)
    slot = np.empty(m, dtype=np.int64)
    seen[:] = -1
    ssum = np.empty(co_n)
    p0s = np.empty(co_n, dtype=np.int64)
    out_c, out_beta = _conv_centre(c, beta, rad, tap_k, wtap, bias)
    # pass 2: accumulate every channel of a position at once
    for pos in range(npos):
        nu = 0
        for t in range(ntap):
            k = tap_k[pos, t]
            if k < 0:
                continue
            for q in range(indptr[k], indptr[k + 1]):
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
                    buf[sj, co] += wtap[t, co] * v
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
