"""Compiled kernels for the joint (k ≥ 2) mixture estimator over Gaussian mixtures f = mean_m N(μ_m, C_m), components
given by means (M, k), L_m⁻¹ (M, k, k) (C_m = L_m L_mᵀ) and log_norm_m = −½ log det(2π C_m): densities and their
second moments at many points in one pass over the components (streaming log-sum-exp, no M × Q array), and the
influence of each component on a weighted sum over the points."""
from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(cache=True, inline="always")
def _log_phi(points, q, means, inv_chol, log_norm, m, diff):
    """log N(y_q; μ_m, C_m)."""
    k = points.shape[1]
    for i in range(k):
        diff[i] = points[q, i] - means[m, i]
    quad = 0.0
    for i in range(k):
        acc = 0.0
        for j in range(i + 1):
            acc += inv_chol[m, i, j] * diff[j]
        quad += acc * acc
    return log_norm[m] - 0.5 * quad


@njit(cache=True, parallel=True)
def mixture_log_density(points, means, inv_chol, log_norm):
    """(log f(y_q), log mean_m φ_m(y_q)²) for points (Q, k)."""
    Q, k = points.shape
    M = means.shape[0]
    log_f = np.empty(Q)
    log_sq = np.empty(Q)
    for q in prange(Q):
        top = -np.inf
        total = 0.0  # Σ exp(a_m − top)
        total_sq = 0.0  # Σ exp(2 a_m − 2 top)
        diff = np.empty(k)
        for m in range(M):
            a = _log_phi(points, q, means, inv_chol, log_norm, m, diff)
            if a > top:
                scale = np.exp(top - a)
                total = total * scale + 1.0
                total_sq = total_sq * scale * scale + 1.0
                top = a
            else:
                e = np.exp(a - top)
                total += e
                total_sq += e * e
        log_f[q] = top + np.log(total / M)
        log_sq[q] = 2.0 * top + np.log(total_sq / M)
    return log_f, log_sq


@njit(cache=True, inline="always")
def _raise_top(x, top, total, total_sq, cross):
    """A streaming log-sum-exp's running sums rescaled to a new maximum x (unchanged when x ≤ top)."""
    if not x > top:  # as `if a > ta` before: a NaN leaves the sums as they are
        return top, total, total_sq, cross
    scale = np.exp(top - x)
    return x, total * scale, total_sq * scale * scale, cross * scale


@njit(cache=True, parallel=True)
def paired_log_density(points, means_a, inv_a, norm_a, means_b, inv_b, norm_b):
    """For M pairs (φ_m, φ'_m): (log f, log f', log mean φ², log mean φ'², log mean φφ') at points (Q, k)."""
    Q, k = points.shape
    M = means_a.shape[0]
    out = np.empty((5, Q))
    for q in prange(Q):
        ta = -np.inf
        tb = -np.inf
        sa = 0.0
        sb = 0.0
        qa = 0.0
        qb = 0.0
        ab = 0.0  # Σ exp(a_m − ta + b_m − tb)
        diff = np.empty(k)
        for m in range(M):
            a = _log_phi(points, q, means_a, inv_a, norm_a, m, diff)
            b = _log_phi(points, q, means_b, inv_b, norm_b, m, diff)
            ta, sa, qa, ab = _raise_top(a, ta, sa, qa, ab)
            tb, sb, qb, ab = _raise_top(b, tb, sb, qb, ab)
            ea = np.exp(a - ta)
            eb = np.exp(b - tb)
            sa += ea
            qa += ea * ea
            sb += eb
            qb += eb * eb
            ab += ea * eb
        out[0, q] = ta + np.log(sa / M)
        out[1, q] = tb + np.log(sb / M)
        out[2, q] = 2.0 * ta + np.log(qa / M)
        out[3, q] = 2.0 * tb + np.log(qb / M)
        out[4, q] = ta + tb + np.log(ab / M)
    return out


@njit(cache=True, parallel=True)
def mixture_influence(points, coef, log_f, means, inv_chol, log_norm):
    """Σ_q coef_q φ_m(y_q) / f(y_q) for each component m (φ_m ≤ M f where m is one of f's M components)."""
    Q, k = points.shape
    M = means.shape[0]
    out = np.empty(M)
    for m in prange(M):
        diff = np.empty(k)
        acc = 0.0
        for q in range(Q):
            acc += coef[q] * np.exp(_log_phi(points, q, means, inv_chol, log_norm, m, diff) - log_f[q])
        out[m] = acc
    return out


@njit(cache=True, parallel=True)
def paired_bias_integrand(y, ratio, inv_n, log_n, inv_t, log_t, inv_l, log_l, twin):
    """E_m[(g_m(y) − r(y) φ_{t_m}(y))²] at each y ≥ 0, g_m = φ_{s_m} (pairs) or (φ_{s_m} + φ_{s′_m})/2 (twins),
    φ_v(y) the N(0, v) density, given 1/v and log v of each component: the second-order term of the plug-in KL
    of coupled 1-D mixtures, summed directly so that the pairs' near-cancellation is kept to rounding."""
    G = y.shape[0]
    M = inv_n.shape[0]
    out = np.empty(G)
    norm = 1.0 / (2.0 * np.pi)
    for q in prange(G):
        half_y2 = 0.5 * y[q] * y[q]
        r = ratio[q]
        acc = 0.0
        for m in range(M):
            g = np.exp(-half_y2 * inv_n[m] - 0.5 * log_n[m])
            if twin:
                g = 0.5 * (g + np.exp(-half_y2 * inv_t[m] - 0.5 * log_t[m]))
            x = g - r * np.exp(-half_y2 * inv_l[m] - 0.5 * log_l[m])
            acc += x * x
        out[q] = acc * norm / M
    return out
