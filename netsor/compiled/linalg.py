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

# The one rank rule of every semidefinite factorisation in netsor (and limits): a Cholesky pivot (or an
# eigenvalue) below RANK_RTOL times the largest diagonal entry (eigenvalue) is an exact zero — the covariance of
# linearly dependent variables — and its column is left zero.
RANK_RTOL = 1e-12


@numba.njit(inline="always", **_JIT)
def cholesky_into(cov, out, tol):
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


@numba.njit(inline="always", **_JIT)
def cholesky_lanes(cov, start, lanes, L, floor):
    """L[:, :, t] ← the semidefinite Cholesky factor of cov[:, :, start + t], t < lanes: `cholesky_into`'s
    operations and rank rule (a pivot ≤ RANK_RTOL · max diag zeroes its column) with the lanes innermost, so they
    vectorise; a NaN pivot propagates. floor: scratch (≥ lanes,). The one lanes-last Cholesky (the limit sampler's
    per-sample draws, the nested transformer sampler's kernels)."""
    d = cov.shape[0]
    for t in range(lanes):
        scale = 0.0
        for i in range(d):
            if cov[i, i, start + t] > scale:
                scale = cov[i, i, start + t]
        floor[t] = RANK_RTOL * scale
    for j in range(d):
        for i in range(d):
            for t in range(lanes):
                L[i, j, t] = 0.0
    for j in range(d):
        for t in range(lanes):
            pivot = cov[j, j, start + t]
            for k in range(j):
                pivot -= L[j, k, t] * L[j, k, t]
            if not pivot <= floor[t]:  # else column j stays zero (a linearly dependent variable)
                L[j, j, t] = np.sqrt(pivot)
        for i in range(j + 1, d):
            for t in range(lanes):
                root = L[j, j, t]
                if root != 0.0:
                    acc = cov[i, j, start + t]
                    for k in range(j):
                        acc -= L[i, k, t] * L[j, k, t]
                    L[i, j, t] = acc / root


@numba.njit(**_JIT)
def _factor_sample(cov, s, local, factor):
    """factor ← the semi-definite Cholesky factor of cov[:, :, s] (copied into `local` first)."""
    d = cov.shape[0]
    for i in range(d):
        for j in range(d):
            local[i, j] = cov[i, j, s]
    cholesky_into(local, factor, RANK_RTOL)


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
def semidefinite_cholesky_rows(cov):
    """Per-network factors of a sample-first stack of PSD matrices, (S, d, d) → (S, d, d)."""
    S, d, _ = cov.shape
    out = np.empty((S, d, d))
    for s in range(S):
        cholesky_into(cov[s], out[s], RANK_RTOL)
    return out


@numba.njit(**_JIT)
def softmax_into(scores, out, peak, mass, lanes):
    """out[:, t] = softmax(scores[:, t]) for the first `lanes` columns of (m, ≥ lanes) arrays, the maximum
    subtracted first so no exp overflows whatever the scores (then one reciprocal per lane); the one stable softmax
    of netsor and limits.
    out may be scores itself; peak, mass: scratch of ≥ lanes entries. Lanes are the inner loop (vectorised)."""
    m = scores.shape[0]
    for t in range(lanes):
        peak[t] = scores[0, t]
        mass[t] = 0.0
    for i in range(1, m):
        for t in range(lanes):
            peak[t] = max(peak[t], scores[i, t])
    for i in range(m):
        for t in range(lanes):
            e = np.exp(scores[i, t] - peak[t])
            out[i, t] = e
            mass[t] += e
    for t in range(lanes):
        mass[t] = 1.0 / mass[t]
    for i in range(m):
        for t in range(lanes):
            out[i, t] *= mass[t]


@numba.njit(**_JIT)
def softmax_columns(scores):
    """softmax over the first axis of (k, S) scores (`softmax_into` over all S columns)."""
    k, S = scores.shape
    out = np.empty((k, S))
    softmax_into(scores, out, np.empty(S), np.empty(S), S)
    return out


