"""Compiled loops for limits.transformer_limit: the recursion of s×s token kernels through a pre-LN transformer,
and the Gaussian expectations E[φ(u)φ(v)] its MLP blocks and nonlinear values need.

Samples are processed LANES at a time, every per-sample matrix stored lanes-last, (s, s, LANES): the innermost
loops run over lanes in contiguous memory, so LLVM vectorises them and the loop overhead of one sample's tiny s×s
products is shared (1.5× faster than sample by sample at s = 4).

Each kernel runs one block of samples with that block's numpy Generator: sample by sample it draws the sample's
normals with the Generator's standard_normal (numba's implementation is numpy's ziggurat on numpy's bit generator,
so the numbers are exactly those of rng.standard_normal((count, per_sample)), in that order), then consumes them.
Kernels release the GIL and the caller runs blocks from a thread pool, so results do not depend on the thread
count. (A prange over samples would need one Generator per sample; blocks are the natural unit of parallel work.)

Layout of the normals of one attention head (C order):
    scores ∝ n^{1/2}          Ξ (s × s)                p = C Ξ Cᵀ,  C Cᵀ = K̃
    head dimension N          Ξ_Q, Ξ_K, Ξ_V (s × N)    p = (C Ξ_Q)(C Ξ_K)ᵀ / N^a,  values C Ξ_V
    head dimension N, tied    Ξ_Q, Ξ_V (s × N)         p = (C Ξ_Q)(C Ξ_Q)ᵀ / N^a,  values C Ξ_V
    deterministic scores      none                     p = 0 (a > 1/2; tied: a > 1), or p = K̃ (tied, a = 1)
In the infinite-head recursion the values are integrated out (E[φ(V) φ(V)ᵀ/N] = Φ(K̃)), so a head draws its score
normals only.

The variants (`limits.score_maps`, one rule): logits z_ij = p_ij/τ + b_ij over the allowed keys S_i of row i, then
A_i = softmax (`netsor.compiled.softmax_into`) or an elementwise map (`limits.score_maps.elementwise_weight`), 0 off
S_i; they arrive as (plain, map_code, inverse_temperature, bias, allowed, keys). plain (softmax, no mask, τ = 1, no
bias) keeps the original loops. Values φ(v) arrive as (value_code, value_bound, value_second_moment), value_code
CODE_NONE for linear values (G = K̃, or V Vᵀ/N).
"""
from __future__ import annotations

import math

import numba
import numpy as np

from netsor.compiled import (CODE_CLIP, CODE_ERF, CODE_GELU, CODE_IDENTITY, CODE_NONE, CODE_RELU, CODE_TANH,
                             cholesky_lanes, softmax_into)

from .score_maps import CODE_SOFTMAX, elementwise_weight

# error_model="numpy": no ZeroDivisionError checks inside the lane loops, which would stop their vectorisation
_JIT = dict(cache=True, nogil=True, error_model="numpy")

LANES = 8  # samples processed together (one or two SIMD registers of doubles)

# How a head's scores are drawn (see the module docstring)
SCORES_GAUSSIAN = 0  # head dimension ∝ n, scores / n^{1/2}: Gaussian with Cov(p_ij, p_kl) = K̃_ik K̃_jl
SCORES_ZERO = 1  # head dimension ∝ n, scores / n^a with a > 1/2: p → 0, A = map(b) (softmax, no bias: uniform)
SCORES_FINITE_HEAD = 2  # fixed head dimension N: p = Q Kᵀ / N^a with N-dimensional Gaussian rows
SCORES_KERNEL = 3  # tied W_K = W_Q, head dimension ∝ n, scores / n: p = K̃, deterministic
DETERMINISTIC_MODES = (SCORES_ZERO, SCORES_KERNEL)  # A is a function of K̃: no normals, one "head" stands for all

# The MLP and value nonlinearities arrive as their netsor codes (`Nonlinearity.code`; the clip bound is its
# `parameter`). The kernels implement CODE_IDENTITY, CODE_RELU, CODE_ERF, CODE_TANH, CODE_GELU and CODE_CLIP; the
# caller rejects any other code. sample_block's mlp_code CODE_NONE means a transformer without MLP branches, its
# value_code CODE_NONE linear values.
IMPLEMENTED_CODES = (CODE_IDENTITY, CODE_RELU, CODE_ERF, CODE_TANH, CODE_GELU, CODE_CLIP)

# Piecewise Gauss–Legendre rule for the clip nonlinearity's outer integral (see clip_product)
CLIP_HALF_WIDTH = 10.5  # the normal mass beyond ±10.5 is 1e-25
CLIP_PIECE = 1.5  # longest piece between breakpoints
MAX_GRADING_STEPS = 60  # geometric refinement towards a smoothed kink of width r ≥ 1.5·2^-60


# ------------------------------------------------------------------------------------------ small linear algebra
@numba.njit(**_JIT)
def layer_norm_lanes(kernel, out, inverse_sd, lanes):
    """out = D^{-1/2} K D^{-1/2}, D = diag K, in each of the first `lanes` lanes: the token kernel after a
    LayerNorm without mean subtraction (a correlation matrix; its diagonal is set to exactly 1).
    inverse_sd: scratch (s, LANES)."""
    s = kernel.shape[0]
    for i in range(s):
        for lane in range(lanes):
            inverse_sd[i, lane] = 1.0 / math.sqrt(kernel[i, i, lane])
    for i in range(s):
        for j in range(s):
            for lane in range(lanes):
                out[i, j, lane] = kernel[i, j, lane] * inverse_sd[i, lane] * inverse_sd[j, lane]
        for lane in range(lanes):
            out[i, i, lane] = 1.0


# ------------------------------------------------------------------------------------------ one attention head
@numba.njit(**_JIT)
def gaussian_scores_lanes(chol, draws, offset, scores, lower_times_xi, lanes):
    """scores = C Ξ Cᵀ, Ξ = draws[offset : offset + s²] as an s × s matrix: Cov(p_ij, p_kl) = K̃_ik K̃_jl."""
    s = chol.shape[0]
    for i in range(s):
        for j in range(s):
            for lane in range(lanes):
                lower_times_xi[i, j, lane] = 0.0
            for k in range(i + 1):  # C is lower-triangular
                for lane in range(lanes):
                    lower_times_xi[i, j, lane] += chol[i, k, lane] * draws[offset + k * s + j, lane]
    for i in range(s):
        for j in range(s):
            for lane in range(lanes):
                scores[i, j, lane] = 0.0
            for k in range(j + 1):
                for lane in range(lanes):
                    scores[i, j, lane] += lower_times_xi[i, k, lane] * chol[j, k, lane]


@numba.njit(**_JIT)
def finite_head_scores_lanes(chol, draws, offset, head_dim, scale, scores, xi_gram, lower_times_gram, lanes,
                             tied):
    """scores = scale · (C Ξ_Q)(C Ξ_K)ᵀ = scale · C (Ξ_Q Ξ_Kᵀ) Cᵀ, Ξ_Q and Ξ_K the s × N matrices at offset
    (tied: Ξ_K = Ξ_Q, one s × N matrix)."""
    s = chol.shape[0]
    key_offset = offset if tied else offset + s * head_dim
    for i in range(s):
        for j in range(s):
            for lane in range(lanes):
                xi_gram[i, j, lane] = 0.0
            for t in range(head_dim):
                for lane in range(lanes):
                    xi_gram[i, j, lane] += draws[offset + i * head_dim + t, lane] * draws[key_offset + j * head_dim + t,
                                                                                          lane]
    for i in range(s):
        for j in range(s):
            for lane in range(lanes):
                lower_times_gram[i, j, lane] = 0.0
            for k in range(i + 1):
                for lane in range(lanes):
                    lower_times_gram[i, j, lane] += chol[i, k, lane] * xi_gram[k, j, lane]
    for i in range(s):
        for j in range(s):
            for lane in range(lanes):
                scores[i, j, lane] = 0.0
            for k in range(j + 1):
                for lane in range(lanes):
                    scores[i, j, lane] += lower_times_gram[i, k, lane] * chol[j, k, lane]
            for lane in range(lanes):
                scores[i, j, lane] *= scale


@numba.njit(**_JIT)
def softmax_rows_lanes(scores, top, total, lanes):
    """Each row ← softmax(row) in place, by netsor's one stable softmax (`netsor.compiled.softmax_into`): row i
    of the lanes-last scores (s, s, LANES) is the lanes-major (s, LANES) array scores[i], normalised over its
    first axis in each lane. top, total: scratch (LANES,)."""
    for i in range(scores.shape[0]):
        row = scores[i]
        softmax_into(row, row, top, total, lanes)


@numba.njit(**_JIT)
def attention_rows_lanes(scores, plain, map_code, inverse_temperature, bias, allowed, keys, top, total, lanes):
    """Each row of scores ← A_i = map(p_i/τ + b_i) over the allowed keys, 0 elsewhere (`limits.score_maps`), in
    place: softmax by `softmax_into` (disallowed logits −inf, so exp gives exactly 0), the elementwise maps by
    `elementwise_weight` with the row's key count. plain: softmax_rows_lanes itself."""
    if plain:
        softmax_rows_lanes(scores, top, total, lanes)
        return
    s = scores.shape[0]
    for i in range(s):
        for j in range(s):
            if allowed[i, j]:
                for lane in range(lanes):
                    scores[i, j, lane] = scores[i, j, lane] * inverse_temperature + bias[i, j]
            else:
                fill = -math.inf if map_code == CODE_SOFTMAX else 0.0
                for lane in range(lanes):
                    scores[i, j, lane] = fill
        if map_code == CODE_SOFTMAX:
            row = scores[i]
            softmax_into(row, row, top, total, lanes)
        else:
            for j in range(s):
                if allowed[i, j]:
                    for lane in range(lanes):
                        scores[i, j, lane] = elementwise_weight(map_code, scores[i, j, lane], keys[i])


@numba.njit(inline="always", **_JIT)
def _mirror_lower_lanes(acc, lanes):
    """acc[i, j] = acc[j, i] for i < j: the upper triangle of a symmetric lanes-last matrix from its lower one."""
    s = acc.shape[0]
    for i in range(s):
        for j in range(i + 1, s):
            for lane in range(lanes):
                acc[i, j, lane] = acc[j, i, lane]


@numba.njit(**_JIT)
def add_sandwich_lanes(attention, gram, weight, mixed, acc, lanes):
    """acc += weight · A G Aᵀ for a symmetric G (the values' kernel Φ(K̃) of nonlinear values, or K̃ itself)."""
    s = gram.shape[0]
    for i in range(s):
        for j in range(s):
            for lane in range(lanes):
                mixed[i, j, lane] = 0.0
            for k in range(s):
                for lane in range(lanes):
                    mixed[i, j, lane] += attention[i, k, lane] * gram[k, j, lane]
    for i in range(s):
        for j in range(i + 1):
            for k in range(s):
                for lane in range(lanes):
                    acc[i, j, lane] += weight * mixed[i, k, lane] * attention[j, k, lane]
    _mirror_lower_lanes(acc, lanes)


@numba.njit(**_JIT)
def add_mixed_kernel_lanes(attention, chol, weight, mixed, acc, lanes):
    """acc += weight · A K̃ Aᵀ, computed as (A C)(A C)ᵀ (C lower-triangular, the product symmetric)."""
    s = chol.shape[0]
    for i in range(s):
        for j in range(s):
            for lane in range(lanes):
                mixed[i, j, lane] = 0.0
            for k in range(j, s):
                for lane in range(lanes):
                    mixed[i, j, lane] += attention[i, k, lane] * chol[k, j, lane]
    for i in range(s):
        for j in range(i + 1):
            for k in range(s):
                for lane in range(lanes):
                    acc[i, j, lane] += weight * mixed[i, k, lane] * mixed[j, k, lane]
    _mirror_lower_lanes(acc, lanes)


@numba.njit(inline="always", **_JIT)
def _add_head_gram_lanes(mixed_values, head_dim, weight, acc, lanes):
    """acc += weight · M Mᵀ / N for the s × N mixed values M of a fixed-head-dimension head (symmetric fill)."""
    s = acc.shape[0]
    scale = weight / head_dim
    for i in range(s):
        for j in range(i + 1):
            for t in range(head_dim):
                for lane in range(lanes):
                    acc[i, j, lane] += scale * mixed_values[i, t, lane] * mixed_values[j, t, lane]
    _mirror_lower_lanes(acc, lanes)


@numba.njit(**_JIT)
def add_finite_value_kernel_lanes(attention, chol, draws, offset, head_dim, weight, mixed, mixed_values, acc, lanes):
    """acc += weight · A (V Vᵀ / N) Aᵀ with values V = C Ξ_V (Ξ_V the s × N matrix at offset)."""
    s = chol.shape[0]
    for i in range(s):
        for j in range(s):
            for lane in range(lanes):
                mixed[i, j, lane] = 0.0
            for k in range(j, s):
                for lane in range(lanes):
                    mixed[i, j, lane] += attention[i, k, lane] * chol[k, j, lane]
    for i in range(s):
        for t in range(head_dim):
            for lane in range(lanes):
                mixed_values[i, t, lane] = 0.0
            for k in range(s):
                for lane in range(lanes):
                    mixed_values[i, t, lane] += mixed[i, k, lane] * draws[offset + k * head_dim + t, lane]
    _add_head_gram_lanes(mixed_values, head_dim, weight, acc, lanes)


@numba.njit(**_JIT)
def add_uniform_kernel_lanes(correlation, weight, acc, lanes):
    """acc += weight · (1/s²)(1ᵀ K̃ 1) 1 1ᵀ: every token attends to all tokens equally (A = 1/s)."""
    s = correlation.shape[0]
    for lane in range(lanes):
        total = 0.0
        for i in range(s):
            for j in range(s):
                total += correlation[i, j, lane]
        for i in range(s):
            for j in range(s):
                acc[i, j, lane] += weight * total / (s * s)


@numba.njit(**_JIT)
def add_finite_phi_value_kernel_lanes(attention, chol, draws, offset, head_dim, weight, value_code, value_bound,
                                      values, mixed_values, acc, lanes):
    """acc += weight · A (φ(V) φ(V)ᵀ / N) Aᵀ with values V = C Ξ_V (Ξ_V the s × N matrix at offset), φ
    elementwise (`value_phi`)."""
    s = chol.shape[0]
    for j in range(s):
        for t in range(head_dim):
            for lane in range(lanes):
                values[j, t, lane] = 0.0
            for k in range(j + 1):
                for lane in range(lanes):
                    values[j, t, lane] += chol[j, k, lane] * draws[offset + k * head_dim + t, lane]
            for lane in range(lanes):
                values[j, t, lane] = value_phi(value_code, value_bound, values[j, t, lane])
    for i in range(s):
        for t in range(head_dim):
            for lane in range(lanes):
                mixed_values[i, t, lane] = 0.0
            for k in range(s):
                for lane in range(lanes):
                    mixed_values[i, t, lane] += attention[i, k, lane] * values[k, t, lane]
    _add_head_gram_lanes(mixed_values, head_dim, weight, acc, lanes)


@numba.njit(**_JIT)
def add_deterministic_kernel_lanes(correlation, gram, score_mode, weight, plain, map_code, inverse_temperature, bias,
                                   allowed, keys, attention, mixed, top, total, acc, lanes):
    """acc += weight · A G Aᵀ for deterministic scores: A = map(p/τ + b) with p = 0 (SCORES_ZERO) or p = K̃
    (SCORES_KERNEL); G = gram (K̃, or Φ(K̃) for nonlinear values). Plain uniform attention with G = K̃ is
    add_uniform_kernel_lanes. attention, mixed: scratch (s, s, ≥ lanes); top, total: (≥ lanes,)."""
    s = correlation.shape[0]
    for i in range(s):
        for j in range(s):
            for lane in range(lanes):
                attention[i, j, lane] = correlation[i, j, lane] if score_mode == SCORES_KERNEL else 0.0
    attention_rows_lanes(attention, plain, map_code, inverse_temperature, bias, allowed, keys, top, total, lanes)
    add_sandwich_lanes(attention, gram, weight, mixed, acc, lanes)


# ------------------------------------------------------------------------------------------ MLP kernels E[φ(u)φ(v)]
@numba.njit(**_JIT)
def phi(code, x):
    """The MLP nonlinearity at x (smooth ones only: the kinked ones are integrated in closed form)."""
    if code == CODE_TANH:
        return math.tanh(x)
    if code == CODE_GELU:
        return 0.5 * x * (1.0 + math.erf(x / math.sqrt(2.0)))  # exact x·Φ(x)
    return math.nan


@numba.njit(**_JIT)
def value_phi(code, bound, x):
    """φ(x) for every implemented code (nonlinear values of a fixed head dimension): identity, relu, erf,
    clip(bound) here, tanh and gelu by `phi`."""
    if code == CODE_IDENTITY:
        return x
    if code == CODE_RELU:
        return max(x, 0.0)
    if code == CODE_ERF:
        return math.erf(x)
    if code == CODE_CLIP:
        return min(max(x, -bound), bound)
    return phi(code, x)


@numba.njit(**_JIT)
def hermite_product(rho, code, hermite_nodes, hermite_weights):
    """E[φ(u)φ(v)] for unit-variance u, v with correlation ρ: a tensor Gauss–Hermite rule in (z₁, z₂) through the
    Cholesky factor of [[1, ρ], [ρ, 1]], u = z₁, v = ρ z₁ + sqrt(1 − ρ²) z₂."""
    complement = math.sqrt(max(0.0, 1.0 - rho * rho))
    total = 0.0
    for k in range(hermite_nodes.size):
        outer = hermite_nodes[k]
        inner = 0.0
        for m in range(hermite_nodes.size):
            inner += hermite_weights[m] * phi(code, rho * outer + complement * hermite_nodes[m])
        total += hermite_weights[k] * phi(code, outer) * inner
    return total


@numba.njit(**_JIT)
def normal_cdf(x):
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


@numba.njit(**_JIT)
def clip_conditional_mean(mean, sd, bound):
    """E[clip_c(Y)], Y ~ N(mean, sd²): c P(Y > c) − c P(Y < −c) + E[Y; |Y| < c], all in closed form."""
    if sd == 0.0:
        return min(max(mean, -bound), bound)
    lower = (-bound - mean) / sd
    upper = (bound - mean) / sd
    density_gap = (math.exp(-0.5 * lower * lower) - math.exp(-0.5 * upper * upper)) / math.sqrt(2.0 * math.pi)
    cdf_lower = normal_cdf(lower)
    cdf_upper = normal_cdf(upper)
    return bound * (normal_cdf(-upper) - cdf_lower) + mean * (cdf_upper - cdf_lower) + sd * density_gap


@numba.njit(**_JIT)
def clip_product(rho, bound, legendre_nodes, legendre_weights):
    """E[clip_c(u) clip_c(v)] for unit-variance u, v with correlation ρ, through the same Cholesky split as
    hermite_product, but with the inner expectation g(z₁) = E[clip_c(ρ z₁ + r z₂) | z₁] (r = sqrt(1 − ρ²)) in
    closed form and the outer one by Gauss–Legendre against the normal density on pieces of [−10.5, 10.5] split
    at the kinks ±c of clip_c(z₁) and graded geometrically towards ±c/|ρ|, where g has a smoothed kink of width
    r/|ρ|. A Gauss–Hermite rule across a kink converges only algebraically (1e-2 at order 40)."""
    if rho == 0.0:
        return 0.0  # g ≡ 0 by symmetry
    complement = math.sqrt(max(0.0, 1.0 - rho * rho))
    base = int(round(2.0 * CLIP_HALF_WIDTH / CLIP_PIECE))
    edges = np.empty(base + 1 + 2 + 2 * (2 * MAX_GRADING_STEPS + 1))
    count = 0
    for k in range(base + 1):
        edges[count] = -CLIP_HALF_WIDTH + k * CLIP_PIECE
        count += 1
    for sign in (-1.0, 1.0):
        edges[count] = sign * bound
        count += 1
        centre = sign * bound / abs(rho)
        edges[count] = centre
        count += 1
        width = complement / abs(rho)  # 0 at ρ = ±1, where g is clip itself and its kink is an edge already
        step = 0
        while 0.0 < width < CLIP_PIECE and step < MAX_GRADING_STEPS:
            edges[count] = centre - width
            edges[count + 1] = centre + width
            count += 2
            width *= 2.0
            step += 1
    points = np.sort(edges[:count])
    total = 0.0
    for p in range(count - 1):
        lo = max(points[p], -CLIP_HALF_WIDTH)
        hi = min(points[p + 1], CLIP_HALF_WIDTH)
        if hi <= lo:
            continue
        half = 0.5 * (hi - lo)
        middle = 0.5 * (hi + lo)
        for q in range(legendre_nodes.size):
            z = middle + half * legendre_nodes[q]
            density = math.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
            clipped = min(max(z, -bound), bound)
            inner = clip_conditional_mean(rho * z, complement, bound)
            total += half * legendre_weights[q] * density * clipped * inner
    return total


@numba.njit(**_JIT)
def relu_product(rho):
    """Arc-cosine kernel at unit variances: (sin θ + (π − θ) cos θ)/(2π), cos θ = ρ. The numba twin of netsor's
    registered `netsor.relu.closed_form_product(netsor.relu)` (numpy, not callable from here); a test checks
    that they agree to 1e-12."""
    return (math.sqrt(1.0 - rho * rho) + (math.pi - math.acos(rho)) * rho) / (2.0 * math.pi)


@numba.njit(**_JIT)
def erf_product(rho):
    """Williams' arcsine kernel at unit variances: (2/π) arcsin(2ρ / 3); the numba twin of netsor's
    `netsor.erf.closed_form_product(netsor.erf)`, checked against it by a test."""
    return 2.0 / math.pi * math.asin(2.0 * rho / 3.0)


@numba.njit(**_JIT)
def mlp_kernel_lanes(correlation, code, bound, second_moment, hermite_nodes, hermite_weights, legendre_nodes,
                     legendre_weights, out, lanes):
    """out = Φ, Φ_ij = E[φ(g_i)φ(g_j)], g ~ N(0, K̃) for correlation matrices K̃ (Φ_ii = E[φ(Z)²]). The
    nonlinearity is dispatched once per pair, outside the loop over lanes."""
    s = correlation.shape[0]
    for i in range(s):
        for lane in range(lanes):
            out[i, i, lane] = second_moment
        for j in range(i):
            for lane in range(lanes):  # a computed correlation can exceed 1 by an ulp
                out[i, j, lane] = min(max(correlation[i, j, lane], -1.0), 1.0)
            if code == CODE_RELU:
                for lane in range(lanes):
                    out[i, j, lane] = relu_product(out[i, j, lane])
            elif code == CODE_ERF:
                for lane in range(lanes):
                    out[i, j, lane] = erf_product(out[i, j, lane])
            elif code == CODE_CLIP:
                for lane in range(lanes):
                    out[i, j, lane] = clip_product(out[i, j, lane], bound, legendre_nodes, legendre_weights)
            elif code != CODE_IDENTITY:
                for lane in range(lanes):
                    out[i, j, lane] = hermite_product(out[i, j, lane], code, hermite_nodes, hermite_weights)
            for lane in range(lanes):
                out[j, i, lane] = out[i, j, lane]


@numba.njit(**_JIT)
def add_mlp_branch_lanes(kernel, weight, code, bound, second_moment, hermite_nodes, hermite_weights, legendre_nodes,
                         legendre_weights, correlation, branch, inverse_sd, lanes):
    """kernel += weight · Φ(LN(kernel)) in each lane: one MLP block (weight = c² w₂)."""
    layer_norm_lanes(kernel, correlation, inverse_sd, lanes)
    mlp_kernel_lanes(correlation, code, bound, second_moment, hermite_nodes, hermite_weights, legendre_nodes,
                     legendre_weights, branch, lanes)
    s = kernel.shape[0]
    for i in range(s):
        for j in range(s):
            for lane in range(lanes):
                kernel[i, j, lane] += weight * branch[i, j, lane]


# ------------------------------------------------------------------------------------------ whole samples
@numba.njit(**_JIT)
def draw_normals_lanes(rng, draws, lanes):
    """draws[:, lane] ← the next draws.shape[0] standard normals of rng, lane after lane: the order of
    rng.standard_normal((count, per_sample)), stored lanes-last."""
    for lane in range(lanes):
        for k in range(draws.shape[0]):
            draws[k, lane] = rng.standard_normal()


@numba.njit(**_JIT)
def sample_block(rng, input_kernel, depth, heads, branch_weight, score_mode, head_dim, score_scale, mlp_code,
                 mlp_bound, mlp_weight, second_moment, hermite_nodes, hermite_weights, legendre_nodes,
                 legendre_weights, per_sample, out, plain, map_code, inverse_temperature, bias, allowed, keys, tied,
                 value_code, value_bound, value_second_moment):
    """The token kernel of out.shape[0] independent networks through `depth` pre-LN blocks, each network drawing
    its `per_sample` normals (block, head, then the head's layout) from rng in turn. out (count, depth + 1, s, s)
    receives the kernel before block 1 and after every block; out (count, 1, s, s) only the final one.

    Per block: K̃ = LN(K); K += (c²/H) Σ_h A_h G_h A_hᵀ (G_h = K̃, Φ(K̃), V Vᵀ/N or φ(V)φ(V)ᵀ/N; A_h by the
    variants, module docstring); K += c² w₂ Φ(LN(K)). bias, allowed: (s, s); keys: (s,) float."""
    count = out.shape[0]
    s = input_kernel.shape[0]
    keep_every_block = out.shape[1] == depth + 1
    per_head = per_sample // max(1, depth * heads)
    head_weight = branch_weight / heads
    value_offset = (1 if tied else 2) * s * head_dim
    nonlinear_values = value_code != CODE_NONE
    draws = np.empty((per_sample, LANES))
    kernel = np.empty((s, s, LANES))
    correlation = np.empty((s, s, LANES))
    value_gram = np.empty((s, s, LANES))
    chol = np.empty((s, s, LANES))
    attention = np.empty((s, s, LANES))
    attention_sum = np.empty((s, s, LANES))
    work_a = np.empty((s, s, LANES))
    work_b = np.empty((s, s, LANES))
    mixed_values = np.empty((s, max(1, head_dim), LANES))
    values = np.empty((s, max(1, head_dim), LANES))
    inverse_sd = np.empty((s, LANES))
    scratch_a = np.empty(LANES)
    scratch_b = np.empty(LANES)
    for first in range(0, count, LANES):
        lanes = min(LANES, count - first)
        draw_normals_lanes(rng, draws, lanes)
        for i in range(s):
            for j in range(s):
                kernel[i, j, :] = input_kernel[i, j]
        for layer in range(depth + 1):
            if layer > 0:
                layer_norm_lanes(kernel, correlation, inverse_sd, lanes)
                attention_sum[:, :, :] = 0.0
                if nonlinear_values and score_mode != SCORES_FINITE_HEAD:  # G = Φ(K̃), shared by the heads
                    mlp_kernel_lanes(correlation, value_code, value_bound, value_second_moment, hermite_nodes,
                                     hermite_weights, legendre_nodes, legendre_weights, value_gram, lanes)
                if score_mode == SCORES_ZERO and plain and not nonlinear_values:
                    add_uniform_kernel_lanes(correlation, branch_weight, attention_sum, lanes)
                elif score_mode == SCORES_ZERO or score_mode == SCORES_KERNEL:
                    add_deterministic_kernel_lanes(correlation, value_gram if nonlinear_values else correlation,
                                                   score_mode, branch_weight, plain, map_code, inverse_temperature,
                                                   bias, allowed, keys, attention, work_a, scratch_a, scratch_b,
                                                   attention_sum, lanes)
                else:
                    cholesky_lanes(correlation, 0, lanes, chol, scratch_a)
                    for head in range(heads):
                        offset = ((layer - 1) * heads + head) * per_head
                        if score_mode == SCORES_GAUSSIAN:
                            gaussian_scores_lanes(chol, draws, offset, attention, work_a, lanes)
                            attention_rows_lanes(attention, plain, map_code, inverse_temperature, bias, allowed,
                                                 keys, scratch_a, scratch_b, lanes)
                            if nonlinear_values:
                                add_sandwich_lanes(attention, value_gram, head_weight, work_a, attention_sum, lanes)
                            else:
                                add_mixed_kernel_lanes(attention, chol, head_weight, work_a, attention_sum, lanes)
                        else:
                            finite_head_scores_lanes(chol, draws, offset, head_dim, score_scale, attention, work_a,
                                                     work_b, lanes, tied)
                            attention_rows_lanes(attention, plain, map_code, inverse_temperature, bias, allowed,
                                                 keys, scratch_a, scratch_b, lanes)
                            if nonlinear_values:
                                add_finite_phi_value_kernel_lanes(attention, chol, draws, offset + value_offset,
                                                                  head_dim, head_weight, value_code, value_bound,
                                                                  values, mixed_values, attention_sum, lanes)
                            else:
                                add_finite_value_kernel_lanes(attention, chol, draws, offset + value_offset,
                                                              head_dim, head_weight, work_a, mixed_values,
                                                              attention_sum, lanes)
                for i in range(s):
                    for j in range(s):
                        for lane in range(lanes):
                            kernel[i, j, lane] += attention_sum[i, j, lane]
                if mlp_code != CODE_NONE:
                    add_mlp_branch_lanes(kernel, branch_weight * mlp_weight, mlp_code, mlp_bound, second_moment,
                                         hermite_nodes, hermite_weights, legendre_nodes, legendre_weights,
                                         correlation, work_a, inverse_sd, lanes)
            if keep_every_block or layer == depth:
                slot = layer if keep_every_block else 0
                for lane in range(lanes):
                    for i in range(s):
                        for j in range(s):
                            out[first + lane, slot, i, j] = kernel[i, j, lane]


@numba.njit(**_JIT)
def head_kernel_sums(rng, count, chol_full, chol_batches, score_mode, head_dim, score_scale, per_sample,
                     first_index, sum_full, sum_batches, plain, map_code, inverse_temperature, bias, allowed, keys,
                     tied, nonlinear_values, gram_full, gram_batches):
    """For the infinite-head recursion: sum_full += Σ_t A_t G A_tᵀ over `count` samples t, each drawing one
    head's score normals from rng, at the full run's K̃ = C Cᵀ; sum_batches[g] += the same at batch g's own K̃,
    for the samples with (first_index + t) mod G = g. Values are integrated out: E[A φ(V) φ(V)ᵀ Aᵀ / N | A] =
    A G Aᵀ with G = K̃, or with nonlinear_values G = Φ(K̃) (gram_full (s, s), gram_batches (G, s, s)).
    Factors are (s, s) for the full run and (G, s, s) for the batches."""
    batches = chol_batches.shape[0]
    s = chol_full.shape[0]
    draws = np.empty((per_sample, LANES))
    chol = np.empty((s, s, LANES))
    gram = np.empty((s, s, LANES))
    scores = np.empty((s, s, LANES))
    head_kernel = np.empty((s, s, LANES))
    work_a = np.empty((s, s, LANES))
    work_b = np.empty((s, s, LANES))
    scratch_a = np.empty(LANES)
    scratch_b = np.empty(LANES)
    for first in range(0, count, LANES):
        lanes = min(LANES, count - first)
        draw_normals_lanes(rng, draws, lanes)
        for which in range(2):  # 0: the full run's K̃ in every lane; 1: each lane's own batch's K̃
            for lane in range(lanes):
                batch = (first_index + first + lane) % batches
                for i in range(s):
                    for j in range(s):
                        chol[i, j, lane] = chol_full[i, j] if which == 0 else chol_batches[batch, i, j]
                if nonlinear_values:
                    for i in range(s):
                        for j in range(s):
                            gram[i, j, lane] = gram_full[i, j] if which == 0 else gram_batches[batch, i, j]
            if score_mode == SCORES_GAUSSIAN:
                gaussian_scores_lanes(chol, draws, 0, scores, work_a, lanes)
            else:
                finite_head_scores_lanes(chol, draws, 0, head_dim, score_scale, scores, work_a, work_b, lanes, tied)
            attention_rows_lanes(scores, plain, map_code, inverse_temperature, bias, allowed, keys, scratch_a,
                                 scratch_b, lanes)
            head_kernel[:, :, :] = 0.0
            if nonlinear_values:
                add_sandwich_lanes(scores, gram, 1.0, work_a, head_kernel, lanes)
            else:
                add_mixed_kernel_lanes(scores, chol, 1.0, work_a, head_kernel, lanes)
            for lane in range(lanes):
                batch = (first_index + first + lane) % batches
                for i in range(s):
                    for j in range(s):
                        if which == 0:
                            sum_full[i, j] += head_kernel[i, j, lane]
                        else:
                            sum_batches[batch, i, j] += head_kernel[i, j, lane]


@numba.njit(**_JIT)
def scores_block(rng, chol, score_mode, head_dim, score_scale, per_sample, out, tied):
    """One head's random scores (count, s, s) at K̃ = C Cᵀ ((s, s)), each sample drawing its normals (Ξ, or Ξ_Q
    and Ξ_K, or Ξ_Q alone when tied) in turn: the code path of sample_block's heads."""
    count = out.shape[0]
    s = chol.shape[0]
    draws = np.empty((per_sample, LANES))
    factor = np.empty((s, s, LANES))
    scores = np.zeros((s, s, LANES))
    work_a = np.empty((s, s, LANES))
    work_b = np.empty((s, s, LANES))
    for i in range(s):
        for j in range(s):
            factor[i, j, :] = chol[i, j]
    for first in range(0, count, LANES):
        lanes = min(LANES, count - first)
        draw_normals_lanes(rng, draws, lanes)
        if score_mode == SCORES_GAUSSIAN:
            gaussian_scores_lanes(factor, draws, 0, scores, work_a, lanes)
        elif score_mode == SCORES_FINITE_HEAD:
            finite_head_scores_lanes(factor, draws, 0, head_dim, score_scale, scores, work_a, work_b, lanes, tied)
        for lane in range(lanes):
            for i in range(s):
                for j in range(s):
                    out[first + lane, i, j] = scores[i, j, lane]
