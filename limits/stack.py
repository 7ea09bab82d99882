"""A pre-LN transformer at initialisation as a Netsor program, in the parameterisation of BCP24.

Tokens x⁰_1..x⁰_s (width n). Block ℓ = 1..L, with branch scale c = beta0 · L^(−α_L):
    u_i = LN(x_i) = x_i / sqrt((1/n)|x_i|²)
    per head h: q_i = W_Q u_i, k_j = W_K u_j, v_j = W_V u_j (head dimension d = n, or a fixed N),
                p_ij = q_i·k_j / d^(α_A), A_i = softmax(p_i), o_i = W_O Σ_j A_ij v_j
    x_i ← x_i + c · H^{-1/2} Σ_h o^h_i                          (attention branch)
    x_i ← x_i + c · W_2 φ(W_1 LN(x_i))                          (MLP branch, optional)
readout f = W_out (1/s) Σ_i x^L_i, coordinate 0 the network output. All matrices have N(0, 1/fan_in) entries
except W_2, whose variance 1/E[φ(Z)²] gives the MLP branch unit variance.

The infinite-width law is derived from the program by `netsor.limit`: scores of block 1 are Gaussian (SKI25),
scores of block ℓ > 1 Gaussian conditional on the earlier random scalars with the conditional covariance (a
conjecture, checked against finite width by `kl_vs_width`). `nested_kernels` samples the same law at
the level of s×s token kernels (`limits.transformer_limit`, compiled), an independent derivation that is also
fast; `kernel_recursion` is its H → ∞ limit, a deterministic kernel recursion.
Block ℓ's heads come from `limits.blocks.attention_block` with tag ℓ (names p^ℓ,h_i,j, o^ℓ,h_i); kernel entries
are K^ℓ_i,j. (This module is `limits.stack`; `limits.transformer` is the builder function.)
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field

import numpy as np

import netsor
from netsor import ProgramError

from .blocks import (Variants, _count, _flag, _tokens, attention_block, check_block_size, check_tied_scale,
                     check_variants)

WHERE = "transformer"


@dataclass(frozen=True)
class TransformerBlock:
    """The nodes of one block: scores[h][i][j], attention[h][i][j], head_outputs[h][i] = o^h_i (the head's
    projected output, before the 1/sqrt(H) sum), the stream after the attention branch and at the end of the
    block (s vectors each)."""

    scores: tuple
    attention: tuple
    head_outputs: tuple
    after_attention: tuple
    output: tuple


@dataclass(frozen=True)
class Transformer:
    """A transformer program, its named parts, and its three semantics: `law()` (the infinite-width limit derived
    from the program), `simulate` (finite width, exact), `nested_kernels` / `kernel_recursion` (the limit at the
    level of token kernels, for finite H and for H → ∞)."""

    program: netsor.Program
    inputs: tuple
    blocks: tuple
    pooled: netsor.Vector
    outputs: tuple
    kernels: tuple  # kernels[ℓ][i][j] = x^ℓ_i·x^ℓ_j / n, ℓ = 0 (tokens) .. depth
    depth: int
    seq_len: int
    heads: int
    head_dim: int | None
    score_exponent: float
    residual_exponent: float
    beta0: float
    mlp: str | None
    mlp_weight_var: float
    tied_qk: bool = False
    variants: Variants = field(default=Variants(), compare=False)  # the variants of every block (not hashed)

    @property
    def branch_scale(self) -> float:
        """c = beta0 · L^(−α_L), the factor on every residual branch."""
        return self.beta0 * self.depth ** (-self.residual_exponent)

    @property
    def residual(self) -> tuple:
        """The residual stream after the last block, one vector per token."""
        return self.blocks[-1].output

    def final_kernel(self) -> tuple:
        """The upper triangle of the last block's token kernel, (K_11, K_12, ..., K_ss), as scalar nodes."""
        s = self.seq_len
        return tuple(self.kernels[-1][i][j] for i in range(s) for j in range(i, s))

    def law(self) -> netsor.Law:
        return netsor.limit(self.program)

    def input_kernel(self) -> np.ndarray:
        """K⁰ = E[Z^{x_i} Z^{x_j}], the tokens' limit kernel (exact, or by quadrature for nonlinear tokens)."""
        return np.asarray(netsor.limit(self.program).kernel(self.inputs), dtype=float)

    def simulate(self, width: int, size: int, seed=None, variables=None, **options) -> np.ndarray:
        return netsor.simulate(self.program, width, variables or self.outputs, size, seed, **options)

    def _limit_options(self) -> dict:
        return dict(depth=self.depth, head_dim=self.head_dim, score_exponent=self.score_exponent,
                    residual_exponent=self.residual_exponent, beta0=self.beta0, mlp=self.mlp, tied_qk=self.tied_qk,
                    **self.variants.options())

    def nested_kernels(self, size: int, seed=None, heads: int | None = None, per_block: bool = False) -> np.ndarray:
        """Draws of the limit's random token kernel after the last block, (size, s, s) (per_block: (size, L+1,
        s, s)), from the compiled nested sampler; `heads` overrides the program's head count."""
        from .transformer_limit import sample_kernels
        return sample_kernels(self.input_kernel(), heads=self.heads if heads is None else heads, size=size,
                              seed=seed, per_block=per_block, **self._limit_options())

    def kernel_recursion(self, samples: int = 1 << 20, seed=0):
        """The H → ∞ limit: the deterministic kernel recursion K ← K + c² E_p[A K̃ Aᵀ] (+ the MLP term)."""
        from .transformer_limit import kernel_recursion
        return kernel_recursion(self.input_kernel(), samples=samples, seed=seed, **self._limit_options())


def _exponent(value, name: str, minimum: float) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < minimum:
        raise ProgramError(f"{WHERE}: {name} must be a finite number ≥ {minimum:g}, got {value!r}")
    return float(value)


def mlp_weight_var(phi) -> float:
    """1/E[φ(Z)²] for Z ~ N(0, 1) (the one rule for E[φ(Z)²]: `transformer_limit`'s, closed form or checked
    quadrature)."""
    from .transformer_limit import _second_moment
    second_moment = _second_moment(netsor.as_nonlinearity(phi, 1, f"{WHERE}: mlp"))
    if not second_moment > 0:
        raise ProgramError(f"{WHERE}: mlp nonlinearity has E[φ(Z)²] = {second_moment:g}; it cannot be normalised")
    return 1.0 / second_moment


def transformer(depth: int = 2, seq_len: int = 4, heads: int = 2, head_dim: int | None = None,
                score_exponent: float = 0.5, residual_exponent: float = 0.5, beta0: float = 1.0,
                inputs="gaussian", mlp: str | None = "relu", clip: float = 100.0,
                name: str = "transformer", mask=None, kv_len: int | None = None, score_map="softmax",
                temperature: float = 1.0, score_bias=None, value_nonlinearity=None,
                tied_qk: bool = False) -> Transformer:
    """A depth-L pre-LN transformer (attention + optional MLP per block, residual branches scaled by
    beta0·L^(−residual_exponent), scores by d^(−score_exponent)) with mean pooling and a readout, in Netsor form.

    head_dim: None (d = n, the width) or a fixed N. inputs: "gaussian", "paper", "relu" (as `attention_layer`) or an
    s×s SPD covariance (`limits.positional` for positions). mlp: a nonlinearity name (relu, erf, tanh, gelu,
    identity, clip(c)) or None. mask, score_map, temperature, score_bias, value_nonlinearity, tied_qk: as in
    `attention_layer`, the same in every block (tied_qk with d = n needs score_exponent ≥ 1). kv_len: refused — the
    blocks attend over their own stream (cross-attention is `attention_layer`'s).
    """
    depth = _count(depth, "depth", where=WHERE)
    seq_len = _count(seq_len, "seq_len", where=WHERE)
    heads = _count(heads, "heads", where=WHERE)
    if head_dim is not None:
        head_dim = _count(head_dim, "head_dim", where=WHERE)
    score_exponent = _exponent(score_exponent, "score_exponent", 0.5 if head_dim is None else 0.0)
    residual_exponent = _exponent(residual_exponent, "residual_exponent", 0.0)
    beta0 = _exponent(beta0, "beta0", 0.0)
    if mlp is not None and not isinstance(mlp, str):
        raise ProgramError(f"{WHERE}: mlp must be a nonlinearity name or None, got {mlp!r}")
    check_block_size(heads * depth, seq_len, WHERE)
    if kv_len is not None:
        raise ProgramError(f"{WHERE}: kv_len (cross-attention) is not a transformer option: its blocks attend over "
                           "their own stream; use limits.attention_layer(kv_len=...) for one cross-attention layer")
    tied_qk = _flag(tied_qk, "tied_qk", WHERE)
    variants = check_variants(WHERE, seq_len, seq_len, mask, score_map, temperature, score_bias, value_nonlinearity)
    check_tied_scale(tied_qk, head_dim, score_exponent, WHERE)
    prog = netsor.Program(name)
    tokens = xs = _tokens(prog, seq_len, inputs, clip, WHERE)
    c = beta0 * depth ** (-residual_exponent)
    w2_var = mlp_weight_var(mlp) if mlp is not None else 1.0
    kernels = [_kernel_nodes(xs, 0)]
    blocks = []
    for layer in range(1, depth + 1):
        u = [netsor.layernorm(x, name=f"u^{layer}_{i}") for i, x in enumerate(xs, 1)]
        attn = attention_block(prog, u, heads, head_dim, score_exponent, tag=str(layer), tied_qk=tied_qk, where=WHERE,
                               variants=variants)
        head_outputs = attn.head_outputs
        after_attention = tuple(
            netsor.lincomb([1.0] + [c * heads ** -0.5] * heads, [xs[i]] + [o[i] for o in head_outputs],
                           name=f"xa^{layer}_{i + 1}") for i in range(seq_len))
        xs = after_attention
        if mlp is not None:
            W1, W2 = prog.matrix(f"W1^{layer}"), prog.matrix(f"W2^{layer}", var=w2_var)
            xs = tuple(netsor.residual(x, netsor.feedforward(netsor.layernorm(x, name=f"w^{layer}_{i}"), W1, W2, mlp,
                                                             name=f"z^{layer}_{i}"), c, name=f"x^{layer}_{i}")
                       for i, x in enumerate(xs, 1))
        kernels.append(_kernel_nodes(xs, layer))
        blocks.append(TransformerBlock(attn.scores, attn.attention, head_outputs, after_attention, tuple(xs)))
    pooled = netsor.mean_pool(xs, name="pool")
    f = netsor.matmul(prog.matrix("Wout"), pooled, name="f")
    return Transformer(prog, tuple(tokens), tuple(blocks), pooled, (f,), tuple(kernels), depth, seq_len, heads,
                       head_dim, score_exponent, residual_exponent, beta0, mlp, w2_var, tied_qk, variants)


def _kernel_nodes(xs, layer: int) -> tuple:
    """K_ij = x_i·x_j / n as scalar nodes, symmetric (one node per pair), named K^ℓ_i,j."""
    s = len(xs)
    upper = {(i, j): netsor.dot(xs[i], xs[j], scale="linear", name=f"K^{layer}_{i + 1},{j + 1}")
             for i in range(s) for j in range(i, s)}
    return tuple(tuple(upper[min(i, j), max(i, j)] for j in range(s)) for i in range(s))
