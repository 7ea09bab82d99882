"""The law as formulas (sympy): what is random, its covariance, and the conditional law of the outputs.

`describe(law, variables)` prints, in plain text or LaTeX:
1. the random scalars, grouped into independent blocks, with their covariance — as K_l ⊗ K_r (Σ ⊗ Σ) when the
   dots are a full grid l_a·r_b of uncorrelated sides in row-major order, else as the Isserlis rule with the kernel
   it uses (a ragged set, e.g. a causal mask); deeper-level scores by their conditional law;
2. scalar functions of them (softmax entries) as expressions;
3. the conditional law of the requested vectors: Gaussian given the random scalars, covariance entries as
   expressions in the scalars (kernels of deterministic vectors as numbers);
4. the deterministic quantities used on the way (the kernel Σ of the vectors the scores are made of).
"""
from __future__ import annotations

import numpy as np
import sympy

from ..errors import ProgramError
from ..ir.program import (WIDTH, Dot, HeadSum, Input, MatMul, Moment, Nonlin, Scalar, ScalarFn, SoftmaxEntry,
                          Vector)

CONSTANTS = [sympy.sqrt(2), sympy.sqrt(3), sympy.pi]


def number(x: float) -> sympy.Expr:
    """A float as a readable sympy number (1/2, sqrt(2)/2, ...) when one is within 1e-12, else a Float."""
    x = float(x)
    if x == 0:
        return sympy.Integer(0)
    tolerance = 1e-12 * max(1.0, abs(x))
    candidates = [sympy.nsimplify(x, [c], tolerance=tolerance) for c in CONSTANTS]  # one constant at a time
    exact = min(candidates, key=lambda e: len(str(e)))
    return exact if len(str(exact)) <= 16 and abs(float(exact) - x) <= tolerance else sympy.Float(x, 6)


def symbol(node) -> sympy.Symbol:
    return sympy.Symbol(node.name)


def _matrix(values: np.ndarray) -> sympy.Matrix:
    return sympy.Matrix(values.shape[0], values.shape[1], lambda i, j: number(values[i, j]))


class _Symbolic:
    """Kernels of vectors that are Gaussian given the random scalars, as sympy expressions in those scalars."""

    def __init__(self, law):
        self.law = law
        self.structure = law.structure
        self.calc = law._fine

    def coefficient(self, c):
        if isinstance(c, Scalar):
            return symbol(c) if self.structure.is_random(c) else number(self.calc.scalar(c)[0])
        return number(c)

    def expansion(self, v: Vector) -> dict:
        if isinstance(v, (Input, MatMul)):
            return {v: sympy.Integer(1)}
        if isinstance(v, Nonlin) and v.phi.linear:
            return self.expansion(v.args[0])
        if isinstance(v, Nonlin):
            return {v: sympy.Integer(1)}
        out: dict = {}
        for c, arg in zip(v.coeffs, v.args):
            for atom, a in self.expansion(arg).items():
                out[atom] = out.get(atom, 0) + self.coefficient(c) * a
        return out

    def kernel(self, u: Vector, v: Vector) -> sympy.Expr:
        if not self.structure.is_random(u) and not self.structure.is_random(v):
            return number(self.calc.kernel_matrix([u], [v])[0, 0, 0])
        total = sympy.Integer(0)
        for a, ca in self.expansion(u).items():
            for b, cb in self.expansion(v).items():
                total += ca * cb * self.atom_kernel(a, b)
        return sympy.expand(total)

    def atom_kernel(self, a, b) -> sympy.Expr:
        if isinstance(a, Input) and isinstance(b, Input):
            return number(a.group.cov[a.position, b.position]) if a.group is b.group else sympy.Integer(0)
        if isinstance(a, MatMul) and isinstance(b, MatMul):
            if a.matrix is not b.matrix:
                return sympy.Integer(0)
            if a.arg.dim != WIDTH:
                return number(a.matrix.var) * sympy.Symbol(f"G[{a.arg.name},{b.arg.name}]")
            return number(a.matrix.var) * self.kernel(a.arg, b.arg)
        if isinstance(a, (Input, MatMul)) and isinstance(b, (Input, MatMul)):
            return sympy.Integer(0)
        if not self.structure.is_random(a) and not self.structure.is_random(b):
            return number(self.calc.atom_product(a, b)[0])  # a number, not an unevaluated symbol
        return sympy.Symbol(f"E[{a.name}·{b.name}]")

    def scalar(self, s: Scalar) -> sympy.Expr:
        if isinstance(s, SoftmaxEntry):
            exps = [sympy.exp(symbol(p)) for p in s.group.scores]
            return exps[s.position] / sympy.Add(*exps)
        if isinstance(s, ScalarFn):
            args = [symbol(a) for a in s.args]
            return s.symbolic(*args) if s.symbolic else sympy.Function(s.label)(*args)
        if isinstance(s, Dot) and s.args[0].dim != WIDTH:
            a, b = s.args
            return sympy.Sum(sympy.Symbol(f"{a.name}_r") * sympy.Symbol(f"{b.name}_r"),
                             (sympy.Symbol("r"), 1, a.dim)) / sympy.Integer(a.dim) ** number(s.exponent)
        return symbol(s)


def describe(law, variables=None, latex: bool = False) -> str:
    program = law.program
    if variables is None:
        variables = [n for n in program.nodes if isinstance(n, Vector) and not any(
            n in m.parents() for m in program.nodes)]
    nodes = law._resolve(variables, "describe")
    if not isinstance(latex, bool):
        raise ProgramError(f"describe: latex must be True or False, got {latex!r}")
    sym = _Symbolic(law)
    show = sympy.latex if latex else sympy.sstr
    lines = [f"Infinite-width law of {program.name!r}"]
    head_sums = [v for v in nodes if isinstance(v, HeadSum)]
    if head_sums:
        K, se = law.kernel([v.arg for v in head_sums], error=True)
        lines.append(f"Infinite head sums (CLT over independent heads; independent of every other node): "
                     f"({', '.join(v.name for v in head_sums)}) ~ N(0, E[Z Zᵀ]) over one head's "
                     f"({', '.join(v.arg.name for v in head_sums)}), E[Z Zᵀ] = {show(_matrix(K))}"
                     + (f" (Monte Carlo SE ≤ {se.max():.1e})" if np.any(se) else ""))
        nodes = [v for v in nodes if not isinstance(v, HeadSum)]
        if not nodes:
            return "\n".join(lines)
    needed = {n.index for n in program.ancestors(nodes)}  # only what the requested variables depend on
    random = [s for s in law.random_scalars if s.index in needed]
    gaussian_dots = [d for d in random if law._is_first_level_dot(d)]
    if gaussian_dots:
        lines.append("Random scalars: jointly Gaussian, zero mean, independent of every vector (SKI25):")
        cov = law.score_cov(gaussian_dots)
        for block in _dot_groups(gaussian_dots, cov):
            dots = [gaussian_dots[i] for i in block]
            head = f"  ({', '.join(d.name for d in dots)}) ~ N(0, C)"
            grid = _grid(dots) if len(dots) > 1 else None
            if grid is not None and not np.any(law._fine.kernel_matrix(*grid)):
                # a full grid p_ab = l_a·r_b of uncorrelated sides: C = K_l ⊗ K_r exactly (row-major order)
                K_left, K_right = (law._fine.kernel_matrix(side, side)[:, :, 0] for side in grid)
                same = K_left.shape == K_right.shape and np.allclose(K_left, K_right, atol=1e-12)
                lines.append(head + (", C = Σ ⊗ Σ with" if same else ", C = K_l ⊗ K_r with"))
                lines.append("    " + (f"Σ = {show(_matrix(K_left))}" if same else
                                       f"K_l = {show(_matrix(K_left))} over ({', '.join(v.name for v in grid[0])}), "
                                       f"K_r = {show(_matrix(K_right))} over ({', '.join(v.name for v in grid[1])})"))
            elif len(dots) > 1:  # a ragged set (e.g. a causal mask): the Isserlis rule and the kernel it uses
                vectors = list({v.index: v for d in dots for v in d.args}.values())
                K = law._fine.kernel_matrix(vectors, vectors)[:, :, 0]
                lines.append(head + ", Cov(a·b, c·d) = K_ac K_bd + K_ad K_bc (Isserlis) with K over "
                             f"({', '.join(v.name for v in vectors)}) = {show(_matrix(K))}")
            else:
                lines.append(head + f", C = {show(_matrix(cov[np.ix_(block, block)]))}")
    others = [d for d in random if d not in gaussian_dots and not isinstance(d, (SoftmaxEntry, ScalarFn))]
    if others:
        lines.append("Other random scalars (sampled exactly: fixed dimensions or deeper levels):")
        for d in others:
            formula = sym.scalar(d)
            lines.append(f"  {d.name}: {_other_law(law, d)}" if formula == symbol(d) else
                         f"  {d.name} = {show(formula)}")
    functions = [s for s in random if isinstance(s, (SoftmaxEntry, ScalarFn))]
    if functions:
        lines.append("Scalar functions of them:")
        shown = functions if len(functions) <= 8 else functions[:4] + [None] + functions[-2:]
        for s in shown:
            lines.append("  ..." if s is None else f"  {s.name} = {show(sym.scalar(s))}")
    vectors = [v for v in nodes if isinstance(v, Vector) and v.dim == WIDTH]
    if vectors:
        names = ", ".join(v.name for v in vectors)
        if any(law.structure.is_random(v) for v in vectors):
            if not all(law.structure.is_gaussian(v) for v in vectors):
                raise ProgramError("describe: the vectors are not Gaussian given the random scalars")
            lines.append(f"Given the random scalars: ({names}) ~ N(0, K) with")
        else:
            lines.append(f"Deterministic Gaussian limit: ({names}) ~ N(μ, K) with μ = "
                         f"{show(sympy.Matrix([[number(m) for m in law.mean(vectors)]]))} and")
        formulas = [sym.kernel(u, vectors[j]) for i, u in enumerate(vectors) for j in range(i, len(vectors))]
        pairs = [(u, vectors[j]) for i, u in enumerate(vectors) for j in range(i, len(vectors))]
        lines += [f"  K[{u.name},{v.name}] = {show(f)}" for (u, v), f in zip(pairs, formulas)]
        names = {str(x) for f in formulas for x in f.free_symbols}
        if any(n.startswith("E[") for n in names):
            lines.append("  where E[a·b] = E[Z^a Z^b | the random scalars], integrated per sample")
        if any(n.startswith("G[") for n in names):
            lines.append("  where G[a,b] = (1/N) Σ_r a_r b_r over the N sampled rows")
    deterministic = [s for s in nodes if isinstance(s, Scalar) and not law.structure.is_random(s)]
    if deterministic:
        lines.append("Deterministic scalars:")
        lines += [f"  {s.name} = {show(number(law.value(s)))}" for s in deterministic]
    return "\n".join(lines)


def _grid(dots):
    """(left vectors, right vectors) when the dots are exactly l_a·r_b for all a, b in row-major order, else None."""
    left = list({d.args[0].index: d.args[0] for d in dots}.values())
    right = list({d.args[1].index: d.args[1] for d in dots}.values())
    expected = [(a.index, b.index) for a in left for b in right]
    if len(expected) != len(dots) or [(d.args[0].index, d.args[1].index) for d in dots] != expected:
        return None
    return left, right


def _other_law(law, node) -> str:
    """A line saying how a random scalar without a formula of its own is distributed."""
    if isinstance(node, Dot) and node.args[0].dim != WIDTH:
        return f"the dot over the {node.args[0].dim} sampled rows of {node.args[0].name} and {node.args[1].name}"
    if isinstance(node, Dot) and node.exponent != 0.5:
        return (f"the kernel E[Z^{node.args[0].name} Z^{node.args[1].name}] given the random scalars it depends on "
                f"(a deterministic function of them)")
    if isinstance(node, Moment):
        inner = ", ".join(f"Z^{a.name}" for a in node.args)
        return f"E[{node.phi.name}({inner})] given the random scalars it depends on (a deterministic function of them)"
    if isinstance(node, Dot):
        level = law.structure.level[node.index]
        return (f"Gaussian given the random scalars of levels < {level}, with the Isserlis covariance of the "
                f"conditional kernel of {node.args[0].name}, {node.args[1].name} (level {level}, a conjecture "
                f"beyond SKI25)")
    return "a function of the sampled rows and earlier random scalars"


def _dot_groups(dots, cov: np.ndarray) -> list[list[int]]:
    """Dots grouped by the matrices (or inputs) their two sides come from, e.g. one group per attention head;
    groups with any non-zero covariance between them are merged, so the groups are independent."""
    def source(v):
        return ("matrix", v.matrix.index) if isinstance(v, MatMul) else ("vector", v.index)

    keys: dict = {}
    for i, d in enumerate(dots):
        keys.setdefault(frozenset(source(v) for v in d.args), []).append(i)
    groups = list(keys.values())
    merged = True
    while merged:
        merged = False
        for a in range(len(groups)):
            for b in range(a + 1, len(groups)):
                if np.any(cov[np.ix_(groups[a], groups[b])]):
                    groups[a] = sorted(groups[a] + groups.pop(b))
                    merged = True
                    break
            if merged:
                break
    return groups
