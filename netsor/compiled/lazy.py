"""Numba kernels of the lazy interpreter (netsor.finite.lazy): one MatMul batch per call, all networks of a block.

A batch draws W X given its arguments X (S, k, n_in): per network the row covariance G = scale · X Xᵀ, its
semidefinite Cholesky factor L, and n_out rows L z with z ~ N(0, I_k), fused so the normals are never stored. The
kernels release the GIL; `cache=True` pays compilation once per machine.
"""
from __future__ import annotations

import numba
import numpy as np

from .linalg import RANK_RTOL, cholesky_into

_JIT = dict(nogil=True, cache=True)


ROW_CHUNK = 256  # rows whose normals are drawn before they are combined: the combination then vectorises


@numba.njit(fastmath=True, **_JIT)
def _gram_into(X, s, scale, gram):
    """gram ← scale · X[s] X[s]ᵀ, (k, k)."""
    k, n = X.shape[1], X.shape[2]
    for i in range(k):
        for j in range(i + 1):
            acc = 0.0
            for a in range(n):
                acc += X[s, i, a] * X[s, j, a]
            gram[i, j] = scale * acc
            gram[j, i] = scale * acc


@numba.njit(fastmath=True, **_JIT)
def add_gaussian_rows(rng, X, scale, out):
    """out[s] += L_s Z_s for every network s: L_s L_sᵀ = scale · X[s] X[s]ᵀ, Z_s ∈ R^{k×rows} iid N(0, 1) drawn
    network by network, row by row (k normals per row). X (S, k, n_in), out (S, k, rows)."""
    S, k, rows = out.shape
    gram = np.empty((k, k))
    factor = np.empty((k, k))
    z = np.empty((k, ROW_CHUNK))
    for s in range(S):
        _gram_into(X, s, scale, gram)
        cholesky_into(gram, factor, RANK_RTOL)
        for start in range(0, rows, ROW_CHUNK):
            stop = min(rows, start + ROW_CHUNK)
            for r in range(stop - start):
                for j in range(k):
                    z[j, r] = rng.standard_normal()
            for i in range(k):
                for j in range(i + 1):
                    weight = factor[i, j]
                    if weight != 0.0:
                        for r in range(stop - start):
                            out[s, i, start + r] += weight * z[j, r]
    return out
