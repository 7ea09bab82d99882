"""Numba kernels for the per-sample linear algebra of hierarchical laws: one small matrix per sample.

Per-sample stacks are stored sample-last, (d, d, B), so that every per-sample coefficient is one contiguous row
and the inner loops run over samples. A stack whose last axis has length 1 is shared by all samples. All kernels
release the GIL and are run on blocks of samples from a thread pool, so parallel runs give bit-identical results
to serial ones; `cache=True` pays compilation once per machine.
"""
from __future__ import annotations

import numba
import numpy as np

_JIT = dict(nogil=True, cache=True)
PIVOT_RTOL = 1e-12


@numba.njit(**_JIT)
def _cholesky_into(cov, out, tol):
    """Lower-triangular L with L Lᵀ = cov for a PSD cov (d, d); a pivot below tol·max diag zeroes its column,
    so singular covariances (linearly dependent variables) are factored exactly."""
    d = cov.shape[0]
    scale = 0.0
    for i in range(d):
        if cov[i, i] > scale:
            scale = cov[i, i]
    floor = tol * scale
    for j in range(d):
        for i in range(d):
            out[i, j] = 0.0
    for j in range(d):
        pivot = cov[j, j]
        for k in range(j):
            pivot -= out[j, k] * out[j, k]
        if pivot <= floor:
            continue  # column j stays zero
        root = np.sqrt(pivot)
        out[j, j] = root
        for i in range(j + 1, d):
            acc = cov[i, j]
            for k in range(j):
                acc -= out[i, k] * out[j, k]
            out[i, j] = acc / root


@numba.njit(**_JIT)
def _factor_sample(cov, s, local, factor):
    """factor ← the semi-definite Cholesky factor of cov[:, :, s] (copied into `local` first)."""
    d = cov.shape[0]
    for i in range(d):
        for j in range(d):
            local[i, j] = cov[i, j, s]
    _cholesky_into(local, factor, PIVOT_RTOL)


@numba.njit(**_JIT)
def semidefinite_cholesky(cov):
    """Per-sample factors of a stack of PSD matrices, (d, d, B) → (d, d, B)."""
    d, _, B = cov.shape
    out = np.empty((d, d, B))
    local = np.empty((d, d))
    factor = np.empty((d, d))
    for b in range(B):
        _factor_sample(cov, b, local, factor)
        out[:, :, b] = factor
    return out


@numba.njit(**_JIT)
def sample_gaussian(cov, z):
    """x[:, s] = L_s z[s] with L_s L_sᵀ = cov[:, :, s]; cov (d, d, S) or (d, d, 1) shared; z (S, d) sample-major
    standard normals (so the first samples never depend on how many are drawn)."""
    S, d = z.shape
    shared = cov.shape[2] == 1
    out = np.empty((d, S))
    local = np.empty((d, d))
    factor = np.empty((d, d))
    if shared:
        _factor_sample(cov, 0, local, factor)
    for s in range(S):
        if not shared:
            _factor_sample(cov, s, local, factor)
        for i in range(d):
            acc = 0.0
            for k in range(i + 1):
                acc += factor[i, k] * z[s, k]
            out[i, s] = acc
    return out


TILE = 512  # samples per tile: the tile of every operand stays in cache across the small-matrix loops


@numba.njit(**_JIT)
def matmul_stacks(A, B, transpose_b, symmetric):
    """C[:, :, s] = A_s B_s (or A_s B_sᵀ) for sample-last stacks, a stack of length 1 shared by all samples.
    Tiled over samples so each tile is reused from cache for every (i, k, j); exact zeros of shared entries
    are skipped (block-diagonal coefficient matrices are common). `symmetric`: the result is known to be
    symmetric, so only j ≥ i is computed and mirrored."""
    I, K, na = A.shape
    if transpose_b:
        J, K2, nb = B.shape
    else:
        K2, J, nb = B.shape
    S = max(na, nb)
    C = np.zeros((I, J, S))
    for start in range(0, S, TILE):
        stop = min(S, start + TILE)
        for i in range(I):
            for k in range(K):
                for j in range(i if symmetric else 0, J):
                    if na == 1 and nb == 1:
                        if start == 0:
                            b = B[j, k, 0] if transpose_b else B[k, j, 0]
                            C[i, j, 0] += A[i, k, 0] * b
                    elif na == 1:
                        a = A[i, k, 0]
                        if a != 0.0:
                            if transpose_b:
                                for s in range(start, stop):
                                    C[i, j, s] += a * B[j, k, s]
                            else:
                                for s in range(start, stop):
                                    C[i, j, s] += a * B[k, j, s]
                    elif nb == 1:
                        b = B[j, k, 0] if transpose_b else B[k, j, 0]
                        if b != 0.0:
                            for s in range(start, stop):
                                C[i, j, s] += A[i, k, s] * b
                    elif transpose_b:
                        for s in range(start, stop):
                            C[i, j, s] += A[i, k, s] * B[j, k, s]
                    else:
                        for s in range(start, stop):
                            C[i, j, s] += A[i, k, s] * B[k, j, s]
    if symmetric:
        for i in range(I):
            for j in range(i):
                for s in range(S):
                    C[i, j, s] = C[j, i, s]
    return C


def quadratic_forms(left, middle, right, symmetric: bool = False):
    """left_s middle_s right_sᵀ for sample-last stacks: the conditional kernel C_u K C_vᵀ of linear combinations
    with per-sample coefficients, (ku, m, ·), (m, mv, ·), (kv, mv, ·) → (ku, kv, S). `symmetric` when
    left is right and middle is symmetric."""
    return matmul_stacks(matmul_stacks(left, middle, False, False), right, True, symmetric)


@numba.njit(**_JIT)
def bilinear_forms(left, gram, right):
    """out[s] = left[s]ᵀ gram[s] right[s] for (S, a), (S, a, b), (S, b): dots u·v = c_uᵀ G c_v per network."""
    S, a = left.shape
    b = right.shape[1]
    out = np.zeros(S)
    for s in range(S):
        acc = 0.0
        for i in range(a):
            row = 0.0
            for j in range(b):
                row += gram[s, i, j] * right[s, j]
            acc += left[s, i] * row
        out[s] = acc
    return out


@numba.njit(**_JIT)
def congruences(coeffs, gram):
    """out[s] = coeffs[s]ᵀ gram[s] coeffs[s] for (S, m, k), (S, m, m): the Gram CᵀGC of vectors V = B C."""
    S, m, k = coeffs.shape
    out = np.zeros((S, k, k))
    tmp = np.empty((m, k))
    for s in range(S):
        for a in range(m):
            for j in range(k):
                acc = 0.0
                for b in range(m):
                    acc += gram[s, a, b] * coeffs[s, b, j]
                tmp[a, j] = acc
        for i in range(k):
            for j in range(i, k):
                acc = 0.0
                for a in range(m):
                    acc += coeffs[s, a, i] * tmp[a, j]
                out[s, i, j] = acc
                out[s, j, i] = acc
    return out
