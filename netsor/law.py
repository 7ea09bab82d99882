"""The infinite-width law of a Netsor program (the master theorem).

G-vars (inputs and MatMuls) have jointly Gaussian limits: Cov(Z^{Wx}, Z^{Wy}) = σ_W² E[Z^x Z^y], MatMuls by
different matrices and inputs are independent. Every other vector is a function of G-vars, Z^{φ(x)} = φ(Z^x),
Z^{Σ c_j v_j} = Σ c_j Z^{v_j}, and moment scalars converge to E[φ(Z)].

`limit(prog)` returns a `Law`. Kernels E[Z^u Z^v] are computed exactly where a closed form exists and by
quadrature otherwise (see `kernels.gaussian_expectation`); the error bound reported is twice the difference from
a rule of half the order (the whole computation is repeated at the coarse order, so errors propagate through
layers).
"""
from __future__ import annotations

from functools import cached_property

import numpy as np

from . import kernels
from ._random import check_size, seed_sequence, stream
from .errors import ProgramError
from .program import WIDTH, Input, LinComb, MatMul, Matrix, Moment, Node, Nonlin, Program, Scalar, Vector

SAMPLE_BLOCK = 1 << 15  # samples per random stream; fixed so results do not depend on chunking


def is_gvar(node: Node) -> bool:
    return isinstance(node, (Input, MatMul))


class _Calculus:
    """Limit kernels of one program at one quadrature accuracy (fine, or coarse for the error bound)."""

    def __init__(self, program: Program, coarse: bool):
        self.program = program
        self.coarse = coarse
        self._kernel: dict[tuple[int, int], float] = {}
        self._atom_product: dict[tuple[int, int], float] = {}
        self._mean: dict[int, float] = {}
        self._scalar: dict[int, float] = {}
        self._expansion: dict[int, dict[Node, float]] = {}
        self._support: dict[int, tuple[Node, ...]] = {}

    # ---- structure
    def expansion(self, v: Vector) -> dict[Node, float]:
        """Z^v = Σ coeff · Z^atom, atoms being G-vars or genuine Nonlins (identity passes through)."""
        if v.index in self._expansion:
            return self._expansion[v.index]
        if is_gvar(v):
            out = {v: 1.0}
        elif isinstance(v, Nonlin) and v.phi.name == "identity":
            out = dict(self.expansion(v.args[0]))
        elif isinstance(v, Nonlin):
            out = {v: 1.0}
        elif isinstance(v, LinComb):
            out = {}
            for c, arg in zip(v.coeffs, v.args):
                c = self.scalar(c) if isinstance(c, Scalar) else c
                for atom, a in self.expansion(arg).items():
                    out[atom] = out.get(atom, 0.0) + c * a
        else:
            raise ProgramError(f"{v.name}: the limit has no rule for {type(v).__name__} nodes")
        self._expansion[v.index] = out
        return out

    def support(self, node: Node) -> tuple[Node, ...]:
        """The G-vars whose limits determine Z^node, in program order."""
        if node.index not in self._support:
            if is_gvar(node):
                found = {node}
            else:
                found = set()
                for parent in node.parents():
                    if not isinstance(parent, Scalar):  # deterministic scalars are constants here
                        found.update(self.support(parent))
            self._support[node.index] = tuple(sorted(found, key=lambda n: n.index))
        return self._support[node.index]

    def gaussian_form(self, v: Vector) -> dict[Node, float] | None:
        """The linear form in G-vars when Z^v is Gaussian, else None."""
        form = self.expansion(v)
        return form if all(is_gvar(a) for a in form) else None

    # ---- Gaussian second moments
    def gvar_cov(self, a: Node, b: Node) -> float:
        if isinstance(a, Input) and isinstance(b, Input):
            return float(a.group.cov[a.position, b.position]) if a.group is b.group else 0.0
        if isinstance(a, MatMul) and isinstance(b, MatMul) and a.matrix is b.matrix:
            return a.matrix.var * self.kernel(a.arg, b.arg)
        return 0.0

    def form_cov(self, f: dict, g: dict) -> float:
        return sum(ca * cb * self.gvar_cov(a, b) for a, ca in f.items() for b, cb in g.items())

    def gvar_cov_matrix(self, gvars) -> np.ndarray:
        k = len(gvars)
        cov = np.empty((k, k))
        for i in range(k):
            for j in range(i, k):
                cov[i, j] = cov[j, i] = self.gvar_cov(gvars[i], gvars[j])
        return cov

    # ---- expectations
    def kernel(self, u: Vector, v: Vector) -> float:
        """E[Z^u Z^v]."""
        key = (min(u.index, v.index), max(u.index, v.index))
        if key not in self._kernel:
            eu, ev = self.expansion(u), self.expansion(v)
            self._kernel[key] = float(sum(cu * cv * self.atom_product(a, b)
                                          for a, cu in eu.items() for b, cv in ev.items()))
        return self._kernel[key]

    def mean(self, v: Vector) -> float:
        """E[Z^v]."""
        if v.index not in self._mean:
            self._mean[v.index] = float(sum(c * self.atom_mean(a) for a, c in self.expansion(v).items()))
        return self._mean[v.index]

    def atom_mean(self, a: Node) -> float:
        if is_gvar(a):
            return 0.0
        form = self.gaussian_form(a.args[0]) if a.phi.arity == 1 else None
        if form is not None and a.phi.name in kernels.CLOSED_FORM_MEANS:
            return kernels.CLOSED_FORM_MEANS[a.phi.name](self.form_cov(form, form))
        return float(self.quadrature([a])[0])

    def atom_product(self, a: Node, b: Node) -> float:
        key = (min(a.index, b.index), max(a.index, b.index))
        if key in self._atom_product:
            return self._atom_product[key]
        value = self._closed_form_product(a, b)
        if value is None:
            value = float(self.quadrature([a, b], product=True))
        self._atom_product[key] = value
        return value

    def _closed_form_product(self, a: Node, b: Node) -> float | None:
        def name_and_form(atom):
            if is_gvar(atom):
                return "identity", {atom: 1.0}
            if atom.phi.arity == 1:
                form = self.gaussian_form(atom.args[0])
                if form is not None:
                    return atom.phi.name, form
            return None, None

        (phi, f), (psi, g) = name_and_form(a), name_and_form(b)
        if phi is None or psi is None:
            return None
        if (phi, psi) not in kernels.CLOSED_FORM_PRODUCTS and (psi, phi) not in kernels.CLOSED_FORM_PRODUCTS:
            return None
        return kernels.closed_form_product(phi, psi, self.form_cov(f, f), self.form_cov(g, g), self.form_cov(f, g))

    def quadrature(self, nodes, product: bool = False):
        """E[Π Z^node] (product=True) or the vector E[Z^node], by Gauss–Hermite over their joint support."""
        gvars = sorted({g for n in nodes for g in self.support(n)}, key=lambda n: n.index)
        cov = self.gvar_cov_matrix(gvars)

        def integrand(points):
            env = {g.index: points[:, i] for i, g in enumerate(gvars)}
            values = np.stack([np.broadcast_to(self.evaluate(n, env), points.shape[:1]) for n in nodes], axis=1)
            return values.prod(axis=1) if product else values

        return kernels.gaussian_expectation(integrand, cov, coarse=self.coarse, kinks=self._kinks(nodes, gvars))

    def _kinks(self, nodes, gvars) -> list:
        """(a, k) pairs: Z is not smooth where a·g = k, for kinked φ applied to a Gaussian argument."""
        position = {g.index: i for i, g in enumerate(gvars)}
        found, stack, seen = [], list(nodes), set()
        while stack:
            node = stack.pop()
            if node.index in seen or is_gvar(node):
                continue
            seen.add(node.index)
            stack.extend(p for p in node.parents() if not isinstance(p, Scalar))
            if isinstance(node, Nonlin) and node.phi.kinks and node.phi.arity == 1:
                form = self.gaussian_form(node.args[0])
                if form is not None:
                    a = np.zeros(len(gvars))
                    for g, c in form.items():
                        a[position[g.index]] += c
                    found.extend((a, k) for k in node.phi.kinks)
        return found

    def scalar(self, s: Scalar) -> float:
        """The deterministic limit of a scalar node."""
        if s.index not in self._scalar:
            if not isinstance(s, Moment):
                raise ProgramError(f"{s.name}: the limit has no rule for {type(s).__name__} scalars")
            node_value = self.quadrature([_MomentIntegrand(s)])[0]
            self._scalar[s.index] = float(node_value)
        return self._scalar[s.index]

    # ---- evaluation of Z^node from G-var values (sampling and quadrature share it)
    def evaluate(self, node: Node, env: dict[int, np.ndarray], memo: dict | None = None):
        memo = {} if memo is None else memo
        if node.index in memo:
            return memo[node.index]
        if isinstance(node, _MomentIntegrand):
            return node.moment.phi(*(self.evaluate(a, env, memo) for a in node.moment.args))
        if is_gvar(node):
            value = env[node.index]
        elif isinstance(node, Nonlin):
            value = node.phi(*(self.evaluate(a, env, memo) for a in node.args))
        elif isinstance(node, LinComb):
            value = 0.0
            for c, arg in zip(node.coeffs, node.args):
                c = self.scalar(c) if isinstance(c, Scalar) else c
                value = value + c * self.evaluate(arg, env, memo)
        elif isinstance(node, Scalar):
            value = self.scalar(node)
        else:
            raise ProgramError(f"{node.name}: cannot evaluate a {type(node).__name__} in the limit")
        memo[node.index] = value
        return value


class _MomentIntegrand:
    """φ(Z^{args}) of a moment scalar, shaped like a node for `quadrature` (support and evaluation)."""

    def __init__(self, moment: Moment):
        self.moment = moment
        self.index = ("moment", moment.index)

    def parents(self):
        return self.moment.args


class Law:
    """The infinite-width law of a program's coordinates and scalars.

    kernel(vars) = E[Z Zᵀ] (the Tensor Programs kernel), mean(vars) = E[Z], cov(vars) = kernel − mean meanᵀ,
    sample(vars, size, seed) draws the joint coordinate law. `error=True` also returns the quadrature error bound.
    """

    def __init__(self, program: Program):
        if not isinstance(program, Program):
            raise ProgramError(f"limit: expected a netsor Program, got {type(program).__name__}")
        self.program = program
        _check_supported(program)
        self._fine = _Calculus(program, coarse=False)

    @cached_property
    def _coarse(self) -> _Calculus:
        return _Calculus(self.program, coarse=True)

    def __repr__(self) -> str:
        return f"<Law of {self.program.name!r}: infinite-width limit, Gaussian given its deterministic scalars>"

    # ---- moments
    def _first_and_second(self, calc: _Calculus, nodes):
        k = len(nodes)
        mean = np.empty(k)
        second = np.empty((k, k))
        for i, u in enumerate(nodes):
            mean[i] = calc.scalar(u) if isinstance(u, Scalar) else calc.mean(u)
        for i, u in enumerate(nodes):
            for j in range(i, k):
                v = nodes[j]
                if isinstance(u, Scalar) or isinstance(v, Scalar):
                    second[i, j] = mean[i] * mean[j]  # deterministic scalars factor out
                else:
                    second[i, j] = calc.kernel(u, v)
                second[j, i] = second[i, j]
        return mean, second

    def _with_error(self, variables, pick, error: bool):
        nodes = self.program.resolve(variables)
        fine = pick(*self._first_and_second(self._fine, nodes))
        if not error:
            return fine
        coarse = pick(*self._first_and_second(self._coarse, nodes))
        return fine, 2 * np.abs(fine - coarse) + 1e-14 * np.abs(fine)

    def kernel(self, variables, error: bool = False):
        """E[Z^u Z^v] over the requested variables, a (k, k) array (and its error bound with error=True)."""
        return self._with_error(variables, lambda m, s: s, error)

    def mean(self, variables, error: bool = False):
        """E[Z^v] for each requested variable, a (k,) array."""
        return self._with_error(variables, lambda m, s: m, error)

    def cov(self, variables, error: bool = False):
        """Cov(Z^u, Z^v) = E[Z^u Z^v] − E[Z^u] E[Z^v], a (k, k) array (and its error bound with error=True)."""
        return self._with_error(variables, lambda m, s: s - np.outer(m, m), error)

    def value(self, scalar) -> float:
        """The deterministic limit of a scalar node (or name)."""
        (node,) = self.program.resolve([scalar], "value")
        if not isinstance(node, Scalar):
            raise ProgramError(f"value: {node.name} is a vector; use mean/cov/sample")
        return self._fine.scalar(node)

    # ---- sampling
    def sample(self, variables, size: int, seed=None) -> np.ndarray:
        """(size, k) joint draws of the limit coordinates Z^v (scalars: their deterministic value)."""
        nodes = self.program.resolve(variables, "sample")
        size = check_size(size)
        root = seed_sequence(seed)
        calc = self._fine
        gvars = sorted({g for n in nodes for g in calc.support(n)}, key=lambda n: n.index)
        factor = kernels.gaussian_factor(calc.gvar_cov_matrix(gvars)) if gvars else np.zeros((0, 0))
        out = np.empty((size, len(nodes)))
        for block, start in enumerate(range(0, size, SAMPLE_BLOCK)):
            count = min(SAMPLE_BLOCK, size - start)
            z = stream(root, block).standard_normal((count, factor.shape[1]))
            g = z @ factor.T
            env = {gv.index: g[:, i] for i, gv in enumerate(gvars)}
            memo: dict = {}
            for j, node in enumerate(nodes):
                out[start:start + count, j] = calc.evaluate(node, env, memo)
        return out


def _check_supported(program: Program) -> None:
    """Reject, naming the node, what this limit does not cover (fixed inner dimensions make scalars random)."""
    for node in program.nodes:
        if isinstance(node, MatMul) and node.arg.dim != WIDTH:
            raise ProgramError(
                f"{node.name} := {node.definition()}: a MatMul over a fixed dimension {node.arg.dim} has a "
                f"random (scale-mixture) limit, which limit() does not support yet")
        if isinstance(node, Moment) and node.args[0].dim != WIDTH:
            raise ProgramError(
                f"{node.name}: a moment over a fixed dimension {node.args[0].dim} stays random as n → ∞, "
                f"which limit() does not support yet")
        if not isinstance(node, (Input, MatMul, Nonlin, LinComb, Moment, Matrix)):
            raise ProgramError(f"{node.name}: limit() has no rule for {type(node).__name__} nodes")


def limit(program: Program) -> Law:
    """The infinite-width law of `program` (Yang's master theorem)."""
    return Law(program)
