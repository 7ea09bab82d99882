"""The infinite-width law of a Netsor program: the master theorem, made hierarchical by random scalars.

G-vars (inputs and MatMuls) have jointly Gaussian limits: Cov(Z^{Wx}, Z^{Wy}) = σ_W² E[Z^x Z^y], MatMuls by
different matrices and inputs are independent; Z^{φ(x)} = φ(Z^x), Z^{Σ c_j v_j} = Σ c_j Z^{v_j}; moment scalars and
1/n dots converge to expectations. Two things stay random as n → ∞ (SKI25):

* 1/sqrt(n) dots p = g·g′/sqrt(n) with E[Z^g Z^g′] = 0: jointly Gaussian, independent of every vector, with the
  Isserlis covariance Cov(p_ab, p_cd) = Σ_ac Σ_bd + Σ_ad Σ_bc;
* vectors of a fixed dimension N: their N coordinates are iid rows, so dots, moments and MatMuls over N keep
  their exact finite-N law.

The law is therefore hierarchical: sample these sources level by level (a source's level is one more than the
deepest source it depends on; sources of deeper levels are Gaussian *conditional* on the earlier ones, a
conjecture beyond SKI25's single layer), then every vector is Gaussian given them with the master-theorem
covariance computed conditionally: kernels become arrays with one value per sample.
"""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property

import numpy as np
from scipy.special import logsumexp
from threadpoolctl import threadpool_limits

from . import kernels
from ._compiled import quadratic_forms, sample_gaussian, semidefinite_cholesky
from ._random import check_size, seed_sequence, stream
from .errors import ProgramError
from .program import (WIDTH, Dot, Input, LinComb, MatMul, Matrix, Moment, Node, Nonlin, Program, Scalar, ScalarFn,
                      SoftmaxEntry, Vector, scalar_function_value)

SAMPLE_BLOCK = 1 << 15  # samples per random stream; fixed so results do not depend on chunking or threads
ZERO_KERNEL_RTOL = 1e-9


def is_gvar(node: Node) -> bool:
    return isinstance(node, (Input, MatMul))


def is_sqrt_dot(node: Node) -> bool:
    return isinstance(node, Dot) and node.exponent == 0.5 and node.args[0].dim == WIDTH


def is_row_gvar(node: Node) -> bool:
    """A G-var of fixed dimension N: its N iid rows are sampled."""
    return is_gvar(node) and node.dim != WIDTH


def is_source(node: Node) -> bool:
    return is_sqrt_dot(node) or is_row_gvar(node)


# --------------------------------------------------------------------------------------------------- structure
class _Structure:
    """Static facts: which nodes are random in the limit, at which level, and whether the limit is covered."""

    def __init__(self, program: Program):
        self.program = program
        self.random: set[int] = set()
        self.level: dict[int, int] = {}
        self.uncovered_dots: list[tuple[Dot, str]] = []  # reported after the more telling zero-kernel check
        for node in program.nodes:
            if isinstance(node, Matrix):
                continue
            self._check_supported(node)
            parents = [p for p in node.parents() if not isinstance(p, Matrix)]
            level = max((self.level[p.index] for p in parents), default=0)
            random = any(p.index in self.random for p in parents) or is_source(node)
            if isinstance(node, MatMul) and node.arg.dim != WIDTH:
                random = True  # its covariance is a mean over the N sampled rows of its argument
            if isinstance(node, (Moment, Dot)) and node.args[0].dim != WIDTH:
                random = True
            self.level[node.index] = level + 1 if is_source(node) else level
            if random:
                self.random.add(node.index)

    def is_random(self, node: Node) -> bool:
        return node.index in self.random

    def is_gaussian(self, v: Vector) -> bool:
        """Whether Z^v is Gaussian given the random scalars: a combination of G-vars (identity passes through)."""
        if is_gvar(v):
            return True
        if isinstance(v, Nonlin):
            return v.phi.name == "identity" and self.is_gaussian(v.args[0])
        return isinstance(v, LinComb) and all(self.is_gaussian(a) for a in v.args)

    def _check_supported(self, node: Node) -> None:
        if isinstance(node, MatMul) and node.arg.dim != WIDTH and node.dim != WIDTH:
            raise ProgramError(f"{node.name} := {node.definition()}: a MatMul between two fixed dimensions "
                               f"({node.arg.dim} → {node.dim}) has no limit rule here")
        if isinstance(node, Dot) and node.args[0].dim == WIDTH:
            a = node.exponent
            if a < 0.5:
                raise ProgramError(f"{node.name} := {node.definition()}: with exponent {a:g} < 1/2 the dot "
                                   f"diverges as n → ∞; use scale='sqrt' or 'linear'")
            if a == 0.5:
                problem = _sqrt_dot_structure_problem(node)
                if problem:
                    self.uncovered_dots.append((node, problem))
        if not isinstance(node, (Input, MatMul, Nonlin, LinComb, Moment, Dot, ScalarFn, SoftmaxEntry)):
            raise ProgramError(f"{node.name}: limit() has no rule for {type(node).__name__} nodes")


def _sqrt_dot_structure_problem(dot: Dot) -> str | None:
    """SKI25's CLT needs one side to be W u with W absent from the other side (or two independent inputs):
    then, given everything else, the dot is an exact Gaussian sum of iid terms. Returns the complaint, if any."""
    g1, g2 = dot.args
    program = dot.program

    def fresh_matmul(g, other):
        return isinstance(g, MatMul) and g.matrix not in program.ancestors([other])

    if fresh_matmul(g1, g2) or fresh_matmul(g2, g1) or (isinstance(g1, Input) and isinstance(g2, Input)):
        return None
    return (f"{dot.name} := {dot.definition()}: a 1/sqrt(n) dot needs one side W·u with W unused by the other "
            f"side (as in scores q·k with independent W_Q, W_K), or two uncorrelated inputs; here neither holds, "
            f"so its limit is not covered (use scale='linear' for the deterministic 1/n dot)")


class _Env:
    """The sampled randomness of one block: random scalars (S,) and fixed-dimension rows (S, N)."""

    def __init__(self, size: int):
        self.size = size
        self.values: dict[int, np.ndarray] = {}
        self.rows: dict[int, np.ndarray] = {}


def _batch_view(selection):
    """Broadcast a per-sample array (B,) against quadrature points (b, P) for the samples in `selection`."""
    def view(a):
        a = np.asarray(a)
        return a[:, None] if a.shape[0] == 1 else a[selection, None]
    return view


# --------------------------------------------------------------------------------------------------- calculus
class _Calculus:
    """Limit kernels of one program, deterministic (B = 1) or conditional on a block of samples (B = S).

    Every value is an array with a sample axis of length B: scalars (B,), kernels (k, k, B) (sample-last, see
    `_compiled`). Parts that do not depend on the sampled randomness are delegated to `base`, the
    deterministic calculus shared by all blocks.
    """

    def __init__(self, structure: _Structure, coarse: bool = False, env: _Env | None = None,
                 base: "_Calculus | None" = None):
        self.structure = structure
        self.coarse = coarse
        self.env = env
        self.base = base
        self.B = 1 if env is None else env.size
        self._kernels: dict = {}
        self._scalars: dict[int, np.ndarray] = {}
        self._expansion: dict[int, dict] = {}
        self._frontier: dict = {}
        self._softmax: dict = {}

    def _delegate(self, *nodes) -> bool:
        return self.base is not None and not any(self.structure.is_random(n) for n in nodes)

    # ---- structure
    def expansion(self, v: Vector) -> dict:
        """Z^v = Σ coeff · Z^atom over atoms that are G-vars or genuine Nonlins; coefficients are floats or (B,)."""
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

    def frontier(self, node) -> tuple:
        """The nearest width-n vectors that are Gaussian given the sampled randomness and determine Z^node (the
        node itself when it is Gaussian), in program order: quadrature and sampling integrate over these."""
        if node.index not in self._frontier:
            if isinstance(node, Vector) and node.dim == WIDTH and self.is_gaussian(node):
                found = {node}
            else:
                found = set()
                for parent in node.parents():
                    if isinstance(parent, Vector) and parent.dim == WIDTH:
                        found.update(self.frontier(parent))
            self._frontier[node.index] = tuple(sorted(found, key=lambda n: n.index))
        return self._frontier[node.index]

    def is_gaussian(self, v: Vector) -> bool:
        return self.structure.is_gaussian(v)

    # ---- second moments
    def kernel_matrix(self, us, vs) -> np.ndarray:
        """E[Z^u Z^v | sampled randomness] for width-n vectors, (len(us), len(vs), B)."""
        if self._delegate(*us, *vs):
            return self.base.kernel_matrix(us, vs)
        key = (tuple(u.index for u in us), tuple(v.index for v in vs))
        if key not in self._kernels:
            symmetric = key[0] == key[1]
            atoms_u, left = self._coefficients(us)
            atoms_v, right = (atoms_u, left) if symmetric else self._coefficients(vs)
            total = None
            # atoms of different matrices (or input groups) are independent: one small form per class
            for rows, cols in _independence_classes(atoms_u, atoms_v):
                middle = self.atom_kernel([atoms_u[i] for i in rows], [atoms_v[j] for j in cols])
                part = quadratic_forms(_columns(left, rows), np.ascontiguousarray(middle), _columns(right, cols),
                                       symmetric)
                total = part if total is None else _add_stacks(total, part)
            self._kernels[key] = total if total is not None else np.zeros((len(us), len(vs), 1))
        return self._kernels[key]

    def _coefficients(self, vs):
        """Atoms of the vectors and their coefficient tensor (len(vs), len(atoms), B)."""
        atoms: dict[int, Node] = {}
        expansions = [self.expansion(v) for v in vs]
        for e in expansions:
            for a in e:
                atoms.setdefault(a.index, a)
        order = sorted(atoms)
        position = {idx: j for j, idx in enumerate(order)}
        batched = any(np.ndim(c) and np.shape(c)[0] > 1 for e in expansions for c in e.values())
        coeffs = np.zeros((len(vs), len(order), self.B if batched else 1))
        for i, e in enumerate(expansions):
            for a, c in e.items():
                coeffs[i, position[a.index]] = c
        return [atoms[i] for i in order], coeffs

    def atom_kernel(self, atoms_u, atoms_v) -> np.ndarray:
        """E[A B | sampled randomness] over two lists of atoms, (len(atoms_u), len(atoms_v), B)."""
        if self._delegate(*atoms_u, *atoms_v):
            return self.base.atom_kernel(atoms_u, atoms_v)
        blocks = []  # (rows, cols, values (r, c, B|1))
        by_matrix_u, by_matrix_v = {}, {}
        for i, a in enumerate(atoms_u):
            if isinstance(a, MatMul):
                by_matrix_u.setdefault(a.matrix.index, []).append((i, a))
        for j, b in enumerate(atoms_v):
            if isinstance(b, MatMul):
                by_matrix_v.setdefault(b.matrix.index, []).append((j, b))
        for w, us in by_matrix_u.items():
            vs = by_matrix_v.get(w)
            if not vs:
                continue
            W = us[0][1].matrix
            args_u, args_v = [a.arg for _, a in us], [b.arg for _, b in vs]
            if W.shape[1] == WIDTH:
                block = W.var * self.kernel_matrix(args_u, args_v)
            else:  # over a fixed dimension: the mean over its N sampled rows
                ru = np.stack([self.rows(a) for a in args_u])
                rv = np.stack([self.rows(b) for b in args_v])
                block = W.var * np.einsum("usr,vsr->uvs", ru, rv) / ru.shape[2]
            blocks.append(([i for i, _ in us], [j for j, _ in vs], block))
        pairs = []
        for i, a in enumerate(atoms_u):
            for j, b in enumerate(atoms_v):
                if isinstance(a, Input) and isinstance(b, Input) and a.group is b.group:
                    blocks.append(([i], [j], np.full((1, 1, 1), a.group.cov[a.position, b.position])))
                elif not (is_gvar(a) and is_gvar(b)):
                    pairs.append((i, j, self.atom_product(a, b)))
        B = max([1] + [blk.shape[-1] for _, _, blk in blocks] + [np.shape(v)[0] for _, _, v in pairs])
        out = np.zeros((len(atoms_u), len(atoms_v), B))
        for rows, cols, blk in blocks:
            out[np.ix_(rows, cols)] = blk
        for i, j, value in pairs:
            out[i, j] = value
        return out

    def _scalar_kernel(self, u, v) -> np.ndarray:
        return self.kernel_matrix([u], [v])[0, 0]

    def atom_product(self, a: Node, b: Node) -> np.ndarray:
        """E[A B] for atoms at least one of which is a Nonlin, (B,)."""
        key = ("product", min(a.index, b.index), max(a.index, b.index))
        if key in self._kernels:
            return self._kernels[key]
        value = self._closed_form_product(a, b)
        if value is None:
            if not np.any(self.kernel_matrix(list(self.frontier(a)), list(self.frontier(b)))):
                value = self.atom_mean(a) * self.atom_mean(b)  # independent Gaussian frontiers: E[AB] = E[A] E[B]
            else:
                value = self.expectation([a, b], product=True)
        self._kernels[key] = value
        return value

    def _closed_form_product(self, a: Node, b: Node):
        def name_and_arg(atom):
            if is_gvar(atom):
                return "identity", atom
            if atom.phi.arity == 1 and self.is_gaussian(atom.args[0]):
                return atom.phi.name, atom.args[0]
            return None, None

        (phi, x), (psi, y) = name_and_arg(a), name_and_arg(b)
        if phi is None or psi is None:
            return None
        if (phi, psi) not in kernels.CLOSED_FORM_PRODUCTS and (psi, phi) not in kernels.CLOSED_FORM_PRODUCTS:
            return None
        K = self.kernel_matrix([x, y], [x, y])
        return np.atleast_1d(kernels.closed_form_product(phi, psi, K[0, 0], K[1, 1], K[0, 1]))

    def mean_vector(self, vs) -> np.ndarray:
        """E[Z^v | sampled randomness] for width-n vectors, (len(vs), B)."""
        if self._delegate(*vs):
            return self.base.mean_vector(vs)
        atoms, coeffs = self._coefficients(vs)
        if not atoms:
            return np.zeros((len(vs), 1))
        means = [self.atom_mean(a) for a in atoms]
        B = max([coeffs.shape[-1]] + [m.shape[0] for m in means])
        stacked = np.stack([np.broadcast_to(m, (B,)) for m in means])
        return np.einsum("kmb,mb->kb", np.broadcast_to(coeffs, coeffs.shape[:2] + (B,)), stacked)

    def atom_mean(self, a: Node) -> np.ndarray:
        key = ("mean", a.index)
        if key in self._kernels:
            return self._kernels[key]
        if is_gvar(a):
            value = np.zeros(1)
        elif a.phi.arity == 1 and a.phi.name in kernels.CLOSED_FORM_MEANS and self.is_gaussian(a.args[0]):
            value = np.atleast_1d(kernels.CLOSED_FORM_MEANS[a.phi.name](self._scalar_kernel(a.args[0], a.args[0])))
        else:
            value = self.expectation([a])
        self._kernels[key] = value
        return value

    # ---- quadrature
    def expectation(self, nodes, product: bool = False) -> np.ndarray:
        """E[Π Z^node] (product) or E[Z^node] of one node, over the joint law of the nodes' Gaussian frontier, (B,)."""
        gvars = sorted({g for n in nodes for g in self.frontier(n)}, key=lambda n: n.index)
        cov = self.kernel_matrix(gvars, gvars)

        def values(points, view):
            env = {g.index: points[..., i] for i, g in enumerate(gvars)}
            memo: dict = {}
            out = [np.broadcast_to(self.evaluate(n, env, memo, view), points.shape[:-1]) for n in nodes]
            return np.prod(out, axis=0) if product else out[0]

        if self.B == 1:
            kinks = self._kinks(nodes, gvars)
            return np.atleast_1d(kernels.gaussian_expectation(lambda p: values(p, lambda a: a), cov[:, :, 0],
                                                              coarse=self.coarse, kinks=kinks))
        cov = np.ascontiguousarray(np.broadcast_to(cov, cov.shape[:2] + (self.B,)))
        return kernels.batched_gaussian_expectation(lambda p, sel: values(p, _batch_view(sel)), cov)

    def _kinks(self, nodes, gvars) -> list:
        """(a, k) pairs: Z is not smooth where a·g = k, for kinked φ applied to a Gaussian argument."""
        position = {g.index: i for i, g in enumerate(gvars)}
        found, stack, seen = [], list(nodes), set()
        while stack:
            node = stack.pop()
            if node.index in seen or is_gvar(node):
                continue
            seen.add(node.index)
            stack.extend(p for p in node.parents() if not isinstance(p, (Scalar, Matrix)))
            if isinstance(node, Nonlin) and node.phi.kinks and node.phi.arity == 1 and node.args[0].index in position:
                a = np.zeros(len(gvars))
                a[position[node.args[0].index]] = 1.0
                found.extend((a, k) for k in node.phi.kinks)
        return found

    # ---- scalars
    def scalar(self, s: Scalar) -> np.ndarray:
        """The limit of a scalar node given the sampled randomness, (B,)."""
        if self._delegate(s):
            return self.base.scalar(s)
        if s.index in self._scalars:
            return self._scalars[s.index]
        if isinstance(s, Moment):
            (first, *more) = s.args
            if first.dim == WIDTH and not more and s.phi.name in kernels.CLOSED_FORM_MEANS and self.is_gaussian(first):
                # E[φ(Z)] for Z ~ N(0, K) in closed form, K the (conditional) kernel: no quadrature per sample
                value = kernels.CLOSED_FORM_MEANS[s.phi.name](self._scalar_kernel(first, first))
            elif first.dim == WIDTH:
                value = self.expectation([_MomentIntegrand(s)])
            else:
                value = np.mean(s.phi(*(self.rows(a) for a in s.args)), axis=1)
        elif isinstance(s, Dot):
            a, b = s.args
            if a.dim != WIDTH:
                value = np.sum(self.rows(a) * self.rows(b), axis=1) / a.dim ** s.exponent
            elif s.exponent == 0.5:
                if self.env is None or s.index not in self.env.values:
                    raise ProgramError(f"{s.name}: a random score has no deterministic value; sample it")
                value = self.env.values[s.index]
            elif s.exponent == 1.0:
                value = self._scalar_kernel(a, b)
            else:  # 1/2 < a: the fluctuation vanishes, and a zero kernel (checked) leaves nothing
                value = np.zeros(1)
        elif isinstance(s, (ScalarFn, SoftmaxEntry)):
            value = scalar_function_value(s, self.scalar, self._softmax)
        else:
            raise ProgramError(f"{s.name}: the limit has no rule for {type(s).__name__} scalars")
        self._scalars[s.index] = np.atleast_1d(value)
        return self._scalars[s.index]

    # ---- values
    def rows(self, v: Vector) -> np.ndarray:
        """The N sampled rows (S, N) of a fixed-dimension vector."""
        if is_row_gvar(v):
            return self.env.rows[v.index]
        if isinstance(v, Nonlin):
            return v.phi(*(self.rows(a) for a in v.args))
        if isinstance(v, LinComb):
            total = 0.0
            for c, a in zip(v.coeffs, v.args):
                c = self.scalar(c)[:, None] if isinstance(c, Scalar) else c
                total = total + c * self.rows(a)
            return total
        raise ProgramError(f"{v.name}: no row rule for {type(v).__name__}")

    def evaluate(self, node, env: dict, memo: dict, view=lambda a: a):
        """Z^node from values of its Gaussian frontier (`env`), scalars passed through `view` for broadcasting."""
        if node.index in memo:
            return memo[node.index]
        if isinstance(node, _MomentIntegrand):
            return node.moment.phi(*(self.evaluate(a, env, memo, view) for a in node.moment.args))
        if node.index in env:
            value = env[node.index]
        elif isinstance(node, Nonlin):
            value = node.phi(*(self.evaluate(a, env, memo, view) for a in node.args))
        elif isinstance(node, LinComb):
            value = 0.0
            for c, arg in zip(node.coeffs, node.args):
                c = view(self.scalar(c)) if isinstance(c, Scalar) else c
                value = value + c * self.evaluate(arg, env, memo, view)
        elif isinstance(node, Scalar):
            value = view(self.scalar(node))
        else:
            raise ProgramError(f"{node.name}: cannot evaluate a {type(node).__name__} in the limit")
        memo[node.index] = value
        return value


def _independence_classes(atoms_u, atoms_v) -> list[tuple[list[int], list[int]]]:
    """Index sets of the atoms grouped so that atoms in different groups have zero kernel: MatMuls by one matrix,
    inputs of one group; a Nonlin atom may correlate with anything, so it merges everything into one group."""
    def key(atom):
        if isinstance(atom, MatMul):
            return ("matrix", atom.matrix.index)
        if isinstance(atom, Input):
            return ("inputs", id(atom.group))
        return None

    if any(key(a) is None for a in list(atoms_u) + list(atoms_v)):
        return [(list(range(len(atoms_u))), list(range(len(atoms_v))))]
    classes: dict = {}
    for i, a in enumerate(atoms_u):
        classes.setdefault(key(a), ([], []))[0].append(i)
    for j, b in enumerate(atoms_v):
        classes.setdefault(key(b), ([], []))[1].append(j)
    return [(rows, cols) for rows, cols in classes.values() if rows and cols]


def _columns(coeffs: np.ndarray, index: list[int]) -> np.ndarray:
    """coeffs[:, index] as a contiguous array, without a copy when the index is every column."""
    if index == list(range(coeffs.shape[1])):
        return coeffs
    return np.ascontiguousarray(coeffs[:, index])


def _add_stacks(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a + b for sample-last stacks where either may be shared (last axis 1)."""
    if a.shape[2] >= b.shape[2]:
        a += b
        return a
    return b + a


class _MomentIntegrand:
    """φ(Z^{args}) of a moment scalar, shaped like a node for `expectation` (frontier and evaluation)."""

    def __init__(self, moment: Moment):
        self.moment = moment
        self.index = ("moment", moment.index)

    def parents(self):
        return self.moment.args


# --------------------------------------------------------------------------------------------------- the law
class Law:
    """The infinite-width law of a program's coordinates and scalars.

    Deterministic programs: kernel / mean / cov are exact (closed forms, or quadrature with `error=True` bounds).
    With random scalars (1/sqrt(n) dots, fixed head dimensions) the law is hierarchical: `sample_scalars` draws
    them, `conditional_cov` gives the Gaussian covariance of vectors given them, `sample` draws the joint law,
    `logpdf` / `pdf` evaluate its Rao-Blackwellized mixture density and `cov` is a Monte Carlo average of the
    conditional moments with its standard error.
    """

    def __init__(self, program: Program):
        if not isinstance(program, Program):
            raise ProgramError(f"limit: expected a netsor Program, got {type(program).__name__}")
        self.program = program
        self.structure = _Structure(program)
        self._fine = _Calculus(self.structure)
        self._shared_factors: dict = {}
        self._check_dot_kernels()
        if self.structure.uncovered_dots:
            raise ProgramError(self.structure.uncovered_dots[0][1])

    @cached_property
    def _coarse(self) -> _Calculus:
        return _Calculus(self.structure, coarse=True)

    def __repr__(self) -> str:
        kind = "hierarchical Gaussian" if self.random_scalars else "Gaussian given deterministic scalars"
        return f"<Law of {self.program.name!r}: infinite-width limit, {kind}>"

    @property
    def random_scalars(self) -> tuple[Scalar, ...]:
        """The scalar nodes whose limits are random."""
        return tuple(n for n in self.program.nodes if isinstance(n, Scalar) and self.structure.is_random(n))

    def is_random(self, variable) -> bool:
        """Whether the limit of a variable depends on random scalars (or fixed-dimension rows)."""
        (node,) = self.program.resolve([variable], "is_random")
        return self.structure.is_random(node)

    def _check_dot_kernels(self) -> None:
        for node in self.program.nodes:
            if (isinstance(node, Dot) and node.args[0].dim == WIDTH and node.exponent < 1.0
                    and not self.structure.is_random(node.args[0]) and not self.structure.is_random(node.args[1])):
                _check_zero_kernel(node, self._fine.kernel_matrix(list(node.args), list(node.args)))

    # ---- exact moments (deterministic programs)
    def _first_and_second(self, calc: _Calculus, nodes):
        """Conditional means (B, k) and second moments (B, k, k) of the requested variables."""
        k = len(nodes)
        B = calc.B
        mean = np.zeros((B, k))
        second = np.zeros((B, k, k))
        wide = [i for i, u in enumerate(nodes) if isinstance(u, Vector) and u.dim == WIDTH]
        for i, u in enumerate(nodes):
            if isinstance(u, Scalar):
                mean[:, i] = calc.scalar(u)
            elif u.dim != WIDTH:
                mean[:, i] = calc.rows(u)[:, 0]  # given its rows, coordinate 0 of a fixed-dimension vector is known
        if wide:
            vs = [nodes[i] for i in wide]
            mean[:, wide] = calc.mean_vector(vs).T
        second[:] = mean[:, :, None] * mean[:, None, :]  # independent given the randomness, or deterministic
        if wide:
            second[:, np.asarray(wide)[:, None], np.asarray(wide)[None, :]] = calc.kernel_matrix(vs, vs).transpose(2, 0, 1)
        return mean, second

    def _moments(self, variables, pick, error, size, seed):
        nodes = self.program.resolve(variables)
        if all(self._is_first_level_dot(n) or not self.structure.is_random(n) for n in nodes) and \
                any(self.structure.is_random(n) for n in nodes):
            value = pick(*self._exact_with_first_level_dots(nodes))
            return (value, np.zeros_like(value)) if error else value
        if not any(self.structure.is_random(n) for n in nodes):
            fine = pick(*(a[0] for a in self._first_and_second(self._fine, nodes)))
            if not error:
                return fine
            coarse = pick(*(a[0] for a in self._first_and_second(self._coarse, nodes)))
            return fine, 2 * np.abs(fine - coarse) + 1e-14 * np.abs(fine)
        # Monte Carlo over the random scalars of the conditional moments; SE from the influence function
        size = check_size(size, "size")

        def work(env, calc, rng):
            m, s = self._first_and_second(calc, nodes)
            return np.broadcast_to(m, (env.size,) + m.shape[1:]), np.broadcast_to(s, (env.size,) + s.shape[1:])

        parts = list(self._map_blocks(nodes, size, seed_sequence(seed), work))
        m, s = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        value, influence = pick.monte_carlo(m, s)
        if not error:
            return value
        return value, influence.std(axis=0) / math.sqrt(len(m))

    def _is_first_level_dot(self, node) -> bool:
        return is_sqrt_dot(node) and self.structure.level[node.index] == 1

    def _exact_with_first_level_dots(self, nodes):
        """Mean and second moments when the only random variables are first-level scores: those are jointly
        Gaussian with the Isserlis covariance, zero mean, independent of everything else."""
        dots = [i for i, n in enumerate(nodes) if self._is_first_level_dot(n)]
        others = [i for i in range(len(nodes)) if i not in dots]
        mean, second = np.zeros(len(nodes)), np.zeros((len(nodes), len(nodes)))
        if others:
            m, s = self._first_and_second(self._fine, [nodes[i] for i in others])
            mean[others] = m[0]
            second[np.ix_(others, others)] = s[0]
        second[np.ix_(dots, dots)] = self.score_cov([nodes[i] for i in dots])
        return mean, second

    def score_cov(self, dots) -> np.ndarray:
        """The exact covariance Σ_ac Σ_bd + Σ_ad Σ_bc of first-level 1/sqrt(n) dots p = a·b/sqrt(n)."""
        dots = self.program.resolve(dots, "score_cov")
        for d in dots:
            if not self._is_first_level_dot(d):
                raise ProgramError(f"score_cov: {d.name} is not a 1/sqrt(n) dot of deterministic vectors")
        return _isserlis(self._fine, dots)[0][:, :, 0]

    def kernel(self, variables, error: bool = False, size: int = 200_000, seed=0):
        """E[Z^u Z^v] over the variables, (k, k); `error=True` adds the quadrature bound (or the Monte Carlo SE)."""
        return self._moments(variables, _pick_kernel, error, size, seed)

    def mean(self, variables, error: bool = False, size: int = 200_000, seed=0):
        """E[Z^v] for each variable, (k,)."""
        return self._moments(variables, _pick_mean, error, size, seed)

    def cov(self, variables, error: bool = False, size: int = 200_000, seed=0):
        """Cov(Z^u, Z^v) = E[Z^u Z^v] − E[Z^u] E[Z^v], (k, k): exact where the scalars are deterministic, else a
        Monte Carlo average of conditional moments over `size` draws of the scalars (error=True: its SE)."""
        return self._moments(variables, _pick_cov, error, size, seed)

    def value(self, scalar) -> float:
        """The deterministic limit of a scalar node (or name)."""
        (node,) = self.program.resolve([scalar], "value")
        if not isinstance(node, Scalar):
            raise ProgramError(f"value: {node.name} is a vector; use mean/cov/sample")
        if self.structure.is_random(node):
            raise ProgramError(f"value: {node.name} is random in the limit; use sample_scalars")
        return float(self._fine.scalar(node)[0])

    # ---- sampling
    def _map_blocks(self, nodes, size: int, root, work, threads: int | None = None):
        """Yield work(env, calculus, rng) for each block of samples, in block order, run on a thread pool; each
        block first samples every source the nodes depend on from its own stream, so results do not depend on
        the thread count."""
        needed = self.program.ancestors(nodes)
        sources = [n for n in needed if is_source(n)]
        blocks = [(b, min(SAMPLE_BLOCK, size - start)) for b, start in enumerate(range(0, size, SAMPLE_BLOCK))]

        def run(block):
            b, count = block
            env = _Env(count)
            calc = _Calculus(self.structure, env=env, base=self._fine)
            # one stream per (block, stage): the first samples never depend on how many are drawn
            self._sample_sources(sources, env, calc, lambda *stage: stream(root, b, 0, *stage))
            return work(env, calc, stream(root, b, 1))

        if threads == 1 or len(blocks) == 1:
            yield from map(run, blocks)
            return
        # our threads split the samples; BLAS threads on top of them only contend for the same cores
        with ThreadPoolExecutor(max_workers=threads) as pool, threadpool_limits(1, "blas"):
            yield from pool.map(run, blocks)

    def _sample_sources(self, sources, env: _Env, calc: _Calculus, rng_for) -> None:
        levels = sorted({self.structure.level[s.index] for s in sources})
        for level in levels:
            dots = [s for s in sources if is_sqrt_dot(s) and self.structure.level[s.index] == level]
            if dots:
                cov, K, a, b = _isserlis(calc, dots)
                if any(self.structure.is_random(v) for d in dots for v in d.args):
                    # kernels that depend on earlier draws: check E[Z^g1 Z^g2] = 0 per sample (the others were
                    # checked once, when the law was built)
                    for d, i, j in zip(dots, a, b):
                        _check_zero_kernel(d, K[np.ix_([i, j], [i, j])])
                draws = self._gaussian(cov, _normals(rng_for(level, 0), len(dots), env.size),
                                       ("dots",) + tuple(d.index for d in dots))
                for i, d in enumerate(dots):
                    env.values[d.index] = draws[i]
            rows = [s for s in sources if is_row_gvar(s) and self.structure.level[s.index] == level]
            for dim in sorted({g.dim for g in rows}):
                group = [g for g in rows if g.dim == dim]
                K = calc.atom_kernel(group, group)
                z = _normals(rng_for(level, 1, dim), len(group), env.size * dim)
                if K.shape[2] > 1:  # one covariance per sample, shared by its N rows
                    K = np.ascontiguousarray(np.repeat(K, dim, axis=2))
                draws = self._gaussian(K, z, ("rows",) + tuple(g.index for g in group)).reshape(len(group), env.size, dim)
                for i, g in enumerate(group):
                    env.rows[g.index] = draws[i]

    def _gaussian(self, cov: np.ndarray, z: np.ndarray, key) -> np.ndarray:
        """Normals z (S, d) mapped through the factor of cov (d, d, B) into (d, S): one factor shared by all
        samples (factored once per law and set of variables `key`) or one per sample."""
        if cov.shape[2] > 1:
            return sample_gaussian(np.ascontiguousarray(cov), z)
        blocks = self._shared_factors.get(key)
        if blocks is None:  # independent groups (e.g. heads) are factored separately: less work per sample
            blocks = self._shared_factors[key] = [
                (_as_slice(block), semidefinite_cholesky(np.ascontiguousarray(cov[np.ix_(block, block)]))[:, :, 0])
                for block in independent_blocks(cov[:, :, 0])]
        out = np.empty((cov.shape[0], z.shape[0]))
        for index, factor in blocks:
            out[index] = factor @ z[:, index].T  # BLAS reads the transposed view without a copy
        return out

    def sample(self, variables, size: int, seed=None, threads: int | None = None) -> np.ndarray:
        """(size, k) joint draws of the limit: coordinate 0 of each vector, the value of each scalar."""
        nodes = self.program.resolve(variables, "sample")
        size = check_size(size)
        out = np.empty((size, len(nodes)))
        start = 0
        for part in self._map_blocks(nodes, size, seed_sequence(seed),
                                     lambda env, calc, rng: self._draw_given_sources(nodes, env, calc, rng), threads):
            out[start:start + len(part)] = part
            start += len(part)
        return out

    rvs = sample  # scipy.stats spelling

    def sample_scalars(self, scalars, size: int, seed=None) -> np.ndarray:
        """(size, k) joint draws of scalar nodes (random or not)."""
        nodes = self.program.resolve(scalars, "sample_scalars")
        for n in nodes:
            if not isinstance(n, Scalar):
                raise ProgramError(f"sample_scalars: {n.name} is a vector; use sample")
        return self.sample(nodes, size, seed)

    def _draw_given_sources(self, nodes, env: _Env, calc: _Calculus, rng) -> np.ndarray:
        S = env.size
        out = np.empty((S, len(nodes)))
        wide = [i for i, n in enumerate(nodes) if isinstance(n, Vector) and n.dim == WIDTH]
        for i, n in enumerate(nodes):
            if isinstance(n, Scalar):
                out[:, i] = np.broadcast_to(calc.scalar(n), (S,))
            elif i not in wide:
                out[:, i] = calc.rows(n)[:, 0]
        if not wide:
            return out
        vectors = [nodes[i] for i in wide]
        if all(calc.is_gaussian(v) for v in vectors):  # draw the requested combinations directly
            K = calc.kernel_matrix(vectors, vectors)
            out[:, wide] = sample_gaussian(np.ascontiguousarray(K), _normals(rng, len(vectors), S)).T
            return out
        gvars = sorted({g for v in vectors for g in calc.frontier(v)}, key=lambda g: g.index)
        K = calc.kernel_matrix(gvars, gvars)
        g = sample_gaussian(np.ascontiguousarray(K), _normals(rng, len(gvars), S))
        env_values = {gv.index: g[j] for j, gv in enumerate(gvars)}
        memo: dict = {}
        for i in wide:
            out[:, i] = np.broadcast_to(calc.evaluate(nodes[i], env_values, memo), (S,))
        return out

    def conditional_cov(self, variables, size: int, seed=None) -> np.ndarray:
        """(size, k, k): Cov(Z | random scalars) for draws of the random scalars (zero rows for scalars)."""
        return self.conditional_moments(variables, size, seed)[1]

    def conditional_moments(self, variables, size: int, seed=None):
        """(means (size, k), covariances (size, k, k)) of the variables given draws of the random scalars."""
        nodes = self.program.resolve(variables, "conditional_moments")
        size = check_size(size)

        def work(env, calc, rng):
            m, s = self._first_and_second(calc, nodes)
            m = np.broadcast_to(m, (env.size,) + m.shape[1:])
            return m, np.broadcast_to(s, (env.size,) + s.shape[1:]) - m[:, :, None] * m[:, None, :]

        means, covs = np.empty((size, len(nodes))), np.empty((size, len(nodes), len(nodes)))
        start = 0
        for m, c in self._map_blocks(nodes, size, seed_sequence(seed), work):
            means[start:start + len(m)], covs[start:start + len(m)] = m, c
            start += len(m)
        return means, covs

    # ---- densities
    def logpdf(self, y, variables, mixture_size: int = 4096, seed=0) -> np.ndarray:
        """log density of the joint law at points y (..., k): log mean_m N(y; μ_m, C_m) over `mixture_size` draws
        of the random scalars (exact, M = 1, when there are none). Needs vectors Gaussian given the scalars."""
        nodes = self.program.resolve(variables, "logpdf")
        for n in nodes:
            if not (isinstance(n, Vector) and n.dim == WIDTH):
                raise ProgramError(f"logpdf: {n.name} is not a width-n vector")
        y = np.asarray(y, dtype=float)
        k = len(nodes)
        if k == 1:  # one variable: any array of points
            shape, points = y.shape, y.reshape(-1, 1)
        elif y.shape[-1:] == (k,):
            shape, points = y.shape[:-1], y.reshape(-1, k)
        else:
            raise ProgramError(f"logpdf: points must have last dimension {k}, got shape {y.shape}")
        for n in nodes:
            if not self.structure.is_gaussian(n):
                raise ProgramError(f"logpdf: {n.name} is not Gaussian given the random scalars; sample it instead")
        random = any(self.structure.is_random(n) for n in nodes)
        means, covs = self.conditional_moments(nodes, mixture_size if random else 1, seed)
        chol = np.linalg.cholesky(covs)
        logdet = 2 * np.log(np.diagonal(chol, axis1=1, axis2=2)).sum(axis=1)
        out = np.empty(len(points))
        for start in range(0, len(points), 2048):
            diff = points[start:start + 2048, None, :] - means[None, :, :]  # (q, M, k)
            solved = np.linalg.solve(chol[None], diff[..., None])[..., 0]
            log_terms = -0.5 * (solved ** 2).sum(-1) - 0.5 * logdet[None] - 0.5 * k * math.log(2 * math.pi)
            out[start:start + 2048] = logsumexp(log_terms, axis=1) - math.log(len(means))
        return out.reshape(shape)

    def pdf(self, y, variables, mixture_size: int = 4096, seed=0) -> np.ndarray:
        """Density of the joint law at y (see `logpdf`)."""
        return np.exp(self.logpdf(y, variables, mixture_size, seed))

    def infinite_sum_limit(self, variables, size: int = 400_000, seed=0):
        """The Gaussian limit of H^{-1/2} Σ_h Z_h over H → ∞ independent copies of the program (heads):
        N(0, E[Z Zᵀ]), the expectation over the random scalars taken by Monte Carlo (its SE kept as cov_se)."""
        from .gaussian import GaussianLaw
        nodes = self.program.resolve(variables, "infinite_sum_limit")
        mean, mean_se = self.mean(nodes, error=True, size=size, seed=seed)
        if np.any(np.abs(mean) > 5 * mean_se + 1e-12):
            raise ProgramError("infinite_sum_limit: the variables have non-zero mean, so their normalised sum over "
                               "copies diverges")
        kernel, se = self.kernel(nodes, error=True, size=size, seed=seed)
        return GaussianLaw(nodes, np.zeros(len(nodes)), kernel, se,
                           description="Infinite-copies (infinite-head) limit: Gaussian with covariance E[Z Zᵀ]")

    def describe(self, variables=None, latex: bool = False) -> str:
        """The law as formulas: random scalars and their covariance, the conditional law of the variables."""
        from .symbolic import describe
        return describe(self, variables, latex=latex)


def independent_blocks(cov: np.ndarray) -> list[list[int]]:
    """Connected components of the non-zero pattern of a covariance: mutually independent groups."""
    D = cov.shape[0]
    unseen, blocks = set(range(D)), []
    while unseen:
        stack, block = [min(unseen)], []
        unseen.discard(stack[0])
        while stack:
            i = stack.pop()
            block.append(i)
            linked = [j for j in unseen if cov[i, j] != 0.0 or cov[j, i] != 0.0]
            unseen.difference_update(linked)
            stack.extend(linked)
        blocks.append(sorted(block))
    return blocks


def _as_slice(index: list[int]):
    """A slice for a run of consecutive indices (a view, not a copy), else the list itself."""
    return slice(index[0], index[-1] + 1) if index == list(range(index[0], index[-1] + 1)) else index


def _normals(rng, d: int, S: int) -> np.ndarray:
    """(S, d) standard normals, drawn sample-major so the first samples do not depend on how many are drawn."""
    return rng.standard_normal((S, d))


def _isserlis(calc: _Calculus, dots):
    """Cov(p_ab, p_cd) = Σ_ac Σ_bd + Σ_ad Σ_bc for dots p = a·b/sqrt(n), with Σ the (conditional) kernel of their
    vectors; returns (cov (D, D, B), Σ, positions of the left and right vectors in Σ)."""
    args = list({v.index: v for d in dots for v in d.args}.values())
    K = calc.kernel_matrix(args, args)
    position = {v.index: i for i, v in enumerate(args)}
    a = np.array([position[d.args[0].index] for d in dots])
    b = np.array([position[d.args[1].index] for d in dots])
    cov = K[np.ix_(a, a)] * K[np.ix_(b, b)] + K[np.ix_(a, b)] * K[np.ix_(b, a)]
    return cov, K, a, b


def _check_zero_kernel(dot: Dot, K: np.ndarray) -> None:
    """A dot over n scaled by n^{-a}, a < 1, needs E[Z^g1 Z^g2] = 0, else it diverges like n^{1−a}."""
    cross, var1, var2 = K[0, 1], K[0, 0], K[1, 1]
    if np.any(np.abs(cross) > ZERO_KERNEL_RTOL * np.sqrt(np.abs(var1 * var2)) + 1e-300):
        value = float(np.max(np.abs(cross)))
        growth = "sqrt(n)" if dot.exponent == 0.5 else f"n^{1 - dot.exponent:g}"
        raise ProgramError(
            f"{dot.name} := {dot.definition()}: E[Z^{dot.args[0].name} Z^{dot.args[1].name}] = {value:.4g} ≠ 0, "
            f"so the score diverges like {growth} as n → ∞; use scale='linear' (the 1/n dot, deterministic limit) "
            f"or untie the matrices")


class _Pick:
    """Which moment a public method returns, exactly and as a Monte Carlo estimate with its influence function."""

    def __init__(self, exact, monte_carlo):
        self.exact, self.monte_carlo = exact, monte_carlo

    def __call__(self, mean, second):
        return self.exact(mean, second)


def _mc_kernel(m, s):
    return s.mean(axis=0), s


def _mc_mean(m, s):
    return m.mean(axis=0), m


def _mc_cov(m, s):
    mbar = m.mean(axis=0)
    influence = s - m[:, :, None] * mbar[None, None, :] - mbar[None, :, None] * m[:, None, :]
    return s.mean(axis=0) - np.outer(mbar, mbar), influence


_pick_kernel = _Pick(lambda m, s: s, _mc_kernel)
_pick_mean = _Pick(lambda m, s: m, _mc_mean)
_pick_cov = _Pick(lambda m, s: s - np.outer(m, m), _mc_cov)


def limit(program: Program) -> Law:
    """The infinite-width law of `program` (Yang's master theorem, with SKI25's random scalars)."""
    return Law(program)
