"""Compiled kernels of exact sampling's linear part: bipartite Grams, sandwiches and the fused register program."""
from __future__ import annotations

import numba
import numpy as np

from .linalg import RANK_RTOL, softmax_into
from .wishart import _chi_constants, any_chisquare, bartlett_into, random_standard_normal, squeeze_chisquare

_JIT = dict(nogil=True, cache=True)


@numba.njit(**_JIT)
def bipartite_gram(rng_xi, rng_normal, rng_chi, dof, A, B, rows, limit):
    """A component's Gram where only the block G_AB is read (A, B: positions in it), (S, r, r) with G_AB and
    G_BA filled, zeros elsewhere: G_AB = rows_A rows_Bᵀ + T Ξ, Ξ (|A| × |B|) iid N(0, 1) row by row from rng_xi,
    then T (Bartlett, dof ≥ |A|) from rng_normal and rng_chi. limit: G_AB/sqrt(n) → Ξ, from the same Ξ."""
    S, r = rows.shape
    a, b = A.shape[0], B.shape[0]
    out = np.zeros((S, r, r))
    xi = np.empty((a, b))
    T = np.zeros((1, a, a))
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
        bartlett_into(rng_normal, rng_chi, dof, bs, cs, T, 0)
        for i in range(a):
            for j in range(b):
                acc = rows[s, A[i]] * rows[s, B[j]]
                for k in range(i + 1):
                    acc += T[0, i, k] * xi[k, j]
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


# ---------------------------------------------------------------------------------------- fused linear programs
# The linear part of an exact block as a list of operations on per-network registers
# (netsor.finite.exact.linear.LinearProgram), run network by network in one kernel: the random streams are consumed
# in the same order as by the kernels above (each stream network by network), so the draws are those of the step-by-
# step path.
OP_NORMALS, OP_BIPARTITE, OP_WISHART, OP_WISHART_Z, OP_CONST, OP_ZERO, OP_AXPY, OP_FACTOR, OP_GEMV, OP_DOT, \
    OP_SOFTMAX, OP_OUT_SCALAR, OP_OUT_VECTOR, OP_WEIGHTS, OP_LOAD = range(15)
OP_FIELDS = 15
LINEAR_TILE = 64  # networks whose registers are held at once (each operation runs over them)


@numba.njit(inline="always", **_JIT)
def _bartlett_lanes(bits_normal, bits_chi, dof, bs, cs, reg, T, lanes):
    """`bartlett_into` for each of `lanes` networks, straight into the lower triangle of registers
    reg[T + i·m + j, t] (row-major m × m per lane, m = len(bs)), from the two streams' bit generators: each stream is
    read network by network, as bartlett_wishart reads it."""
    m = bs.shape[0]
    for t in range(lanes):
        for i in range(m):
            for j in range(i):
                reg[T + i * m + j, t] = random_standard_normal(bits_normal)
    if dof - m + 1 > 2:  # the squeeze only: the general χ² in the same loop would slow it
        for t in range(lanes):
            for i in range(m):
                reg[T + i * m + i, t] = np.sqrt(squeeze_chisquare(bits_chi, bs[i], cs[i]))
    else:
        for t in range(lanes):
            for i in range(m):
                reg[T + i * m + i, t] = np.sqrt(any_chisquare(bits_chi, dof - i, bs[i], cs[i]))


@numba.njit(**_JIT)
def largest_operand(ops, code, field, other_code, other_field):
    """The largest ops[o, field] among operations `code` (and ops[o, other_field] among `other_code`), at least 1:
    the size of the scratch those operations need."""
    largest = 1
    for o in range(ops.shape[0]):
        if ops[o, 0] == code:
            largest = max(largest, ops[o, field])
        elif ops[o, 0] == other_code:
            largest = max(largest, ops[o, other_field])
    return largest


@numba.njit(error_model="numpy", **_JIT)
def run_linear(gens, ops, ip, fp, reg, S, k, F, ext):
    """Run `ops` (n, OP_FIELDS) for S networks, tile by tile (LINEAR_TILE networks), in the registers reg
    (registers, LINEAR_TILE), zeroed here, with operand pools ip (ints), fp (floats) and per-network inputs ext
    (S, ·) (a nonlinear front's row 0 and Gram, drawn before the kernel; OP_LOAD reads them); returns out (S, k)
    and, when F > 0, the targets' coefficients on the F free columns (S, k, F) and their products with those
    columns' row 0 (S, k) (zeros when F = 0). Every random stream is read by one operation only, network by
    network, so the order of operations within a tile does not change the draws."""
    out = np.empty((S, k))
    weights = np.zeros((S, k, F))
    shift = np.zeros((S, k))
    reg[:] = 0.0
    peak, mass = np.empty(LINEAR_TILE), np.empty(LINEAR_TILE)  # softmax scratch
    gathered = np.empty((largest_operand(ops, OP_SOFTMAX, 2, OP_SOFTMAX, 2), LINEAR_TILE))  # a softmax's scores
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
                        for t in range(LINEAR_TILE):
                            reg[d, t] += reg[wr, t] * reg[src + p, t]
                else:
                    w = fp[ops[o, 7]]
                    for p in range(m):
                        d = dst + ip[at + p] * stride
                        for t in range(LINEAR_TILE):
                            reg[d, t] += w * reg[src + p, t]
            elif code == OP_DOT:  # reg[dst] = scale · u·t
                u, v, m, scale, dst = ops[o, 1], ops[o, 2], ops[o, 3], fp[ops[o, 4]], ops[o, 5]
                for t in range(LINEAR_TILE):
                    reg[dst, t] = 0.0
                for p in range(m):
                    for t in range(LINEAR_TILE):
                        reg[dst, t] += reg[u + p, t] * reg[v + p, t]
                for t in range(LINEAR_TILE):
                    reg[dst, t] *= scale
            elif code == OP_GEMV:  # reg[dst + i] = Σ_j G[lu[i], lv[j]] reg[v + j]
                g, r, lu, nu, lv, nv, v, dst = ops[o, 1], ops[o, 2], ops[o, 3], ops[o, 4], ops[o, 5], ops[o, 6], \
                    ops[o, 7], ops[o, 8]
                for i in range(nu):
                    row = g + ip[lu + i] * r
                    for t in range(LINEAR_TILE):
                        reg[dst + i, t] = 0.0
                    for j in range(nv):
                        e = row + ip[lv + j]
                        for t in range(LINEAR_TILE):
                            reg[dst + i, t] += reg[e, t] * reg[v + j, t]
            elif code == OP_ZERO:
                for p in range(ops[o, 2]):
                    for t in range(LINEAR_TILE):
                        reg[ops[o, 1] + p, t] = 0.0
            elif code == OP_CONST:
                for p in range(ops[o, 3]):
                    c = fp[ops[o, 2] + p]
                    for t in range(LINEAR_TILE):
                        reg[ops[o, 1] + p, t] = c
            elif code == OP_SOFTMAX:  # reg[dst + i] = softmax(reg[scores[i]]), the maximum subtracted first
                sc, m, dst = ops[o, 1], ops[o, 2], ops[o, 3]
                for i in range(m):
                    for t in range(LINEAR_TILE):
                        gathered[i, t] = reg[ip[sc + i], t]
                softmax_into(gathered[:m], reg[dst:dst + m], peak, mass, nt)
            elif code == OP_FACTOR:  # L (k×k, row-major) with L Lᵀ = scale · Cᵀ G[idx, idx] C, C (m×k) row-major
                C, m, kk, g, r, idx, scale, L, cov = ops[o, 1], ops[o, 2], ops[o, 3], ops[o, 4], ops[o, 5], \
                    ops[o, 6], fp[ops[o, 7]], ops[o, 8], ops[o, 9]  # cov: scratch for G C (m×k)
                for a in range(m):
                    row = g + ip[idx + a] * r
                    for j in range(kk):
                        for t in range(LINEAR_TILE):
                            reg[cov + a * kk + j, t] = 0.0
                        for b in range(m):
                            e, c = row + ip[idx + b], C + b * kk + j
                            for t in range(LINEAR_TILE):
                                reg[cov + a * kk + j, t] += reg[e, t] * reg[c, t]
                for i in range(kk):
                    for j in range(i + 1):
                        x = L + i * kk + j
                        for t in range(LINEAR_TILE):
                            reg[x, t] = 0.0
                        for a in range(m):
                            c, e = C + a * kk + i, cov + a * kk + j
                            for t in range(LINEAR_TILE):
                                reg[x, t] += reg[c, t] * reg[e, t]
                        for t in range(LINEAR_TILE):
                            reg[x, t] *= scale  # lower triangle of the covariance, in place
                for t in range(LINEAR_TILE):
                    peak[t] = 0.0
                for i in range(kk):
                    x = L + i * kk + i
                    for t in range(LINEAR_TILE):
                        peak[t] = max(peak[t], reg[x, t])
                for j in range(kk):  # semidefinite Cholesky in place (as semidefinite_cholesky_rows), over the tile
                    x = L + j * kk + j
                    for q in range(j):
                        y = L + j * kk + q
                        for t in range(LINEAR_TILE):
                            reg[x, t] -= reg[y, t] * reg[y, t]
                    for t in range(LINEAR_TILE):  # a pivot below the floor zeroes its column
                        keep = reg[x, t] > RANK_RTOL * peak[t]
                        root = np.sqrt(reg[x, t]) if keep else 0.0
                        reg[x, t] = root
                        mass[t] = 1.0 / root if keep else 0.0
                    for i in range(j + 1, kk):
                        x = L + i * kk + j
                        for q in range(j):
                            y, z = L + i * kk + q, L + j * kk + q
                            for t in range(LINEAR_TILE):
                                reg[x, t] -= reg[y, t] * reg[z, t]
                        for t in range(LINEAR_TILE):
                            reg[x, t] *= mass[t]
                for i in range(kk):
                    for j in range(i + 1, kk):
                        x = L + i * kk + j
                        for t in range(LINEAR_TILE):
                            reg[x, t] = 0.0
            elif code == OP_NORMALS:
                bits = gens[ops[o, 1]].bit_generator
                dst, m = ops[o, 2], ops[o, 3]
                for t in range(nt):
                    for p in range(m):
                        reg[dst + p, t] = random_standard_normal(bits)
            elif code == OP_BIPARTITE:  # as bipartite_gram: G_AB = rows_A rows_Bᵀ + T Ξ (only G_AB, G_BA written;
                # rows_A = -1: no row 0, the Gram of all n rows)
                rx, rn, rc = gens[ops[o, 1]].bit_generator, gens[ops[o, 2]].bit_generator, gens[ops[o, 3]].bit_generator
                dof, a, b, A, B, rA, rB, g, r, chi, xi = ops[o, 4], ops[o, 5], ops[o, 6], ops[o, 7], ops[o, 8], \
                    ops[o, 9], ops[o, 10], ops[o, 11], ops[o, 12], ops[o, 13], ops[o, 14]
                T = xi + a * b  # scratch after Ξ: T (a×a)
                for t in range(nt):
                    for i in range(a):
                        for j in range(b):
                            reg[xi + i * b + j, t] = random_standard_normal(rx)
                _bartlett_lanes(rn, rc, dof, fp[chi:chi + a], fp[chi + a:chi + 2 * a], reg, T, nt)
                for i in range(a):
                    for j in range(b):
                        e, f = g + ip[A + i] * r + ip[B + j], g + ip[B + j] * r + ip[A + i]
                        if rA >= 0:
                            ra, rb = ip[rA + i], ip[rB + j]
                            for t in range(LINEAR_TILE):
                                reg[e, t] = reg[ra, t] * reg[rb, t]
                        else:  # no row 0: G_AB = T Ξ, T with dof = n
                            for t in range(LINEAR_TILE):
                                reg[e, t] = 0.0
                        for q in range(i + 1):
                            x, y = T + i * a + q, xi + q * b + j
                            for t in range(LINEAR_TILE):
                                reg[e, t] += reg[x, t] * reg[y, t]
                        for t in range(LINEAR_TILE):
                            reg[f, t] = reg[e, t]
            elif code == OP_WISHART:  # as bartlett_wishart: G = T Tᵀ + rows rowsᵀ (rows = -1: none)
                rn, rc = gens[ops[o, 1]].bit_generator, gens[ops[o, 2]].bit_generator
                dof, r, rows, g, chi, T = ops[o, 3], ops[o, 4], ops[o, 5], ops[o, 6], ops[o, 7], ops[o, 8]
                _bartlett_lanes(rn, rc, dof, fp[chi:chi + r], fp[chi + r:chi + 2 * r], reg, T, nt)
                for i in range(r):
                    for j in range(i + 1):
                        e, f = g + i * r + j, g + j * r + i
                        for t in range(LINEAR_TILE):
                            reg[e, t] = 0.0
                        for q in range(j + 1):
                            x, y = T + i * r + q, T + j * r + q
                            for t in range(LINEAR_TILE):
                                reg[e, t] += reg[x, t] * reg[y, t]
                        if rows >= 0:
                            x, y = ip[rows + i], ip[rows + j]
                            for t in range(LINEAR_TILE):
                                reg[e, t] += reg[x, t] * reg[y, t]
                        for t in range(LINEAR_TILE):
                            reg[f, t] = reg[e, t]
            elif code == OP_WISHART_Z:  # dof < r: G = ZᵀZ + rows rowsᵀ, Z (dof × r) explicit
                rn = gens[ops[o, 1]].bit_generator
                dof, r, rows, g, Z = ops[o, 2], ops[o, 3], ops[o, 4], ops[o, 5], ops[o, 6]
                for t in range(nt):
                    for p in range(dof * r):
                        reg[Z + p, t] = random_standard_normal(rn)
                for i in range(r):
                    for j in range(r):
                        e = g + i * r + j
                        for t in range(LINEAR_TILE):
                            reg[e, t] = 0.0
                        for d in range(dof):
                            x, y = Z + d * r + i, Z + d * r + j
                            for t in range(LINEAR_TILE):
                                reg[e, t] += reg[x, t] * reg[y, t]
                        if rows >= 0:
                            x, y = ip[rows + i], ip[rows + j]
                            for t in range(LINEAR_TILE):
                                reg[e, t] += reg[x, t] * reg[y, t]
            elif code == OP_LOAD:  # reg[dst + p] = ext[network, at[p]]
                dst, at, m = ops[o, 1], ops[o, 2], ops[o, 3]
                for t in range(nt):
                    for p in range(m):
                        reg[dst + p, t] = ext[s0 + t, ip[at + p]]
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
