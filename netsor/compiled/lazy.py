"""Numba kernels of the lazy interpreter (netsor.finite.lazy), each over all networks of a block.

A batch draws W X given its arguments X: per network the row covariance G = scale · X Xᵀ, its semidefinite
Cholesky factor L, and n_out rows L z with z ~ N(0, I_k), fused so the normals are never stored
(`gaussian_rows`, `add_gaussian_rows`). Compressed vectors (the module docstring of netsor.finite.lazy): the
Bartlett rows of every component's atoms (`fill_basis`), a batch's outputs as L times its atoms' rows
(`combine_atoms`), a run of steps on compressed vectors and scalars as one tape (`run_tape`), and a hidden layer
W_out φ(W_in x) streamed row chunk by row chunk into the Gram of φ (`hidden_atoms`). Every kernel writes into
arrays it is given or small scratch, releases the GIL, and `cache=True` pays compilation once per machine.
"""
from __future__ import annotations

import math

import numba
import numpy as np

from ..ir.nonlinearities import CODE_CLIP, CODE_ERF, CODE_GELU, CODE_IDENTITY, CODE_LEAKY_RELU, CODE_RELU, CODE_TANH
from .linalg import RANK_RTOL, cholesky_into, softmax_into
from .wishart import _chi_constants, bartlett_into

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


@numba.njit(inline="always", **_JIT)
def _normal_chunk(rng, z, k, count):
    """z[j, r] for r < count, j < k: the normals of `count` rows, row by row (k per row) — the one order every
    kernel here draws a row chunk in."""
    for r in range(count):
        for j in range(k):
            z[j, r] = rng.standard_normal()


@numba.njit(inline="always", **_JIT)
def _add_lower_times(factor, z, dest, start, count):
    """dest[i, start + r] += Σ_{j ≤ i} factor[i, j] z[j, r], r < count: the rows L z of a chunk."""
    k = factor.shape[0]
    for i in range(k):
        for j in range(i + 1):
            weight = factor[i, j]
            if weight != 0.0:
                for r in range(count):
                    dest[i, start + r] += weight * z[j, r]


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
            count = min(rows, start + ROW_CHUNK) - start
            _normal_chunk(rng, z, k, count)
            _add_lower_times(factor, z, out[s], start, count)
    return out


@numba.njit(fastmath=True, **_JIT)
def _tuple_gram_into(args, s, scale, gram):
    """gram ← scale · (args[i][s] · args[j][s]), (k, k), for a tuple of k (S, n) arrays."""
    k = len(args)
    n = args[0].shape[1]
    for i in range(k):
        xi = args[i][s]
        for j in range(i + 1):
            xj = args[j][s]
            acc = 0.0
            for a in range(n):
                acc += xi[a] * xj[a]
            gram[i, j] = scale * acc
            gram[j, i] = scale * acc


@numba.njit(fastmath=True, **_JIT)
def gaussian_rows(rng, args, scale, out):
    """out[:, s] = L_s Z_s for every network s, L_s L_sᵀ = scale · G_s with G_s the Gram of the args' rows s,
    Z_s ∈ R^{k×rows} iid N(0, 1): `add_gaussian_rows` (the same numbers) on unstacked arguments, a tuple of k
    C-contiguous (S, n_in) arrays, into out (k, S, rows), each output row contiguous."""
    k, S, rows = out.shape
    gram = np.empty((k, k))
    factor = np.empty((k, k))
    z = np.empty((k, ROW_CHUNK))
    for s in range(S):
        _tuple_gram_into(args, s, scale, gram)
        cholesky_into(gram, factor, RANK_RTOL)
        for start in range(0, rows, ROW_CHUNK):
            count = min(rows, start + ROW_CHUNK) - start
            _normal_chunk(rng, z, k, count)
            for i in range(k):
                out[i, s, start:start + count] = 0.0
            _add_lower_times(factor, z, out[:, s], start, count)
    return out


@numba.njit(fastmath=True, **_JIT)
def gram_factors(args, scale):
    """Per network the semidefinite Cholesky factor of scale · (Gram of the args' rows s), (S, k, k)."""
    S, k = args[0].shape[0], len(args)
    gram = np.empty((k, k))
    out = np.empty((S, k, k))
    for s in range(S):
        _tuple_gram_into(args, s, scale, gram)
        cholesky_into(gram, out[s], RANK_RTOL)
    return out


@numba.njit(fastmath=True, **_JIT)
def combine_atoms(factors, basis, offsets, out):
    """out[g k + i, s] = Σ_j L_s[i, j] basis[s, offsets[g] + j] for every network s and batch g of a run of
    batches on the same arguments, L = factors (S, k, k); basis (S, atoms, D), out (len(offsets) k, S, D)."""
    S, k = factors.shape[0], factors.shape[1]
    D = out.shape[2]
    for s in range(S):
        for g in range(offsets.shape[0]):
            o = offsets[g]
            for i in range(k):
                row = out[g * k + i, s]
                for a in range(D):
                    row[a] = 0.0
                for j in range(i + 1):
                    weight = factors[s, i, j]
                    if weight != 0.0:
                        for a in range(D):
                            row[a] += weight * basis[s, o + j, a]
    return out


@numba.njit(**_JIT)
def fill_basis(rng, dofs, sizes, out):
    """The compressed rows of every component's atoms, iid N(0, I_dof) vectors z_a of component c (sizes[c] of
    them, in order), per network: rows of a Bartlett factor T of Wishart(dof, I) when sizes[c] ≤ dofs[c], so
    that rows' inner products are distributed as the z_aᵀz_b; else the z_a themselves (dof coordinates).
    out (S, Σ sizes, D), D ≥ every component's row length, is written whole (zeros beyond each row's draws: out
    may be a reused buffer). Network by network, component by component."""
    S = out.shape[0]
    total = out.shape[1]
    for c in range(sizes.shape[0]):
        if min(sizes[c], dofs[c]) > out.shape[2]:
            raise ValueError("fill_basis: a component's rows are longer than out's last axis")
    bs = np.empty(total)
    cs = np.empty(total)
    start = 0
    for c in range(sizes.shape[0]):
        if sizes[c] <= dofs[c]:
            b, cc = _chi_constants(dofs[c], sizes[c])
            bs[start:start + sizes[c]] = b
            cs[start:start + sizes[c]] = cc
        start += sizes[c]
    for s in range(S):
        for a in range(total):
            for d in range(out.shape[2]):
                out[s, a, d] = 0.0
        start = 0
        for c in range(sizes.shape[0]):
            m, dof = sizes[c], dofs[c]
            if m <= dof:
                bartlett_into(rng, rng, dof, bs[start:start + m], cs[start:start + m], out[s:s + 1, start:start + m],
                              0)
            else:
                for a in range(m):
                    for alpha in range(dof):
                        out[s, start + a, alpha] = rng.standard_normal()
            start += m
    return out


# ------------------------------------------------------------------------------------------------------------ tape
# A run of steps on compressed vectors and scalars, one kernel call for a block: compressed vectors live in the
# slots of cv (slots, S, D), scalars in sv (slots, S); `code` lists the steps, each an opcode and its operands.
OP_LINCOMB, OP_DOT, OP_SQUARE, OP_SOFTMAX, OP_RSQRT, OP_ATOMS = range(6)


@numba.njit(fastmath=True, **_JIT)
def run_tape(code, consts, cv, sv, basis):
    """Execute `code` on the block: (opcode, operands) records, a coefficient or divisor an index into consts.
    OP_LINCOMB dst t (src scalar-slot-or-−1 const)×t: cv[dst] = Σ c·cv[src] (c: sv[scalar] or the constant);
    OP_DOT dst a b c: sv[dst] = cv[a]·cv[b] / consts[c]; OP_SQUARE dst a c: sv[dst] = |cv[a]|² / consts[c];
    OP_SOFTMAX m src×m dst×m: sv[dst_i] = softmax(sv[src])_i (dst −1: not needed); OP_RSQRT dst a: 1/sqrt;
    OP_ATOMS k arg×k c first u (column dst)×u: the batch's outputs L · basis[first:first + k], L Lᵀ =
    consts[c] · Gram of cv[arg] (`combine_atoms`)."""
    S = sv.shape[1]
    D = cv.shape[2]
    peak = np.empty(S)
    mass = np.empty(S)
    scores = np.empty((16, S))
    pc = 0
    while pc < code.shape[0]:
        op = code[pc]
        if op == OP_LINCOMB:
            dst, t = code[pc + 1], code[pc + 2]
            for s in range(S):
                row = cv[dst, s]
                for a in range(D):
                    row[a] = 0.0
                for term in range(t):
                    src, slot, c = code[pc + 3 + 3 * term], code[pc + 4 + 3 * term], code[pc + 5 + 3 * term]
                    coeff = consts[c] if slot < 0 else sv[slot, s]
                    x = cv[src, s]
                    for a in range(D):
                        row[a] += coeff * x[a]
            pc += 3 + 3 * t
        elif op == OP_DOT:
            dst, x, y, c = code[pc + 1], code[pc + 2], code[pc + 3], code[pc + 4]
            for s in range(S):
                acc = 0.0
                for a in range(D):
                    acc += cv[x, s, a] * cv[y, s, a]
                sv[dst, s] = acc / consts[c]
            pc += 5
        elif op == OP_SQUARE:
            dst, x, c = code[pc + 1], code[pc + 2], code[pc + 3]
            for s in range(S):
                acc = 0.0
                for a in range(D):
                    acc += cv[x, s, a] * cv[x, s, a]
                sv[dst, s] = acc / consts[c]
            pc += 4
        elif op == OP_SOFTMAX:
            m = code[pc + 1]
            if scores.shape[0] < m:
                scores = np.empty((m, S))
            for i in range(m):
                scores[i] = sv[code[pc + 2 + i]]
            softmax_into(scores[:m], scores[:m], peak, mass, S)
            for i in range(m):
                dst = code[pc + 2 + m + i]
                if dst >= 0:
                    sv[dst] = scores[i]
            pc += 2 + 2 * m
        elif op == OP_RSQRT:
            dst, x = code[pc + 1], code[pc + 2]
            for s in range(S):
                sv[dst, s] = 1.0 / np.sqrt(sv[x, s])
            pc += 3
        else:  # OP_ATOMS
            k = code[pc + 1]
            args = code[pc + 2:pc + 2 + k]
            scale = consts[code[pc + 2 + k]]
            first = code[pc + 3 + k]
            u = code[pc + 4 + k]
            gram = np.empty((k, k))
            factor = np.empty((k, k))
            for s in range(S):
                for i in range(k):
                    for j in range(i + 1):
                        acc = 0.0
                        for a in range(D):
                            acc += cv[args[i], s, a] * cv[args[j], s, a]
                        gram[i, j] = scale * acc
                        gram[j, i] = scale * acc
                cholesky_into(gram, factor, RANK_RTOL)
                for use in range(u):
                    i, dst = code[pc + 5 + k + 2 * use], code[pc + 6 + k + 2 * use]
                    row = cv[dst, s]
                    for a in range(D):
                        row[a] = 0.0
                    for j in range(i + 1):
                        weight = factor[i, j]
                        if weight != 0.0:
                            for a in range(D):
                                row[a] += weight * basis[s, first + j, a]
            pc += 5 + k + 2 * u
    return sv


# ------------------------------------------------------------------------------------------- fused hidden layer
@numba.njit(inline="always", **_JIT)
def apply_code(code, parameter, x):
    """φ(x) for the nonlinearity codes this module applies (`FUSED_CODES`): the builtins' rules, exact GELU."""
    if code == CODE_RELU:
        return max(x, 0.0)
    if code == CODE_TANH:
        return math.tanh(x)
    if code == CODE_ERF:
        return math.erf(x)
    if code == CODE_GELU:
        return 0.5 * x * (1.0 + math.erf(x / math.sqrt(2.0)))
    if code == CODE_CLIP:
        return min(max(x, -parameter), parameter)
    if code == CODE_LEAKY_RELU:
        return max(x, parameter * x)
    return x  # CODE_IDENTITY


FUSED_CODES = (CODE_IDENTITY, CODE_RELU, CODE_ERF, CODE_TANH, CODE_GELU, CODE_CLIP, CODE_LEAKY_RELU)


@numba.njit(fastmath=True, **_JIT)
def hidden_atoms(rng, args, scale, rows, columns, codes, parameters, scale_out, basis, first, use_args, use_slots,
                 cv):
    """W_out φ(W_in X) held compressed, the hidden layer never stored: per network, h = L Z as `gaussian_rows`
    draws it (the same numbers, `rows` of them, ROW_CHUNK at a time), r_a = φ_a(h[columns[a]]) (codes,
    parameters), G += r rᵀ chunk by chunk; then M M ᵀ = scale_out · G and output a = Σ_b M[a, b] basis[first + b]
    into cv[use_slots[u]] for each use u of argument use_args[u]. args: a tuple of k C-contiguous (S, ·)."""
    k = len(args)
    S = args[0].shape[0]
    m = columns.shape[0]
    D = cv.shape[2]
    gram = np.empty((k, k))
    factor = np.empty((k, k))
    z = np.empty((k, ROW_CHUNK))
    h = np.empty((k, ROW_CHUNK))
    r = np.empty((m, ROW_CHUNK))
    hidden = np.empty((m, m))
    out_factor = np.empty((m, m))
    for s in range(S):
        _tuple_gram_into(args, s, scale, gram)
        cholesky_into(gram, factor, RANK_RTOL)
        for a in range(m):
            for b in range(m):
                hidden[a, b] = 0.0
        for start in range(0, rows, ROW_CHUNK):
            count = min(rows, start + ROW_CHUNK) - start
            _normal_chunk(rng, z, k, count)
            for i in range(k):
                for t in range(count):
                    h[i, t] = 0.0
                for j in range(i + 1):
                    weight = factor[i, j]
                    if weight != 0.0:
                        for t in range(count):
                            h[i, t] += weight * z[j, t]
            for a in range(m):
                for t in range(count):
                    r[a, t] = apply_code(codes[a], parameters[a], h[columns[a], t])
            for a in range(m):
                for b in range(a + 1):
                    acc = 0.0
                    for t in range(count):
                        acc += r[a, t] * r[b, t]
                    hidden[a, b] += acc
        for a in range(m):
            for b in range(a + 1):
                hidden[a, b] *= scale_out
                hidden[b, a] = hidden[a, b]
        cholesky_into(hidden, out_factor, RANK_RTOL)
        for u in range(use_args.shape[0]):
            a = use_args[u]
            row = cv[use_slots[u], s]
            for d in range(D):
                row[d] = 0.0
            for b in range(a + 1):
                weight = out_factor[a, b]
                if weight != 0.0:
                    for d in range(D):
                        row[d] += weight * basis[s, first + b, d]
    return cv
