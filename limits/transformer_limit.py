"""The nested infinite-width limit of a pre-LN transformer at initialisation, as a law of s×s token kernels.

Width n → ∞ first, block by block, conditionally on the attention scores of earlier blocks (README, *Netsor
programs and their limits*: a conjecture the engine checks against finite width, never assumes). The tokens'
kernel K_ij = lim x_i·x_j / n then follows, with branch scale c = β₀ L^{−α} (L = depth, α = residual_exponent):

    for ℓ = 1..L:  K̃ = D^{-1/2} K D^{-1/2}, D = diag K                    LayerNorm without mean subtraction
                   K ← K + c² H⁻¹ Σ_h A_h G_h A_hᵀ,  A_h = row-softmax(p_h)   H attention heads
                   K ← K + c² w₂ Φ(LN(K)),  Φ_ij = E[φ(g_i) φ(g_j)], g ~ N(0, LN(K)),  w₂ = 1/E[φ(Z)²]   MLP

Per head, independently given K̃ (README, *Attention regimes*; C Cᵀ = K̃, every Ξ iid N(0, 1)):
    head dimension ∝ n, scores / n^{1/2}:       p = C Ξ Cᵀ (Cov(p_ij, p_kl) = K̃_ik K̃_jl),  G = K̃
    head dimension ∝ n, scores / n^a, a > 1/2:  p = 0 (uniform attention),                  G = K̃
    head dimension N, scores / N^a:             p = (C Ξ_Q)(C Ξ_K)ᵀ / N^a,                  G = C Ξ_V Ξ_Vᵀ Cᵀ / N
The readout f = W_out · mean_i x_i is N(0, k_pool) given the scores, k_pool = mean_ij K^L_ij (`pooled_variance`).
As H → ∞ the head average concentrates and the recursion is deterministic: K ← K + c² E_p[A G Aᵀ]
(`kernel_recursion`, the expectation by Monte Carlo with a standard error).

Attention variants, the same in every block (`limits.score_maps`, `limits.blocks.Variants`): the mixing is linear in
A, so a variant only changes how A is made from p, or what G is:
    mask, score_map, temperature τ, score_bias b:  A_i = map(p_i/τ + b_i) over the allowed keys S_i, 0 elsewhere
        (softmax | linear z | relu max(z, 0)/t_i | sigmoid(z)/t_i); with p = 0 (a > 1/2): A = map(b), deterministic
    tied_qk (W_K = W_Q):  head dimension ∝ n: p = K̃ at a = 1 (deterministic), p = 0 at a > 1, refused at a < 1
        (the scores diverge); head dimension N: p = (C Ξ_Q)(C Ξ_Q)ᵀ / N^a
    value_nonlinearity φ:  G = Φ(K̃), Φ_ij = E[φ(g_i)φ(g_j)], g ~ N(0, K̃) (head dimension ∝ n; no w₂), or
        G = φ(C Ξ_V) φ(C Ξ_V)ᵀ / N (head dimension N); φ one of the MLP's compiled nonlinearities
When p is deterministic every head is the same and the whole recursion is deterministic.

Random streams: the normals of samples b·4096 … (b+1)·4096 − 1 come from one numpy Generator keyed by (seed, b),
drawn sample by sample in a fixed order, so a sample never depends on how many were requested or on threads.

What netsor owns is taken from netsor: the MLP nonlinearity is a `netsor.Nonlinearity` (the kernels apply it by its
`code`, the clip bound is its `parameter`), E[φ(Z)²] is its registered closed form or netsor's limit with its error
bound, the Cholesky rank rule is `netsor.compiled.RANK_RTOL`, the softmax `netsor.compiled.softmax_into`, the
Gauss–Hermite rule `netsor.quadrature.hermite_rule`, the random streams `netsor.random`.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import special

import netsor
from netsor import Clip, Nonlinearity, ProgramError
from netsor.compiled import CODE_CLIP, CODE_IDENTITY, CODE_NONE, cholesky_lanes
from netsor.parallel import map_blocks
from netsor.quadrature import hermite_rule
from netsor.random import check_size, seed_sequence, stream

from . import _transformer_kernels as compiled
from .score_maps import CODE_SOFTMAX, SOFTMAX, ScoreMap, check_mask, check_score_bias, check_temperature
from .score_maps import score_map as as_score_map

__all__ = ["sample_kernels", "kernel_recursion", "KernelRecursion", "pooled_variance", "sample_scores", "mlp_kernel",
           "mlp_weight"]

BLOCK = 4096  # samples per random stream: fixed, so results never depend on chunking
RECURSION_BATCHES = 32  # independent sub-runs of kernel_recursion whose spread gives its standard error
RECURSION_SAMPLES = 1 << 20
HERMITE_ORDER = 64  # 2-D Gauss–Hermite rule for tanh and gelu ...
HERMITE_WEIGHT_FLOOR = 1e-17  # ... without the nodes whose weight is below this (42 of the 64 remain)
LEGENDRE_ORDER = 16  # nodes per piece of the piecewise Gauss–Legendre rule for clip
SECOND_MOMENT_TOLERANCE = 1e-10  # largest accepted error bound of netsor's E[φ(Z)²] where φ has no closed form
MLP_NAMES = "identity, relu, erf, tanh, gelu, clip(c)"  # the nonlinearities the compiled kernels implement


# ------------------------------------------------------------------------------------------ arguments
@dataclass(frozen=True)
class Mlp:
    """An MLP branch: its netsor nonlinearity (None: no MLP), E[φ(Z)²] and w₂ = 1/E[φ(Z)²]."""

    phi: Nonlinearity | None
    second_moment: float  # E[φ(Z)²], Z ~ N(0, 1): Φ's diagonal on a correlation matrix

    @property
    def code(self) -> int:
        """φ's code for the compiled kernels (`Nonlinearity.code`); CODE_NONE for no MLP."""
        return CODE_NONE if self.phi is None else self.phi.code

    @property
    def bound(self) -> float:
        """The clip bound c (`Nonlinearity.parameter` of clip(c)); unused by the other kernels."""
        return self.phi.parameter if self.code == CODE_CLIP else 0.0

    @property
    def weight(self) -> float:
        return 0.0 if self.phi is None else 1.0 / self.second_moment


@dataclass(frozen=True)
class Attention:
    """The checked attention variants of every block: how A is made from p, the values' nonlinearity, tied W_K."""

    mask: np.ndarray | None = None  # s×s bool, read-only; None: every query sees every key
    score_map: ScoreMap = SOFTMAX
    temperature: float = 1.0
    score_bias: np.ndarray | None = None  # s×s float, read-only; None: no bias
    values: Mlp = Mlp(None, 0.0)  # φ of the values (phi None: linear values)
    tied: bool = False

    @property
    def plain(self) -> bool:
        """Softmax of p itself over all keys: the compiled kernels' original loops."""
        return self.score_map.code == CODE_SOFTMAX and self.mask is None and self.temperature == 1.0 \
            and self.score_bias is None

    def compiled_args(self, s: int) -> tuple:
        """(plain, map_code, inverse_temperature, bias, allowed, keys, tied) for the compiled kernels (writable
        copies: numba compiles read-only arrays as another type, so each kernel is compiled once)."""
        allowed = np.ones((s, s), bool) if self.mask is None else np.array(self.mask, dtype=bool)
        bias = np.zeros((s, s)) if self.score_bias is None else np.array(self.score_bias, dtype=float)
        return (self.plain, self.score_map.code, 1.0 / self.temperature, bias, allowed,
                allowed.sum(axis=1).astype(float), self.tied)

    def value_args(self) -> tuple:
        """(value_code, value_bound, value_second_moment); CODE_NONE for linear values."""
        values = self.values
        return values.code, values.bound, values.second_moment if values.phi is not None else 1.0


@dataclass(frozen=True)
class Architecture:
    """A checked transformer: input kernel (s×s), depth, heads, score law, branch weight c², MLP, variants."""

    input_kernel: np.ndarray
    depth: int
    heads: float
    head_dim: int | None
    score_mode: int
    score_scale: float  # N^{-a} for a fixed head dimension N
    branch_weight: float  # c² = β₀² L^{−2α}
    mlp: Mlp
    attention: Attention = Attention()

    @property
    def tokens(self) -> int:
        return self.input_kernel.shape[0]

    def normals_per_head(self, with_values: bool = True) -> int:
        """Normals one head consumes: Ξ (s²), or Ξ_Q, Ξ_K (Ξ_Q alone when tied) and Ξ_V of s × N each, or none
        for deterministic scores."""
        s = self.tokens
        if self.score_mode == compiled.SCORES_GAUSSIAN:
            return s * s
        if self.score_mode == compiled.SCORES_FINITE_HEAD:
            return ((1 if self.attention.tied else 2) + (1 if with_values else 0)) * s * self.head_dim
        return 0

    def compiled_args(self) -> tuple:
        return self.attention.compiled_args(self.tokens)


def _fail(where: str, message: str):
    raise ProgramError(f"{where}: {message}")


def _positive_int(value, name: str, where: str, allow_inf: bool = False):
    if allow_inf and isinstance(value, float) and math.isinf(value) and value > 0:
        return math.inf
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        _fail(where, f"{name} must be a positive integer{' or math.inf' if allow_inf else ''}, got {value!r}")
    return int(value)


def _finite_real(value, name: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        _fail(where, f"{name} must be a finite real number, got {value!r}")
    return float(value)


def _spd_kernel(value, where: str) -> np.ndarray:
    """A finite, symmetric, positive-definite s×s matrix (s ≥ 1), or ProgramError naming input_kernel."""
    try:
        kernel = np.array(value, dtype=float)
    except (TypeError, ValueError):
        _fail(where, "input_kernel must be a numeric s×s matrix")
    if kernel.ndim != 2 or kernel.shape[0] != kernel.shape[1] or kernel.shape[0] == 0:
        _fail(where, f"input_kernel must be a square s×s matrix, got shape {kernel.shape}")
    if not np.all(np.isfinite(kernel)):
        _fail(where, "input_kernel holds NaN or inf")
    scale = np.abs(kernel).max()
    if not np.allclose(kernel, kernel.T, rtol=0.0, atol=1e-12 * scale):
        _fail(where, "input_kernel is not symmetric")
    kernel = (kernel + kernel.T) / 2
    if np.linalg.eigvalsh(kernel).min() <= 0.0:
        _fail(where, "input_kernel is not positive definite")
    kernel.setflags(write=False)
    return kernel


@lru_cache(maxsize=None)
def _second_moment(phi: Nonlinearity) -> float:
    """E[φ(Z)²], Z ~ N(0, 1): φ's registered closed form E[φ(u)φ(v)] at unit variances and covariance (identity,
    relu, erf); for clip(c), whose product netsor has no closed form for, E[Z²; |Z| < c] + c² P(|Z| > c); else
    netsor's limit of φ(z) for an input z of variance 1 (Gauss–Hermite quadrature), whose error bound must be
    below SECOND_MOMENT_TOLERANCE."""
    closed_form = phi.closed_form_product(phi)
    if closed_form is not None:
        return float(closed_form(1.0, 1.0, 1.0))
    if isinstance(phi, Clip):
        bound = phi.parameter
        tail = special.ndtr(-bound)
        density = math.exp(-bound * bound / 2) / math.sqrt(2 * math.pi)
        return float((1.0 - 2.0 * tail) - 2.0 * bound * density + 2.0 * bound * bound * tail)
    program = netsor.Program("second-moment")
    z = program.input("z", var=1.0)
    y = netsor.nonlin(phi, z, name="phi_z")
    value, error = netsor.limit(program).kernel([y], error=True)
    if not float(error[0, 0]) < SECOND_MOMENT_TOLERANCE:
        raise ProgramError(f"mlp {phi.name}: netsor's E[φ(Z)²] = {float(value[0, 0]):g} has error bound "
                           f"{float(error[0, 0]):g}, above {SECOND_MOMENT_TOLERANCE:g}")
    return float(value[0, 0])


def _nonlinearity(mlp, where: str, name: str = "mlp") -> Nonlinearity:
    """A name ("relu", "clip(1.5)", …) resolved by netsor's own parsing (`netsor.as_nonlinearity`),
    or a netsor Nonlinearity as it is; ProgramError naming the argument (mlp) for anything else."""
    if isinstance(mlp, Nonlinearity):
        return mlp
    if not isinstance(mlp, str):
        got = f"the callable {mlp!r}, which has no compiled kernel" if callable(mlp) else repr(mlp)
        _fail(where, f"{name} must be a nonlinearity name ({MLP_NAMES}), a netsor Nonlinearity with a compiled "
                     f"kernel, or None; got {got}")
    try:
        return netsor.as_nonlinearity(mlp, 1)  # netsor's own parsing of names
    except ProgramError as exc:
        raise ProgramError(f"{where}: {name} {mlp!r}: {exc}") from None


def _mlp(mlp, where: str, name: str = "mlp") -> Mlp:
    """None, a name ("relu", "clip(1.5)", …) or a netsor Nonlinearity → a checked Mlp. Dispatch is by the
    nonlinearity's code, never its name: a nonlinearity whose code the compiled kernels do not implement (a
    user's callable, square, leaky_relu(a)) is a ProgramError naming the argument (mlp, value_nonlinearity)."""
    if mlp is None:
        return Mlp(None, 0.0)
    phi = _nonlinearity(mlp, where, name)
    if phi.arity != 1 or phi.code not in compiled.IMPLEMENTED_CODES:
        _fail(where, f"{name} {phi.name} has no compiled kernel here (Nonlinearity.code {phi.code}); the kernels "
                     f"implement {MLP_NAMES}")
    try:
        return Mlp(phi, _second_moment(phi))
    except ProgramError as exc:
        raise ProgramError(f"{where}: {exc}") from None


def _attention(where: str, tokens: int, tied_qk, mask, score_map, temperature, score_bias,
               value_nonlinearity) -> Attention:
    """The variant arguments → an Attention, by `limits.score_maps`' checks; ProgramError names the bad one."""
    if not isinstance(tied_qk, (bool, np.bool_)):
        _fail(where, f"tied_qk must be True or False, got {tied_qk!r}")
    values = _mlp(value_nonlinearity, where, "value_nonlinearity")
    if values.code == CODE_IDENTITY:
        values = Mlp(None, 0.0)  # φ(v) = v: G = K̃ (or V Vᵀ/N) exactly, by the linear-value loops
    return Attention(check_mask(mask, tokens, tokens, where), as_score_map(score_map, where),
                     check_temperature(temperature, where), check_score_bias(score_bias, tokens, tokens, where),
                     values, bool(tied_qk))


def _architecture(where: str, input_kernel, depth, heads, head_dim, score_exponent, residual_exponent, beta0,
                 mlp, tied_qk=False, mask=None, score_map=SOFTMAX, temperature=1.0, score_bias=None,
                 value_nonlinearity=None) -> Architecture:
    """Check every argument of a transformer; ProgramError names the first bad one."""
    kernel = _spd_kernel(input_kernel, where)
    depth = _positive_int(depth, "depth", where)
    heads = _positive_int(heads, "heads", where, allow_inf=True)
    if head_dim is not None:
        head_dim = _positive_int(head_dim, "head_dim", where)
    score_exponent = _finite_real(score_exponent, "score_exponent", where)
    residual_exponent = _finite_real(residual_exponent, "residual_exponent", where)
    beta0 = _finite_real(beta0, "beta0", where)
    if beta0 < 0:
        _fail(where, f"beta0 must be non-negative, got {beta0!r}")
    attention = _attention(where, kernel.shape[0], tied_qk, mask, score_map, temperature, score_bias,
                           value_nonlinearity)
    if head_dim is not None:
        mode, scale = compiled.SCORES_FINITE_HEAD, float(head_dim) ** -score_exponent
    elif attention.tied:
        if abs(score_exponent - 1.0) < 1e-12:
            mode, scale = compiled.SCORES_KERNEL, 1.0  # q_i·q_j / n → K̃_ij
        elif score_exponent > 1.0:
            mode, scale = compiled.SCORES_ZERO, 0.0  # q_i·q_j / n^a = O(n^{1 − a}) → 0
        else:
            _fail(where, f"tied_qk (W_K = W_Q) with head_dim=None needs score_exponent ≥ 1: at {score_exponent!r} "
                         f"the scores q_i·q_j / n^a have mean n^(1 − a)·K̃_ij and diverge")
    elif abs(score_exponent - 0.5) < 1e-12:
        mode, scale = compiled.SCORES_GAUSSIAN, 1.0
    elif score_exponent > 0.5:
        mode, scale = compiled.SCORES_ZERO, 0.0  # q·k / n^a = O(n^{1/2 − a}) → 0
    else:
        _fail(where, f"score_exponent must be ≥ 1/2 with head_dim=None (head dimension ∝ n): at "
                     f"{score_exponent!r} the scores diverge like n^(1/2 − a)")
    branch_weight = beta0 ** 2 * float(depth) ** (-2.0 * residual_exponent)
    return Architecture(kernel, depth, heads, head_dim, mode, scale, branch_weight, _mlp(mlp, where), attention)


# ------------------------------------------------------------------------------------------ quadrature rules
@lru_cache(maxsize=None)
def _rules() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """netsor's Gauss–Hermite nodes and weights for E[f(Z)], Z ~ N(0, 1) (negligible weights dropped), and the
    Gauss–Legendre rule on [−1, 1]."""
    nodes, weights = hermite_rule(HERMITE_ORDER)
    keep = weights > HERMITE_WEIGHT_FLOOR
    legendre_nodes, legendre_weights = np.polynomial.legendre.leggauss(LEGENDRE_ORDER)
    rules = (np.ascontiguousarray(nodes[keep]), np.ascontiguousarray(weights[keep]), legendre_nodes, legendre_weights)
    for rule in rules:
        rule.setflags(write=False)
    return rules


def mlp_kernel(correlation, mlp) -> np.ndarray:
    """Φ_ij = E[φ(g_i) φ(g_j)], g ~ N(0, K̃), for a correlation matrix K̃ (unit diagonal, as LayerNorm makes it).

    Closed forms on the correlation ρ: identity ρ; relu (sqrt(1 − ρ²) + (π − arccos ρ) ρ)/(2π) (arc-cosine);
    erf (2/π) arcsin(2ρ/3). tanh, gelu: a 2-D Gauss–Hermite rule of order 64 (42 nodes per axis after dropping
    weights below 1e-17) through the Cholesky factor of [[1, ρ], [ρ, 1]]; measured error against adaptive
    quadrature ≤ 3e-9 for tanh (largest near |ρ| = 1; order 40 would give 4e-7) and ≤ 1e-15 for gelu.
    clip(c): the same Cholesky split, but the inner expectation over the second coordinate in closed form and
    the outer one by 16-node Gauss–Legendre on pieces split at the kinks ±c and graded towards the smoothed kink
    at ±c/|ρ| (a Gauss–Hermite rule across a kink converges only algebraically: error 1e-2 at order 40);
    measured error ≤ 1e-15 for |ρ| ≤ 0.99999, c ∈ {0.3, 1, 3}. The diagonal is E[φ(Z)²] (netsor's closed form,
    the clip formula, or netsor's limit for tanh and gelu, error bound < 1e-10).
    mlp: a name ("relu", "clip(1.5)", …) or a netsor Nonlinearity with a compiled kernel (`netsor.relu`, …).
    """
    spec = _mlp(mlp, "mlp_kernel")
    if spec.phi is None:
        raise ProgramError("mlp_kernel: mlp must be a nonlinearity, not None")
    try:
        correlation = np.array(correlation, dtype=float)
    except (TypeError, ValueError):
        raise ProgramError("mlp_kernel: correlation must be a numeric s×s matrix") from None
    if correlation.ndim != 2 or correlation.shape[0] != correlation.shape[1]:
        raise ProgramError(f"mlp_kernel: correlation must be a square matrix, got shape {correlation.shape}")
    if not np.all(np.isfinite(correlation)) or not np.allclose(np.diag(correlation), 1.0, rtol=0, atol=1e-12) \
            or not np.allclose(correlation, correlation.T, rtol=0, atol=1e-12) or np.abs(correlation).max() > 1 + 1e-12:
        raise ProgramError("mlp_kernel: correlation must be symmetric with unit diagonal and entries in [−1, 1]")
    out = np.empty(correlation.shape + (1,))
    compiled.mlp_kernel_lanes(np.ascontiguousarray(correlation[:, :, None]), spec.code, spec.bound,
                              spec.second_moment, *_rules(), out, 1)
    return out[:, :, 0]


def mlp_weight(mlp) -> float:
    """w₂ = 1/E[φ(Z)²], the MLP output scale that gives the branch unit variance (2 for relu)."""
    spec = _mlp(mlp, "mlp_weight")
    if spec.phi is None:
        raise ProgramError("mlp_weight: mlp must be a nonlinearity, not None")
    return spec.weight


# ------------------------------------------------------------------------------------------ compiled helpers, blocks
def _map_blocks(work, blocks: int) -> list:
    """[work(b) for b in range(blocks)] on netsor's block runner (the compiled kernels release the GIL)."""
    return list(map_blocks(work, range(blocks)))


def _block_range(block: int, total: int) -> tuple[int, int]:
    return block * BLOCK, min(total, (block + 1) * BLOCK)


def _layer_norm_lanes(kernels: np.ndarray) -> np.ndarray:
    """LN of every lane of a lanes-last stack (s, s, m)."""
    out = np.empty_like(kernels)
    compiled.layer_norm_lanes(kernels, out, np.empty(kernels.shape[1:]), kernels.shape[2])
    return out


def _cholesky_lanes(matrices: np.ndarray) -> np.ndarray:
    """Cholesky factor of every lane of a lanes-last stack (s, s, m)."""
    lanes = matrices.shape[2]
    out = np.empty_like(matrices)
    cholesky_lanes(matrices, 0, lanes, out, np.empty(lanes))
    return out


# ------------------------------------------------------------------------------------------ public samplers
def sample_kernels(input_kernel, depth, heads, head_dim=None, score_exponent=0.5, residual_exponent=0.5, beta0=1.0,
                   mlp="relu", size=1, seed=None, per_block=False, tied_qk=False, mask=None, score_map=SOFTMAX,
                   temperature=1.0, score_bias=None, value_nonlinearity=None) -> np.ndarray:
    """Draws of the final token kernel K^L (size, s, s) of independent networks; with per_block, the kernel
    before block 1 and after each block (size, depth + 1, s, s).

    K ← K + (c²/H) Σ_h A_h G_h A_hᵀ then K ← K + c² w₂ Φ(LN(K)) per block (module docstring). heads = math.inf
    gives the deterministic kernel_recursion (2^20 Monte Carlo draws per block) repeated for every sample.
    mlp: None, "identity", "relu", "erf", "tanh", "gelu", "clip(c)", or the netsor Nonlinearity of one of them.
    Variants (module docstring; the same in every block): tied_qk (W_K = W_Q), mask (None, "causal" or an s×s bool
    array), score_map (a `limits.score_maps.ScoreMap` or its name), temperature τ > 0, score_bias (s×s, e.g.
    `limits.score_maps.alibi`), value_nonlinearity (None or one of the mlp nonlinearities, applied to the values).
    The default (untied softmax, no mask, τ = 1, no bias, linear values) draws exactly what it always drew.
    """
    where = "sample_kernels"
    arch = _architecture(where, input_kernel, depth, heads, head_dim, score_exponent, residual_exponent, beta0, mlp,
                         tied_qk, mask, score_map, temperature, score_bias, value_nonlinearity)
    size = check_size(size, f"{where}: size")
    if not isinstance(per_block, (bool, np.bool_)):
        _fail(where, f"per_block must be True or False, got {per_block!r}")
    root = seed_sequence(seed)
    if math.isinf(arch.heads):
        kernels = _recursion(arch, RECURSION_SAMPLES, root, where).kernels
        return np.repeat((kernels if per_block else kernels[-1])[None], size, axis=0)

    s = arch.tokens
    out = np.empty((size, arch.depth + 1 if per_block else 1, s, s))
    per_sample = arch.depth * arch.heads * arch.normals_per_head()
    rules = _rules()
    mlp_spec = arch.mlp
    variant_args = arch.compiled_args() + arch.attention.value_args()

    def run(block: int) -> None:
        first, stop = _block_range(block, size)
        compiled.sample_block(stream(root, block), arch.input_kernel, arch.depth, arch.heads, arch.branch_weight,
                              arch.score_mode, arch.head_dim or 0, arch.score_scale, mlp_spec.code, mlp_spec.bound,
                              mlp_spec.weight, mlp_spec.second_moment, *rules, per_sample, out[first:stop],
                              *variant_args)

    _map_blocks(run, -(-size // BLOCK))
    _check_finite(out, arch, where)
    return out if per_block else out[:, 0]


def _check_finite(kernels: np.ndarray, arch: Architecture, where: str) -> None:
    """Refuse (never return) a kernel that overflowed: logits p/τ + b too large for an unnormalised score map."""
    if np.isfinite(kernels).all():
        return
    attention = arch.attention
    bias = 0.0 if attention.score_bias is None else float(np.abs(attention.score_bias).max())
    _fail(where, f"the token kernel overflowed to inf or NaN: the logits p/τ + b (temperature "
                 f"{attention.temperature:g}, largest |score_bias| {bias:g}) are too large for the "
                 f"{attention.score_map.name} score map, or beta0 is (branch weight c² = {arch.branch_weight:g})")


def pooled_variance(kernels) -> np.ndarray:
    """k_pool = mean_ij K_ij for every kernel in a stack (…, s, s): the variance of f = W_out · mean_i x_i."""
    return np.asarray(kernels, dtype=float).mean(axis=(-2, -1))


def sample_scores(input_kernel, head_dim=None, score_exponent=0.5, size=1, seed=None, tied_qk=False) -> np.ndarray:
    """One head's scores (size, s, s) in block 1, at K̃ = LN(input_kernel), drawn by the same compiled code as
    sample_kernels: p = C Ξ Cᵀ (head_dim None, a = 1/2), 0 (a > 1/2; tied: a > 1), K̃ (tied, a = 1), or
    (C Ξ_Q)(C Ξ_K)ᵀ / N^a (tied: Ξ_K = Ξ_Q). The scores before any mask, temperature, bias or score map."""
    where = "sample_scores"
    arch = _architecture(where, input_kernel, 1, 1, head_dim, score_exponent, 0.0, 1.0, None, tied_qk)
    size = check_size(size, f"{where}: size")
    root = seed_sequence(seed)
    correlation = _layer_norm_lanes(arch.input_kernel[:, :, None])
    if arch.score_mode == compiled.SCORES_KERNEL:
        return np.repeat(correlation[:, :, 0][None], size, axis=0)
    chol = np.ascontiguousarray(_cholesky_lanes(correlation)[:, :, 0])
    per_sample = arch.normals_per_head(with_values=False)
    s = arch.tokens
    out = np.empty((size, s, s))

    def run(block: int) -> None:
        first, stop = _block_range(block, size)
        compiled.scores_block(stream(root, block), chol, arch.score_mode, arch.head_dim or 0, arch.score_scale,
                              per_sample, out[first:stop], arch.attention.tied)

    _map_blocks(run, -(-size // BLOCK))
    return out


# ------------------------------------------------------------------------------------------ infinitely many heads
@dataclass(frozen=True)
class KernelRecursion:
    """The H → ∞ kernel before block 1 and after each block (depth + 1, s, s), with the Monte Carlo standard error
    of each entry (0 where the recursion is exact), and the pooled readout variance mean_ij K^L_ij with its SE."""

    kernels: np.ndarray
    se: np.ndarray
    pooled: float
    pooled_se: float
    samples: int


def kernel_recursion(input_kernel, depth, head_dim=None, score_exponent=0.5, residual_exponent=0.5, beta0=1.0,
                     mlp="relu", samples=RECURSION_SAMPLES, seed=0, tied_qk=False, mask=None, score_map=SOFTMAX,
                     temperature=1.0, score_bias=None, value_nonlinearity=None) -> KernelRecursion:
    """The infinite-head limit: K ← K + c² E_p[A G Aᵀ] then K ← K + c² w₂ Φ(LN(K)) per block, deterministic.

    E_p is a Monte Carlo mean over `samples` draws of one head's scores per block (the values are integrated
    out: E[φ(V) φ(V)ᵀ / N] = G = K̃, or Φ(K̃) for nonlinear values); deterministic scores (p = 0, or p = K̃ for
    tied W_K = W_Q at a = 1) make it exact. The standard error comes from 32 independent sub-runs of the whole
    recursion, sample t feeding sub-run t mod 32 (sd of the sub-runs / sqrt(32)); it includes the propagation of
    earlier blocks' errors through later ones, to first order. Variants as in `sample_kernels`.
    """
    where = "kernel_recursion"
    arch = _architecture(where, input_kernel, depth, math.inf, head_dim, score_exponent, residual_exponent, beta0,
                         mlp, tied_qk, mask, score_map, temperature, score_bias, value_nonlinearity)
    samples = _positive_int(samples, "samples", where)
    if samples < 2 * RECURSION_BATCHES:
        _fail(where, f"samples must be at least {2 * RECURSION_BATCHES} (the standard error needs "
                     f"{RECURSION_BATCHES} sub-runs of two draws), got {samples}")
    return _recursion(arch, samples, seed_sequence(seed), where)


def _value_grams(arch: Architecture, correlations: np.ndarray) -> np.ndarray | None:
    """G = Φ(K̃) of the values' nonlinearity for every lane of (s, s, m); None for linear values (G = K̃)."""
    values = arch.attention.values
    if values.phi is None:
        return None
    grams = np.empty_like(correlations)
    compiled.mlp_kernel_lanes(correlations, values.code, values.bound, values.second_moment, *_rules(), grams,
                              correlations.shape[2])
    return grams


def _head_kernel_means(arch: Architecture, correlations: np.ndarray, samples: int, root, layer: int) -> np.ndarray:
    """E_p[A G Aᵀ] for each K̃ in the lanes-last stack correlations (s, s, 1 + G): lane 0 from all samples, lane
    1 + g from the samples t ≡ g (mod G), every K̃ driven by the same normals (exact for deterministic scores)."""
    s, _, lanes = correlations.shape
    batches = lanes - 1
    means = np.zeros_like(correlations)
    grams = _value_grams(arch, correlations)
    variant_args = arch.compiled_args()
    if arch.score_mode in compiled.DETERMINISTIC_MODES:
        if arch.score_mode == compiled.SCORES_ZERO and arch.attention.plain and grams is None:
            compiled.add_uniform_kernel_lanes(correlations, 1.0, means, lanes)
        else:
            compiled.add_deterministic_kernel_lanes(correlations, correlations if grams is None else grams,
                                                    arch.score_mode, 1.0, *variant_args[:6], np.empty_like(means),
                                                    np.empty_like(means), np.empty(lanes), np.empty(lanes), means,
                                                    lanes)
        return means
    factors = _cholesky_lanes(correlations)
    chol_full = np.ascontiguousarray(factors[:, :, 0])
    chol_batches = np.ascontiguousarray(factors[:, :, 1:].transpose(2, 0, 1))
    if grams is None:
        gram_full, gram_batches = chol_full, chol_batches  # unused by the linear-value loops
    else:
        gram_full = np.ascontiguousarray(grams[:, :, 0])
        gram_batches = np.ascontiguousarray(grams[:, :, 1:].transpose(2, 0, 1))
    per_sample = arch.normals_per_head(with_values=False)

    def run(block: int):
        first, stop = _block_range(block, samples)
        sum_full, sum_batches = np.zeros((s, s)), np.zeros((batches, s, s))
        compiled.head_kernel_sums(stream(root, layer, block), stop - first, chol_full, chol_batches,
                                  arch.score_mode, arch.head_dim or 0, arch.score_scale, per_sample, first,
                                  sum_full, sum_batches, *variant_args, grams is not None, gram_full, gram_batches)
        return sum_full, sum_batches

    for sum_full, sum_batches in _map_blocks(run, -(-samples // BLOCK)):  # added in block order: deterministic
        means[:, :, 0] += sum_full
        means[:, :, 1:] += sum_batches.transpose(1, 2, 0)
    counts = np.concatenate([[samples], np.bincount(np.arange(samples) % batches, minlength=batches)])
    return means / counts


def _recursion(arch: Architecture, samples: int, root, where: str) -> KernelRecursion:
    """Run the full recursion (lane 0) and its G sub-runs (lanes 1..G) side by side, block by block."""
    s = arch.tokens
    lanes = 1 + RECURSION_BATCHES
    kernels = np.repeat(np.array(arch.input_kernel)[:, :, None], lanes, axis=2)
    history = [kernels.copy()]
    correlation, branch, inverse_sd = np.empty((s, s, lanes)), np.empty((s, s, lanes)), np.empty((s, lanes))
    for layer in range(arch.depth):
        kernels += arch.branch_weight * _head_kernel_means(arch, _layer_norm_lanes(kernels), samples, root, layer)
        if arch.mlp.phi is not None:
            compiled.add_mlp_branch_lanes(kernels, arch.branch_weight * arch.mlp.weight, arch.mlp.code,
                                          arch.mlp.bound, arch.mlp.second_moment, *_rules(), correlation, branch,
                                          inverse_sd, lanes)
        history.append(kernels.copy())
    history = np.stack(history).transpose(3, 0, 1, 2)  # (1 + G, depth + 1, s, s)
    _check_finite(history, arch, where)
    spread = history[1:].std(axis=0, ddof=1) / math.sqrt(RECURSION_BATCHES)
    pooled = pooled_variance(history[:, -1])
    return KernelRecursion(kernels=history[0], se=spread, pooled=float(pooled[0]),
                           pooled_se=float(pooled[1:].std(ddof=1) / math.sqrt(RECURSION_BATCHES)), samples=samples)
