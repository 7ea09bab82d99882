"""Coordinatewise nonlinearities φ: R^k → R used by Nonlin and moment scalars.

A `Nonlinearity` carries a vectorised numpy function (the finite-width and sampling semantics) and, where it
has one, a sympy expression (the symbolic semantics used when printing a law). Built-ins: identity, relu, erf,
tanh, gelu, square (LayerNorm's moment), clip(c). Users pass any vectorised callable, a sympy expression, or
a registered name.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import scipy.special
import sympy

from .errors import ProgramError


@dataclass(frozen=True, eq=False)
class Nonlinearity:
    """φ(u_1, ..., u_k) applied coordinatewise. `fn` takes k numpy arrays of one shape and returns that shape."""

    name: str
    fn: Callable[..., np.ndarray]
    arity: int = 1
    # sympy expression builder: takes k sympy symbols, returns an expression (None: shown as the name only)
    symbolic: Callable[..., sympy.Expr] | None = field(default=None, repr=False)
    # points where a univariate φ is not smooth; quadrature splits there
    kinks: tuple = ()

    def __call__(self, *args: np.ndarray) -> np.ndarray:
        return self.fn(*args)

    def expr(self, *symbols: sympy.Symbol) -> sympy.Expr:
        """The sympy expression φ(symbols), or an undefined function named after φ."""
        if self.symbolic is not None:
            return self.symbolic(*symbols)
        return sympy.Function(self.name)(*symbols)

    def __repr__(self) -> str:
        return f"Nonlinearity({self.name!r})"


def _relu(x):
    return np.maximum(x, 0.0)


def _gelu(x):
    # exact GELU x·Φ(x), not the tanh approximation
    return 0.5 * x * (1.0 + scipy.special.erf(x / math.sqrt(2.0)))


identity = Nonlinearity("identity", lambda x: np.asarray(x, dtype=float) * 1.0, 1, lambda u: u)
relu = Nonlinearity("relu", _relu, 1, lambda u: sympy.Max(0, u), kinks=(0.0,))
erf = Nonlinearity("erf", scipy.special.erf, 1, lambda u: sympy.erf(u))
tanh = Nonlinearity("tanh", np.tanh, 1, lambda u: sympy.tanh(u))
gelu = Nonlinearity("gelu", _gelu, 1, lambda u: u * (1 + sympy.erf(u / sympy.sqrt(2))) / 2)
square = Nonlinearity("square", lambda x: np.square(np.asarray(x, dtype=float)), 1, lambda u: u ** 2)  # for norms

BUILTINS: dict[str, Nonlinearity] = {f.name: f for f in (identity, relu, erf, tanh, gelu, square)}


def clip(c: float) -> Nonlinearity:
    """clip_c(u) = min(max(u, −c), c), the bounded activation of SKI25's experiments."""
    if not isinstance(c, numbers.Real) or not math.isfinite(c) or c <= 0:
        raise ProgramError(f"clip(c) needs a finite positive bound c, got {c!r}")
    c = float(c)
    return Nonlinearity(f"clip({c:g})", lambda x: np.clip(x, -c, c), 1,
                        lambda u: sympy.Max(-c, sympy.Min(c, u)), kinks=(-c, c))


def from_sympy(expression: sympy.Expr, symbols, name: str | None = None) -> Nonlinearity:
    """A nonlinearity given only as a sympy expression in `symbols`; its numpy function is lambdified."""
    symbols = tuple(symbols) if isinstance(symbols, (list, tuple)) else (symbols,)
    fn = sympy.lambdify(symbols, expression, modules=["numpy", "scipy"])
    return Nonlinearity(name or str(expression), fn, len(symbols),
                        lambda *u: expression.subs(dict(zip(symbols, u)), simultaneous=True))


def as_nonlinearity(phi, arity: int, where: str = "nonlin") -> Nonlinearity:
    """Resolve a name, `Nonlinearity` or vectorised callable into a checked `Nonlinearity` of `arity` arguments."""
    if isinstance(phi, str):
        if phi.startswith("clip(") and phi.endswith(")"):
            try:
                return clip(float(phi[5:-1]))
            except ValueError:
                pass
        if phi not in BUILTINS:
            raise ProgramError(f"{where}: unknown nonlinearity {phi!r}; built-ins are "
                               f"{', '.join(sorted(BUILTINS))}, clip(c), or pass a vectorised callable")
        phi = BUILTINS[phi]
    elif not isinstance(phi, Nonlinearity):
        if not callable(phi):
            raise ProgramError(f"{where}: a nonlinearity must be a name or a callable, got {type(phi).__name__}")
        phi = Nonlinearity(getattr(phi, "__name__", "phi"), phi, arity)
    if phi.arity != arity:
        raise ProgramError(f"{where}: {phi.name} takes {phi.arity} argument(s), got {arity}")
    _check_vectorised(phi, where)
    return phi


def _check_vectorised(phi: Nonlinearity, where: str) -> None:
    """Probe φ once on a small grid so a non-vectorised or failing callable is caught at construction."""
    probe = [np.linspace(-2.0, 2.0, 7) + 0.1 * i for i in range(phi.arity)]
    try:
        with np.errstate(all="ignore"):
            out = np.asarray(phi.fn(*probe), dtype=float)
    except Exception as exc:  # noqa: BLE001 - any failure of user code is reported as a program error
        raise ProgramError(f"{where}: nonlinearity {phi.name} failed on a numpy array "
                           f"({type(exc).__name__}: {exc}); it must be vectorised") from None
    if out.shape != (7,):
        raise ProgramError(f"{where}: nonlinearity {phi.name} must map arrays of shape (7,) to shape (7,), "
                           f"got {out.shape}; it must act coordinatewise")
