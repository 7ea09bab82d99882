"""Pieces shared by the attention builders: argument checks, the token vectors, and one multi-head attention block.

Per head h of a block over tokens x_1..x_s (SKI25 §3; the block of BCP24's transformer):
    q_i = W_Q^h x_i, k_j = W_K^h x_j, v_j = W_V^h x_j, p^h_ij = q_i·k_j / d^a, A^h_i = softmax(p^h_i),
    m^h_i = Σ_j A^h_ij v^h_j, o^h_i = W_O^h m^h_i   (d the head dimension: n, or a fixed N)
and the variants theorists use: a mask (row i sees the keys S_i only), cross-attention (keys and values from t
further memory tokens), logits z_ij = p_ij/τ + b_ij (temperature, fixed biases such as ALiBi), another score map
(linear, relu, sigmoid: `limits.score_maps`), φ(v_j) for nonlinear values, tied W_K = W_Q.
The 1/sqrt(H) sum over heads is left to the caller: a lone layer returns it, a transformer adds it to its stream.

Node names, with T the head's tag (`head_tag`): WQ{T}, WK{T}, WV{T}, WO{T}, q{T}_i, k{T}_i, v{T}_i, p{T}_i,j,
z{T}_i,j (a logit p/τ + b, where it differs from p), A{T}_i (the weights of row i: entries A{T}_i[r], r counting
the row's keys), φv{T}_j (nonlinear values), m{T}_i, o{T}_i, tokens counted from 1 (e.g. p^2_1,11 is head 2's
score of token 1 against token 11). The comma keeps (1, 11) and (11, 1) apart for every sequence length.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

import netsor
from netsor import Nonlinearity, ProgramError, as_nonlinearity, check_covariance

from .score_maps import SOFTMAX, ScoreMap, check_mask, check_score_bias, check_temperature
from .score_maps import score_map as as_score_map

INPUTS = ("paper", "relu", "gaussian")
MAX_BLOCK_NODES = 10 ** 6  # a block's program nodes: beyond this building alone takes minutes and gigabytes


def _count(value, name: str, allow_inf: bool = False, where: str = "attention_layer"):
    """A positive integer argument (or math.inf where allowed), else a ProgramError naming it."""
    if allow_inf and isinstance(value, float) and math.isinf(value) and value > 0:
        return math.inf
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ProgramError(f"{where}: {name} must be a positive integer"
                           f"{' or math.inf' if allow_inf else ''}, got {value!r}")
    return int(value)


def _tokens(prog: netsor.Program, seq_len: int, inputs, clip: float, where: str = "attention_layer",
            count_name: str = "seq_len"):
    """The s token vectors x1..xs: gaussian (iid N(0, 1) coordinates), through a clip / relu layer from one input h,
    or with a given s×s covariance."""
    if isinstance(clip, bool) or not isinstance(clip, numbers.Real) or not 0 < clip < math.inf:
        raise ProgramError(f"{where}: clip must be a finite positive number, got {clip!r}")  # even where unused
    if isinstance(inputs, str):
        if inputs not in INPUTS:
            raise ProgramError(f"{where}: inputs must be one of {', '.join(INPUTS)} or an s×s SPD "
                               f"covariance, got {inputs!r}")
        if inputs == "gaussian":
            return prog.inputs([f"x{i}" for i in range(1, seq_len + 1)])
        h = prog.input("h")
        phi = netsor.clip(clip) if inputs == "paper" else "relu"
        return tuple(netsor.nonlin(phi, prog.matrix(f"W{i}") @ h, name=f"x{i}") for i in range(1, seq_len + 1))
    cov = check_covariance(inputs, seq_len, f"{where}: inputs" + ("" if count_name == "seq_len" else
                                                                   f" (over {count_name} = {seq_len} tokens)"))
    if np.linalg.eigvalsh(cov).min() <= 0:
        raise ProgramError(f"{where}: the input covariance must be positive definite")
    return prog.inputs([f"x{i}" for i in range(1, seq_len + 1)], cov=cov)


@dataclass(frozen=True, eq=False)
class Variants:
    """The attention variants of a block, checked once at the builder's boundary (see `attention_block`)."""

    mask: np.ndarray | None = None  # s×t bool, read-only; None: every query sees every key
    score_map: ScoreMap = SOFTMAX
    temperature: float = 1.0
    score_bias: np.ndarray | None = None  # s×t float, read-only; None: no bias
    value_nonlinearity: Nonlinearity | None = None

    def options(self) -> dict:
        return dict(mask=self.mask, score_map=self.score_map, temperature=self.temperature,
                    score_bias=self.score_bias, value_nonlinearity=self.value_nonlinearity)


def check_variants(where: str, queries: int, keys: int, mask=None, score_map="softmax", temperature=1.0,
                   score_bias=None, value_nonlinearity=None) -> Variants:
    """The builders' variant arguments → a `Variants`, or a one-line ProgramError naming the argument."""
    phi = None
    if value_nonlinearity is not None:
        phi = as_nonlinearity(value_nonlinearity, 1, f"{where}: value_nonlinearity")
    return Variants(check_mask(mask, queries, keys, where), as_score_map(score_map, where),
                    check_temperature(temperature, where), check_score_bias(score_bias, queries, keys, where), phi)


def check_block_size(heads: int, seq_len: int, where: str) -> None:
    """Refuse, before building anything, a block whose program would be too large to build."""
    nodes = heads * (2 * seq_len * seq_len + 6 * seq_len)  # scores and softmax entries, q, k, v, m, o per head
    if nodes > MAX_BLOCK_NODES:
        hint = "; for the many-head limit use heads=math.inf" if heads > 16 else ""
        raise ProgramError(f"{where}: heads = {heads} over seq_len = {seq_len} tokens would build {nodes:.3g} "
                           f"program nodes (at most {MAX_BLOCK_NODES:.0e}){hint}")


def _flag(value, name: str, where: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ProgramError(f"{where}: {name} must be True or False, got {value!r}")
    return bool(value)


@dataclass(frozen=True)
class AttentionBlock:
    """The nodes of one multi-head block, indexed [h][i] (and [h][i][r] for scores): queries, keys, values,
    scores p^h_ij, attention[h][i] = map(z^h_i) (a tuple over the row's keys), mixed m^h_i = Σ_j A^h_ij v^h_j and
    head_outputs o^h_i = W_O^h m^h_i (m^h_i itself without the output projection). Row i holds the scores of the
    keys in key_sets[i] (0-based key indices: all t keys, or those a mask allows), in that order."""

    queries: tuple
    keys: tuple
    values: tuple
    scores: tuple
    attention: tuple
    mixed: tuple
    head_outputs: tuple
    key_sets: tuple


def head_tag(tag: str, h: int, heads: int) -> str:
    """The superscript of head h's names: ^tag,h; ^h for an untagged block; nothing for a lone untagged head."""
    parts = ([tag] if tag else []) + ([str(h)] if tag or heads > 1 else [])
    return "^" + ",".join(parts) if parts else ""


class _Logit:
    """p ↦ p/τ + b, a query's logit from its score (a picklable scalar function; on a sympy symbol, its formula)."""

    def __init__(self, inverse_temperature: float, bias: float):
        self.inverse_temperature, self.bias = inverse_temperature, bias

    def __call__(self, p):
        z = p if self.inverse_temperature == 1.0 else p * self.inverse_temperature
        return z if self.bias == 0.0 else z + self.bias


def check_tied_scale(tied_qk: bool, head_dim, score_scale, where: str) -> None:
    """Tied W_K = W_Q over a head dimension ∝ n: q_i·q_j has mean n·K_ij, so scores / n^a with a < 1 diverge —
    refused when the program is built, not when its law is asked for."""
    exponent = netsor.dot_exponent(score_scale, f"{where}: score scale")  # the dot's own rule for its scale
    if tied_qk and head_dim is None and exponent < 1:
        raise ProgramError(f"{where}: tied_qk (W_K = W_Q) with head dimension n needs scores / n (scaling 'linear', "
                           f"score exponent ≥ 1): at 1/n^{exponent:g} the scores q_i·q_j / n^{exponent:g} have mean "
                           f"n^{1 - exponent:g}·K_ij and diverge; use a fixed head_dim for tied scores at 1/sqrt(N)")


def attention_block(prog: netsor.Program, tokens, heads: int, head_dim: int | None = None, score_scale="sqrt",
                    tag: str = "", out_proj: bool = True, tied_qk: bool = False, wo_first: bool = True,
                    where: str = "attention_block", memory=None, variants: Variants = Variants()) -> AttentionBlock:
    """o^h_i = W_O^h Σ_{j∈S_i} A^h_ij φ(v^h_j), A^h_i = map(q^h_i·k^h_j / d^a / τ + b_ij) for h = 1..heads, all
    weights N(0, 1/fan_in) (`limits.score_maps` for the maps).

    tokens: the s query vectors (width n); memory: the t key/value vectors of cross-attention (None: the tokens
    themselves). head_dim: None for d = n, or a fixed N. score_scale: "sqrt", "linear" or the exponent a. variants:
    the mask, score map, temperature, score bias and value nonlinearity (`check_variants`). tag: the block's label
    in node names ("" for a lone layer, the layer index in a stack). tied_qk: W_K = W_Q, so k_j = W_Q x_j (the
    neural-tangents / GP4A convention).
    wo_first: declare W_O with W_Q, W_K, W_V (True) or after the softmaxes (False); seeded draws are keyed by node
    position, so this keeps each builder's draws what they were.
    """
    tokens = tuple(tokens)
    if not tokens:
        raise ProgramError(f"{where}: tokens must hold at least one vector")
    sources = tokens if memory is None else tuple(memory)
    if not sources:
        raise ProgramError(f"{where}: memory must hold at least one vector")
    heads = _count(heads, "heads", where=where)
    if head_dim is not None:
        head_dim = _count(head_dim, "head_dim", where=where)
    out_proj, tied_qk, wo_first = (_flag(v, n, where) for v, n in ((out_proj, "out_proj"), (tied_qk, "tied_qk"),
                                                                   (wo_first, "wo_first")))
    if not out_proj and head_dim is not None:
        raise ProgramError(f"{where}: without the output projection the head dimension must be n")
    if not isinstance(tag, str) or any(c.isspace() or c in "^_," for c in tag):
        # the separators of the naming scheme may not appear inside a tag, or names could collide again
        raise ProgramError(f"{where}: tag must be a string without whitespace, '^', '_' or ',', got {tag!r}")
    check_tied_scale(tied_qk, head_dim, score_scale, where)
    dim = "n" if head_dim is None else head_dim
    s, t = len(tokens), len(sources)
    check_block_size(heads, max(s, t), where)
    mask, score_bias, value_nonlinearity = variants.mask, variants.score_bias, variants.value_nonlinearity
    if mask is not None and mask.shape != (s, t) or score_bias is not None and score_bias.shape != (s, t):
        raise ProgramError(f"{where}: mask and score_bias must be {s}×{t} (queries × keys)")
    key_sets = tuple(tuple(range(t)) if mask is None else tuple(int(j) for j in np.flatnonzero(mask[i]))
                     for i in range(s))
    inverse_temperature, temperature = 1.0 / variants.temperature, variants.temperature
    parts = {field: [] for field in AttentionBlock.__dataclass_fields__ if field != "key_sets"}
    for h in range(1, heads + 1):
        tg = head_tag(tag, h, heads)
        try:
            WQ = prog.matrix(f"WQ{tg}", shape=(dim, "n"))
        except ProgramError as exc:  # the program's own rule for dimensions, reported against head_dim
            raise ProgramError(f"{where}: head_dim = {head_dim!r}: {exc}") from None
        WK = WQ if tied_qk else prog.matrix(f"WK{tg}", shape=(dim, "n"))
        WV = prog.matrix(f"WV{tg}", shape=(dim, "n"))
        WO = prog.matrix(f"WO{tg}", shape=("n", dim)) if out_proj and wo_first else None
        q = tuple(netsor.matmul(WQ, x, name=f"q{tg}_{i}") for i, x in enumerate(tokens, 1))
        k = q if tied_qk and memory is None else \
            tuple(netsor.matmul(WK, x, name=f"k{tg}_{j}") for j, x in enumerate(sources, 1))
        v = tuple(netsor.matmul(WV, x, name=f"v{tg}_{j}") for j, x in enumerate(sources, 1))
        mixed_values = v if value_nonlinearity is None else \
            tuple(netsor.nonlin(value_nonlinearity, x, name=f"φv{tg}_{j}") for j, x in enumerate(v, 1))
        p = tuple(tuple(netsor.dot(q[i], k[j], scale=score_scale, name=f"p{tg}_{i + 1},{j + 1}") for j in key_sets[i])
                  for i in range(s))
        a = []
        for i, row in enumerate(p):
            bias = [0.0 if score_bias is None else float(score_bias[i, j]) for j in key_sets[i]]
            logits = tuple(pij if inverse_temperature == 1.0 and b == 0.0 else
                           netsor.scalar_fn(_Logit(inverse_temperature, b), pij, name=f"z{tg}_{i + 1},{j + 1}",
                                            expr=_Logit(inverse_temperature, b), label=_logit_label(temperature, b))
                           for pij, j, b in zip(row, key_sets[i], bias))
            a.append(variants.score_map.nodes(logits, name=f"A{tg}_{i + 1}"))
        if out_proj and not wo_first:
            WO = prog.matrix(f"WO{tg}", shape=("n", dim))
        m, o = [], []
        for i in range(1, s + 1):  # m_i then o_i, token by token (the order the builders always used)
            m.append(netsor.lincomb(a[i - 1], [mixed_values[j] for j in key_sets[i - 1]], name=f"m{tg}_{i}"))
            o.append(netsor.matmul(WO, m[-1], name=f"o{tg}_{i}") if out_proj else m[-1])
        for field, value in zip(parts, (q, k, v, p, a, m, o)):
            parts[field].append(tuple(value))
    return AttentionBlock(**{field: tuple(values) for field, values in parts.items()}, key_sets=key_sets)


def _logit_label(temperature: float, bias: float) -> str:
    text = "{}" if temperature == 1.0 else f"{{}}/{temperature:g}"
    return text if bias == 0.0 else f"{text} {'+' if bias > 0 else '−'} {abs(bias):g}"
