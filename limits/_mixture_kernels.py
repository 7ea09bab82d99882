"""Compiled kernel for the joint (k ≥ 2) mixture estimator: log f(y) and log E_m[φ_m(y)²] of a Gaussian mixture
f = mean_m N(μ_m, C_m) at many points, in one pass over the components (streaming log-sum-exp, no M × Q array)."""
from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(cache=True, parallel=True)
def mixture_log_density(points, means, inv_chol, log_norm):
    """(log f(y_q), log mean_m φ_m(y_q)²) for points (Q, k); components given by means (M, k), L_m⁻¹ (M, k, k)
    (C_m = L_m L_mᵀ) and log_norm_m = −½ log det(2π C_m)."""
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
            for i in range(k):
                diff[i] = points[q, i] - means[m, i]
            quad = 0.0
            for i in range(k):
                acc = 0.0
                for j in range(i + 1):
                    acc += inv_chol[m, i, j] * diff[j]
                quad += acc * acc
            a = log_norm[m] - 0.5 * quad
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
