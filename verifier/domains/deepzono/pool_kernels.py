"""DeepZono max pooling on CSR zonotopes, as ELINA does it.

For each pool window the input with the largest interval lower bound is the candidate. It
passes through unchanged (its centre, generators and error box) when the zonotope of its
difference to every other input of the window is provably non-negative: the lower bound of
the affine form x_best - x_k, where the generators the two share cancel. Otherwise the output
is boxed as [max lower, max upper] with one fresh generator. A window whose inputs carry no
generators at all (dead ReLUs, constants) becomes a constant with an error box and no
generator.

Rounding: the difference form is computed term by term; each difference of two generator
coefficients is exact up to a relative U, and the sum of the n absolute differences is
widened by gamma(n) (deepzono.kernels.widen_up); the difference of the centres by 2U of its
magnitude. The test is on a lower bound that is therefore below the exact one.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from verifier.domains.deepzono.kernels import TINY, U, _enclose, widen_up
from verifier.numerics.memory import csr_bytes, ensure_fits


@njit(cache=True, nogil=True)
def _difference_lower(c, indptr, idx, val, beta, a, b, scratch, touched):
    """A sound lower bound of x_a - x_b over the zonotope (generators shared by a, b cancel)."""
    nt = 0
    for q in range(indptr[a], indptr[a + 1]):
        j = idx[q]
        if scratch[j] == 0.0:
            touched[nt] = j
            nt += 1
        scratch[j] += val[q]
    for q in range(indptr[b], indptr[b + 1]):
        j = idx[q]
        if scratch[j] == 0.0:
            touched[nt] = j
            nt += 1
        scratch[j] -= val[q]
    s = 0.0
    for t in range(nt):
        j = touched[t]
        s += abs(scratch[j])
        scratch[j] = 0.0
    # a generator of a whose sum with b's cancels to exactly 0.0 may be listed twice: harmless
    total = widen_up(s, nt) * (1.0 + 2.0 * U) + beta[a] + beta[b]
    total = total * (1.0 + 2.0 * U)
    centre = c[a] - c[b]
    return centre - total - (abs(centre) + total) * 2.0 * U - TINY


def csr_maxpool(c, indptr, idx, val, beta, lo, hi, gsum, m, in_shape, out_shape, kernel, stride,
                pads):
    """Max pooling of a CSR zonotope; returns (c, indptr, idx, val, beta, m, gsum) of the output.

    gsum bounds each row's sum |G| (conv_kernels.csr_conv); a row passed through keeps its own.
    Checks the memory cap first: an input row lies in at most ceil(k / s) windows per axis,
    so it is copied at most that often, and a boxed output holds one generator.
    """
    reach = -(-int(kernel[0]) // int(stride[0])) * -(-int(kernel[1]) // int(stride[1]))
    n_out = int(np.prod(out_shape))
    ensure_fits(csr_bytes(c.shape[0], indptr[-1]) + csr_bytes(n_out, reach * indptr[-1] + n_out))
    return _csr_maxpool(c, indptr, idx, val, beta, lo, hi, gsum, m, in_shape, out_shape, kernel,
                        stride, pads)


@njit(cache=True, nogil=True)
def _csr_maxpool(c, indptr, idx, val, beta, lo, hi, gsum, m, in_shape, out_shape, kernel, stride,
                 pads):
    """csr_maxpool's kernel (after the memory check)."""
    ch, h, w = in_shape[0], in_shape[1], in_shape[2]
    oh, ow = out_shape[1], out_shape[2]
    kh, kw = kernel[0], kernel[1]
    sh, sw, pt, pl = stride[0], stride[1], pads[0], pads[1]
    n_out = ch * oh * ow
    winner = np.empty(n_out, dtype=np.int64)  # >= 0: passes through; -1: boxed; -2: constant
    box_lo = np.empty(n_out)
    box_hi = np.empty(n_out)
    cand = np.empty(kh * kw, dtype=np.int64)
    scratch = np.zeros(m)
    longest = 0
    for i in range(c.shape[0]):
        longest = max(longest, indptr[i + 1] - indptr[i])
    touched = np.empty(2 * longest + 1, dtype=np.int64)
    nnz = 0
    for cc in range(ch):
        for y in range(oh):
            for x in range(ow):
                o = (cc * oh + y) * ow + x
                nc = 0
                for ky in range(kh):
                    iy = y * sh + ky - pt
                    if iy < 0 or iy >= h:
                        continue
                    for kx in range(kw):
                        ix = x * sw + kx - pl
                        if 0 <= ix < w:
                            cand[nc] = (cc * h + iy) * w + ix
                            nc += 1
                best = cand[0]
                max_hi = -np.inf
                no_generators = True
                for t in range(nc):
                    k = cand[t]
                    if lo[k] > lo[best]:
                        best = k
                    max_hi = max(max_hi, hi[k])
                    if indptr[k + 1] > indptr[k]:
                        no_generators = False
                box_lo[o] = lo[best]
                box_hi[o] = max_hi
                if no_generators:
                    winner[o] = -2
                    continue
                dominates = True
                for t in range(nc):
                    k = cand[t]
                    if k == best or hi[k] <= lo[best]:
                        continue
                    gap = _difference_lower(c, indptr, idx, val, beta, best, k, scratch, touched)
                    if gap < 0.0:
                        dominates = False
                        break
                if dominates:
                    winner[o] = best
                    nnz += indptr[best + 1] - indptr[best]
                else:
                    winner[o] = -1
                    nnz += 1
    out_ptr = np.empty(n_out + 1, dtype=np.int64)
    out_idx = np.empty(nnz, dtype=np.int64)
    out_val = np.empty(nnz)
    out_c = np.empty(n_out)
    out_beta = np.empty(n_out)
    out_gsum = np.empty(n_out)
    p = 0
    nxt = m
    out_ptr[0] = 0
    for o in range(n_out):
        k = winner[o]
        if k >= 0:
            for q in range(indptr[k], indptr[k + 1]):
                out_idx[p] = idx[q]
                out_val[p] = val[q]
                p += 1
            out_c[o] = c[k]
            out_beta[o] = beta[k]
            out_gsum[o] = gsum[k]
        else:
            mid, half = _enclose(box_lo[o], box_hi[o])
            out_c[o] = mid
            if k == -1:
                out_idx[p] = nxt
                out_val[p] = half
                nxt += 1
                p += 1
                out_beta[o] = 0.0
                out_gsum[o] = half
            else:
                out_beta[o] = half
                out_gsum[o] = 0.0
        out_ptr[o + 1] = p
    return out_c, out_ptr, out_idx, out_val, out_beta, nxt, out_gsum
