"""Limit kernels of one program, deterministic or conditional on a block of sampled random scalars: the master
theorem's covariances, means and scalar limits, one value per sample."""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np

from ..compiled.limit import quadratic_form_into
from ..errors import ProgramError
from ..ir.nonlinearities import identity
from ..ir.program import (WIDTH, Dot, Input, LinComb, MatMul, Matrix, Moment, Node, Nonlin, Scalar, ScalarFn,
                          SoftmaxEntry, Vector, is_gvar, is_row_gvar)
from ..ir.semantics import derived_value, scalar_function_value
from .quadrature import (BATCHED_ORDERS, PER_SAMPLE_RTOL, batched_gaussian_expectation, gaussian_expectation,
                         monte_carlo_gaussian_expectation)
from .structure import _Structure


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
    `netsor.compiled`). Parts that do not depend on the sampled randomness are delegated to `base`, the
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
        self._inner = None  # (rng, draws) inside `inner_monte_carlo`

    def inner_monte_carlo(self, rng, draws: int):
        """Within: per-sample Gaussian expectations that the result depends on linearly (atom products and means
        in a kernel or mean) are unbiased Monte Carlo averages over `draws` draws; their noise averages out over the
        samples and is part of the outer standard error. Whatever enters nonlinearly (scalars, closed-form rules,
        the Gaussian covariances integrated against) stays deterministic and accuracy-checked."""
        return self._integrating((rng, int(draws)))

    def _deterministic(self):
        return self._integrating(None)

    @contextmanager
    def _integrating(self, inner):
        """Per-sample integrals by inner Monte Carlo (rng, draws) or by checked rules (None), restored on exit."""
        saved, self._inner = self._inner, inner
        try:
            yield
        finally:
            self._inner = saved

    def _mode(self) -> bool:
        return self._inner is not None

    def _delegate(self, *nodes) -> bool:
        return self.base is not None and not any(self.structure.is_random(n) for n in nodes)

    # ---- structure
    def expansion(self, v: Vector) -> dict:
        """Z^v = Σ coeff · Z^atom over atoms that are G-vars or genuine Nonlins; coefficients are floats or (B,)."""
        if v.index in self._expansion:
            return self._expansion[v.index]
        if is_gvar(v):
            out = {v: 1.0}
        elif isinstance(v, Nonlin) and v.phi.linear:
            out = dict(self.expansion(v.args[0]))
        elif isinstance(v, Nonlin):
            out = {v: 1.0}
        elif isinstance(v, LinComb):
            out = {}
            for c, arg in zip(v.coeffs, v.args):
                c = self.scalar(c) if isinstance(c, Scalar) else c
                for atom, a in self.expansion(arg).items():
                    term = c if isinstance(a, float) and a == 1.0 else c * a  # c · 1.0 is c: no pass for it
                    out[atom] = out[atom] + term if atom in out else term
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
        key = (tuple(u.index for u in us), tuple(v.index for v in vs), self._mode())
        if key not in self._kernels:
            symmetric = key[0] == key[1]
            atoms_u, left = self._coefficients(us)
            atoms_v, right = (atoms_u, left) if symmetric else self._coefficients(vs)
            total = np.zeros((len(us), len(vs), 1))
            # atoms of different matrices (or input groups) are independent: one small form per class, each
            # added into the total by one fused pass
            for rows, cols in _independence_classes(atoms_u, atoms_v):
                middle = np.ascontiguousarray(self.atom_kernel([atoms_u[i] for i in rows], [atoms_v[j] for j in cols]))
                part = (_columns(left, rows), middle, _columns(right, cols))
                B = max(a.shape[2] for a in part)
                if B > total.shape[2]:  # the first per-sample part: the total becomes per sample
                    total = np.repeat(total, B, axis=2) if total.any() else np.zeros(total.shape[:2] + (B,))
                quadratic_form_into(total, *part, symmetric)
            self._kernels[key] = total
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
                block = self.kernel_matrix(args_u, args_v)
                if W.var != 1.0:  # x · 1.0 is x: no pass over a per-sample stack for it
                    block = W.var * block
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
        if not pairs and len(blocks) == 1 and blocks[0][0] == list(range(len(atoms_u))) and \
                blocks[0][1] == list(range(len(atoms_v))):
            return blocks[0][2]  # one block covers the whole kernel: no copy
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
        key = ("product", min(a.index, b.index), max(a.index, b.index), self._mode())
        if key in self._kernels:
            return self._kernels[key]
        value = self._closed_form_product(a, b)
        if value is None:
            with self._deterministic():
                independent = not np.any(self.kernel_matrix(list(self.frontier(a)), list(self.frontier(b))))
            if independent:
                value = self.atom_mean(a) * self.atom_mean(b)  # independent Gaussian frontiers: E[AB] = E[A] E[B]
            else:
                value = self.expectation([a, b], product=True)
        self._kernels[key] = value
        return value

    def _closed_form_product(self, a: Node, b: Node):
        """E[A B] from the closed form the atoms' nonlinearities register (a G-var is the identity of itself)."""
        def phi_and_arg(atom):
            if is_gvar(atom):
                return identity, atom
            if atom.phi.arity == 1 and self.is_gaussian(atom.args[0]):
                return atom.phi, atom.args[0]
            return None, None

        (phi, x), (psi, y) = phi_and_arg(a), phi_and_arg(b)
        rule = None if phi is None or psi is None else phi.closed_form_product(psi)
        if rule is None:
            return None
        with self._deterministic():  # the rule is nonlinear in K
            K = self.kernel_matrix([x, y], [x, y])
        return np.atleast_1d(rule(K[0, 0], K[1, 1], K[0, 1]))

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
        key = ("mean", a.index, self._mode())
        if key in self._kernels:
            return self._kernels[key]
        if is_gvar(a):
            value = np.zeros(1)
        elif a.phi.closed_form_mean() is not None and self.is_gaussian(a.args[0]):
            with self._deterministic():
                value = np.atleast_1d(a.phi.closed_form_mean()(self._scalar_kernel(a.args[0], a.args[0])))
        else:
            value = self.expectation([a])
        self._kernels[key] = value
        return value

    # ---- quadrature
    def expectation(self, nodes, product: bool = False) -> np.ndarray:
        """E[Π Z^node] (product) or E[Z^node] of one node, over the joint law of the nodes' Gaussian frontier, (B,)."""
        gvars = sorted({g for n in nodes for g in self.frontier(n)}, key=lambda n: n.index)
        with self._deterministic():  # the law integrated against: exact, whatever the mode
            cov = self.kernel_matrix(gvars, gvars)

        def values(points, view):
            env = {g.index: points[..., i] for i, g in enumerate(gvars)}
            memo: dict = {}
            out = [np.broadcast_to(self.evaluate(n, env, memo, view), points.shape[:-1]) for n in nodes]
            return np.prod(out, axis=0) if product else out[0]

        if self.B == 1:
            kinks = self._kinks(nodes, gvars)
            return np.atleast_1d(gaussian_expectation(lambda p: values(p, lambda a: a), cov[:, :, 0],
                                                              coarse=self.coarse, kinks=kinks))
        cov = np.ascontiguousarray(np.broadcast_to(cov, cov.shape[:2] + (self.B,)))
        integrand = lambda p, sel: values(p, _batch_view(sel))  # noqa: E731
        if self._inner is not None:
            return monte_carlo_gaussian_expectation(integrand, cov, *self._inner)
        what = _describe_integral(nodes, product)
        if len(gvars) > max(BATCHED_ORDERS):
            raise ProgramError(f"{what}: given the random scalars this is an integral over {len(gvars)} Gaussian "
                               f"dimensions ({', '.join(g.name for g in gvars)}); per-sample integration is accurate "
                               f"to at most {max(BATCHED_ORDERS)}")
        value, error, scale = batched_gaussian_expectation(integrand, cov)  # scale: E|integrand| per sample
        worst = int(np.argmax(error / np.maximum(scale, 1e-300)))
        if not np.all(np.isfinite(value)) or error[worst] > PER_SAMPLE_RTOL * scale[worst]:
            raise ProgramError(f"{what}: given the random scalars the {len(gvars)}-dimensional Gaussian integral "
                               f"is not resolved per sample by the {BATCHED_ORDERS[len(gvars)]}-point rule (error "
                               f"{error[worst]:.1e} on {value[worst]:.3g}, tolerance {PER_SAMPLE_RTOL:g} of E|·| = "
                               f"{scale[worst]:.3g}); "
                               f"its moments are estimated by Monte Carlo (Law.cov, Law.sample), but a value that "
                               f"enters nonlinearly (a scalar, a later layer's scores, conditional moments) cannot "
                               f"be computed to that accuracy")
        return value

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
        value = self._scalars.get(s.index)  # only ever holds this calculus's own (random) scalars
        if value is not None:
            return value
        if self._delegate(s):
            return self.base.scalar(s)
        if self._inner is None:  # deterministic already (sampling): no context to enter
            return self._scalar(s)
        with self._deterministic():  # a scalar's value enters everything after it nonlinearly
            return self._scalar(s)

    def _scalar(self, s: Scalar) -> np.ndarray:
        if isinstance(s, Moment):
            (first, *more) = s.args
            rule = s.phi.closed_form_mean()
            if first.dim == WIDTH and not more and rule is not None and self.is_gaussian(first):
                # E[φ(Z)] for Z ~ N(0, K) in closed form, K the (conditional) kernel: no quadrature per sample
                value = rule(self._scalar_kernel(first, first))
            elif first.dim == WIDTH:
                value = self.expectation([_MomentIntegrand(s)])
            else:
                value = derived_value(s, self.rows, 0, self._softmax)
        elif isinstance(s, Dot):
            a, b = s.args
            if a.dim != WIDTH:
                value = derived_value(s, self.rows, 0, self._softmax)
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
        if isinstance(v, (Nonlin, LinComb)):
            return derived_value(v, lambda a: self.scalar(a) if isinstance(a, Scalar) else self.rows(a), 0,
                                 self._softmax)
        raise ProgramError(f"{v.name}: no row rule for {type(v).__name__}")

    def evaluate(self, node, env: dict, memo: dict, view=lambda a: a):
        """Z^node from values of its Gaussian frontier (`env`), scalars passed through `view` for broadcasting."""
        if node.index in memo:
            return memo[node.index]
        if isinstance(node, _MomentIntegrand):
            return node.moment.phi(*(self.evaluate(a, env, memo, view) for a in node.moment.args))
        if node.index in env:
            value = env[node.index]
        elif isinstance(node, (Nonlin, LinComb)):  # scalar coefficients arrive already broadcast by `view`
            value = derived_value(node, lambda a: self.evaluate(a, env, memo, view), 0, self._softmax,
                                  per_network=_as_is)
        elif isinstance(node, Scalar):
            value = view(self.scalar(node))
        else:
            raise ProgramError(f"{node.name}: cannot evaluate a {type(node).__name__} in the limit")
        memo[node.index] = value
        return value


def _as_is(x):
    return x


def _describe_integral(nodes, product: bool) -> str:
    names = [n.moment.name if isinstance(n, _MomentIntegrand) else n.name for n in nodes]
    return f"E[{' · '.join(names)}]" if product else names[0]


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


class _MomentIntegrand:
    """φ(Z^{args}) of a moment scalar, shaped like a node for `expectation` (frontier and evaluation)."""

    def __init__(self, moment: Moment):
        self.moment = moment
        self.index = ("moment", moment.index)

    def parents(self):
        return self.moment.args


