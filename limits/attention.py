"""The attention layer as a Netsor program (SKI25 §3), built only from the IR, with its limit and finite width.

Tokens x_1..x_s; per head h: q_i = W_Q^h x_i, k_j = W_K^h x_j, v_j = W_V^h x_j, scores p^h_ij = q_i·k_j / d^a
(d the head dimension: n, or a fixed N), A^h_i = softmax(p^h_i), and the output
    y_i = H^{-1/2} Σ_h W_O^h Σ_j A^h_ij v^h_j.
At 1/sqrt(n) scaling with finitely many heads the limit is hierarchical Gaussian: p ~ N(0, Σ_X ⊗ Σ_X) per head,
and y | p ~ N(0, H⁻¹ Σ_h A_h Σ_X A_hᵀ). heads = inf gives the Gaussian infinite-head limit.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

import netsor
from netsor import ProgramError
from netsor.program import check_covariance

INPUTS = ("paper", "relu", "gaussian")
SCALINGS = ("sqrt", "linear")


@dataclass(frozen=True)
class AttentionLayer:
    """A single attention layer: its program, tokens, scores (heads × s × s), attention weights and outputs.

    With heads = inf the program holds one representative head whose (unscaled) outputs are `outputs`, and
    `law()` is the Gaussian limit of H^{-1/2} Σ_h over infinitely many independent heads.
    """

    program: netsor.Program
    inputs: tuple
    scores: tuple
    attention: tuple
    outputs: tuple
    seq_len: int
    heads: float
    head_dim: int | None
    scaling: str

    @property
    def infinite_heads(self) -> bool:
        return math.isinf(self.heads)

    def law(self, **options):
        """The infinite-width law: a netsor Law, or for heads = inf the Gaussian infinite-head limit."""
        law = netsor.limit(self.program)
        if self.infinite_heads:
            return law.infinite_sum_limit(self.outputs, **options)
        return law

    def input_cov(self) -> np.ndarray:
        """Σ_X = E[Z^{x_i} Z^{x_j}], the tokens' limit kernel (what the scores' covariance is built from)."""
        return netsor.limit(self.program).kernel(self.inputs)

    def simulate(self, width: int, size: int, seed=None, variables=None, **options) -> np.ndarray:
        if self.infinite_heads:
            raise ProgramError("simulate: a layer with infinitely many heads has no finite-width network")
        return netsor.simulate(self.program, width, variables or self.outputs, size, seed, **options)


def _count(value, name: str, allow_inf: bool = False, where: str = "attention_layer"):
    if allow_inf and isinstance(value, float) and math.isinf(value) and value > 0:
        return math.inf
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ProgramError(f"{where}: {name} must be a positive integer"
                           f"{' or math.inf' if allow_inf else ''}, got {value!r}")
    return int(value)


def _tokens(prog: netsor.Program, seq_len: int, inputs, clip: float, where: str = "attention_layer"):
    """The s token vectors: gaussian (iid N(0, 1) coordinates), through a clip / relu layer from one input h, or
    with a given s×s covariance."""
    if isinstance(inputs, str):
        if inputs not in INPUTS:
            raise ProgramError(f"{where}: inputs must be one of {', '.join(INPUTS)} or an s×s SPD "
                               f"covariance, got {inputs!r}")
        if inputs == "gaussian":
            return prog.inputs([f"x{i}" for i in range(1, seq_len + 1)])
        h = prog.input("h")
        phi = netsor.clip(clip) if inputs == "paper" else "relu"
        return tuple(netsor.nonlin(phi, prog.matrix(f"W{i}") @ h, name=f"x{i}") for i in range(1, seq_len + 1))
    cov = check_covariance(inputs, seq_len, f"{where}: inputs")
    if np.linalg.eigvalsh(cov).min() <= 0:
        raise ProgramError(f"{where}: the input covariance must be positive definite")
    return prog.inputs([f"x{i}" for i in range(1, seq_len + 1)], cov=cov)


def attention_layer(seq_len: int = 4, heads=2, head_dim: int | None = None, scaling: str = "sqrt",
                    inputs="paper", out_proj: bool = True, clip: float = 100.0, tied_qk: bool = False,
                    name: str = "attention") -> AttentionLayer:
    """A multi-head attention layer at initialisation (all weights N(0, 1/fan_in)) as a Netsor program.

    inputs: "paper" (h ~ N(0, I_n), x_i = clip(W^i h, ±clip), SKI25's experiment), "relu" (x_i = relu(W^i h)),
    "gaussian" (iid N(0, 1) coordinates), or an s×s SPD covariance. scaling: "sqrt" (1/sqrt(d)) or "linear" (1/d).
    head_dim: None for d = n, or a fixed N. tied_qk: W_K = W_Q (the neural-tangents / GP4A convention).
    """
    seq_len = _count(seq_len, "seq_len")
    heads = _count(heads, "heads", allow_inf=True)
    if head_dim is not None:
        head_dim = _count(head_dim, "head_dim")
    if scaling not in SCALINGS:
        raise ProgramError(f"attention_layer: scaling must be 'sqrt' or 'linear', got {scaling!r}")
    if not out_proj and head_dim is not None:
        raise ProgramError("attention_layer: without the output projection the head dimension must be n")
    prog = netsor.Program(name)
    xs = _tokens(prog, seq_len, inputs, clip)
    dim = "n" if head_dim is None else head_dim
    built_heads = 1 if math.isinf(heads) else heads
    scores, attention, head_outputs = [], [], []
    for h in range(1, built_heads + 1):
        tag = f"^{h}" if built_heads > 1 else ""
        WQ = prog.matrix(f"WQ{tag}", shape=(dim, "n"))
        WK = WQ if tied_qk else prog.matrix(f"WK{tag}", shape=(dim, "n"))
        WV = prog.matrix(f"WV{tag}", shape=(dim, "n"))
        q = [netsor.matmul(WQ, x, name=f"q{tag}_{i}") for i, x in enumerate(xs, 1)]
        k = q if tied_qk else [netsor.matmul(WK, x, name=f"k{tag}_{i}") for i, x in enumerate(xs, 1)]
        v = [netsor.matmul(WV, x, name=f"v{tag}_{i}") for i, x in enumerate(xs, 1)]
        p = [[netsor.dot(q[i], k[j], scale=scaling, name=f"p{tag}_{i + 1}{j + 1}") for j in range(seq_len)]
             for i in range(seq_len)]
        a = [netsor.softmax(row, name=f"A{tag}_{i + 1}") for i, row in enumerate(p)]
        WO = prog.matrix(f"WO{tag}", shape=("n", dim)) if out_proj else None
        outs = []
        for i in range(seq_len):
            mixed = netsor.lincomb(a[i], v, name=f"u{tag}_{i + 1}")
            outs.append(netsor.matmul(WO, mixed, name=f"o{tag}_{i + 1}") if out_proj else mixed)
        scores.append(tuple(tuple(row) for row in p))
        attention.append(tuple(a))
        head_outputs.append(outs)
    if math.isinf(heads):
        outputs = tuple(head_outputs[0])
    else:
        outputs = tuple(netsor.lincomb([heads ** -0.5] * heads, [head_outputs[h][i] for h in range(heads)],
                                       name=f"y{i + 1}") for i in range(seq_len))
    return AttentionLayer(prog, tuple(xs), tuple(scores), tuple(attention), outputs, seq_len, heads, head_dim,
                          scaling)
