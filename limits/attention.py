"""The attention layer as a Netsor program (SKI25 §3), built only from the IR, with its limit and finite width.

Tokens x_1..x_s; per head h: q_i = W_Q^h x_i, k_j = W_K^h x_j, v_j = W_V^h x_j, scores p^h_ij = q_i·k_j / d^a
(d the head dimension: n, or a fixed N), A^h_i = softmax(p^h_i), and the output
    y_i = H^{-1/2} Σ_h W_O^h Σ_j A^h_ij v^h_j,
or one of its variants (a mask, cross-attention, another score map, temperature and biases, nonlinear values, tied
W_K = W_Q, positions through the token covariance: `attention_layer`).
At 1/sqrt(n) scaling with finitely many heads the limit is hierarchical Gaussian: p ~ N(0, Σ_X ⊗ Σ_X) per head,
and y | p ~ N(0, H⁻¹ Σ_h A_h Σ_X A_hᵀ). heads = inf gives the Gaussian infinite-head limit.
The heads are built by `limits.blocks.attention_block` (names p^h_i,j, A^h_i, o^h_i; y_i here).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

import netsor
from netsor import ProgramError

from .blocks import (INPUTS, _count, _flag, _tokens, attention_block, check_block_size, check_tied_scale,
                     check_variants)

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
    key_sets: tuple  # key_sets[i]: the 0-based indices of the keys query i sees (scores[h][i] in that order)
    options: dict = field(compare=False)  # the builder's checked arguments (`rebuild`); not part of == or hash

    @property
    def summary(self) -> str:
        """The layer in one line, as figures and tables name it: s, H, d, scaling, tokens and the variants set."""
        o = self.options
        inputs = o["inputs"] if isinstance(o["inputs"], str) else "given Σ"
        heads = "∞" if self.infinite_heads else str(self.heads)
        parts = [f"attention s={self.seq_len}", f"H={heads}", f"d={self.head_dim or 'n'}",
                 f"1/{'sqrt(d)' if self.scaling == 'sqrt' else 'd'} scores", f"{inputs} tokens"]
        if o["kv_len"] is not None:
            parts.append(f"cross-attention t={o['kv_len']}")
        if o["mask"] is not None:
            causal = o["mask"].shape[0] == o["mask"].shape[1] and np.array_equal(o["mask"], np.tril(o["mask"] | True))
            parts.append("causal mask" if causal else "masked")
        if o["score_map"].name != "softmax":
            parts.append(f"{o['score_map'].name} map")
        if o["temperature"] != 1.0:
            parts.append(f"τ={o['temperature']:g}")
        if o["score_bias"] is not None:
            parts.append("score bias")
        if o["value_nonlinearity"] is not None:
            parts.append(f"{o['value_nonlinearity'].name} values")
        if o["tied_qk"]:
            parts.append("tied W_K = W_Q")
        return ", ".join(parts)

    @property
    def kv_len(self) -> int:
        """t, the number of keys (s for self-attention)."""
        return len(self.inputs) - (self.seq_len if self.options["kv_len"] is not None else 0)

    def rebuild(self, **changes) -> "AttentionLayer":
        """The same layer built with some arguments changed, e.g. rebuild(seq_len=64)."""
        unknown = set(changes) - set(self.options)
        if unknown:
            raise ProgramError(f"rebuild: unknown argument {sorted(unknown)[0]!r}; the builder's are "
                               f"{', '.join(self.options)}")
        return attention_layer(**{**self.options, **changes})

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
                    name: str = "attention", mask=None, kv_len: int | None = None, score_map="softmax",
                    temperature: float = 1.0, score_bias=None, value_nonlinearity=None) -> AttentionLayer:
    """A multi-head attention layer at initialisation (all weights N(0, 1/fan_in)) as a Netsor program.

    inputs: "paper" (h ~ N(0, I_n), x_i = clip(W^i h, ±clip), SKI25's experiment), "relu" (x_i = relu(W^i h)),
    "gaussian" (iid N(0, 1) coordinates), or an SPD covariance over the tokens (`limits.positional` builds one with
    positional encodings). scaling: "sqrt" (1/sqrt(d)) or "linear" (1/d). head_dim: None for d = n, or a fixed N.
    Variants (`limits.blocks`, `limits.score_maps`):
      mask: None, "causal" (query i sees keys 1..i) or an s×t boolean array (row i: the keys query i sees);
      kv_len: t for cross-attention — queries from tokens 1..s, keys and values from the t tokens s+1..s+t (inputs
        then covers s + t tokens; p_i,j is query i against memory token j, k_j and v_j that token's key and value);
        None: self-attention (t = s);
      score_map: "softmax", "linear" (no normalisation), "relu" or "sigmoid" (elementwise, divided by the row's
        number of keys); temperature τ and score_bias b (an s×t array, e.g. `limits.score_maps.alibi`): the map is
        applied to p/τ + b;
      value_nonlinearity: φ applied to the values (a nonlinearity name or netsor Nonlinearity; None: linear values);
      tied_qk: W_K = W_Q (the neural-tangents / GP4A convention); with head dimension n it needs scaling "linear"
        (refused here at "sqrt": the scores would diverge).
    """
    where = "attention_layer"
    seq_len = _count(seq_len, "seq_len")
    heads = _count(heads, "heads", allow_inf=True)
    if head_dim is not None:
        head_dim = _count(head_dim, "head_dim")
    keys = seq_len if kv_len is None else _count(kv_len, "kv_len")
    out_proj, tied_qk = _flag(out_proj, "out_proj", where), _flag(tied_qk, "tied_qk", where)
    check_block_size(1 if math.isinf(heads) else heads, max(seq_len, keys), where)
    if scaling not in SCALINGS:
        raise ProgramError(f"attention_layer: scaling must be 'sqrt' or 'linear', got {scaling!r}")
    variants = check_variants(where, seq_len, keys, mask, score_map, temperature, score_bias, value_nonlinearity)
    check_tied_scale(tied_qk, head_dim, scaling, where)
    prog = netsor.Program(name)
    xs = _tokens(prog, seq_len + (0 if kv_len is None else keys), inputs, clip,
                 count_name="seq_len" if kv_len is None else "seq_len + kv_len")
    queries, memory = (xs, None) if kv_len is None else (xs[:seq_len], xs[seq_len:])
    shared = len(prog)
    block = attention_block(prog, queries, 1 if math.isinf(heads) else heads, head_dim, scaling, out_proj=out_proj,
                            tied_qk=tied_qk, wo_first=False, where=where, memory=memory, variants=variants)
    if math.isinf(heads):  # one representative head, summed over infinitely many in the program itself
        per_head = [n for n in prog.nodes[shared:] if isinstance(n, netsor.Matrix)]
        outputs = netsor.infinite_head_sum(block.head_outputs[0], per_head,
                                           names=[f"y{i}" for i in range(1, seq_len + 1)])
    else:
        outputs = tuple(netsor.lincomb([heads ** -0.5] * heads, [o[i] for o in block.head_outputs], name=f"y{i + 1}")
                        for i in range(seq_len))
    options = dict(seq_len=seq_len, heads=heads, head_dim=head_dim, scaling=scaling, inputs=inputs,
                   out_proj=out_proj, clip=clip, tied_qk=tied_qk, name=name, kv_len=kv_len, **variants.options())
    return AttentionLayer(prog, tuple(xs), block.scores, block.attention, outputs, seq_len, heads, head_dim, scaling,
                          block.key_sets, options)
