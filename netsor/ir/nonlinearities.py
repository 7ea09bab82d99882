"""Coordinatewise nonlinearities φ: R^k → R, each an object that owns its mathematics.

A `Nonlinearity` carries its vectorised numpy function (the finite-width and sampling semantics), its sympy form
(printing a law), its kinks (where quadrature splits), whether it is the identity, its integer code for the
compiled fast paths, and — registered by the object itself, never looked up by name — its closed forms:

    E[φ(v)]          v ~ N(0, s)                         (`closed_form_mean`)
    E[φ(u) ψ(v)]     (u, v) ~ N(0, [[s_uu, s_uv], [s_uv, s_vv]])   (`closed_form_product`)

Closed forms of the built-ins:
    identity·identity  s_uv
    relu·relu          sqrt(s_uu s_vv)/(2π) (sin θ + (π − θ) cos θ),  cos θ = s_uv / sqrt(s_uu s_vv)   (Cho & Saul)
    erf·erf            (2/π) arcsin(2 s_uv / sqrt((1 + 2 s_uu)(1 + 2 s_vv)))                           (Williams)
    identity·φ         s_uv E[φ'(v)] (Stein):  relu → s_uv/2,  erf → s_uv · 2/sqrt(π (1 + 2 s_vv))
    E[relu(v)] = sqrt(s/(2π)),  E[erf(v)] = E[tanh(v)] = E[clip_c(v)] = 0 (odd),  E[v²] = s
A nonlinearity that is a linear combination of others (leaky_relu(a) = a·identity + (1 − a)·relu) declares its
`parts`, and its closed forms follow bilinearly. Adding a built-in with a closed form is done here, in one place:
make the object, then `register_mean` / `register_product` its formulas.

Built-ins are module-level singletons that pickle by reference (they come back as the same objects, so a program
sent to a Dask worker takes the same code paths); parameterised families (`clip(c)`, `leaky_relu(a)`) are objects
that compare and pickle by their parameters. A user's callable is wrapped in a plain `Nonlinearity` that has no
closed forms, whatever it is called.
"""
from __future__ import annotations

import math
import numbers
from typing import Callable

import numpy as np

from .._lazy import sympy  # imported at the first symbolic use
from ..errors import ProgramError

# Integer codes of the nonlinearities that compiled kernels apply themselves (each kernel says which it covers).
CODE_NONE, CODE_IDENTITY, CODE_RELU, CODE_ERF, CODE_TANH, CODE_GELU, CODE_CLIP, CODE_LEAKY_RELU = range(8)


class Nonlinearity:
    """φ(u_1, ..., u_k) applied coordinatewise. `fn` takes k numpy arrays of one shape and returns that shape.

    name: how φ is printed (never used to decide its mathematics). symbolic: builds φ's sympy expression from k
    symbols. kinks: points where a univariate φ is not smooth. linear: φ is the identity, Z^{φ(u)} = Z^u.
    code, parameter: how compiled kernels apply φ (CODE_NONE: they do not).
    """

    def __init__(self, name: str, fn: Callable[..., np.ndarray], arity: int = 1,
                 symbolic: Callable[..., sympy.Expr] | None = None, kinks: tuple = (), *, linear: bool = False,
                 code: int = CODE_NONE, parameter: float = 0.0):
        self.name = name
        self.fn = fn
        self.arity = arity
        self.symbolic = symbolic
        self.kinks = tuple(kinks)
        self.linear = linear
        self.code = code
        self.parameter = float(parameter)

    def __call__(self, *args: np.ndarray) -> np.ndarray:
        return self.fn(*args)

    def expr(self, *symbols: sympy.Symbol) -> sympy.Expr:
        """The sympy expression φ(symbols), or an undefined function named after φ."""
        if self.symbolic is not None:
            return self.symbolic(*symbols)
        return sympy.Function(self.name)(*symbols)

    def jax_function(self, where: str = "jax_function"):
        """φ as a JAX function (for trainable models), lambdified from φ's sympy form — the same definition that
        prints the law — and checked against φ's numpy function on a grid; ProgramError where φ has none."""
        if self.symbolic is None:
            raise ProgramError(f"{where}: nonlinearity {self.name} has no sympy form, so it has no JAX twin; "
                               f"build it with netsor.from_sympy")
        import jax
        import jax.numpy as jnp
        symbols = sympy.symbols(f"u0:{self.arity}")
        fn = sympy.lambdify(symbols, self.expr(*symbols), modules=[{"erf": jax.scipy.special.erf}, "jax"])
        probe = [np.linspace(-3.0, 3.0, 13) + 0.1 * i for i in range(self.arity)]
        with jax.default_device(jax.devices("cpu")[0]):
            twin = np.asarray(fn(*(jnp.asarray(u, dtype=jnp.float32) for u in probe)), dtype=float)
        with np.errstate(all="ignore"):
            reference = np.asarray(self.fn(*probe), dtype=float)
        if twin.shape != reference.shape or not np.allclose(twin, reference, rtol=1e-5, atol=1e-5):
            raise ProgramError(f"{where}: the JAX form of {self.name} disagrees with its numpy function")
        return fn

    @property
    def parts(self) -> tuple:
        """φ = Σ_i a_i φ_i as pairs (a_i, φ_i) of nonlinearities with registered closed forms; (1, φ) itself."""
        return ((1.0, self),)

    def closed_form_mean(self):
        """s ↦ E[φ(v)], v ~ N(0, s), vectorised over arrays of s; None when no closed form is registered."""
        rules = [(a, _MEANS.get(part)) for a, part in self.parts]
        if self.arity != 1 or any(rule is None for _, rule in rules):
            return None
        if len(rules) == 1 and rules[0][0] == 1.0:
            return rules[0][1]
        return lambda s: sum(a * rule(s) for a, rule in rules)

    def closed_form_product(self, other: "Nonlinearity"):
        """(s_uu, s_vv, s_uv) ↦ E[φ(u) ψ(v)] for ψ = other, vectorised; None when no closed form is registered."""
        if self.arity != 1 or other.arity != 1:
            return None
        rules = [(a * b, _PRODUCTS.get((f, g))) for a, f in self.parts for b, g in other.parts]
        if any(rule is None for _, rule in rules):
            return None
        if len(rules) == 1 and rules[0][0] == 1.0:
            return rules[0][1]
        return lambda s_uu, s_vv, s_uv: sum(w * rule(s_uu, s_vv, s_uv) for w, rule in rules)

    def __repr__(self) -> str:
        return f"Nonlinearity({self.name!r})"


class _Builtin(Nonlinearity):
    """A built-in singleton: pickles as a reference to the module attribute `attribute`, so it unpickles as the
    very same object (and keeps its closed forms and compiled code)."""

    def __init__(self, attribute: str, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._attribute = attribute

    def __reduce__(self):
        return self._attribute


class _Family(Nonlinearity):
    """A member of a parameterised family: equal to (and hashed, pickled as) any member of the same family with the
    same `parameter`, so closed forms registered for it are found again after a round trip."""

    def __eq__(self, other):
        return type(other) is type(self) and other.parameter == self.parameter

    def __hash__(self):
        return hash((type(self), self.parameter))

    def __reduce__(self):
        return (type(self), (self.parameter,))


class Clip(_Family):
    """clip_c(u) = min(max(u, −c), c), the bounded activation of SKI25's experiments; equal for equal c."""

    def __init__(self, bound: float):
        if isinstance(bound, bool) or not isinstance(bound, numbers.Real) or not math.isfinite(bound) or bound <= 0:
            raise ProgramError(f"clip(c) needs a finite positive bound c, got {bound!r}")
        c = float(bound)
        super().__init__(f"clip({c:g})", _Clipper(c), 1, lambda u: sympy.Max(-c, sympy.Min(c, u)), kinks=(-c, c),
                         code=CODE_CLIP, parameter=c)

    def closed_form_mean(self):
        return _zero_mean  # odd: E[clip_c(v)] = 0

    @property
    def bound(self) -> float:
        return self.parameter


class LeakyRelu(_Family):
    """leaky_relu_a(u) = max(u, a·u) = a·u + (1 − a)·relu(u) for a slope a ∈ [0, 1); equal for equal a."""

    def __init__(self, slope: float):
        if isinstance(slope, bool) or not isinstance(slope, numbers.Real) or not 0 <= slope < 1:
            raise ProgramError(f"leaky_relu(a) needs a slope 0 ≤ a < 1, got {slope!r}")
        a = float(slope)
        super().__init__(f"leaky_relu({a:g})", _LeakyRectifier(a), 1, lambda u: sympy.Max(a * u, u), kinks=(0.0,),
                         code=CODE_LEAKY_RELU, parameter=a)

    @property
    def slope(self) -> float:
        return self.parameter

    @property
    def parts(self) -> tuple:
        return ((self.parameter, identity), (1.0 - self.parameter, relu))


class _Clipper:
    """x ↦ clip(x, −c, c) as a picklable callable."""

    def __init__(self, bound: float):
        self.bound = bound

    def __call__(self, x):
        return np.clip(x, -self.bound, self.bound)


class _LeakyRectifier:
    """x ↦ max(x, a x) as a picklable callable."""

    def __init__(self, slope: float):
        self.slope = slope

    def __call__(self, x):
        x = np.asarray(x, dtype=float)
        return np.maximum(x, self.slope * x)


# --------------------------------------------------------------------------------------------------- closed forms
_MEANS: dict[Nonlinearity, Callable] = {}
_PRODUCTS: dict[tuple[Nonlinearity, Nonlinearity], Callable] = {}


def register_mean(phi: Nonlinearity, rule: Callable) -> None:
    """Register s ↦ E[φ(v)], v ~ N(0, s), as φ's closed-form mean."""
    _MEANS[phi] = rule


def register_product(phi: Nonlinearity, psi: Nonlinearity, rule: Callable) -> None:
    """Register (s_uu, s_vv, s_uv) ↦ E[φ(u) ψ(v)] (and the swapped rule for ψ·φ)."""
    _PRODUCTS[(phi, psi)] = rule
    if (psi, phi) not in _PRODUCTS:
        _PRODUCTS[(psi, phi)] = lambda s_uu, s_vv, s_uv: rule(s_vv, s_uu, s_uv)


def relu_relu(s_uu, s_vv, s_uv):
    """Arc-cosine kernel of degree 1 (Cho & Saul); vectorised over arrays of covariances."""
    s_uu, s_vv, s_uv = np.broadcast_arrays(*(np.asarray(a, dtype=float) for a in (s_uu, s_vv, s_uv)))
    norm = np.sqrt(s_uu * s_vv)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.clip(np.where(norm > 0, s_uv / np.where(norm > 0, norm, 1.0), 0.0), -1.0, 1.0)
    theta = np.arccos(cos)
    return norm / (2 * math.pi) * (np.sin(theta) + (math.pi - theta) * cos)


def erf_erf(s_uu, s_vv, s_uv):
    """Williams' arcsine kernel for erf."""
    ratio = 2 * np.asarray(s_uv, float) / np.sqrt((1 + 2 * np.asarray(s_uu, float)) * (1 + 2 * np.asarray(s_vv, float)))
    return 2 / math.pi * np.arcsin(np.clip(ratio, -1.0, 1.0))


def identity_relu(s_uu, s_vv, s_uv):
    """E[u relu(v)] = s_uv P(v > 0) = s_uv / 2 (Stein), 0 for a degenerate v."""
    return np.where(np.asarray(s_vv) > 0, 0.5 * np.asarray(s_uv, float), 0.0)


def identity_erf(s_uu, s_vv, s_uv):
    """E[u erf(v)] = s_uv E[erf'(v)] = s_uv · 2 / sqrt(π (1 + 2 s_vv)) (Stein)."""
    return np.asarray(s_uv, float) * 2 / np.sqrt(math.pi * (1 + 2 * np.asarray(s_vv, float)))


def _zero_mean(s):
    return np.zeros_like(np.asarray(s, float))


def _relu_mean(s):
    return np.sqrt(np.maximum(np.asarray(s, float), 0.0) / (2 * math.pi))


def _identity_fn(x):
    return np.asarray(x, dtype=float) * 1.0


def _relu_fn(x):
    return np.maximum(x, 0.0)


def _gelu_fn(x):
    # exact GELU x·Φ(x), not the tanh approximation
    return 0.5 * x * (1.0 + _erf_fn(x / math.sqrt(2.0)))


def _square_fn(x):
    return np.square(np.asarray(x, dtype=float))


identity = _Builtin("identity", "identity", _identity_fn, 1, lambda u: u, linear=True, code=CODE_IDENTITY)
relu = _Builtin("relu", "relu", _relu_fn, 1, lambda u: sympy.Max(0, u), kinks=(0.0,), code=CODE_RELU)
def _erf_fn(x):
    """scipy's erf, imported at the first call: scipy.special is most of the cost of importing netsor."""
    from scipy.special import erf as scipy_erf
    return scipy_erf(x)


erf = _Builtin("erf", "erf", _erf_fn, 1, lambda u: sympy.erf(u), code=CODE_ERF)
tanh = _Builtin("tanh", "tanh", np.tanh, 1, lambda u: sympy.tanh(u), code=CODE_TANH)
gelu = _Builtin("gelu", "gelu", _gelu_fn, 1, lambda u: u * (1 + sympy.erf(u / sympy.sqrt(2))) / 2, code=CODE_GELU)
square = _Builtin("square", "square", _square_fn, 1, lambda u: u ** 2)  # LayerNorm's mean square

register_mean(identity, _zero_mean)
register_mean(relu, _relu_mean)
register_mean(erf, _zero_mean)
register_mean(tanh, _zero_mean)
register_mean(square, lambda s: np.asarray(s, float) * 1.0)  # E[Z²] = Var Z: LayerNorm's moment is a kernel entry
register_product(identity, identity, lambda s_uu, s_vv, s_uv: np.asarray(s_uv, float) * 1.0)
register_product(relu, relu, relu_relu)
register_product(erf, erf, erf_erf)
register_product(identity, relu, identity_relu)
register_product(identity, erf, identity_erf)

# The names users may write for built-ins at the public boundary (resolved once, into objects).
BUILTINS: dict[str, Nonlinearity] = {f.name: f for f in (identity, relu, erf, tanh, gelu, square)}
FAMILIES = {"clip": Clip, "leaky_relu": LeakyRelu}


def clip(c: float) -> Clip:
    """clip_c(u) = min(max(u, −c), c)."""
    return Clip(c)


def leaky_relu(a: float) -> LeakyRelu:
    """leaky_relu_a(u) = max(u, a u), 0 ≤ a < 1."""
    return LeakyRelu(a)


def from_sympy(expression: sympy.Expr, symbols, name: str | None = None) -> Nonlinearity:
    """A nonlinearity given only as a sympy expression in `symbols`; its numpy function is lambdified."""
    symbols = tuple(symbols) if isinstance(symbols, (list, tuple)) else (symbols,)
    if not isinstance(expression, sympy.Basic) or not all(isinstance(s, sympy.Symbol) for s in symbols):
        raise ProgramError(f"from_sympy: expected a sympy expression and its sympy Symbols, got {expression!r} "
                           f"in {symbols!r}")
    free = expression.free_symbols - set(symbols)
    if free:
        raise ProgramError(f"from_sympy: {expression} has symbols {', '.join(sorted(map(str, free)))} that are not "
                           f"among its arguments {', '.join(map(str, symbols))}")
    fn = sympy.lambdify(symbols, expression, modules=["numpy", "scipy"])
    return Nonlinearity(name or str(expression), fn, len(symbols),
                        lambda *u: expression.subs(dict(zip(symbols, u)), simultaneous=True))


def parse(text: str, where: str) -> Nonlinearity:
    """A built-in from what a user typed: a name ("relu") or a family with its parameter ("clip(1.5)")."""
    if text in BUILTINS:
        return BUILTINS[text]
    family, _, rest = text.partition("(")
    if family in FAMILIES and rest.endswith(")"):
        try:
            parameter = float(rest[:-1])
        except ValueError:
            parameter = None
        if parameter is not None:
            return FAMILIES[family](parameter)
    raise ProgramError(f"{where}: unknown nonlinearity {text!r}; built-ins are {', '.join(sorted(BUILTINS))}, "
                       f"{', '.join(f'{f}(·)' for f in FAMILIES)}, or pass a vectorised callable")


def as_nonlinearity(phi, arity: int, where: str = "nonlin") -> Nonlinearity:
    """Resolve a name, `Nonlinearity` or vectorised callable into a checked `Nonlinearity` of `arity` arguments.

    A callable is wrapped as it is: a user function called `relu` is the user's function, with no closed form."""
    if isinstance(phi, str):
        phi = parse(phi, where)
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
