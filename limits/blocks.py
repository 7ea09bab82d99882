"""Pieces shared by the attention builders: argument checks, the token vectors, and one multi-head attention block.

Per head h of a block over tokens x_1..x_s (SKI25 §3; the block of BCP24's transformer):
    q_i = W_Q^h x_i, k_j = W_K^h x_j, v_j = W_V^h x_j, p^h_ij = q_i·k_j / d^a, A^h_i = softmax(p^h_i),
    m^h_i = Σ_j A^h_ij v^h_j, o^h_i = W_O^h m^h_i   (d the head dimension: n, or a fixed N)
The 1/sqrt(H) sum over heads is left to the caller: a lone layer returns it, a transformer adds it to its stream.

Node names, with T the head's tag (`head_tag`): WQ{T}, WK{T}, WV{T}, WO{T}, q{T}_i, k{T}_i, v{T}_i, p{T}_i,j,
A{T}_i (the softmax of row i), m{T}_i, o{T}_i, tokens counted from 1 (e.g. p^2_1,11 is head 2's score of token 1
against token 11). The comma keeps (1, 11) and (11, 1) apart for every sequence length.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

import netsor
from netsor import ProgramError, check_covariance

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


def _tokens(prog: netsor.Program, seq_len: int, inputs, clip: float, where: str = "attention_layer"):
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
    cov = check_covariance(inputs, seq_len, f"{where}: inputs")
    if np.linalg.eigvalsh(cov).min() <= 0:
        raise ProgramError(f"{where}: the input covariance must be positive definite")
    return prog.inputs([f"x{i}" for i in range(1, seq_len + 1)], cov=cov)


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
    """The nodes of one multi-head block, indexed [h][i] (and [h][i][j] for scores): queries, keys, values,
    scores p^h_ij, attention[h][i] = softmax(p^h_i) (a tuple over j), mixed m^h_i = Σ_j A^h_ij v^h_j and
    head_outputs o^h_i = W_O^h m^h_i (m^h_i itself without the output projection)."""

    queries: tuple
    keys: tuple
    values: tuple
    scores: tuple
    attention: tuple
    mixed: tuple
    head_outputs: tuple


def head_tag(tag: str, h: int, heads: int) -> str:
    """The superscript of head h's names: ^tag,h; ^h for an untagged block; nothing for a lone untagged head."""
    parts = ([tag] if tag else []) + ([str(h)] if tag or heads > 1 else [])
    return "^" + ",".join(parts) if parts else ""


def attention_block(prog: netsor.Program, tokens, heads: int, head_dim: int | None = None, score_scale="sqrt",
                    tag: str = "", out_proj: bool = True, tied_qk: bool = False, wo_first: bool = True,
                    where: str = "attention_block") -> AttentionBlock:
    """o^h_i = W_O^h Σ_j softmax_j(q^h_i·k^h_j / d^a) v^h_j for h = 1..heads, all weights N(0, 1/fan_in).

    tokens: the s vectors attended over (width n). head_dim: None for d = n, or a fixed N. score_scale: "sqrt",
    "linear" or the exponent a. tag: the block's label in node names ("" for a lone layer, the layer index in a
    stack). tied_qk: W_K = W_Q, so k_j = q_j (the neural-tangents / GP4A convention). wo_first: declare W_O with
    W_Q, W_K, W_V (True) or after the softmaxes (False); seeded draws are keyed by node position, so this keeps each
    builder's draws what they were.
    """
    tokens = tuple(tokens)
    if not tokens:
        raise ProgramError(f"{where}: tokens must hold at least one vector")
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
    dim = "n" if head_dim is None else head_dim
    s = len(tokens)
    check_block_size(heads, s, where)
    parts = {field: [] for field in AttentionBlock.__dataclass_fields__}
    for h in range(1, heads + 1):
        t = head_tag(tag, h, heads)
        try:
            WQ = prog.matrix(f"WQ{t}", shape=(dim, "n"))
        except ProgramError as exc:  # the program's own rule for dimensions, reported against head_dim
            raise ProgramError(f"{where}: head_dim = {head_dim!r}: {exc}") from None
        WK = WQ if tied_qk else prog.matrix(f"WK{t}", shape=(dim, "n"))
        WV = prog.matrix(f"WV{t}", shape=(dim, "n"))
        WO = prog.matrix(f"WO{t}", shape=("n", dim)) if out_proj and wo_first else None
        q = tuple(netsor.matmul(WQ, x, name=f"q{t}_{i}") for i, x in enumerate(tokens, 1))
        k = q if tied_qk else tuple(netsor.matmul(WK, x, name=f"k{t}_{i}") for i, x in enumerate(tokens, 1))
        v = tuple(netsor.matmul(WV, x, name=f"v{t}_{i}") for i, x in enumerate(tokens, 1))
        p = tuple(tuple(netsor.dot(q[i], k[j], scale=score_scale, name=f"p{t}_{i + 1},{j + 1}") for j in range(s))
                  for i in range(s))
        a = tuple(netsor.softmax(row, name=f"A{t}_{i}") for i, row in enumerate(p, 1))
        if out_proj and not wo_first:
            WO = prog.matrix(f"WO{t}", shape=("n", dim))
        m, o = [], []
        for i in range(1, s + 1):  # m_i then o_i, token by token (the order the builders always used)
            m.append(netsor.lincomb(a[i - 1], v, name=f"m{t}_{i}"))
            o.append(netsor.matmul(WO, m[-1], name=f"o{t}_{i}") if out_proj else m[-1])
        for field, value in zip(parts, (q, k, v, p, a, m, o)):
            parts[field].append(tuple(value))
    return AttentionBlock(**{field: tuple(values) for field, values in parts.items()})
