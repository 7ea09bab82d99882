"""The attention layer as a Netsor program (SKI25 §3), built only from the IR, with its limit and finite width.

Tokens x_1..x_s; per head h: q_i = W_Q^h x_i, k_j = W_K^h x_j, v_j = W_V^h x_j, scores p^h_ij = q_i·k_j / d^a
(d the head dimension: n, or a fixed N), A^h_i = softmax(p^h_i), and the output
    y_i = H^{-1/2} Σ_h W_O^h Σ_j A^h_ij v^h_j.
At 1/sqrt(n) scaling with finitely many heads the limit is hierarchical Gaussian: p ~ N(0, Σ_X ⊗ Σ_X) per head,
and y | p ~ N(0, H⁻¹ Σ_h A_h Σ_X A_hᵀ). heads = inf gives the Gaussian infinite-head limit.
The heads are built by `limits.blocks.attention_block` (names p^h_i,j, A^h_i, o^h_i; y_i here).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

import netsor
from netsor import ProgramError

from .blocks import INPUTS, _count, _flag, _tokens, attention_block, check_block_size

__all__ = ["AttentionLayer", "attention_layer", "INPUTS", "SCALINGS"]

SCALINGS = ("sqrt", "linear")


@dataclass(frozen=True)
class AttentionLayer:
    """A single attention layer: its program, tokens, scores (heads × s × s), attention weights and outputs.

    With heads = inf the program holds one representative head and `outputs` are its infinite head sums
    (`netsor.infinite_head_sum`): `netsor.limit(program)` is their Gaussian limit, `netsor.simulate` refuses them,
    and `law()` summarises that limit as a `netsor.GaussianLaw`.
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

    def law(self, size: int | None = None, seed=None):
        """The infinite-width law: a netsor Law, or for heads = inf the Gaussian infinite-head limit as a
        GaussianLaw, its covariance E[o oᵀ] over one head estimated from `size` draws (default 400 000; seed 0)."""
        law = netsor.limit(self.program)
        if self.infinite_heads:
            return law.gaussian(self.outputs, size=400_000 if size is None else size, seed=0 if seed is None else seed)
        if size is not None or seed is not None:
            raise ProgramError("law: size and seed apply to heads = inf only (the finite-head Law is exact; its "
                               "methods take their own size and seed)")
        return law

    def input_cov(self) -> np.ndarray:
        """Σ_X = E[Z^{x_i} Z^{x_j}], the tokens' limit kernel (what the scores' covariance is built from)."""
        return netsor.limit(self.program).kernel(self.inputs)

    def simulate(self, width: int, size: int, seed=None, variables=None, **options) -> np.ndarray:
        if self.infinite_heads:
            raise ProgramError("simulate: a layer with infinitely many heads has no finite-width network")
        return netsor.simulate(self.program, width, variables or self.outputs, size, seed, **options)


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
    out_proj, tied_qk = _flag(out_proj, "out_proj", "attention_layer"), _flag(tied_qk, "tied_qk", "attention_layer")
    check_block_size(1 if math.isinf(heads) else heads, seq_len, "attention_layer")
    if scaling not in SCALINGS:
        raise ProgramError(f"attention_layer: scaling must be 'sqrt' or 'linear', got {scaling!r}")
    prog = netsor.Program(name)
    xs = _tokens(prog, seq_len, inputs, clip)
    shared = len(prog)
    block = attention_block(prog, xs, 1 if math.isinf(heads) else heads, head_dim, scaling, out_proj=out_proj,
                            tied_qk=tied_qk, wo_first=False, where="attention_layer")
    if math.isinf(heads):  # one representative head, summed over infinitely many in the program itself
        per_head = [n for n in prog.nodes[shared:] if isinstance(n, netsor.Matrix)]
        outputs = netsor.infinite_head_sum(block.head_outputs[0], per_head,
                                           names=[f"y{i}" for i in range(1, seq_len + 1)])
    else:
        outputs = tuple(netsor.lincomb([heads ** -0.5] * heads, [o[i] for o in block.head_outputs], name=f"y{i + 1}")
                        for i in range(seq_len))
    return AttentionLayer(prog, tuple(xs), block.scores, block.attention, outputs, seq_len, heads, head_dim, scaling)
