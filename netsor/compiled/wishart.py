"""Random draws compiled with numba: standard normals, χ² (numpy's algorithm), Bartlett factors of Wishart
matrices."""
from __future__ import annotations

import numba
import numpy as np
from numba.np.random.distributions import random_chisquare, random_standard_normal
from numba.np.random.generator_core import next_double

_JIT = dict(nogil=True, cache=True)


@numba.njit(**_JIT)
def standard_normals(rng, out):
    """Fill `out` (any shape, C-contiguous) with standard normals from `rng`, in C order."""
    flat = out.reshape(-1)
    for i in range(flat.size):
        flat[i] = rng.standard_normal()
    return out


PHI_IDENTITY, PHI_RELU, PHI_CLIP = 0, 1, 2  # the nonlinearities a front layer applies itself
@numba.njit(inline="always", **_JIT)
def _chi_constants(dof, M):
    """Marsaglia–Tsang's constants (b, c) for χ²_{dof−i}, i < M, computed once per kernel call."""
    bs = np.empty(M)
    cs = np.empty(M)
    for i in range(M):
        bs[i] = (dof - i) / 2.0 - 1.0 / 3.0
        cs[i] = 1.0 / np.sqrt(9.0 * bs[i]) if bs[i] > 0.0 else 0.0
    return bs, cs


# The draws below work on the Generators' bit generators (rng.bit_generator), which numba does not reference-count:
# a Generator passed to a call stops numba pruning its reference counts, an atomic increment and decrement around
# every draw of the caller (the Bartlett draws ran at half speed).
@numba.njit(inline="always", **_JIT)
def squeeze_chisquare(bits, b, c):
    """χ²_df for df > 2 from a bit generator as numpy draws it: 2·Gamma(df/2) by Marsaglia–Tsang's squeeze,
    b = df/2 − 1/3, c = 1/sqrt(9b)."""
    while True:
        while True:
            X = random_standard_normal(bits)
            V = 1.0 + c * X
            if V > 0.0:
                break
        V = V * V * V
        U = next_double(bits)
        if U < 1.0 - 0.0331 * (X * X) * (X * X):
            return 2.0 * b * V
        if np.log(U) < 0.5 * X * X + b * (1.0 - V + np.log(V)):
            return 2.0 * b * V


@numba.njit(inline="always", **_JIT)
def chisquare(rng, df, b, c):
    """χ²_df from rng: numpy's algorithm and numbers (2·Gamma(df/2), Marsaglia–Tsang's squeeze for df > 2, with
    b = df/2 − 1/3 and c = 1/sqrt(9b) from _chi_constants), without the per-call overhead of numba's
    Generator.chisquare (under half the time at large df)."""
    return any_chisquare(rng.bit_generator, df, b, c)


@numba.njit(**_JIT)
def any_chisquare(bits, df, b, c):
    """`chisquare` from a bit generator, a call of its own: numba's χ² code for df ≤ 2, even never run, slows the
    loop it sits in to half speed (a call taking only scalars and a bit generator costs nothing when not made)."""
    return random_chisquare(bits, df) if df <= 2.0 else squeeze_chisquare(bits, b, c)


@numba.njit(inline="always", **_JIT)
def bartlett_bits(bits_normal, bits_chi, dof, bs, cs, T, s):
    """`bartlett_into` from the two Generators' bit generators: `bartlett_normal_bits`, then `bartlett_chi_bits`."""
    bartlett_normal_bits(bits_normal, bs.shape[0], T, s)
    bartlett_chi_bits(bits_chi, dof, bs, cs, T, s)


@numba.njit(inline="always", **_JIT)
def bartlett_normal_bits(bits_normal, M, T, s):
    """The below-diagonal half of a Bartlett draw: T[s, i, j] ~ N(0, 1) for i > j, row by row (a sampler that needs
    a factor's χ's before its normals, e.g. to reflect them for an antithetic twin, draws the halves apart from
    their two streams and gets the numbers `bartlett_bits` would)."""
    for i in range(M):
        for j in range(i):
            T[s, i, j] = random_standard_normal(bits_normal)


@numba.njit(inline="always", **_JIT)
def bartlett_chi_bits(bits_chi, dof, bs, cs, T, s):
    """The diagonal half of a Bartlett draw: T[s, i, i] = sqrt(χ²_{dof−i}), i < M = len(bs)."""
    M = bs.shape[0]
    if dof - M + 1 > 2:
        for i in range(M):
            T[s, i, i] = np.sqrt(squeeze_chisquare(bits_chi, bs[i], cs[i]))
    else:
        for i in range(M):
            T[s, i, i] = np.sqrt(any_chisquare(bits_chi, dof - i, bs[i], cs[i]))


@numba.njit(inline="always", **_JIT)
def bartlett_into(rng_normal, rng_chi, dof, bs, cs, T, s):
    """One Bartlett factor into the lower triangle of T[s] (T: (·, M, M); the upper triangle is left as it is):
    T_ij ~ N(0, 1) for i > j row by row from rng_normal, then T_ii = sqrt(χ²_{dof−i}) from rng_chi, so
    T Tᵀ ~ Wishart(dof, I_M) (dof ≥ M). bs, cs: `_chi_constants(dof, M)` (M is their length). The one Bartlett
    draw every sampler uses (indexed rather than sliced: no array view per network in the hot loops)."""
    bartlett_bits(rng_normal.bit_generator, rng_chi.bit_generator, dof, bs, cs, T, s)


@numba.njit(**_JIT)
def bartlett_wishart(rng_normal, rng_chi, dof, M, S, rows):
    """(S, M, M) draws of Wishart(dof, I_M) = T Tᵀ (dof ≥ M): per network, the below-diagonal T_ij ~ N(0, 1) row
    by row from rng_normal, then T_ii = sqrt(χ²_{dof−i}) from rng_chi (the order numpy's vectorised draws use).
    rows (S, M), or (S, 0) for none: rows[s] rows[s]ᵀ is added (row 0 of the basis, drawn apart)."""
    out = np.empty((S, M, M))
    T = np.zeros((1, M, M))
    extra = rows.shape[1] > 0
    bs, cs = _chi_constants(dof, M)
    bn, bc = rng_normal.bit_generator, rng_chi.bit_generator
    for s in range(S):
        bartlett_bits(bn, bc, dof, bs, cs, T, 0)
        for i in range(M):
            for j in range(i + 1):
                acc = 0.0
                for k in range(j + 1):
                    acc += T[0, i, k] * T[0, j, k]
                if extra:
                    acc += rows[s, i] * rows[s, j]
                out[s, i, j] = acc
                out[s, j, i] = acc
    return out


@numba.njit(**_JIT)
def bartlett_factor(rng_normal, rng_chi, dof, M, S):
    """(S, M, M) lower-triangular T with T Tᵀ ~ Wishart(dof, I_M) (dof ≥ M), drawn as bartlett_wishart does."""
    T = np.zeros((S, M, M))
    bs, cs = _chi_constants(dof, M)
    bn, bc = rng_normal.bit_generator, rng_chi.bit_generator
    for s in range(S):
        bartlett_bits(bn, bc, dof, bs, cs, T, s)
    return T


