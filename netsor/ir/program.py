"""The Netsor intermediate representation: a program is a list of immutable nodes, each defined from earlier ones.

Vectors have a dimension, the width "n" or a fixed integer N. Node kinds, as in Yang's Tensor Programs:

    x := input              coordinates iid across α, jointly N(0, Σ) across the declared inputs
    W := matrix             entries iid N(0, σ²/n_in)
    h := W x                MatMul (a G-var)
    y := φ(h_1, ..., h_k)   Nonlin, coordinatewise
    z := Σ_j c_j v_j        LinComb, constant or scalar coefficients
    m := (1/n) Σ_α φ(v)_α   Moment scalar
    p := g·g′ / n^a         Dot scalar (a = 1/2: random Gaussian limit; a = 1: deterministic)
    c := f(p_1, ..., p_k)   scalar function (softmax entries are one)

Every constructor validates its arguments and raises `ProgramError` naming the node, so a malformed program fails
when it is written, not deep inside a sampler.
"""
from __future__ import annotations

import math
import numbers
import operator
import re
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from ..errors import ProgramError
from .nonlinearities import Nonlinearity, as_nonlinearity

WIDTH = "n"  # the dimension that grows
MAX_FIXED_DIM = 10 ** 6  # a fixed dimension's N rows are drawn per sample: a block of 2^15 samples holds 2^15 N

def _check_dim(dim, where: str):
    if dim == WIDTH:
        return WIDTH
    if isinstance(dim, numbers.Integral) and not isinstance(dim, bool) and 1 <= dim <= MAX_FIXED_DIM:
        return int(dim)
    raise ProgramError(f"{where}: a dimension is 'n' (the width) or a positive integer up to {MAX_FIXED_DIM:.0e} "
                       f"(its rows are sampled one by one), got {dim!r}")


def _check_finite(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ProgramError(f"{where}: expected a finite real number, got {value!r}")
    return float(value)


def dim_size(dim, width: int) -> int:
    """The number of coordinates of a dimension at a given width."""
    return width if dim == WIDTH else dim


# --------------------------------------------------------------------------------------------------- nodes
@dataclass(frozen=True, eq=False, repr=False)
class Node:
    """A program variable. Nodes compare by identity and never change once made."""

    program: "Program"
    index: int
    name: str

    def definition(self) -> str:  # the right-hand side as the papers write it
        raise NotImplementedError

    def parents(self) -> tuple["Node", ...]:
        return ()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} := {self.definition()}>"


@dataclass(frozen=True, eq=False, repr=False)
class Matrix(Node):
    """W with iid N(0, var/n_in) entries; shape (out, in), each 'n' or a fixed integer."""

    var: float
    shape: tuple

    def definition(self) -> str:
        rows, cols = self.shape
        return f"matrix {rows}×{cols}, entries iid N(0, {self.var:g}/{cols})"

    def __matmul__(self, x: "Vector") -> "Vector":
        return matmul(self, x)


@dataclass(frozen=True, eq=False, repr=False)
class Vector(Node):
    dim: object  # "n" or int

    # linear-combination sugar: x + y, x - y, 2 * x, m * x (m a scalar node), x / 2, -x
    def __add__(self, other):
        if isinstance(other, Vector):
            return lincomb([1.0, 1.0], [self, other])
        return NotImplemented

    def __sub__(self, other):
        if isinstance(other, Vector):
            return lincomb([1.0, -1.0], [self, other])
        return NotImplemented

    def __mul__(self, coeff):
        if isinstance(coeff, (numbers.Real, Scalar)) and not isinstance(coeff, bool):
            return lincomb([coeff], [self])
        return NotImplemented

    __rmul__ = __mul__

    def __truediv__(self, divisor):
        if isinstance(divisor, numbers.Real):
            if divisor == 0:
                raise ProgramError(f"{self.name} / 0: division by zero")
            return lincomb([1.0 / divisor], [self])
        return NotImplemented

    def __neg__(self):
        return lincomb([-1.0], [self])


@dataclass(frozen=True, eq=False, repr=False)
class Input(Vector):
    """An input vector; `group` holds the joint covariance of the inputs declared together."""

    group: "InputGroup"
    position: int

    def definition(self) -> str:
        return "input"


@dataclass(frozen=True, eq=False, repr=False)
class MatMul(Vector):
    matrix: Matrix
    arg: Vector

    def definition(self) -> str:
        return f"{self.matrix.name} {self.arg.name}"

    def parents(self):
        return (self.matrix, self.arg)


@dataclass(frozen=True, eq=False, repr=False)
class Nonlin(Vector):
    phi: Nonlinearity
    args: tuple

    def definition(self) -> str:
        return f"{self.phi.name}({', '.join(a.name for a in self.args)})"

    def parents(self):
        return self.args


@dataclass(frozen=True, eq=False, repr=False)
class LinComb(Vector):
    """Σ_j c_j v_j; a coefficient is a float or a scalar node."""

    coeffs: tuple
    args: tuple

    def definition(self) -> str:
        return _lincomb_text(self.coeffs, self.args)

    def parents(self):
        return tuple(c for c in self.coeffs if isinstance(c, Scalar)) + self.args


@dataclass(frozen=True, eq=False, repr=False)
class HeadSum(Vector):
    """lim_{H→∞} H^{-1/2} Σ_h arg^h over H independent copies (heads) of `arg`, each copy with its own draw of the
    group's per-head matrices; the sums of one `group` run over the same heads."""

    group: "HeadGroup"
    arg: Vector

    def definition(self) -> str:
        return f"lim_H H^(-1/2) Σ_h {self.arg.name}^h"

    def parents(self):
        return (self.arg,)


@dataclass(frozen=True, eq=False)
class HeadGroup:
    """The representatives summed over the same infinitely many heads, and the matrices drawn afresh per head."""

    args: tuple
    per_head: tuple


# The kinds of node the limit treats specially, by their syntax alone (netsor.limit.structure uses them, and
# infinite_head_sum below): G-vars, and the two sources of randomness that survive n → ∞.
def is_gvar(node: Node) -> bool:
    return isinstance(node, (Input, MatMul))


def is_sqrt_dot(node: Node) -> bool:
    return isinstance(node, Dot) and node.exponent == 0.5 and node.args[0].dim == WIDTH


def is_row_gvar(node: Node) -> bool:
    """A G-var of fixed dimension N: its N iid rows are sampled."""
    return is_gvar(node) and node.dim != WIDTH


def is_source(node: Node) -> bool:
    return is_sqrt_dot(node) or is_row_gvar(node)


def _lincomb_text(coeffs, args) -> str:
    terms = []
    for c, v in zip(coeffs, args):
        if isinstance(c, Scalar):
            terms.append(f"+ {c.name}·{v.name}")
        else:
            mag = abs(c)
            terms.append(("- " if c < 0 else "+ ") + (v.name if mag == 1 else f"{mag:g}·{v.name}"))
    text = " ".join(terms)
    return text[2:] if text.startswith("+ ") else "-" + text[2:]


@dataclass(frozen=True, eq=False, repr=False)
class Scalar(Node):
    """A scalar variable of the program. Scalars combine with numbers and with each other by + − × / (each a
    ScalarFn node): `p / temperature`, `p + bias`, `2.0 * p`; a scalar times a vector is a LinComb."""

    def __add__(self, other):
        return _arithmetic(np.add, self, other)

    def __radd__(self, other):
        return _arithmetic(np.add, other, self)

    def __sub__(self, other):
        return _arithmetic(np.subtract, self, other)

    def __rsub__(self, other):
        return _arithmetic(np.subtract, other, self)

    def __mul__(self, other):
        return _arithmetic(np.multiply, self, other)

    def __rmul__(self, other):
        return _arithmetic(np.multiply, other, self)

    def __truediv__(self, other):
        return _arithmetic(np.divide, self, other)

    def __rtruediv__(self, other):
        return _arithmetic(np.divide, other, self)

    def __neg__(self):
        return _arithmetic(np.multiply, -1.0, self)


@dataclass(frozen=True, eq=False, repr=False)
class Moment(Scalar):
    """(1/dim) Σ_α φ(v_1, ..., v_k)_α → E[φ(Z^{v_1}, ..., Z^{v_k})] as n → ∞."""

    phi: Nonlinearity
    args: tuple

    def definition(self) -> str:
        dim = self.args[0].dim
        inner = ", ".join(f"{a.name}" for a in self.args)
        return f"(1/{dim}) Σ_α {self.phi.name}({inner})_α"

    def parents(self):
        return self.args


@dataclass(frozen=True, eq=False, repr=False)
class Dot(Scalar):
    """g1·g2 / dim^exponent, the sum over the vectors' common dimension (the width n, or a fixed N)."""

    args: tuple
    exponent: float

    def definition(self) -> str:
        a, b = self.args
        scale = {0.5: f"sqrt({a.dim})", 1.0: f"{a.dim}"}.get(self.exponent, f"{a.dim}^{self.exponent:g}")
        return f"{a.name}·{b.name} / {scale}"

    def parents(self):
        return self.args


@dataclass(frozen=True, eq=False, repr=False)
class ScalarFn(Scalar):
    """f(s_1, ..., s_k) of scalar nodes; `fn` is vectorised over numpy arrays of samples."""

    fn: object
    args: tuple
    label: str
    symbolic: object = None  # builds a sympy expression from k sympy symbols, or None

    def definition(self) -> str:
        names = [a.name for a in self.args]
        return self.label.format(*names) if "{}" in self.label else f"{self.label}({', '.join(names)})"

    def parents(self):
        return self.args


@dataclass(frozen=True, eq=False)
class SoftmaxGroup:
    """The scores one softmax normalises; its entries share one evaluation."""

    scores: tuple


@dataclass(frozen=True, eq=False, repr=False)
class SoftmaxEntry(Scalar):
    """softmax(scores)_position = exp(p_position) / Σ_j exp(p_j)."""

    group: SoftmaxGroup
    position: int

    def definition(self) -> str:
        return f"softmax({', '.join(p.name for p in self.group.scores)})[{self.position}]"

    def parents(self):
        return self.group.scores


@dataclass(frozen=True, eq=False)
class InputGroup:
    """Inputs declared together: coordinates iid across α, jointly N(0, cov) across the group."""

    cov: np.ndarray
    dim: object


# --------------------------------------------------------------------------------------------------- program
_NAME = re.compile(r"^[^\s]+$")


class Program:
    """A Netsor program. Build it with `input`, `inputs`, `matrix`, `@`, `nonlin`, `lincomb` and `moment`."""

    def __init__(self, name: str = "program"):
        self.name = name
        self._nodes: list[Node] = []
        self._by_name: dict[str, Node] = {}
        self._groups: list[tuple[InputGroup, tuple[Input, ...]]] = []

    # ---- declarations
    def input(self, name: str | None = None, var: float = 1.0, dim="n") -> Vector:
        """One input vector with iid N(0, var) coordinates, independent of all other inputs."""
        var = _check_finite(var, f"input {name!r}: var")
        if var < 0:
            raise ProgramError(f"input {name!r}: var must be non-negative, got {var}")
        return self.inputs([name] if name is not None else 1, cov=[[var]], dim=dim)[0]

    def inputs(self, names_or_count, cov=None, dim="n") -> tuple[Vector, ...]:
        """Inputs whose coordinates are iid across α and jointly N(0, cov) across the declared inputs."""
        if isinstance(names_or_count, bool) or names_or_count is None or isinstance(names_or_count, numbers.Real) \
                and not isinstance(names_or_count, numbers.Integral):
            raise ProgramError(f"inputs: give a count (a positive integer) or names, got {names_or_count!r}")
        if isinstance(names_or_count, numbers.Integral):
            if names_or_count < 1:
                raise ProgramError(f"inputs: the count must be at least 1, got {names_or_count}")
            start = sum(len(members) for _, members in self._groups)
            names = [self._fresh(f"x{start + i + 1}") for i in range(names_or_count)]
        elif isinstance(names_or_count, str):
            names = [names_or_count]
        else:
            names = list(names_or_count)
            if not names:
                raise ProgramError("inputs: give at least one name")
        k = len(names)
        label = f"inputs {', '.join(map(str, names))}"
        dim = _check_dim(dim, label)
        cov = np.eye(k) if cov is None else check_covariance(cov, k, label)
        cov.setflags(write=False)  # part of the program: compiled plans are cached per program (exact sampling)
        group = InputGroup(cov, dim)
        members = tuple(self._add(Input, name, dim=dim, group=group, position=i) for i, name in enumerate(names))
        self._groups.append((group, members))
        return members

    def matrix(self, name: str | None = None, var: float = 1.0, shape=("n", "n")) -> Matrix:
        """A Gaussian matrix W with entries iid N(0, var/n_in); shape (out, in), each 'n' or a fixed integer."""
        where = f"matrix {name!r}"
        var = _check_finite(var, f"{where}: var")
        if var < 0:
            raise ProgramError(f"{where}: var must be non-negative, got {var}")
        if not isinstance(shape, (tuple, list)) or len(shape) != 2:
            raise ProgramError(f"{where}: shape must be a pair (out, in), got {shape!r}")
        shape = (_check_dim(shape[0], where), _check_dim(shape[1], where))
        return self._add(Matrix, name or self._fresh("W"), var=var, shape=shape)

    # ---- access
    @property
    def nodes(self) -> tuple[Node, ...]:
        return tuple(self._nodes)

    @property
    def input_groups(self) -> tuple[tuple[InputGroup, tuple[Input, ...]], ...]:
        return tuple(self._groups)

    def __getitem__(self, name: str) -> Node:
        try:
            return self._by_name[name]
        except KeyError:
            raise ProgramError(f"{self.name}: no variable named {name!r}") from None

    def __contains__(self, item) -> bool:
        if isinstance(item, str):
            return item in self._by_name
        return isinstance(item, Node) and item.program is self

    def __len__(self) -> int:
        return len(self._nodes)

    def resolve(self, variables, where: str = "variables") -> list[Node]:
        """Nodes from names or nodes, checked to belong to this program."""
        if isinstance(variables, (str, Node)):
            variables = [variables]
        try:
            variables = list(variables)
        except TypeError:
            raise ProgramError(f"{where}: expected variables of {self.name} (nodes or names, or a list of them), "
                               f"got {variables!r}") from None
        out = []
        for v in variables:
            if isinstance(v, str):
                v = self[v]
            if not isinstance(v, Node):
                raise ProgramError(f"{where}: expected a variable of {self.name} or its name, got {v!r}")
            if v.program is not self:
                raise ProgramError(f"{where}: {v.name} belongs to another program, not {self.name}")
            if isinstance(v, Matrix):
                raise ProgramError(f"{where}: {v.name} is a matrix; ask for vectors or scalars")
            out.append(v)
        if not out:
            raise ProgramError(f"{where}: no variables given")
        return out

    def ancestors(self, nodes: Iterable[Node]) -> list[Node]:
        """The nodes themselves and everything they depend on, in program order."""
        seen: set[int] = set()
        stack = list(nodes)
        while stack:
            node = stack.pop()
            if node.index not in seen:
                seen.add(node.index)
                stack.extend(node.parents())
        return [n for n in self._nodes if n.index in seen]

    # ---- printing
    def _rows(self) -> list[tuple[str, str, str, str]]:
        """(name, separator, definition, kind) per printed line: an input group once, a matrix, a derived node —
        what `__str__` prints and `_repr_html_` tabulates."""
        rows, printed_groups = [], set()
        for node in self._nodes:
            if isinstance(node, Input):
                if id(node.group) in printed_groups:
                    continue
                printed_groups.add(id(node.group))
                members = next(m for g, m in self._groups if g is node.group)
                names = ", ".join(m.name for m in members)
                cov = np.array2string(node.group.cov, precision=4, separator=", ", suppress_small=True)
                cov = " ".join(cov.split())
                kind = "iid N(0, Σ) coordinates" if len(members) > 1 else f"iid N(0, {node.group.cov[0, 0]:g})"
                detail = f", Σ = {cov}" if len(members) > 1 else ""
                rows.append((names, ":", f"input in R^{node.dim}, {kind}{detail}", "input"))
            elif isinstance(node, Matrix):
                rows.append((node.name, ":", node.definition(), "matrix"))
            else:
                rows.append((node.name, ":=", node.definition(), type(node).__name__))
        return rows

    def __str__(self) -> str:
        lines = [f"Netsor program {self.name!r} (width n)"]
        width = min(12, max((len(n.name) for n in self._nodes), default=1))
        for name, sep, definition, kind in self._rows():
            if kind == "input":
                lines.append(f"  {name} : {definition}")
            elif kind == "matrix":
                lines.append(f"  {name:<{width}} : {definition}")
            else:
                lines.append(f"  {name:<{width}} := {definition:<28}  ({kind})")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"<Program {self.name!r}: {len(self._nodes)} nodes>"

    def _repr_html_(self) -> str:
        """Jupyter: the program as a table, one row per printed line (inputs and matrices with their laws)."""
        from ..display import html_table
        return html_table(f"Netsor program {self.name!r} (width n), {len(self._nodes)} nodes",
                          ("node", "definition", "kind"), [(n, d, k) for n, _, d, k in self._rows()])

    # ---- internals
    def _fresh(self, base: str) -> str:
        if base not in self._by_name:
            return base
        i = 2
        while f"{base}_{i}" in self._by_name:
            i += 1
        return f"{base}_{i}"

    def _add(self, cls, name, **fields):
        if not isinstance(name, str) or not _NAME.match(name):
            raise ProgramError(f"{cls.__name__}: a name is a non-empty string without spaces, got {name!r}")
        if name in self._by_name:
            raise ProgramError(f"{cls.__name__} {name!r}: the name is already used in {self.name}")
        node = cls(program=self, index=len(self._nodes), name=name, **fields)
        self._nodes.append(node)
        self._by_name[name] = node
        return node


def check_covariance(cov, k: int, where: str) -> np.ndarray:
    """A finite, symmetric, positive semi-definite k×k matrix, or ProgramError."""
    try:
        cov = np.array(cov, dtype=float)
    except (TypeError, ValueError):
        raise ProgramError(f"{where}: the covariance must be a numeric {k}×{k} matrix") from None
    if cov.ndim == 0 and k == 1:
        cov = cov.reshape(1, 1)
    if cov.shape != (k, k):
        raise ProgramError(f"{where}: the covariance must be {k}×{k}, got shape {cov.shape}")
    if not np.all(np.isfinite(cov)):
        raise ProgramError(f"{where}: the covariance holds NaN or inf")
    scale = max(np.abs(cov).max(), 1e-300)
    if not np.allclose(cov, cov.T, rtol=0, atol=1e-12 * scale):
        raise ProgramError(f"{where}: the covariance is not symmetric")
    cov = (cov + cov.T) / 2
    if np.linalg.eigvalsh(cov).min() < -1e-10 * scale:
        raise ProgramError(f"{where}: the covariance is not positive semi-definite")
    cov.setflags(write=False)
    return cov


# --------------------------------------------------------------------------------------------------- builders
def _program_of(nodes: Sequence[Node], where: str) -> Program:
    programs = {id(n.program): n.program for n in nodes}
    if len(programs) > 1:
        names = ", ".join(f"{n.name} ({n.program.name})" for n in nodes)
        raise ProgramError(f"{where}: the arguments come from different programs: {names}")
    return next(iter(programs.values()))


def _vectors(args, where: str) -> tuple[Vector, ...]:
    if not args:
        raise ProgramError(f"{where}: needs at least one vector argument")
    for a in args:
        if not isinstance(a, Vector):
            raise ProgramError(f"{where}: arguments must be vectors of a program, got {a!r}")
    dims = {a.dim for a in args}
    if len(dims) > 1:
        detail = ", ".join(f"{a.name} ∈ R^{a.dim}" for a in args)
        raise ProgramError(f"{where}: arguments have different dimensions ({detail})")
    return tuple(args)


def matmul(W: Matrix, x: Vector, name: str | None = None) -> Vector:
    """h := W x, a G-var."""
    if not isinstance(W, Matrix):
        raise ProgramError(f"matmul: the left operand must be a matrix, got {W!r}")
    if not isinstance(x, Vector):
        raise ProgramError(f"{W.name} @ ...: the right operand must be a vector, got {x!r}")
    prog = _program_of([W, x], f"{W.name} @ {x.name}")
    if W.shape[1] != x.dim:
        raise ProgramError(f"{W.name} @ {x.name}: shape mismatch, {W.name} is {W.shape[0]}×{W.shape[1]} "
                           f"but {x.name} ∈ R^{x.dim}")
    return prog._add(MatMul, name or prog._fresh(f"{W.name}{x.name}"), dim=W.shape[0], matrix=W, arg=x)


def nonlin(phi, *xs: Vector, name: str | None = None) -> Vector:
    """y := φ(x_1, ..., x_k) coordinatewise; φ a built-in name, clip(c), a Nonlinearity or a vectorised callable."""
    where = f"nonlin {name or getattr(phi, 'name', getattr(phi, '__name__', phi))}"
    xs = _vectors(xs, where)
    prog = _program_of(xs, where)
    phi = as_nonlinearity(phi, len(xs), where)
    return prog._add(Nonlin, name or prog._fresh(f"{phi.name}({','.join(x.name for x in xs)})"),
                     dim=xs[0].dim, phi=phi, args=xs)


def lincomb(coeffs, xs, name: str | None = None) -> Vector:
    """z := Σ_j c_j x_j with constant (finite float) or scalar-node coefficients."""
    xs = tuple(xs) if not isinstance(xs, Vector) else (xs,)
    coeffs = tuple(coeffs) if isinstance(coeffs, (list, tuple, np.ndarray)) else (coeffs,)
    where = f"lincomb {name}" if name else "lincomb"
    xs = _vectors(xs, where)
    if len(coeffs) != len(xs):
        raise ProgramError(f"{where}: {len(coeffs)} coefficients for {len(xs)} vectors")
    checked = []
    for c in coeffs:
        if isinstance(c, Scalar):
            checked.append(c)
        else:
            checked.append(_check_finite(c, f"{where}: coefficient"))
    prog = _program_of(list(xs) + [c for c in checked if isinstance(c, Scalar)], where)
    return prog._add(LinComb, name or prog._fresh(_lincomb_text(checked, xs).replace(" ", "")),
                     dim=xs[0].dim, coeffs=tuple(checked), args=xs)


def infinite_head_sum(vectors, per_head, names=None) -> tuple[Vector, ...]:
    """y_i := lim_{H→∞} H^{-1/2} Σ_h v_i^h: the normalised sum of `vectors` over infinitely many heads, each head an
    independent copy of the matrices `per_head` (everything else is shared). Each v_i must be a linear
    combination of MatMuls by per-head matrices, so that distinct heads are uncorrelated and the sum has mean 0,
    and every random scalar it depends on must be per-head (depend on a per-head matrix): then by the CLT over
    heads the limit is N(0, E[Z^v Z^vᵀ]), independent of every other node (a single head's share vanishes). A
    program with such sums has no finite-width network (`netsor.simulate` refuses it)."""
    where = "infinite_head_sum"
    vectors = (vectors,) if isinstance(vectors, Vector) else tuple(vectors)
    vectors = _vectors(vectors, where)
    per_head = (per_head,) if isinstance(per_head, Matrix) else tuple(per_head)
    if not per_head or not all(isinstance(W, Matrix) for W in per_head):
        raise ProgramError(f"{where}: per_head must be the matrices drawn afresh for each head, got {per_head!r}")
    prog = _program_of(list(vectors) + list(per_head), where)
    fresh = {W.index for W in per_head}
    for node in prog.nodes:
        if isinstance(node, HeadSum) and fresh & {W.index for W in node.group.per_head}:
            raise ProgramError(f"{where}: the per-head matrices overlap those of the head sum {node.name}; give "
                               f"each family of heads its own matrices")
    for v in vectors:
        if v.dim != WIDTH:
            raise ProgramError(f"{where}: {v.name} ∈ R^{v.dim}; the head sum is over width-n vectors")
        atom = _first_shared_atom(v, fresh)
        if atom is not None:
            raise ProgramError(f"{where}: {v.name} is not a combination of MatMuls by per-head matrices "
                               f"({atom.name} := {atom.definition()}), so different heads could be correlated")
    ancestors = prog.ancestors(vectors)
    nested = next((node for node in ancestors if isinstance(node, HeadSum)), None)
    if nested is not None:
        raise ProgramError(f"{where}: {nested.name} is itself an infinite head sum; nested head sums are not covered")
    for node in ancestors:
        if is_source(node) and not any(a.index in fresh for a in prog.ancestors([node]) if isinstance(a, Matrix)):
            raise ProgramError(f"{where}: the heads share the random {node.name} (it depends on no per-head "
                               f"matrix), so the sum is a mixture over it, not covered here")
    if isinstance(names, str) or names is not None and len(names) != len(vectors):
        raise ProgramError(f"{where}: names must be a sequence of {len(vectors)} names, got {names!r}")
    group = HeadGroup(vectors, per_head)
    names = names or [prog._fresh(f"S{v.name}") for v in vectors]
    return tuple(prog._add(HeadSum, name, dim=WIDTH, group=group, arg=v) for name, v in zip(names, vectors))


def _first_shared_atom(v: Vector, fresh: set):
    """The first atom of v's linear expansion that is not a MatMul by a per-head matrix (None if all are)."""
    if isinstance(v, MatMul):
        return None if v.matrix.index in fresh else v
    if isinstance(v, LinComb):
        return next((a for a in map(lambda x: _first_shared_atom(x, fresh), v.args) if a is not None), None)
    if isinstance(v, Nonlin) and v.phi.linear and len(v.args) == 1:
        return _first_shared_atom(v.args[0], fresh)
    return v


SCALES = {"sqrt": 0.5, "linear": 1.0}


def dot_exponent(scale, where: str = "dot") -> float:
    """The exponent a of a dot's 1/dim^a from its scale: "sqrt" → 1/2, "linear" → 1, or a finite number."""
    if isinstance(scale, str):
        if scale not in SCALES:
            raise ProgramError(f"{where}: scale must be 'sqrt', 'linear' or a number, got {scale!r}")
        return SCALES[scale]
    return _check_finite(scale, f"{where}: scale")


def dot(g1: Vector, g2: Vector, scale="sqrt", name: str | None = None) -> Scalar:
    """p := g1·g2 / dim^a with a = 1/2 ("sqrt"), 1 ("linear") or a given number, dim the vectors' dimension.

    As n → ∞: a = 1 gives E[Z^g1 Z^g2]; a = 1/2 a Gaussian scalar, jointly over all such dots and independent of
    every vector (needs E[Z^g1 Z^g2] = 0). Over a fixed dimension N the dot keeps its exact finite-N law.
    """
    where = f"dot {name}" if name else "dot"
    exponent = dot_exponent(scale, where)
    g1, g2 = _vectors((g1, g2), where)
    prog = _program_of((g1, g2), where)
    return prog._add(Dot, name or prog._fresh(f"{g1.name}·{g2.name}"), args=(g1, g2), exponent=exponent)


def _scalars(args, where: str) -> tuple[Scalar, ...]:
    if not args:
        raise ProgramError(f"{where}: needs at least one scalar argument")
    for a in args:
        if not isinstance(a, Scalar):
            raise ProgramError(f"{where}: arguments must be scalar nodes of a program, got {a!r}")
    return tuple(args)


def scalar_fn(f, *scalars: Scalar, name: str | None = None, expr=None, label: str | None = None) -> Scalar:
    """c := f(s_1, ..., s_k) for a function f vectorised over numpy arrays; `expr` optionally builds its sympy form;
    `label` (default f's name) prints the definition, its "{}" standing for the arguments' names if it has them."""
    label = label if isinstance(label, str) and label else getattr(f, "__name__", "f")
    where = f"scalar_fn {name or label}"
    if not callable(f):
        raise ProgramError(f"{where}: f must be callable, got {type(f).__name__}")
    scalars = _scalars(scalars, where)
    prog = _program_of(scalars, where)
    probe = [np.linspace(-1.0, 1.0, 5) + 0.1 * i for i in range(len(scalars))]
    try:
        with np.errstate(all="ignore"):
            out = np.asarray(f(*probe), dtype=float)
    except Exception as exc:  # noqa: BLE001 - user code
        raise ProgramError(f"{where}: f failed on numpy arrays ({type(exc).__name__}: {exc}); "
                           "it must be vectorised over samples") from None
    if out.shape != (5,):
        raise ProgramError(f"{where}: f must map arrays of shape (5,) to shape (5,), got {out.shape}")
    return prog._add(ScalarFn, name or prog._fresh(f"{label}({','.join(s.name for s in scalars)})"),
                     fn=f, args=scalars, label=label, symbolic=expr)


_SYMBOLS = {"add": "+", "subtract": "−", "multiply": "·", "divide": "/"}
_OPERATORS = {"add": operator.add, "subtract": operator.sub, "multiply": operator.mul, "divide": operator.truediv}


class _WithConstant:
    """x ↦ op(c, x) or op(x, c) for a numpy ufunc op and a number c: a picklable scalar function."""

    def __init__(self, op, constant: float, constant_first: bool):
        self.op, self.constant, self.constant_first = op, constant, constant_first

    def __call__(self, x):
        return self.op(self.constant, x) if self.constant_first else self.op(x, self.constant)


class _SympyArithmetic:
    """The sympy form of an arithmetic scalar node (picklable, unlike a lambda)."""

    def __init__(self, op_name: str, constant=None, constant_first: bool = False):
        self.op_name, self.constant, self.constant_first = op_name, constant, constant_first

    def __call__(self, *symbols):
        a, b = symbols if self.constant is None else \
            ((self.constant, symbols[0]) if self.constant_first else (symbols[0], self.constant))
        return _OPERATORS[self.op_name](a, b)


def _arithmetic(op, left, right):
    """left op right for scalar nodes and finite numbers (at least one a scalar node), as a ScalarFn node."""
    scalars = [x for x in (left, right) if isinstance(x, Scalar)]
    others = [x for x in (left, right) if not isinstance(x, Scalar)]
    if others and (isinstance(others[0], (bool, Node)) or not isinstance(others[0], numbers.Real)):
        return NotImplemented  # a vector: Vector's own operators make the LinComb
    symbol = _SYMBOLS[op.__name__]
    if len(scalars) == 2:
        return scalar_fn(op, left, right, name=scalars[0].program._fresh(f"({left.name}{symbol}{right.name})"),
                         expr=_SympyArithmetic(op.__name__), label=f"{{}} {symbol} {{}}")
    (scalar,), constant = scalars, _check_finite(others[0], f"{scalars[0].name} {symbol} ...")
    constant_first = left is not scalar
    if op is np.divide and not constant_first and constant == 0.0:
        raise ProgramError(f"{scalar.name} / 0: division by zero")
    label = f"{constant:g} {symbol} {{}}" if constant_first else f"{{}} {symbol} {constant:g}"
    name = scalar.program._fresh("(" + label.replace(" ", "").format(scalar.name) + ")")
    return scalar_fn(_WithConstant(op, constant, constant_first), scalar, name=name,
                     expr=_SympyArithmetic(op.__name__, constant, constant_first), label=label)


def softmax(scalars, name: str | None = None) -> tuple[Scalar, ...]:
    """(softmax(p)_1, ..., softmax(p)_k) as scalar nodes; evaluated stably (max subtracted) in every interpreter."""
    scalars = tuple(scalars) if not isinstance(scalars, Scalar) else (scalars,)
    where = f"softmax {name}" if name else "softmax"
    scalars = _scalars(scalars, where)
    prog = _program_of(scalars, where)
    group = SoftmaxGroup(scalars)
    base = name or (f"softmax({scalars[0].name}..)" if len(scalars) > 1 else f"softmax({scalars[0].name})")
    return tuple(prog._add(SoftmaxEntry, prog._fresh(f"{base}[{j}]"), group=group, position=j)
                 for j in range(len(scalars)))


def moment(phi, *xs: Vector, name: str | None = None) -> Scalar:
    """m := (1/dim) Σ_α φ(x_1, ..., x_k)_α, deterministic E[φ(Z)] in the limit over the width."""
    where = f"moment {name}" if name else "moment"
    xs = _vectors(xs, where)
    prog = _program_of(xs, where)
    phi = as_nonlinearity(phi, len(xs), where)
    return prog._add(Moment, name or prog._fresh(f"E[{phi.name}({','.join(x.name for x in xs)})]"),
                     phi=phi, args=xs)
