"""DeepZono's property: lower bounds of linear functions C y + d of a dense zonotope y, and
the fused kernel that runs a whole Dense/activation chain and the property in one call.
Dense generator matrices are generator-major (gt = G^T, as in deepzono.kernels).

Rounding of the property: with k inputs per row, fl(C G) differs from C G by at most
gamma(k) |C| |G| entrywise, whose row sums are bounded by gamma(k) |C| rad (rad bounds the
row sums of |G| plus beta); the centre C c + d by gamma(k + 1) (|C| |c| + |d|); the error box
enters as |C| beta; the final sum of |fl(C G)| is widened by widen_up.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from verifier.domains.deepzono.kernels import (
    TINY,
    U,
    _affine_centre,
    bounds_from_sums,
    col_abs_sums,
    gamma,
    next_up,
    relaxation,
    widen_up,
)


@njit(cache=True, nogil=True)
def dense_linear_lower(c, gt, beta, rad, C, d):
    """Sound lower bounds of C y + d over y = c + G e + delta, |e| <= 1, |delta| <= beta
    (gt = G^T, generator-major)."""
    return _split_linear_lower(c, gt, np.zeros((0, c.shape[0])), beta, rad, C, d)


@njit(cache=True, nogil=True)
def _split_sums(At, Et):
    """Upper bounds of the row sums of |[A | E]|, A and E stored transposed (as dense_bounds)."""
    n = At.shape[1]
    m = At.shape[0] + Et.shape[0]
    sums = np.zeros(n)
    col_abs_sums(At, sums)
    col_abs_sums(Et, sums)
    for i in range(n):
        sums[i] = widen_up(sums[i], m)
    return sums


@njit(cache=True, nogil=True)
def _first_layer(lo, hi, wt, bias):
    """Dense layer 0 on the input box in one sweep of W: At[p] = W[:, S[p]] r[S[p]] (one
    product per entry), the centre and error box, and the row sums of |G| of the outputs.

    The same arithmetic, in the same order, as building At, then _affine_centre with beta = 0
    (so its |W| beta sum is exactly 0), then col_abs_sums and widen_up (_split_sums): the
    results are bit for bit those of the three separate sweeps, with their soundness.
    """
    n_in, n_out = wt.shape
    At = np.empty((n_in, n_out))
    out_c = bias.copy()
    err = np.abs(bias)
    sums = np.zeros(n_out)
    c = np.empty(n_in)
    r = np.empty(n_in)
    for k in range(n_in):
        c[k] = 0.5 * (lo[k] + hi[k])
        r[k] = max(hi[k] - c[k], c[k] - lo[k])
    next_up(r)  # r >= 0: the half-widths rounded up; zero widths are reset below
    ns = 0
    for k in range(n_in):
        ck = c[k]
        rk = r[k]
        if hi[k] - ck > 0.0 or ck - lo[k] > 0.0:
            for i in range(n_out):
                v = wt[k, i] * rk
                At[ns, i] = v
                sums[i] += abs(v)
            ns += 1
        else:
            rk = 0.0
        vk = abs(ck) + widen_up(rk, 1) * (1.0 + 2.0 * U)  # |c| + rad, rad as kernels' box
        for i in range(n_out):
            w = wt[k, i]
            out_c[i] += w * ck
            err[i] += abs(w) * vk
    g = gamma(n_in + 1)
    out_beta = np.empty(n_out)
    for i in range(n_out):
        out_beta[i] = g * err[i] * (1.0 + 2.0 * g) + (n_in + 1) * TINY
        sums[i] = widen_up(sums[i], ns)
    return out_c, At[:ns], out_beta, sums


@njit(cache=True, nogil=True)
def _relax(c, beta, rad, lam, mu, nu):
    """Centre, error box and radius bound rad' (>= lam rad + nu + beta') of the relaxation
    (lam, mu, nu) of a zonotope with row-sum bounds rad, and its crossing neurons (nu >= 0).
    The centre and error box are kernels.dense_activation's."""
    n = c.shape[0]
    c1 = np.empty(n)
    beta1 = np.empty(n)
    rad1 = np.empty(n)
    cross = np.empty(n, dtype=np.int64)
    nc = 0
    g2 = 2.0 * gamma(2)
    for k in range(n):
        s = lam[k]
        c1[k] = s * c[k] + mu[k]
        err = s * (abs(c[k]) + rad[k]) + abs(mu[k])
        beta1[k] = (s * beta[k] + g2 * err) * (1.0 + 2.0 * U) + TINY
        top = s * rad[k] + beta1[k]
        if nu[k] >= 0.0:
            top += nu[k]
            cross[nc] = k
            nc += 1
        rad1[k] = top * (1.0 + 4.0 * U) + TINY
    return c1, beta1, rad1, cross[:nc]


@njit(cache=True, nogil=True)
def _relaxed_products(At, Et, wt, lam, nu, cross):
    """Generators of W z for z the relaxation: fl(W diag(lam)) [A | E] and W[:, k] nu_k for
    the crossing neurons, transposed (the rounding is _fused_dense's)."""
    n, n_out = wt.shape
    me = Et.shape[0]
    nc = cross.shape[0]
    wlt = np.empty((n, n_out))
    for k in range(n):
        s = lam[k]
        for i in range(n_out):
            wlt[k, i] = wt[k, i] * s
    At1 = np.dot(At, wlt)
    Et1 = np.zeros((me + nc, n_out))
    for j in range(me):
        for k in range(n):
            v = Et[j, k]
            if v != 0.0:
                for i in range(n_out):
                    Et1[j, i] += v * wlt[k, i]
    for t in range(nc):
        k = cross[t]
        for i in range(n_out):
            Et1[me + t, i] = wt[k, i] * nu[k]
    return At1, Et1


@njit(cache=True, nogil=True)
def _fused_dense(c, At, Et, beta, rad, lam, mu, nu, wt, aw, bias):
    """Relaxation (lam, mu, nu) of the previous layer folded into the next dense layer W.

    The activation's zonotope [lam A | lam E | diag(nu)] is never materialised: the new
    generators are fl(W diag(lam)) [A | E] (dead neurons give zero columns of W diag(lam))
    and W[:, k] nu_k for the crossing ones. Each entry then carries one more rounding (of
    W lam) than W G would: |fl(W lam) - W lam| <= U |W| lam, so the total generator error of
    a row is at most (U + gamma(n)(1 + U)) |W| (lam sum|G| + nu) <= gamma(n + 1) |W| rad',
    with rad' = lam rad + nu + beta' bounding the activation's row sums; _affine_centre is
    asked for gamma(n + 2) (one extra rounding), so the error box covers it as well as the
    centre's rounding. The activation's centre and error box are kernels.dense_activation's.
    Generator blocks are stored transposed (generator-major), which suits BLAS best here.
    """
    c1, beta1, rad1, cross = _relax(c, beta, rad, lam, mu, nu)
    At1, Et1 = _relaxed_products(At, Et, wt, lam, nu, cross)
    out_c, out_beta = _affine_centre(c1, beta1, rad1, wt, aw, bias, 1)
    return out_c, At1, Et1, out_beta


@njit(cache=True, nogil=True)
def _split_linear_lower(c, At, Et, beta, rad, C, d):
    """dense_linear_lower on c + [A | E] e + delta, A and E stored transposed (same bound)."""
    k_out, n = C.shape
    m = At.shape[0] + Et.shape[0]
    ct = np.ascontiguousarray(C.T)
    sums = np.zeros(k_out)
    col_abs_sums(np.dot(At, ct), sums)
    if Et.shape[0] > 0:
        col_abs_sums(np.dot(Et, ct), sums)
    return _lower_from_sums(c, beta, rad, C, d, sums, m)


@njit(cache=True, nogil=True)
def _lower_from_sums(c, beta, rad, C, d, sums, m):
    """Lower bounds of C y + d for y = c + G e + delta, given the float sums over the m
    generators of |fl(C G)| per row (widen_up makes them upper bounds): the module
    docstring's bound."""
    k_out, n = C.shape
    g = gamma(n + 1)
    res = np.empty(k_out)
    for i in range(k_out):
        centre = d[i]
        absum = abs(d[i])
        slack = 0.0
        for k in range(n):
            a = abs(C[i, k])
            centre += C[i, k] * c[k]
            absum += a * abs(c[k])
            slack += a * (beta[k] + g * rad[k])
        total = widen_up(sums[i], m) + (slack + g * absum) * (1.0 + 2.0 * g) + (n + 2) * TINY
        res[i] = centre - total - (abs(centre) + total) * 2.0 * U - TINY
    return res


@njit(cache=True, nogil=True)
def _last_dense_lower(c, At, Et, beta, rad, lam, mu, nu, wt, bias, C, d):
    """The last dense layer and the property in one product: lower bounds of C (W z + b) + d
    for z the relaxation (lam, mu, nu) of the zonotope c + [A | E] e + delta, |delta| <= beta.

    Qf = fl(C W) and qf = fl(C b + d) are formed first: |Qf - C W| <= gamma(n_out) |C| |W| =: EQ
    and |qf - (C b + d)| <= gamma(n_out + 1) (|C| |b| + |d|) =: eq, so C (W z + b) + d >=
    Qf z + qf - EQ (|c'| + rad') - eq, with c' and rad' >= sum |z - c'| bounds of z (_relax).
    The lower bound of Qf z + qf is _split_linear_lower's on z with C = Qf, its generators
    taken as fl(fl(Qf diag(lam)) [A | E]) and fl(Qf[:, k] nu_k) like _fused_dense's: the one
    extra rounding of Qf lam gives (U + gamma(n)(1 + U)) |Qf| rad' <= gamma(n + 1) |Qf| rad',
    which is the gamma that bound already charges. EQ (|c'| + rad') and eq are summed in
    float from upper bounds of |C| |W| (widen_up) and widened again, each by more than its
    own rounding; the final subtraction is rounded down like the rest of the module.
    """
    n, n_out = wt.shape
    k_out = C.shape[0]
    c1, beta1, rad1, cross = _relax(c, beta, rad, lam, mu, nu)
    Q = np.zeros((k_out, n))
    q = np.empty(k_out)
    extra = np.empty(k_out)
    for i in range(k_out):
        qi = d[i]
        qabs = abs(d[i])
        for o in range(n_out):
            qi += C[i, o] * bias[o]
            qabs += abs(C[i, o]) * abs(bias[o])
        q[i] = qi
        e = 0.0
        for k in range(n):
            qik = 0.0
            aik = 0.0
            for o in range(n_out):
                qik += C[i, o] * wt[k, o]
                aik += abs(C[i, o]) * abs(wt[k, o])
            Q[i, k] = qik
            e += widen_up(aik, n_out) * (abs(c1[k]) + rad1[k])
        eq = gamma(n_out + 1) * widen_up(qabs, n_out + 1)
        extra[i] = (gamma(n_out) * widen_up(e, n + 2) + eq) * (1.0 + 4.0 * U) + TINY
    gens_a, gens_e = _relaxed_products(At, Et, np.ascontiguousarray(Q.T), lam, nu, cross)
    sums = np.zeros(k_out)
    col_abs_sums(gens_a, sums)
    col_abs_sums(gens_e, sums)
    m = gens_a.shape[0] + gens_e.shape[0]
    res = _lower_from_sums(c1, beta1, rad1, Q, q, sums, m)
    for i in range(k_out):
        t = res[i]
        res[i] = t - extra[i] - (abs(t) + extra[i]) * 2.0 * U - TINY
    return res


@njit(cache=True, nogil=True)
def dense_chain_lower(lo, hi, weights, wts, aws, biases, kinds, C, d):
    """A whole pass through Dense (activation) ... Dense layers, then C y + d, in one call.

    The walk's arithmetic, with each activation folded into the next dense layer
    (_fused_dense) so the generator matrix is written once and read twice per layer, and the
    last dense layer folded into the property (_last_dense_lower, one product fewer). The
    generators are kept as two column blocks: A for the input's, E for those the
    activations add. kinds[i] is the activation after dense layer i (0 ReLU, 1 sigmoid,
    2 tanh, -1 none); the last dense layer has none (deepzono._prepare_chain).
    """
    c, At, beta, sums = _first_layer(lo, hi, wts[0], biases[0])
    Et = np.zeros((0, c.shape[0]))
    last = len(weights) - 1
    for i in range(last + 1):
        if i > 0:
            sums = _split_sums(At, Et)
        lw, up, rad = bounds_from_sums(c, sums, beta)
        if i == last:
            return _split_linear_lower(c, At, Et, beta, rad, C, d)  # a single dense layer
        n = c.shape[0]
        if kinds[i] >= 0:
            lam, mu, nu = relaxation(kinds[i], lw, up)
        else:
            lam, mu, nu = np.ones(n), np.zeros(n), np.full(n, -1.0)
        if i + 1 == last:
            return _last_dense_lower(c, At, Et, beta, rad, lam, mu, nu, wts[last], biases[last],
                                     C, d)
        c, At, Et, beta = _fused_dense(
            c, At, Et, beta, rad, lam, mu, nu, wts[i + 1], aws[i + 1], biases[i + 1]
        )
    return np.empty(0)  # not reached: the loop returns at the last layer
