"""Compiled one-layer nonlinear fronts of exact sampling."""
from __future__ import annotations

import numba
import numpy as np

from ..ir.nonlinearities import CODE_CLIP, CODE_RELU  # the codes front_layer_grams applies itself (identity: none)

_JIT = dict(nogil=True, cache=True)


# ---------------------------------------------------------------------------------------- exact sampling
# Kernels that draw from a numpy Generator inside numba: the same ziggurat as Generator.standard_normal (the
# same numbers, several times faster than numpy's own loop), one Generator per block of networks.


FRONT_CHUNK = 256  # coordinates whose normals are drawn at once, in a tight loop, before they are used


@numba.njit(**_JIT)
def front_layer_grams(rng, width, factors, ranks, col_matrix, col_arg, col_phi, col_bound, row0, gram):
    """One layer of a nonlinear front, streamed over the width without materialising any n-vector.

    Matrix j (of `q`) applied to its k_j arguments gives rows u = L_j z, z ~ N(0, I_{k_j}), iid over the n
    coordinates, with L_j = factors[s, j, :k_j, :k_j] lower-triangular per network s. Column c of the front is
    φ_c(u[col_arg[c]]) of matrix col_matrix[c] (φ: identity, relu, clip at ±col_bound[c]). Writes coordinate 0
    of the columns into row0 (S, m) and their Gram Σ_α x_α x_αᵀ into gram (S, m, m). Normals are drawn network
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
                acc[a, b] = 0.0
        for start in range(0, width, FRONT_CHUNK):
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
                phi = col_phi[c]
                if phi == CODE_RELU:
                    for alpha in range(count):
                        out[alpha] = max(out[alpha], 0.0)
                elif phi == CODE_CLIP:
                    bound = col_bound[c]
                    for alpha in range(count):
                        out[alpha] = min(max(out[alpha], -bound), bound)
            if start == 0:
                for c in range(m):
                    row0[s, c] = X[c, 0]
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
def unclipped_layer_grams(E, z0, T, col_phi, col_bound, row0, gram):
    """Columns u_c = Z e_c of Z = [z0ᵀ; Z′] with Z′ᵀZ′ = T Tᵀ, from their Gram alone: row0 = E z0 and
    gram = E (z0 z0ᵀ + T Tᵀ) Eᵀ per network, (S, m, D), (S, D), (S, D, D). Returns, per network, whether no
    coordinate of a clipped column can exceed its bound (|u_α| ≤ ‖u‖₂ ≤ c), i.e. whether clip changes nothing
    and these are the columns' row 0 and Gram exactly."""
    S, m, D = E.shape
    ok = np.empty(S, dtype=np.bool_)
    F = np.empty((m, D))
    for s in range(S):
        for c in range(m):
            acc = 0.0
            for d in range(D):
                acc += E[s, c, d] * z0[s, d]
            row0[s, c] = acc
            for d in range(D):
                acc = 0.0
                for e in range(d, D):
                    acc += E[s, c, e] * T[s, e, d]
                F[c, d] = acc
        good = True
        for a in range(m):
            for b in range(a, m):
                acc = row0[s, a] * row0[s, b]
                for d in range(D):
                    acc += F[a, d] * F[b, d]
                gram[s, a, b] = acc
                gram[s, b, a] = acc
            if col_phi[a] == CODE_CLIP and not gram[s, a, a] <= col_bound[a] * col_bound[a]:
                good = False
        ok[s] = good
    return ok


