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
def semidefinite_cholesky(cov):
    """Per-sample factors of a stack of PSD matrices, (d, d, B) → (d, d, B)."""
    d, _, B = cov.shape
    out = np.empty((d, d, B))
    local = np.empty((d, d))
    factor = np.empty((d, d))
    for b in range(B):
        for i in range(d):
            for j in range(d):
                local[i, j] = cov[i, j, b]
        _cholesky_into(local, factor, PIVOT_RTOL)
        for i in range(d):
            for j in range(d):
                out[i, j, b] = factor[i, j]
    return out


@numba.njit(**_JIT)
def sample_gaussian(cov, z):
    """x[:, s] = L_s z[:, s] with L_s L_sᵀ = cov[:, :, s]; cov (d, d, S) or (d, d, 1) shared; z (d, S)."""
    d, S = z.shape
    out = np.zeros((d, S))
    if cov.shape[2] == 1:
        factor = np.empty((d, d))
        _cholesky_into(np.ascontiguousarray(cov[:, :, 0]), factor, PIVOT_RTOL)
        for i in range(d):
            for k in range(i + 1):
                f = factor[i, k]
                for s in range(S):
                    out[i, s] += f * z[k, s]
        return out
    factors = semidefinite_cholesky(cov)
    for i in range(d):
        for k in range(i + 1):
            for s in range(S):
                out[i, s] += factors[i, k, s] * z[k, s]
    return out


@numba.njit(**_JIT)
def matmul_stacks(A, B):
    """C[:, :, s] = A_s B_s for sample-last stacks, a stack of length 1 shared by all samples. The four sharing
    cases get their own loops so the innermost loop runs over contiguous samples."""
    I, K, na = A.shape
    _, J, nb = B.shape
    S = max(na, nb)
    C = np.zeros((I, J, S))
    if na == 1 and nb == 1:
        for i in range(I):
            for k in range(K):
                for j in range(J):
                    C[i, j, 0] += A[i, k, 0] * B[k, j, 0]
    elif na == 1:
        for i in range(I):
            for k in range(K):
                a = A[i, k, 0]
                if a != 0.0:
                    for j in range(J):
                        for s in range(S):
                            C[i, j, s] += a * B[k, j, s]
    elif nb == 1:
        for k in range(K):
            for j in range(J):
                b = B[k, j, 0]
                if b != 0.0:
                    for i in range(I):
                        for s in range(S):
                            C[i, j, s] += A[i, k, s] * b
    else:
        for i in range(I):
            for k in range(K):
                for j in range(J):
                    for s in range(S):
                        C[i, j, s] += A[i, k, s] * B[k, j, s]
    return C


def quadratic_forms(left, middle, right):
    """left_s middle_s right_sᵀ for sample-last stacks: the conditional kernel C_u K C_vᵀ of linear combinations
    with per-sample coefficients, (ku, m, ·), (m, mv, ·), (kv, mv, ·) → (ku, kv, S)."""
    return matmul_stacks(matmul_stacks(left, middle), np.ascontiguousarray(right.transpose(1, 0, 2)))
