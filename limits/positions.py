"""Positions through the token covariance: the limit kernel of tokens plus positional encodings.

A MatMul sees its argument only through the Gram of its columns, so in the infinite-width limit tokens with
positional encodings x_i = e_i + r_i enter an attention layer through K_ij = lim x_i·x_j / n alone:
    random    r_i iid N(0, σ²) coordinates per position (learned embeddings at initialisation): K = Σ_e + σ² I
    sinusoidal r_i = σ·√2 (sin(i ω_k), cos(i ω_k))_k, ω_k = base^{−2k/n} (Vaswani et al., *Attention Is All You Need*,
              arXiv 1706.03762): K = Σ_e + σ² R, R_ij = lim (1/n) Σ_k 2 cos((i − j) ω_k) = ∫₀¹ cos(Δ base^{−u}) du
              = (Ci(|Δ|) − Ci(|Δ|/base)) / ln base, Δ = i − j (R_ii = 1).
Passed as `inputs` to `limits.attention_layer` or `limits.transformer`, K declares Gaussian tokens with that
covariance: the same infinite-width law as tokens plus sinusoidal encodings. (At finite width the sinusoidal
encodings' Gram is fixed where a Gaussian input's fluctuates, so the finite-width laws differ at O(1/sqrt(n)).)
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from netsor import ProgramError, check_covariance

__all__ = ["positional", "sinusoidal_kernel", "KINDS"]

KINDS = ("sinusoidal", "random")


def sinusoidal_kernel(seq_len: int, base: float = 10_000.0) -> np.ndarray:
    """R_ij = (Ci(|i − j|) − Ci(|i − j|/base)) / ln base, R_ii = 1: the limit Gram of unit-scale sinusoidal
    encodings (module docstring)."""
    from scipy.special import sici
    delta = np.abs(np.subtract.outer(np.arange(seq_len), np.arange(seq_len))).astype(float)
    off = delta > 0
    out = np.ones_like(delta)
    out[off] = (sici(delta[off])[1] - sici(delta[off] / base)[1]) / math.log(base)
    return out


def positional(seq_len: int, kind: str = "sinusoidal", scale: float = 1.0, tokens=None,
               base: float = 10_000.0) -> np.ndarray:
    """K = Σ_e + scale²·R: the limit kernel of tokens (Σ_e: `tokens`, an s×s covariance, default I for iid
    Gaussian tokens) plus positional encodings of the given kind ("sinusoidal": R from `sinusoidal_kernel`;
    "random": R = I)."""
    where = "positional"
    if isinstance(seq_len, bool) or not isinstance(seq_len, numbers.Integral) or seq_len < 1:
        raise ProgramError(f"{where}: seq_len must be a positive integer, got {seq_len!r}")
    if kind not in KINDS:
        raise ProgramError(f"{where}: kind must be one of {', '.join(KINDS)}, got {kind!r}")
    for value, name in ((scale, "scale"), (base, "base")):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < math.inf:
            raise ProgramError(f"{where}: {name} must be a finite non-negative number, got {value!r}")
    if not base > 1:
        raise ProgramError(f"{where}: base must be greater than 1, got {base!r}")
    tokens = np.eye(seq_len) if tokens is None else check_covariance(tokens, seq_len, f"{where}: tokens")
    encodings = sinusoidal_kernel(seq_len, base) if kind == "sinusoidal" else np.eye(seq_len)
    out = tokens + float(scale) ** 2 * encodings
    if np.linalg.eigvalsh(out).min() <= 0:
        raise ProgramError(f"{where}: tokens plus encodings give a singular covariance; use tokens with a positive "
                           "definite covariance")
    return check_covariance(out, seq_len, where)
