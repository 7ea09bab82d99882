"""Composite constructors for the pieces of a transformer block, written only with the IR's primitives.

    layernorm(x)      = x / sqrt((1/n) Σ_α x_α²)           a LinComb whose coefficient is a scalar of a Moment
    residual(x, b, c) = x + c · b                          a LinComb
    feedforward(x, W_in, W_out, φ) = W_out φ(W_in x)       two MatMuls around a Nonlin
    mean_pool(xs)     = (1/s) Σ_i x_i                      a LinComb over the tokens

In the limit LayerNorm divides by sqrt(E[Z_x²]), a random scalar once x depends on random scores; a readout is
a MatMul into a fresh matrix, whose coordinate 0 is the network output.
"""
from __future__ import annotations

import numpy as np

from .._lazy import sympy  # imported at the first symbolic use
from ..errors import ProgramError
from .program import Matrix, Vector, lincomb, matmul, moment, nonlin, scalar_fn


def inverse_sqrt(m):
    """1/sqrt(m), the normalising factor of a mean square."""
    return 1.0 / np.sqrt(m)


def _inverse_sqrt_expr(m):
    """The sympy form of `inverse_sqrt` (module level, so programs pickle with the standard library too)."""
    return 1 / sympy.sqrt(m)


def layernorm(x: Vector, name: str | None = None) -> Vector:
    """x / sqrt((1/dim) Σ_α x_α²): LayerNorm without learned parameters and without mean subtraction (the mean of
    the coordinates is O(n^{-1/2}) and vanishes in the limit)."""
    if not isinstance(x, Vector):
        raise ProgramError(f"layernorm: expected a vector of a program, got {x!r}")
    tag = name or f"LN({x.name})"
    mean_square = moment("square", x, name=x.program._fresh(f"ms({x.name})"))
    scale = scalar_fn(inverse_sqrt, mean_square, name=x.program._fresh(f"rsqrt({mean_square.name})"),
                      expr=_inverse_sqrt_expr)
    return lincomb([scale], [x], name=x.program._fresh(tag) if name is None else name)


def residual(x: Vector, branch: Vector, scale: float, name: str | None = None) -> Vector:
    """x + scale · branch, a residual sum."""
    return lincomb([1.0, scale], [x, branch], name=name)


def feedforward(x: Vector, W_in: Matrix, W_out: Matrix, phi="relu", name: str | None = None) -> Vector:
    """W_out φ(W_in x), an MLP branch with any built-in (or user) nonlinearity."""
    hidden = matmul(W_in, x)
    return matmul(W_out, nonlin(phi, hidden), name=name)


def mean_pool(xs, name: str | None = None) -> Vector:
    """(1/s) Σ_i x_i over the tokens."""
    xs = tuple(xs)
    if not xs:
        raise ProgramError("mean_pool: give at least one vector")
    return lincomb([1.0 / len(xs)] * len(xs), xs, name=name)
