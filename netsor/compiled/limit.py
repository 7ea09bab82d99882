"""Fused numba kernels of the limit sampler: per-sample quadratic forms and Gaussian draws on sample-last stacks.

Each kernel writes into a preallocated output and works tile by tile over samples, so its operands stay in cache
and no (·, ·, S) temporaries are made; each does, per sample, exactly the arithmetic of the unfused path
(`linalg.matmul_stacks` twice then an addition, `linalg.sample_gaussian`), so draws are bitwise unchanged.
"""
from __future__ import annotations

import numba
import numpy as np

from .linalg import RANK_RTOL, cholesky_into, cholesky_lanes

_JIT = dict(nogil=True, cache=True)

TILE = 256  # samples per tile: a tile of the per-sample scratch (≤ a few 100 kB) stays in L2


@numba.njit(inline="always", **_JIT)
def _axpy(acc, c, x, lanes):
    """acc[t] += c · x[t] (1-D views: the loop LLVM vectorises)"""
    for t in range(lanes):
        acc[t] += c * x[t]


@numba.njit(inline="always", **_JIT)
def _fma(acc, x, y, lanes):
    """acc[t] += x[t] · y[t]"""
    for t in range(lanes):
        acc[t] += x[t] * y[t]


@numba.njit(**_JIT)
def quadratic_form_into(out, left, middle, right, symmetric):
    """out[:, :, s] += L_s M_s R_sᵀ for sample-last stacks L (ku, m, ·), M (m, mv, ·), R (kv, mv, ·), out
    (ku, kv, S); a stack of length 1 is shared by all samples (out may then be too). The sum is formed as
    (L M) Rᵀ with shared exact zeros skipped, as `linalg.quadratic_forms` does, and added once: bitwise that
    path plus `+=`. symmetric: L is R and M is symmetric, so j ≥ i is computed and mirrored."""
    ku, m, nl = left.shape
    _, mv, nm = middle.shape
    kv = right.shape[0]
    nr = right.shape[2]
    S = out.shape[2]
    n1 = max(nl, nm)  # samples of L M
    width = min(TILE, S)
    first = np.empty((ku, mv, width))
    part = np.empty((kv, width))
    for start in range(0, S, TILE):
        stop = min(S, start + TILE)
        lanes = stop - start
        # first[i, k] = Σ_a L[i, a] M[a, k], a in order (matmul_stacks' order), shared zeros skipped
        for i in range(ku):
            for k in range(mv):
                for t in range(lanes if n1 > 1 else 1):
                    first[i, k, t] = 0.0
            for a in range(m):
                for k in range(mv):
                    if n1 == 1:  # shared (formed again per tile: ku·m·mv operations)
                        first[i, k, 0] += left[i, a, 0] * middle[a, k, 0]
                    elif nl == 1:
                        c = left[i, a, 0]
                        if c != 0.0:
                            _axpy(first[i, k], c, middle[a, k, start:stop], lanes)
                    elif nm == 1:
                        c = middle[a, k, 0]
                        if c != 0.0:
                            _axpy(first[i, k], c, left[i, a, start:stop], lanes)
                    else:
                        _fma(first[i, k], left[i, a, start:stop], middle[a, k, start:stop], lanes)
        # out[i, j] += Σ_k first[i, k] R[j, k], k in order
        for i in range(ku):
            j0 = i if symmetric else 0
            for j in range(j0, kv):
                for t in range(lanes if n1 > 1 or nr > 1 else 1):
                    part[j, t] = 0.0
                for k in range(mv):
                    if n1 == 1 and nr == 1:
                        part[j, 0] += first[i, k, 0] * right[j, k, 0]
                    elif n1 == 1:
                        c = first[i, k, 0]
                        if c != 0.0:
                            _axpy(part[j], c, right[j, k, start:stop], lanes)
                    elif nr == 1:
                        c = right[j, k, 0]
                        if c != 0.0:
                            _axpy(part[j], c, first[i, k], lanes)  # x · c is c · x, bit for bit
                    else:
                        _fma(part[j], first[i, k], right[j, k, start:stop], lanes)
                shared = n1 == 1 and nr == 1
                for t in range(lanes):
                    value = part[j, 0] if shared else part[j, t]  # a shared part is added to every sample
                    out[i, j, start + t] += value
                    if symmetric and j > i:  # mirrored as matmul_stacks does, then added
                        out[j, i, start + t] += value


@numba.njit(**_JIT)
def sample_gaussian_into(cov, z, out):
    """out[:, s] = L_s z[s] with L_s L_sᵀ = cov[:, :, s] (d, d, S), or (d, d, 1) shared; z (S, d) sample-major
    normals. The semidefinite Cholesky of `linalg.cholesky_into` (a pivot ≤ RANK_RTOL · max diag zeroes its
    column), per sample run with samples as vector lanes: the operations of `linalg.sample_gaussian`, in its
    order."""
    d, _, B = cov.shape
    S = z.shape[0]
    width = min(TILE, S)
    L = np.zeros((d, d, width))
    floor = np.empty(width)
    if B == 1:
        shared = np.empty((d, d))
        cholesky_into(cov[:, :, 0].copy(), shared, RANK_RTOL)
        for i in range(d):
            for k in range(d):
                L[i, k, 0] = shared[i, k]
    for start in range(0, S, TILE):
        stop = min(S, start + TILE)
        lanes = stop - start
        if B > 1:
            cholesky_lanes(cov, start, lanes, L, floor)
        for i in range(d):
            for t in range(lanes):
                acc = 0.0
                for k in range(i + 1):
                    acc += L[i, k, 0 if B == 1 else t] * z[start + t, k]
                out[i, start + t] = acc
