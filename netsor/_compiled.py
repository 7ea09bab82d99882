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


# ---------------------------------------------------------------------------------------- exact sampling
# Kernels that draw from a numpy Generator inside numba: the same ziggurat as Generator.standard_normal (the
# same numbers, several times faster than numpy's own loop), one Generator per block of networks.


@numba.njit(**_JIT)
def standard_normals(rng, out):
    """Fill `out` (any shape, C-contiguous) with standard normals from `rng`, in C order."""
    flat = out.reshape(-1)
    for i in range(flat.size):
        flat[i] = rng.standard_normal()
    return out


PHI_IDENTITY, PHI_RELU, PHI_CLIP = 0, 1, 2  # the nonlinearities a front layer applies itself
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
                if phi == PHI_RELU:
                    for alpha in range(count):
                        out[alpha] = max(out[alpha], 0.0)
                elif phi == PHI_CLIP:
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


@numba.njit(inline="always", **_JIT)
def _chi_constants(dof, M):
    """Marsaglia–Tsang's constants (b, c) for χ²_{dof−i}, i < M, computed once per kernel call."""
    bs = np.empty(M)
    cs = np.empty(M)
    for i in range(M):
        bs[i] = (dof - i) / 2.0 - 1.0 / 3.0
        cs[i] = 1.0 / np.sqrt(9.0 * bs[i]) if bs[i] > 0.0 else 0.0
    return bs, cs


@numba.njit(inline="always", **_JIT)
def chisquare(rng, df, b, c):
    """χ²_df from rng: numpy's algorithm and numbers (2·Gamma(df/2), Marsaglia–Tsang's squeeze for df > 2, with
    b = df/2 − 1/3 and c = 1/sqrt(9b) from _chi_constants), without the per-call overhead of numba's
    Generator.chisquare (under half the time at large df)."""
    if df <= 2.0:
        return rng.chisquare(df)
    while True:
        while True:
            X = rng.standard_normal()
            V = 1.0 + c * X
            if V > 0.0:
                break
        V = V * V * V
        U = rng.random()
        if U < 1.0 - 0.0331 * (X * X) * (X * X):
            return 2.0 * b * V
        if np.log(U) < 0.5 * X * X + b * (1.0 - V + np.log(V)):
            return 2.0 * b * V


@numba.njit(**_JIT)
def bartlett_wishart(rng_normal, rng_chi, dof, M, S, rows):
    """(S, M, M) draws of Wishart(dof, I_M) = T Tᵀ (dof ≥ M): per network, the below-diagonal T_ij ~ N(0, 1) row
    by row from rng_normal, then T_ii = sqrt(χ²_{dof−i}) from rng_chi (the order numpy's vectorised draws use).
    rows (S, M), or (S, 0) for none: rows[s] rows[s]ᵀ is added (row 0 of the basis, drawn apart)."""
    out = np.empty((S, M, M))
    T = np.zeros((M, M))
    extra = rows.shape[1] > 0
    bs, cs = _chi_constants(dof, M)
    for s in range(S):
        for i in range(M):
            for j in range(i):
                T[i, j] = rng_normal.standard_normal()
        for i in range(M):
            T[i, i] = np.sqrt(chisquare(rng_chi, dof - i, bs[i], cs[i]))
        for i in range(M):
            for j in range(i + 1):
                acc = 0.0
                for k in range(j + 1):
                    acc += T[i, k] * T[j, k]
                if extra:
                    acc += rows[s, i] * rows[s, j]
                out[s, i, j] = acc
                out[s, j, i] = acc
    return out


@numba.njit(**_JIT)
def semidefinite_cholesky_rows(cov):
    """Per-network factors of a sample-first stack of PSD matrices, (S, d, d) → (S, d, d)."""
    S, d, _ = cov.shape
    out = np.zeros((S, d, d))
    for s in range(S):
        scale = 0.0
        for i in range(d):
            if cov[s, i, i] > scale:
                scale = cov[s, i, i]
        floor = PIVOT_RTOL * scale
        for j in range(d):
            pivot = cov[s, j, j]
            for k in range(j):
                pivot -= out[s, j, k] * out[s, j, k]
            if pivot <= floor:
                continue  # column j stays zero (as _cholesky_into)
            root = np.sqrt(pivot)
            out[s, j, j] = root
            for i in range(j + 1, d):
                acc = cov[s, i, j]
                for k in range(j):
                    acc -= out[s, i, k] * out[s, j, k]
                out[s, i, j] = acc / root
    return out


@numba.njit(**_JIT)
def bartlett_factor(rng_normal, rng_chi, dof, M, S):
    """(S, M, M) lower-triangular T with T Tᵀ ~ Wishart(dof, I_M) (dof ≥ M), drawn as bartlett_wishart does."""
    T = np.zeros((S, M, M))
    bs, cs = _chi_constants(dof, M)
    for s in range(S):
        for i in range(M):
            for j in range(i):
                T[s, i, j] = rng_normal.standard_normal()
        for i in range(M):
            T[s, i, i] = np.sqrt(chisquare(rng_chi, dof - i, bs[i], cs[i]))
    return T


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
            if col_phi[a] == PHI_CLIP and not gram[s, a, a] <= col_bound[a] * col_bound[a]:
                good = False
        ok[s] = good
    return ok


@numba.njit(**_JIT)
def bipartite_gram(rng_xi, rng_normal, rng_chi, dof, A, B, rows, limit):
    """A component's Gram where only the block G_AB is read (A, B: positions in it), (S, r, r) with G_AB and
    G_BA filled, zeros elsewhere: G_AB = rows_A rows_Bᵀ + T Ξ, Ξ (|A| × |B|) iid N(0, 1) row by row from rng_xi,
    then T (Bartlett, dof ≥ |A|) from rng_normal and rng_chi. limit: G_AB/sqrt(n) → Ξ, from the same Ξ."""
    S, r = rows.shape
    a, b = A.shape[0], B.shape[0]
    out = np.zeros((S, r, r))
    xi = np.empty((a, b))
    T = np.zeros((a, a))
    bs, cs = _chi_constants(dof, a)
    for s in range(S):
        for i in range(a):
            for j in range(b):
                xi[i, j] = rng_xi.standard_normal()
        if limit:
            for i in range(a):
                for j in range(b):
                    out[s, A[i], B[j]] = xi[i, j]
                    out[s, B[j], A[i]] = xi[i, j]
            continue
        for i in range(a):
            for j in range(i):
                T[i, j] = rng_normal.standard_normal()
        for i in range(a):
            T[i, i] = np.sqrt(chisquare(rng_chi, dof - i, bs[i], cs[i]))
        for i in range(a):
            for j in range(b):
                acc = rows[s, A[i]] * rows[s, B[j]]
                for k in range(i + 1):
                    acc += T[i, k] * xi[k, j]
                out[s, A[i], B[j]] = acc
                out[s, B[j], A[i]] = acc
    return out


@numba.njit(**_JIT)
def sandwiches_at(left, gram, iu, iv, right):
    """out[:, :, s] = left[s] gram[s][iu, iv] right[s]ᵀ for (S, a, |iu|), (S, r, r), (S, b, |iv|): all the dots
    (W_u x_i)·(W_v y_j) = L_u[i]ᵀ G L_v[j] of two matrices at once, (a, b, S) (each dot contiguous)."""
    S, a, m = left.shape
    b, k = right.shape[1], right.shape[2]
    out = np.empty((a, b, S))
    tmp = np.empty((m, b))
    for s in range(S):
        for p in range(m):
            for j in range(b):
                acc = 0.0
                for q in range(k):
                    acc += gram[s, iu[p], iv[q]] * right[s, j, q]
                tmp[p, j] = acc
        for i in range(a):
            for j in range(b):
                acc = 0.0
                for p in range(m):
                    acc += left[s, i, p] * tmp[p, j]
                out[i, j, s] = acc
    return out


@numba.njit(**_JIT)
def add_scaled_at(c, term, weight, at):
    """c[s, at[p]] += weight[s] · term[s, p] (weight of length 1: one weight for all networks): one term of a
    linear combination's coefficients, (S, m), (S, k), (S,) or (1,), (k,)."""
    S, k = term.shape
    shared = weight.shape[0] == 1
    for s in range(S):
        w = weight[0] if shared else weight[s]
        for p in range(k):
            c[s, at[p]] += w * term[s, p]


@numba.njit(**_JIT)
def softmax_columns(scores):
    """softmax over the first axis of (k, S) scores, the maximum subtracted first (no exp overflows)."""
    k, S = scores.shape
    out = np.empty((k, S))
    for s in range(S):
        top = scores[0, s]
        for i in range(1, k):
            if scores[i, s] > top:
                top = scores[i, s]
        total = 0.0
        for i in range(k):
            e = np.exp(scores[i, s] - top)
            out[i, s] = e
            total += e
        for i in range(k):
            out[i, s] /= total
    return out


# ---------------------------------------------------------------------------------------- fused linear programs
# The linear part of an exact block as a list of operations on per-network registers (netsor.exact.LinearProgram),
# run network by network in one kernel: the random streams are consumed in the same order as by the kernels above
# (each stream network by network), so the draws are those of the step-by-step path.
OP_NORMALS, OP_BIPARTITE, OP_WISHART, OP_WISHART_Z, OP_CONST, OP_ZERO, OP_AXPY, OP_FACTOR, OP_GEMV, OP_DOT, \
    OP_SOFTMAX, OP_OUT_SCALAR, OP_OUT_VECTOR, OP_WEIGHTS = range(14)
OP_FIELDS = 15
LINEAR_TILE = 64  # networks whose registers are held at once (each operation runs over them)


@numba.njit(**_JIT)
def run_linear(gens, ops, ip, fp, registers, S, k, F):
    """Run `ops` (n, OP_FIELDS) for S networks, tile by tile (LINEAR_TILE networks), with registers
    (registers, tile) and operand pools ip (ints), fp (floats); returns out (S, k) and, when F > 0, the targets'
    coefficients on the F free columns (S, k, F) and their products with those columns' row 0 (S, k) (zeros when
    F = 0). Every random stream is read by one operation only, network by network, so the order of operations
    within a tile does not change the draws."""
    out = np.empty((S, k))
    weights = np.zeros((S, k, F))
    shift = np.zeros((S, k))
    reg = np.zeros((registers, LINEAR_TILE))
    peak, mass = np.empty(LINEAR_TILE), np.empty(LINEAR_TILE)  # softmax scratch
    n = ops.shape[0]
    for s0 in range(0, S, LINEAR_TILE):
        nt = min(LINEAR_TILE, S - s0)
        for o in range(n):
            code = ops[o, 0]
            if code == OP_AXPY:  # reg[dst + at[p]·stride] += w · reg[src + p]
                dst, stride, src, m, at, wr = ops[o, 1], ops[o, 2], ops[o, 3], ops[o, 4], ops[o, 5], ops[o, 6]
                if wr >= 0:
                    for p in range(m):
                        d = dst + ip[at + p] * stride
                        for t in range(nt):
                            reg[d, t] += reg[wr, t] * reg[src + p, t]
                else:
                    w = fp[ops[o, 7]]
                    for p in range(m):
                        d = dst + ip[at + p] * stride
                        for t in range(nt):
                            reg[d, t] += w * reg[src + p, t]
            elif code == OP_DOT:  # reg[dst] = scale · u·t
                u, v, m, scale, dst = ops[o, 1], ops[o, 2], ops[o, 3], fp[ops[o, 4]], ops[o, 5]
                for t in range(nt):
                    reg[dst, t] = 0.0
                for p in range(m):
                    for t in range(nt):
                        reg[dst, t] += reg[u + p, t] * reg[v + p, t]
                for t in range(nt):
                    reg[dst, t] *= scale
            elif code == OP_GEMV:  # reg[dst + i] = Σ_j G[lu[i], lv[j]] reg[v + j]
                g, r, lu, nu, lv, nv, v, dst = ops[o, 1], ops[o, 2], ops[o, 3], ops[o, 4], ops[o, 5], ops[o, 6], \
                    ops[o, 7], ops[o, 8]
                for i in range(nu):
                    row = g + ip[lu + i] * r
                    for t in range(nt):
                        reg[dst + i, t] = 0.0
                    for j in range(nv):
                        e = row + ip[lv + j]
                        for t in range(nt):
                            reg[dst + i, t] += reg[e, t] * reg[v + j, t]
            elif code == OP_ZERO:
                for p in range(ops[o, 2]):
                    for t in range(nt):
                        reg[ops[o, 1] + p, t] = 0.0
            elif code == OP_CONST:
                for p in range(ops[o, 3]):
                    c = fp[ops[o, 2] + p]
                    for t in range(nt):
                        reg[ops[o, 1] + p, t] = c
            elif code == OP_SOFTMAX:  # reg[dst + i] = softmax(reg[scores[i]]), the maximum subtracted first
                sc, m, dst = ops[o, 1], ops[o, 2], ops[o, 3]
                for t in range(nt):
                    peak[t] = reg[ip[sc], t]
                for i in range(1, m):
                    x = ip[sc + i]
                    for t in range(nt):
                        peak[t] = max(peak[t], reg[x, t])
                for t in range(nt):
                    mass[t] = 0.0
                for i in range(m):
                    x = ip[sc + i]
                    for t in range(nt):
                        e = np.exp(reg[x, t] - peak[t])
                        reg[dst + i, t] = e
                        mass[t] += e
                for i in range(m):
                    for t in range(nt):
                        reg[dst + i, t] /= mass[t]
            elif code == OP_FACTOR:  # L (k×k, row-major) with L Lᵀ = scale · Cᵀ G[idx, idx] C, C (m×k) row-major
                C, m, kk, g, r, idx, scale, L, cov = ops[o, 1], ops[o, 2], ops[o, 3], ops[o, 4], ops[o, 5], \
                    ops[o, 6], fp[ops[o, 7]], ops[o, 8], ops[o, 9]  # cov: scratch for G C (m×k)
                for a in range(m):
                    row = g + ip[idx + a] * r
                    for j in range(kk):
                        for t in range(nt):
                            reg[cov + a * kk + j, t] = 0.0
                        for b in range(m):
                            e, c = row + ip[idx + b], C + b * kk + j
                            for t in range(nt):
                                reg[cov + a * kk + j, t] += reg[e, t] * reg[c, t]
                for i in range(kk):
                    for j in range(i + 1):
                        x = L + i * kk + j
                        for t in range(nt):
                            reg[x, t] = 0.0
                        for a in range(m):
                            c, e = C + a * kk + i, cov + a * kk + j
                            for t in range(nt):
                                reg[x, t] += reg[c, t] * reg[e, t]
                        for t in range(nt):
                            reg[x, t] *= scale  # lower triangle of the covariance, in place
                for t in range(nt):
                    peak[t] = 0.0
                for i in range(kk):
                    x = L + i * kk + i
                    for t in range(nt):
                        peak[t] = max(peak[t], reg[x, t])
                for j in range(kk):  # semidefinite Cholesky in place (as semidefinite_cholesky_rows), over the tile
                    x = L + j * kk + j
                    for q in range(j):
                        y = L + j * kk + q
                        for t in range(nt):
                            reg[x, t] -= reg[y, t] * reg[y, t]
                    for t in range(nt):  # a pivot below the floor zeroes its column
                        keep = reg[x, t] > PIVOT_RTOL * peak[t]
                        root = np.sqrt(reg[x, t]) if keep else 0.0
                        reg[x, t] = root
                        mass[t] = 1.0 / root if keep else 0.0
                    for i in range(j + 1, kk):
                        x = L + i * kk + j
                        for q in range(j):
                            y, z = L + i * kk + q, L + j * kk + q
                            for t in range(nt):
                                reg[x, t] -= reg[y, t] * reg[z, t]
                        for t in range(nt):
                            reg[x, t] *= mass[t]
                for i in range(kk):
                    for j in range(i + 1, kk):
                        x = L + i * kk + j
                        for t in range(nt):
                            reg[x, t] = 0.0
            elif code == OP_NORMALS:
                rng = gens[ops[o, 1]]
                dst, m = ops[o, 2], ops[o, 3]
                for t in range(nt):
                    for p in range(m):
                        reg[dst + p, t] = rng.standard_normal()
            elif code == OP_BIPARTITE:  # as bipartite_gram: G_AB = rows_A rows_Bᵀ + T Ξ (only G_AB, G_BA written;
                # rows_A = -1: no row 0, the Gram of all n rows)
                rx, rn, rc = gens[ops[o, 1]], gens[ops[o, 2]], gens[ops[o, 3]]
                dof, a, b, A, B, rA, rB, g, r, chi, xi = ops[o, 4], ops[o, 5], ops[o, 6], ops[o, 7], ops[o, 8], \
                    ops[o, 9], ops[o, 10], ops[o, 11], ops[o, 12], ops[o, 13], ops[o, 14]
                T = xi + a * b  # scratch after Ξ: T (a×a)
                for t in range(nt):
                    for i in range(a):
                        for j in range(b):
                            reg[xi + i * b + j, t] = rx.standard_normal()
                for t in range(nt):
                    for i in range(a):
                        for j in range(i):
                            reg[T + i * a + j, t] = rn.standard_normal()
                for t in range(nt):
                    for i in range(a):
                        reg[T + i * a + i, t] = np.sqrt(chisquare(rc, dof - i, fp[chi + i], fp[chi + a + i]))
                for i in range(a):
                    for j in range(b):
                        e, f = g + ip[A + i] * r + ip[B + j], g + ip[B + j] * r + ip[A + i]
                        if rA >= 0:
                            ra, rb = ip[rA + i], ip[rB + j]
                            for t in range(nt):
                                reg[e, t] = reg[ra, t] * reg[rb, t]
                        else:  # no row 0: G_AB = T Ξ, T with dof = n
                            for t in range(nt):
                                reg[e, t] = 0.0
                        for q in range(i + 1):
                            x, y = T + i * a + q, xi + q * b + j
                            for t in range(nt):
                                reg[e, t] += reg[x, t] * reg[y, t]
                        for t in range(nt):
                            reg[f, t] = reg[e, t]
            elif code == OP_WISHART:  # as bartlett_wishart: G = T Tᵀ + rows rowsᵀ (rows = -1: none)
                rn, rc = gens[ops[o, 1]], gens[ops[o, 2]]
                dof, r, rows, g, chi, T = ops[o, 3], ops[o, 4], ops[o, 5], ops[o, 6], ops[o, 7], ops[o, 8]
                for t in range(nt):
                    for i in range(r):
                        for j in range(i):
                            reg[T + i * r + j, t] = rn.standard_normal()
                for t in range(nt):
                    for i in range(r):
                        reg[T + i * r + i, t] = np.sqrt(chisquare(rc, dof - i, fp[chi + i], fp[chi + r + i]))
                for i in range(r):
                    for j in range(i + 1):
                        e, f = g + i * r + j, g + j * r + i
                        for t in range(nt):
                            reg[e, t] = 0.0
                        for q in range(j + 1):
                            x, y = T + i * r + q, T + j * r + q
                            for t in range(nt):
                                reg[e, t] += reg[x, t] * reg[y, t]
                        if rows >= 0:
                            x, y = ip[rows + i], ip[rows + j]
                            for t in range(nt):
                                reg[e, t] += reg[x, t] * reg[y, t]
                        for t in range(nt):
                            reg[f, t] = reg[e, t]
            elif code == OP_WISHART_Z:  # dof < r: G = ZᵀZ + rows rowsᵀ, Z (dof × r) explicit
                rn = gens[ops[o, 1]]
                dof, r, rows, g, Z = ops[o, 2], ops[o, 3], ops[o, 4], ops[o, 5], ops[o, 6]
                for t in range(nt):
                    for p in range(dof * r):
                        reg[Z + p, t] = rn.standard_normal()
                for i in range(r):
                    for j in range(r):
                        e = g + i * r + j
                        for t in range(nt):
                            reg[e, t] = 0.0
                        for d in range(dof):
                            x, y = Z + d * r + i, Z + d * r + j
                            for t in range(nt):
                                reg[e, t] += reg[x, t] * reg[y, t]
                        if rows >= 0:
                            x, y = ip[rows + i], ip[rows + j]
                            for t in range(nt):
                                reg[e, t] += reg[x, t] * reg[y, t]
            elif code == OP_OUT_SCALAR:
                for t in range(nt):
                    out[s0 + t, ops[o, 1]] = reg[ops[o, 2], t]
            elif code == OP_OUT_VECTOR:  # coordinate 0: b₀[cols] · c
                j, c, cols, m = ops[o, 1], ops[o, 2], ops[o, 3], ops[o, 4]
                for t in range(nt):
                    acc = 0.0
                    for p in range(m):
                        acc += reg[ip[cols + p], t] * reg[c + p, t]
                    out[s0 + t, j] = acc
            elif code == OP_WEIGHTS:  # weights[s, j, f[p]] = c[at[p]]; shift[s, j] = Σ_p c[at[p]] b₀[cols[p]]
                j, c, at, f, m, cols = ops[o, 1], ops[o, 2], ops[o, 3], ops[o, 4], ops[o, 5], ops[o, 6]
                for t in range(nt):
                    acc = 0.0
                    for p in range(m):
                        w = reg[c + ip[at + p], t]
                        weights[s0 + t, j, ip[f + p]] = w
                        acc += w * reg[ip[cols + p], t]
                    shift[s0 + t, j] = acc
    return out, weights, shift
