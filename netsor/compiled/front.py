"""Compiled one-layer nonlinear fronts of exact sampling."""
from __future__ import annotations

import numba
import numpy as np

from ..ir.nonlinearities import CODE_CLIP, CODE_RELU  # the codes the kernels here apply themselves (identity: none)

_JIT = dict(nogil=True, cache=True)


# ---------------------------------------------------------------------------------------- exact sampling
# Kernels that draw from a numpy Generator inside numba: the same ziggurat as Generator.standard_normal (the
# same numbers, several times faster than numpy's own loop), one Generator per block of networks.


FRONT_CHUNK = 256  # coordinates whose normals are drawn at once, in a tight loop, before they are used


@numba.njit(inline="always", **_JIT)
def _phi(code, bound, x):
    """φ of a front column: relu, clip at ±bound, or the identity (the one place the kernels apply it)."""
    if code == CODE_RELU:
        return max(x, 0.0)
    if code == CODE_CLIP:
        return min(max(x, -bound), bound)
    return x


@numba.njit(**_JIT)
def layer_row0(factors, offsets, col_matrix, col_arg, col_phi, col_bound, z0, row0):
    """Coordinate 0 of the front columns, x_c = φ_c((L_j z)_a) with z = z0[s] (S, D): matrix j = col_matrix[c]
    with lower-triangular factor L_j = factors[s, j] (a single factors[0] serves every network: the limit's),
    argument a = col_arg[c], its normals at offsets[j] among the D. Writes row0 (S, m)."""
    S, m = row0.shape
    shared = factors.shape[0] == 1
    for s in range(S):
        f = 0 if shared else s
        for c in range(m):
            j, a, o = col_matrix[c], col_arg[c], offsets[col_matrix[c]]
            acc = 0.0
            for b in range(a + 1):
                acc += factors[f, j, a, b] * z0[s, o + b]
            row0[s, c] = _phi(col_phi[c], col_bound[c], acc)


@numba.njit(**_JIT)
def front_layer_grams(rng, width, factors, ranks, col_matrix, col_arg, col_phi, col_bound, row0, gram):
    """One layer of a nonlinear front, streamed over coordinates 1..n−1 without materialising any n-vector.

    Matrix j (of `q`) applied to its k_j arguments gives rows u = L_j z, z ~ N(0, I_{k_j}), iid over the n
    coordinates, with L_j = factors[s, j, :k_j, :k_j] lower-triangular per network s. Column c of the front is
    φ_c(u[col_arg[c]]) of matrix col_matrix[c] (`_phi`). Coordinate 0 is given (row0 (S, m), from `layer_row0`);
    writes the columns' Gram Σ_α x_α x_αᵀ over all n coordinates into gram (S, m, m). Normals are drawn network
    by network, in chunks of FRONT_CHUNK coordinates, within a chunk normal by normal (matrix j's argument a)
    and then coordinate by coordinate."""
    S, q, kmax, _ = factors.shape
    m = col_matrix.shape[0]
    draws = 0
    offset = np.empty(q, dtype=np.int64)  # where matrix j's normals start among a coordinate's draws
    for j in range(q):
        offset[j] = draws
        draws += ranks[j]
    z = np.empty((draws, FRONT_CHUNK))
    X = np.empty((m, FRONT_CHUNK))
    acc = np.empty((m, m))
    for s in range(S):
        for a in range(m):
            for b in range(m):
                acc[a, b] = row0[s, a] * row0[s, b]
        for start in range(1, width, FRONT_CHUNK):
            count = min(FRONT_CHUNK, width - start)
            for d in range(draws):
                for alpha in range(count):
                    z[d, alpha] = rng.standard_normal()
            for c in range(m):
                j = col_matrix[c]
                a = col_arg[c]
                o = offset[j]
                out = X[c]
                diag = factors[s, j, a, 0]
                zr = z[o]
                for alpha in range(count):
                    out[alpha] = diag * zr[alpha]
                for b in range(1, a + 1):
                    f = factors[s, j, a, b]
                    zr = z[o + b]
                    for alpha in range(count):
                        out[alpha] += f * zr[alpha]
                code, bound = col_phi[c], col_bound[c]
                if code != CODE_RELU and code != CODE_CLIP:
                    continue
                for alpha in range(count):
                    out[alpha] = _phi(code, bound, out[alpha])
            for a in range(m):
                xa = X[a]
                for b in range(a, m):
                    xb = X[b]
                    t = 0.0
                    for alpha in range(count):
                        t += xa[alpha] * xb[alpha]
                    acc[a, b] += t
        for a in range(m):
            for b in range(a, m):
                gram[s, a, b] = acc[a, b]
                gram[s, b, a] = acc[a, b]


@numba.njit(**_JIT)
def layer_grams_from_bartlett(E, T, row0, gram, norms2):
    """The front's Gram when no coordinate but coordinate 0 is clipped: gram = x₀x₀ᵀ + E T Tᵀ Eᵀ per network,
    with x₀ = row0 (S, m) (coordinate 0, φ applied), E (S, m, D) the columns' factors and T (S, D, D) Bartlett's
    factor of the other n − 1 rows' normals (Z′ᵀZ′ = T Tᵀ). Writes gram (S, m, m) and norms2 (S, m), the squared
    norms ‖u_c‖² = (E T Tᵀ Eᵀ)_cc of the columns over coordinates 1..n−1 (what decides whether a clip can act)."""
    S, m, D = E.shape
    F = np.empty((m, D))
    for s in range(S):
        for c in range(m):
            for d in range(D):
                acc = 0.0
                for e in range(d, D):
                    acc += E[s, c, e] * T[s, e, d]
                F[c, d] = acc
        for a in range(m):
            for b in range(a, m):
                acc = 0.0
                for d in range(D):
                    acc += F[a, d] * F[b, d]
                if a == b:
                    norms2[s, a] = acc
                acc += row0[s, a] * row0[s, b]
                gram[s, a, b] = acc
                gram[s, b, a] = acc
