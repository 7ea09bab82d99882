"""One query of a single attention layer at long sequence length s: exact draws at finite width n and in the limit,
coupled, at a cost that does not grow with n (issue 17: s growing with n, SKI25's open question).

Layer (head dimension n, scores / sqrt(n)): tokens x_1..x_s ∈ R^n with coordinates iid N(0, Σ) across tokens
(L Lᵀ = Σ), per head q_i = W_Q x_i, k_j = W_K x_j, v_j = W_V x_j (weights N(0, 1/n)), p_1j = q_1·k_j / sqrt(n),
A_1· = map(p_1·/τ + b) (`limits.score_maps`), y_1 = H^{-1/2} Σ_h W_O^h Σ_j A^h_1j v^h_j; the target is y_1's
coordinate 0 (`attention_layer(..., inputs=...).outputs[0]`). Given the token Gram G = XᵀX/n =_d F Fᵀ,
F = L T / sqrt(n) with T Bartlett's factor of Wishart(n, I_s), each head independently has, exactly:
    p_1· = c_h F ξ_h,  c_h² = G_11 χ²_{n,h}/n,  ξ_h ~ N(0, I_s)      (Z_Kᵀ q_1 | q_1 ~ |q_1| N(0, I_s))
    y_1 coordinate 0 | all of it ~ N(0, V_n),  V_n = H⁻¹ Σ_h |Fᵀ a_h|² χ′²_{n,h}/n,  a_h = A^h_1·,
and the limit (SKI25's hierarchical Gaussian) p_1· = sqrt(Σ_11) L ξ_h, V_∞ = H⁻¹ Σ_h |Lᵀ a_h|². The limit draw
uses the same ξ_h (T/sqrt(n) → I, χ²/n → 1: common random numbers); the antithetic twin replaces T and the χ²'s
by their reflections (`netsor.random.reflect_chisquare`, as `antithetic_factor` does): exactly the finite law again.

Cost per sample: s(s − 1)/2 + H s normals and s + 2H χ² draws, and O(H s²) flops (two passes over T for all heads
and both finite draws, four triangular products by L per head and law when Σ ≠ I); nothing depends on n.
Samples come in blocks of BLOCK, each from its own random streams keyed by (seed, block), so a sample never
depends on how many were asked for or on the thread count (`netsor.parallel.map_blocks`).
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numba
import numpy as np
from numba.np.random.distributions import random_standard_normal

import netsor
from netsor import ProgramError
from netsor.compiled import any_chisquare, bartlett_chi_bits, bartlett_normal_bits, chi_constants, softmax_into
from netsor.parallel import map_blocks
from netsor.random import check_size, reflect_chisquare, seed_sequence, stream

from .score_maps import CODE_SOFTMAX, check_temperature, elementwise_weight
from .score_maps import score_map as as_score_map

__all__ = ["one_query_draws", "OneQueryDraws", "RowStats", "BLOCK", "MAX_SEQ_LEN"]

BLOCK = 256  # samples per random stream: fixed, so results never depend on chunking or threads
MAX_SEQ_LEN = 1 << 13  # the s×s Bartlett scratch per thread is 8 s² bytes (512 MiB here)
STATS = ("max_weight", "entropy", "score_norm", "score")
# spawn keys of a block's streams
_T_NORMALS, _T_CHIS, _XI, _HEAD_CHIS = 0, 1, 2, 3
_JIT = dict(cache=True, nogil=True, error_model="numpy")


# ------------------------------------------------------------------------------------------ compiled loops
@numba.njit(**_JIT)
def _draw_chis(rng_chi, rng_heads, width, heads, T, diagonals, head_chis):
    """Per sample of the block: the diagonal of its Bartlett factor (its χ stream, as `bartlett_bits` draws it)
    into diagonals[b], and 2H draws of χ²_n (per head: the query's norm, then the values') into head_chis[b]."""
    seq_len = diagonals.shape[1]
    bs, cs = chi_constants(width, seq_len)
    bh, ch = chi_constants(width, 1)
    bits_chi, bits_heads = rng_chi.bit_generator, rng_heads.bit_generator
    for b in range(diagonals.shape[0]):
        bartlett_chi_bits(bits_chi, width, bs, cs, T, 0)
        for i in range(seq_len):
            diagonals[b, i] = T[0, i, i]
        for k in range(2 * heads):
            head_chis[b, k] = any_chisquare(bits_heads, width, bh[0], ch[0])


@numba.njit(inline="always", **_JIT)
def _weights(code, logits, weights, peak, mass):
    """A = map(z) over one row of s keys (logits, weights: (s, 1))."""
    s = logits.shape[0]
    if code == CODE_SOFTMAX:
        softmax_into(logits, weights, peak, mass, 1)
    else:
        for j in range(s):
            weights[j, 0] = elementwise_weight(code, logits[j, 0], s)


@numba.njit(inline="always", **_JIT)
def _lower_times(L, x, out):
    """out = L x, L lower-triangular."""
    s = x.shape[0]
    for i in range(s):
        acc = 0.0
        for k in range(i + 1):
            acc += L[i, k] * x[k]
        out[i] = acc


@numba.njit(inline="always", **_JIT)
def _lower_transposed_times(L, x, out):
    """out = Lᵀ x, L lower-triangular (row by row through L: contiguous)."""
    s = x.shape[0]
    for j in range(s):
        out[j] = 0.0
    for i in range(s):
        xi = x[i]
        for j in range(i + 1):
            out[j] += L[i, j] * xi


@numba.njit(inline="always", **_JIT)
def _row_stats(code, scores, weights, stats, b):
    """max_weight, entropy (of A, or of |A|/Σ|A| for maps that do not normalise; 0 for a row without weight),
    score_norm = |p|²/s and score = p_11 of one head's row."""
    s = scores.shape[0]
    total, top, norm = 0.0, 0.0, 0.0
    for j in range(s):
        top = max(top, weights[j, 0])
        total += abs(weights[j, 0])
        norm += scores[j] * scores[j]
    entropy = 0.0
    if total > 0.0:
        scale = 1.0 if code == CODE_SOFTMAX else 1.0 / total
        for j in range(s):
            w = abs(weights[j, 0]) * scale
            if w > 0.0:
                entropy -= w * math.log(w)
    stats[b, 0] = top
    stats[b, 1] = entropy
    stats[b, 2] = norm / s
    stats[b, 3] = scores[0]


@numba.njit(**_JIT)
def _draw_block(rng_normal, rng_xi, width, L, identity, inv_temperature, bias, code, diagonals, head_chis,
                twin_diagonals, twin_chis, antithetic, T, finite_var, limit_var, twin_var, finite_stats, limit_stats):
    """The block's samples: Bartlett normals below T's diagonal (the diagonal from `_draw_chis`), ξ_h, then the
    finite draw, its antithetic twin (−T below the diagonal, reflected χ's) and the limit draw (module docstring)."""
    seq_len, heads = diagonals.shape[1], head_chis.shape[1] // 2
    draws = 2 if antithetic else 1  # the finite draw, and its twin
    bits_normal, bits_xi = rng_normal.bit_generator, rng_xi.bit_generator
    root_n = math.sqrt(width)
    l00 = L[0, 0]
    xi = np.empty((heads, seq_len))
    below = np.empty((heads, seq_len))  # (strictly lower part of T) ξ_h
    back = np.empty((draws * heads, seq_len))  # Lᵀ a_h of each finite draw and head
    back_below = np.empty((draws * heads, seq_len))  # (strictly lower part of T)ᵀ Lᵀ a_h
    u, p = np.empty(seq_len), np.empty(seq_len)
    logits, weights = np.empty((seq_len, 1)), np.empty((seq_len, 1))
    peak, mass = np.empty(1), np.empty(1)
    for b in range(diagonals.shape[0]):
        bartlett_normal_bits(bits_normal, seq_len, T, 0)
        for h in range(heads):
            for j in range(seq_len):
                xi[h, j] = random_standard_normal(bits_xi)
        for i in range(seq_len):  # one pass over T for every head
            for h in range(heads):
                acc = 0.0
                for j in range(i):
                    acc += T[0, i, j] * xi[h, j]
                below[h, i] = acc
        # the finite draws' scores and weights; their values need a second pass over T
        for d in range(draws):
            sign = 1.0 if d == 0 else -1.0
            diag = diagonals[b] if d == 0 else twin_diagonals[b]
            chis = head_chis[b] if d == 0 else twin_chis[b]
            for h in range(heads):
                c = l00 * diag[0] * math.sqrt(chis[2 * h]) / width  # c_h = sqrt(G_11 χ²_n / n)
                for i in range(seq_len):
                    u[i] = (sign * below[h, i] + diag[i] * xi[h, i]) / root_n  # (T/sqrt(n)) ξ_h
                if identity:
                    for i in range(seq_len):
                        p[i] = c * u[i]
                else:
                    _lower_times(L, u, p)
                    for i in range(seq_len):
                        p[i] *= c
                for j in range(seq_len):
                    logits[j, 0] = p[j] * inv_temperature + bias[j]
                _weights(code, logits, weights, peak, mass)
                if d == 0 and h == 0:
                    _row_stats(code, p, weights, finite_stats, b)
                if identity:
                    for j in range(seq_len):
                        back[d * heads + h, j] = weights[j, 0]
                else:
                    _lower_transposed_times(L, weights[:, 0], back[d * heads + h])
        for k in range(draws * heads):
            for j in range(seq_len):
                back_below[k, j] = 0.0
        for i in range(seq_len):  # the second pass over T, for every head of both finite draws
            for k in range(draws * heads):
                wi = back[k, i]
                for j in range(i):
                    back_below[k, j] += T[0, i, j] * wi
        for d in range(draws):
            sign = 1.0 if d == 0 else -1.0
            diag = diagonals[b] if d == 0 else twin_diagonals[b]
            chis = head_chis[b] if d == 0 else twin_chis[b]
            total = 0.0
            for h in range(heads):
                k = d * heads + h
                norm = 0.0
                for j in range(seq_len):
                    r = (diag[j] * back[k, j] + sign * back_below[k, j]) / root_n  # (Fᵀ a_h)_j
                    norm += r * r
                total += norm * chis[2 * h + 1] / width
            if d == 0:
                finite_var[b] = total / heads
            else:
                twin_var[b] = total / heads
        # the limit draw from the same ξ_h: p = sqrt(Σ_11) L ξ_h, V_∞ = H⁻¹ Σ_h |Lᵀ a_h|²
        total = 0.0
        for h in range(heads):
            if identity:
                for i in range(seq_len):
                    p[i] = xi[h, i]
            else:
                _lower_times(L, xi[h], p)
                for i in range(seq_len):
                    p[i] *= l00
            for j in range(seq_len):
                logits[j, 0] = p[j] * inv_temperature + bias[j]
            _weights(code, logits, weights, peak, mass)
            if h == 0:
                _row_stats(code, p, weights, limit_stats, b)
            if identity:
                for j in range(seq_len):
                    total += weights[j, 0] * weights[j, 0]
            else:
                _lower_transposed_times(L, weights[:, 0], u)
                for j in range(seq_len):
                    total += u[j] * u[j]
        limit_var[b] = total / heads


# ------------------------------------------------------------------------------------------ the public sampler
@dataclass(frozen=True)
class RowStats:
    """Statistics of head 1's attention row of query 1, one entry per sample: max_weight = max_j A_1j; entropy =
    −Σ_j A log A (softmax; other maps: of |A|/Σ|A|, and 0 for a row without weight); score_norm = |p_1·|²/s (law
    χ²_s/s in the limit when Σ = I); score = p_11."""

    max_weight: np.ndarray
    entropy: np.ndarray
    score_norm: np.ndarray
    score: np.ndarray

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in STATS:
            raise ProgramError(f"RowStats: no statistic {name!r}; they are {', '.join(STATS)}")
        return getattr(self, name)


@dataclass(frozen=True)
class OneQueryDraws:
    """Coupled draws of y_1's coordinate-0 variance (module docstring), arrays of shape (size,): `finite_var`
    (V_n), `limit_var` (V_∞ from the same ξ), `twin_var` (the antithetic twin of V_n; None without), and head 1's
    row statistics under each law (`finite_stats`, `limit_stats`). The attributes `finite_mean`, `finite_cov`, ...,
    `antithetic` are those of `netsor.CoupledDraws` (zero means, (size, 1, 1) covariances), so
    `limits.kl(draws, method="coupled")` takes it as it is."""

    seq_len: int
    width: int
    heads: int
    finite_var: np.ndarray
    limit_var: np.ndarray
    twin_var: np.ndarray | None
    finite_stats: RowStats
    limit_stats: RowStats

    @property
    def antithetic(self) -> bool:
        return self.twin_var is not None

    @property
    def finite_mean(self) -> np.ndarray:
        return np.zeros((len(self.finite_var), 1))

    @property
    def finite_cov(self) -> np.ndarray:
        return self.finite_var[:, None, None]

    @property
    def limit_mean(self) -> np.ndarray:
        return np.zeros((len(self.limit_var), 1))

    @property
    def limit_cov(self) -> np.ndarray:
        return self.limit_var[:, None, None]

    @property
    def twin_mean(self) -> np.ndarray | None:
        return None if self.twin_var is None else np.zeros((len(self.twin_var), 1))

    @property
    def twin_cov(self) -> np.ndarray | None:
        return None if self.twin_var is None else self.twin_var[:, None, None]

    def __repr__(self) -> str:
        kind = "triples (two antithetic finite draws and a limit draw)" if self.antithetic else "pairs"
        return (f"<OneQueryDraws: {len(self.finite_var)} {kind}, s = {self.seq_len}, n = {self.width}, "
                f"H = {self.heads}>")


def one_query_draws(seq_len, width, size, seed=None, heads=1, input_cov=None, score_map="softmax",
                    temperature=1.0, score_bias=None, antithetic=True, threads=None) -> OneQueryDraws:
    """Coupled exact draws of V_n (finite width n), V_∞ (limit) and, with antithetic, the twin of V_n: the
    variances of y_1's coordinate 0 given everything else (module docstring), and head 1's row statistics.

    seq_len s ≤ width n (Bartlett's factor of the s×s token Gram needs n − i ≥ 1 degrees of freedom, i < s; at
    n < s the Gram is singular and this representation does not apply); heads H finite; input_cov: the tokens' s×s
    SPD covariance Σ (None: I_s); score_map "softmax", "linear", "relu", "sigmoid" or a `limits.score_maps.ScoreMap`;
    temperature τ > 0; score_bias: the fixed logits b_1j of query 1's row (s numbers; None: 0); threads: for
    `netsor.parallel.map_blocks` (default all cores; the numbers do not depend on it).
    """
    where = "one_query_draws"
    s = _positive_int(seq_len, "seq_len", where)
    n = _positive_int(width, "width", where)
    if s > MAX_SEQ_LEN:
        raise ProgramError(f"{where}: seq_len must be at most {MAX_SEQ_LEN} (an s×s Bartlett factor per thread), "
                           f"got {s}")
    if n < s:
        raise ProgramError(f"{where}: width must be at least seq_len (the s×s token Gram's Bartlett factor needs "
                           f"n − i ≥ 1 degrees of freedom for i < s), got width {n} < seq_len {s}")
    if n > netsor.MAX_WIDTH:
        raise ProgramError(f"{where}: width must be at most 2^{netsor.MAX_WIDTH.bit_length() - 1}, got {n}")
    heads = _positive_int(heads, "heads", where)
    size = check_size(size, f"{where}: size", floats_per_item=3 + 8)
    mapping = as_score_map(score_map, where)
    temperature = check_temperature(temperature, where)
    bias = _bias_row(score_bias, s, where)
    if not isinstance(antithetic, (bool, np.bool_)):
        raise ProgramError(f"{where}: antithetic must be True or False, got {antithetic!r}")
    antithetic = bool(antithetic)
    if threads is not None:
        threads = check_size(threads, f"{where}: threads")
    if input_cov is None:
        L, identity = np.eye(s), True
    else:
        cov = netsor.check_covariance(input_cov, s, f"{where}: input_cov")
        try:
            L = np.linalg.cholesky(cov)
        except np.linalg.LinAlgError:
            raise ProgramError(f"{where}: input_cov must be positive definite") from None
        identity = bool(np.array_equal(cov, np.eye(s)))
    root = seed_sequence(seed)
    finite_var, limit_var = np.empty(size), np.empty(size)
    twin_var = np.empty(size) if antithetic else np.empty(0)
    finite_stats, limit_stats = np.empty((size, len(STATS))), np.empty((size, len(STATS)))
    reflect_dof = n - np.arange(s)

    def run(block: int) -> None:
        first, stop = block * BLOCK, min(size, (block + 1) * BLOCK)
        T = np.empty((1, s, s))  # only its lower triangle is written and read
        diagonals, head_chis = np.empty((stop - first, s)), np.empty((stop - first, 2 * heads))
        _draw_chis(stream(root, block, _T_CHIS), stream(root, block, _HEAD_CHIS), n, heads, T, diagonals, head_chis)
        if antithetic:
            twin_diagonals = np.sqrt(reflect_chisquare(diagonals ** 2, reflect_dof))
            twin_chis = reflect_chisquare(head_chis, n)
        else:
            twin_diagonals, twin_chis = diagonals, head_chis  # unused
        _draw_block(stream(root, block, _T_NORMALS), stream(root, block, _XI), n, L, identity, 1.0 / temperature,
                    bias, mapping.code, diagonals, head_chis, twin_diagonals, twin_chis, antithetic, T,
                    finite_var[first:stop], limit_var[first:stop], twin_var[first:stop] if antithetic else twin_var,
                    finite_stats[first:stop], limit_stats[first:stop])

    for _ in map_blocks(run, range(-(-size // BLOCK)), threads=threads):
        pass
    as_stats = lambda a: RowStats(*(np.ascontiguousarray(a[:, k]) for k in range(len(STATS))))  # noqa: E731
    return OneQueryDraws(s, n, heads, finite_var, limit_var, twin_var if antithetic else None,
                         as_stats(finite_stats), as_stats(limit_stats))


def _positive_int(value, name: str, where: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or value < 1:
        raise ProgramError(f"{where}: {name} must be a positive integer, got {value!r}")
    return int(value)


def _bias_row(value, seq_len: int, where: str) -> np.ndarray:
    """None or s finite numbers (query 1's fixed logits) → a float array of length s."""
    if value is None:
        return np.zeros(seq_len)
    try:
        row = np.array(value, dtype=float)
    except (TypeError, ValueError):
        raise ProgramError(f"{where}: score_bias must be {seq_len} numbers (query 1's row)") from None
    if row.shape != (seq_len,) or not np.all(np.isfinite(row)):
        raise ProgramError(f"{where}: score_bias must be {seq_len} finite numbers (query 1's row), got shape "
                           f"{row.shape}")
    return row
