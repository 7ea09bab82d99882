"""How an attention head turns a query's scores into weights over its keys: the score map, one rule for every
interpreter (the program's nodes, the nested transformer sampler, the one-query sampler of long sequences).

Row i of a head sees the key set S_i (all t keys, or those a mask allows; t_i = |S_i|). Its logits are
z_ij = p_ij / τ + b_ij (temperature τ, fixed score bias b, e.g. ALiBi's −slope·|i − j|), and its weights
    softmax  A_ij = exp z_ij / Σ_{k∈S_i} exp z_ik
    linear   A_ij = z_ij                             (no normalisation: linear attention)
    relu     A_ij = max(z_ij, 0) / t_i
    sigmoid  A_ij = 1 / (1 + exp(−z_ij)) / t_i
with A_ij = 0 for j ∉ S_i. Every map is applied by its `ScoreMap` object (its `code` selects the compiled loop),
never by its printed name.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numba
import numpy as np

import netsor
from netsor import ProgramError

__all__ = ["ScoreMap", "SCORE_MAPS", "SOFTMAX", "LINEAR", "RELU", "SIGMOID", "score_map", "attention_weights",
           "elementwise_weight"]

CODE_SOFTMAX, CODE_LINEAR, CODE_RELU, CODE_SIGMOID = 0, 1, 2, 3


@numba.njit(cache=True, nogil=True, error_model="numpy")
def elementwise_weight(code, z, keys):
    """A_ij of an elementwise map (linear, relu, sigmoid) from its logit z and the row's key count (compiled)."""
    if code == CODE_LINEAR:
        return z
    if code == CODE_RELU:
        return max(z, 0.0) / keys
    if z >= 0.0:  # sigmoid, written so that exp never overflows
        return 1.0 / (1.0 + math.exp(-z)) / keys
    e = math.exp(z)
    return e / (1.0 + e) / keys


class _Elementwise:
    """z ↦ A of an elementwise map on numpy arrays (a picklable scalar function for program nodes)."""

    def __init__(self, code: int, keys: int):
        self.code, self.keys = code, keys

    def __call__(self, z):
        z = np.asarray(z, dtype=float)
        if self.code == CODE_LINEAR:
            return z
        if self.code == CODE_RELU:
            return np.maximum(z, 0.0) / self.keys
        from scipy.special import expit
        return expit(z) / self.keys


class _ElementwiseSymbolic:
    """The sympy form of an elementwise map's node (picklable, unlike a lambda)."""

    def __init__(self, code: int, keys: int):
        self.code, self.keys = code, keys

    def __call__(self, z):
        import sympy
        if self.code == CODE_LINEAR:
            return z
        if self.code == CODE_RELU:
            return sympy.Max(z, 0) / self.keys
        return 1 / (1 + sympy.exp(-z)) / self.keys


@dataclass(frozen=True)
class ScoreMap:
    """One score map (module docstring): `weights` on numpy logits, `nodes` in a program, `code` for compiled loops."""

    name: str
    code: int
    formula: str  # A_ij in terms of z_ij and t_i, as printed by `describe`

    @property
    def normalised(self) -> bool:
        """Whether each row's weights sum to one whatever the logits (softmax only)."""
        return self.code == CODE_SOFTMAX

    def weights(self, logits, keys: int | None = None) -> np.ndarray:
        """A from logits (..., t_i) over a row's allowed keys (keys: t_i, default the last axis's length)."""
        z = np.asarray(logits, dtype=float)
        keys = z.shape[-1] if keys is None else keys
        if self.code == CODE_SOFTMAX:  # netsor's one softmax rule, over the last axis
            return np.moveaxis(netsor.stable_softmax(list(np.moveaxis(z, -1, 0))), 0, -1)
        return _Elementwise(self.code, keys)(z)

    def nodes(self, logits, name: str) -> tuple:
        """The row's weights as program scalars from its logit scalars (softmax: one group; named name[j])."""
        logits = tuple(logits)
        if self.code == CODE_SOFTMAX:
            return netsor.softmax(logits, name=name)
        if self.code == CODE_LINEAR:
            return logits
        keys = len(logits)
        label = ("relu({})" if self.code == CODE_RELU else "sigmoid({})") + f"/{keys}"
        return tuple(netsor.scalar_fn(_Elementwise(self.code, keys), z, name=f"{name}[{j}]",
                                      expr=_ElementwiseSymbolic(self.code, keys), label=label)
                     for j, z in enumerate(logits))

    def __repr__(self) -> str:
        return f"ScoreMap({self.name}: A_ij = {self.formula})"


SOFTMAX = ScoreMap("softmax", CODE_SOFTMAX, "exp z_ij / Σ_k exp z_ik")
LINEAR = ScoreMap("linear", CODE_LINEAR, "z_ij")
RELU = ScoreMap("relu", CODE_RELU, "max(z_ij, 0) / t_i")
SIGMOID = ScoreMap("sigmoid", CODE_SIGMOID, "sigmoid(z_ij) / t_i")
SCORE_MAPS = {m.name: m for m in (SOFTMAX, LINEAR, RELU, SIGMOID)}


def score_map(value, where: str) -> ScoreMap:
    """A ScoreMap from itself or its name (the public boundary's one lookup), else a ProgramError naming score_map."""
    if isinstance(value, ScoreMap):
        return value
    if isinstance(value, str) and value in SCORE_MAPS:
        return SCORE_MAPS[value]
    raise ProgramError(f"{where}: score_map must be one of {', '.join(SCORE_MAPS)}, got {value!r}")


def attention_weights(scores, mask=None, temperature: float = 1.0, score_bias=None, score_map=SOFTMAX) -> np.ndarray:
    """A = map(p/τ + b) row by row over the allowed keys, zero elsewhere: scores (..., s, t) → weights (..., s, t).
    The numpy reference of the module's rule (what tests and small studies compare compiled loops with)."""
    p = np.asarray(scores, dtype=float)
    s, t = p.shape[-2:]
    z = p / temperature + (0.0 if score_bias is None else np.asarray(score_bias, dtype=float))
    allowed = np.ones((s, t), bool) if mask is None else np.asarray(mask, bool)
    out = np.zeros(np.broadcast_shapes(p.shape, z.shape))
    for i in range(s):
        keys = np.flatnonzero(allowed[i])
        out[..., i, keys] = score_map.weights(z[..., i, keys], len(keys))
    return out


# ------------------------------------------------------------------------------------------ argument checks
def check_mask(mask, queries: int, keys: int, where: str):
    """None, "causal" (query i sees keys 1..i; needs as many keys as queries) or a queries × keys boolean array
    with at least one allowed key per query → a read-only bool array, or None for no mask."""
    if mask is None:
        return None
    if isinstance(mask, str):
        if mask != "causal":
            raise ProgramError(f"{where}: mask must be None, 'causal' or a {queries}×{keys} boolean array, "
                               f"got {mask!r}")
        if queries != keys:
            raise ProgramError(f"{where}: a causal mask needs as many keys as queries ({queries} queries, "
                               f"{keys} keys)")
        out = np.tril(np.ones((queries, keys), bool))
    else:
        out = np.asarray(mask)
        if out.dtype != bool or out.shape != (queries, keys):
            raise ProgramError(f"{where}: mask must be a {queries}×{keys} boolean array, got "
                               f"{getattr(out, 'dtype', type(mask).__name__)} of shape {getattr(out, 'shape', '?')}")
        empty = np.flatnonzero(~out.any(axis=1))
        if len(empty):
            raise ProgramError(f"{where}: mask row {empty[0] + 1} allows no key; every query must see one")
        out = out.copy()
    out.setflags(write=False)
    return None if out.all() else out


def check_temperature(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < math.inf:
        raise ProgramError(f"{where}: temperature must be a finite positive number, got {value!r}")
    return float(value)


def check_score_bias(value, queries: int, keys: int, where: str):
    """None or a finite queries × keys array of fixed additive logits → a read-only float array (None if zero)."""
    if value is None:
        return None
    try:
        out = np.array(value, dtype=float)
    except (TypeError, ValueError):
        raise ProgramError(f"{where}: score_bias must be a {queries}×{keys} array of numbers") from None
    if out.shape != (queries, keys) or not np.isfinite(out).all():
        raise ProgramError(f"{where}: score_bias must be a finite {queries}×{keys} array, got shape {out.shape}")
    out.setflags(write=False)
    return None if not out.any() else out


def alibi(seq_len: int, slope: float = 0.5, keys: int | None = None) -> np.ndarray:
    """ALiBi's fixed biases b_ij = −slope·|i − j| (Press, Smith & Lewis, *Train Short, Test Long*, arXiv
    2108.12409), s × t."""
    t = seq_len if keys is None else keys
    i, j = np.arange(seq_len)[:, None], np.arange(t)[None, :]
    return -float(slope) * np.abs(i - j).astype(float)
