"""Exact finite-width sampling at a cost that does not depend on the width (DESIGN §5).

In a program that is linear in its vectors (inputs, MatMuls, linear combinations with constant or scalar
coefficients, dots and scalar functions), every vector is v = B c_v for one n×M matrix B of iid N(0, 1) entries:

* an input group with covariance Σ = L₀L₀ᵀ is X = B_X L₀ᵀ;
* the MatMuls by one matrix W, applied to V = B C (all its arguments at once), are W V =_d B_W Lᵀ with
  L Lᵀ = σ_W² CᵀGC/n: given V the rows of W V are iid N(0, σ_W² VᵀV/n), and B_W is fresh, independent of
  everything drawn before, because W is (this needs W never to be applied to anything computed from W itself).

Every quantity a program asks for is then a function of the Gram matrix G = BᵀB and of B's row 0, b₀:
coordinate 0 of v is b₀·c_v, a dot u·v/n^a is c_uᵀ G c_v / n^a. Exactly, b₀ ~ N(0, I_M) and
G = b₀b₀ᵀ + W with W ~ Wishart(n − 1, I_M) independent of b₀, drawn by Bartlett's decomposition W = T Tᵀ,
T lower-triangular with T_ii = sqrt(χ²_{n−i}) and T_ij ~ N(0, 1) below the diagonal (explicitly as ZᵀZ when
n − 1 < M). Columns whose mutual Gram entries nothing reads are split into independent components, each with its
own small Wishart. The cost per network does not depend on n.

Vectors of a fixed dimension N (head dimensions) are drawn explicitly, N rows per network: a MatMul from the
width to N has rows iid N(0, σ² CᵀGC/n); a MatMul from N to the width opens a basis block with row covariance
σ² UᵀU/N from those explicit rows.

A nonlinear *front* (tokens x_i = clip(W^i h), relu(W^i h): everything upstream of a width-n non-identity
nonlinearity or moment) is computed explicitly at O(n) per network — a MatMul of explicit vectors V is drawn as Z Lᵀ with
L Lᵀ = σ² VᵀV/n, never as an n×n matrix — and the explicit vectors the linear part uses become basis columns
whose Gram and row 0 are known exactly.
"""
from __future__ import annotations

import numpy as np

from ._compiled import bilinear_forms, congruences, semidefinite_cholesky
from ._random import stream
from .errors import ProgramError
from .kernels import gaussian_factor
from .program import (WIDTH, Dot, Input, LinComb, MatMul, Matrix, Moment, Node, Nonlin, Program, Scalar, Vector,
                      scalar_function_value)

EXACT_BLOCK = 1 << 12  # networks per random stream (fewer when a front holds n-vectors)
FRONT_FLOATS = 1 << 22  # bound on the explicit front's floats per block


def _linear_source(node: Node) -> Node:
    """Identity nonlinearities pass through."""
    while isinstance(node, Nonlin) and node.phi.name == "identity":
        node = node.args[0]
    return node


def _refuse(node: Node, reason: str):
    raise ProgramError(f"{node.name} := {node.definition()}: method='exact' cannot reduce this program: {reason}; "
                       f"use method='dense'")


class ExactPlan:
    """How a program reduces: its explicit front, and the basis columns of its inputs, front vectors and matrices."""

    def __init__(self, program: Program, targets):
        self.program = program
        self.needed = program.ancestors(targets)
        self.front = self._front()
        self.columns: dict = {}  # key → slice of basis columns: input group id, matrix index, ("front", node index)
        self.uses: dict[int, list[MatMul]] = {}  # matrix index → its MatMuls among the needed nodes
        self.args: dict[int, list[Vector]] = {}  # matrix index → distinct arguments
        self.factors: dict[int, np.ndarray] = {}  # input group id → L₀
        size = 0
        front_groups, linear_groups = set(), set()
        for node in self.needed:
            self._check(node)
            if isinstance(node, MatMul):
                self.uses.setdefault(node.matrix.index, []).append(node)
            if isinstance(node, Input):
                (front_groups if node.index in self.front else linear_groups).add(id(node.group))
                if id(node.group) not in self.factors:
                    self.factors[id(node.group)] = gaussian_factor(node.group.cov)
            if node.index not in self.front:
                for parent in node.parents():
                    if parent.index in self.front and isinstance(parent, Vector) and parent.dim == WIDTH and \
                            ("front", parent.index) not in self.columns:
                        self.columns[("front", parent.index)] = slice(size, size + 1)
                        size += 1
        for node in targets:
            if node.index in self.front and isinstance(node, Vector) and node.dim == WIDTH and \
                    ("front", node.index) not in self.columns:
                self.columns[("front", node.index)] = slice(size, size + 1)
                size += 1
        if front_groups & linear_groups:
            _refuse(next(n for n in self.needed if isinstance(n, Input) and id(n.group) in front_groups & linear_groups),
                    "inputs declared together are used both before and after a nonlinearity")
        for node in self.needed:
            if isinstance(node, Input) and node.index not in self.front and id(node.group) not in self.columns:
                self.columns[id(node.group)] = slice(size, size + self.factors[id(node.group)].shape[1])
                size += self.factors[id(node.group)].shape[1]
        for w, uses in self.uses.items():
            in_front = {u.index in self.front for u in uses}
            if in_front == {True, False}:
                _refuse(uses[0], f"{uses[0].matrix.name} is used both before and after a nonlinearity")
            matrix = uses[0].matrix
            for u in uses:
                if matrix in self.program.ancestors([u.arg]):
                    _refuse(u, f"{matrix.name} is applied to a vector computed from {matrix.name} itself, which "
                               f"needs conditioning")
            self.args[w] = list({u.arg.index: u.arg for u in uses}.values())
            if in_front == {False} and matrix.shape[0] == WIDTH:
                self.columns[w] = slice(size, size + len(self.args[w]))
                size += len(self.args[w])
        self.size = size
        self.front_columns = [(c.start, idx) for (kind, idx), c in
                              ((k, v) for k, v in self.columns.items() if isinstance(k, tuple))]
        self.components = self._gram_components()
        self.component_of = {}  # basis column → (its component, its position there)
        for i, cols in enumerate(self.components):
            for j, c in enumerate(cols):
                self.component_of[int(c)] = (i, j)
        front_cols = {c for c, _ in self.front_columns}
        read = set(front_cols)
        for node in self.needed:
            if isinstance(node, Dot) and node.index not in self.front and node.args[0].dim == WIDTH:
                read |= self.support(node.args[0]) | self.support(node.args[1])
        for w, args in self.args.items():
            if self.uses[w][0].index not in self.front:
                read |= set().union(*(self.support(a) for a in args if a.dim == WIDTH))
        # columns no Gram reads: their row-0 entries are independent of everything else drawn
        self.free_columns = np.array(sorted(set(range(size)) - read), dtype=int)
        for cols in self.components:
            if 0 < len(front_cols.intersection(cols.tolist())) < len(cols):
                culprit = next(n for n in self.needed if n.index not in self.front and not isinstance(n, Matrix)
                               and isinstance(n, (Dot, MatMul)) and self._reads(n, front_cols, cols))
                _refuse(culprit, "it mixes a vector computed through a nonlinearity with Gaussian vectors")

    def _reads(self, node, front_cols: set, component) -> bool:
        """Whether a dot or MatMul reads Gram entries of `component` that pair front and fresh columns."""
        args = node.args if isinstance(node, Dot) else self.args[node.matrix.index]
        cols = set().union(*(self.support(a) for a in args if a.dim == WIDTH))
        return bool(cols & front_cols) and bool(cols - front_cols) and bool(cols & set(component.tolist()))

    def _front(self) -> set[int]:
        """Everything upstream of a non-identity nonlinearity or a moment: computed explicitly, O(n)."""
        seeds = [n for n in self.needed if ((isinstance(n, Nonlin) and n.phi.name != "identity") and n.dim == WIDTH)
                 or (isinstance(n, Moment) and n.args[0].dim == WIDTH)]
        return {n.index for n in self.program.ancestors(seeds) if not isinstance(n, Matrix)}

    @staticmethod
    def _check(node: Node) -> None:
        if isinstance(node, Matrix) and WIDTH not in node.shape:
            _refuse(node, "a matrix between two fixed dimensions is not reduced")
        if isinstance(node, Input) and node.dim != WIDTH:
            _refuse(node, "inputs of a fixed dimension are not reduced")

    def block_size(self, width: int) -> int:
        """Networks per random stream: a function of the program and width only."""
        vectors = sum(1 for n in self.needed if n.index in self.front and isinstance(n, Vector))
        if not vectors:
            return EXACT_BLOCK
        return int(max(1, min(EXACT_BLOCK, FRONT_FLOATS // (width * vectors))))

    def support(self, v: Vector) -> set[int]:
        """The basis columns v can use: its coefficients vanish elsewhere."""
        v = _linear_source(v)
        if ("front", v.index) in self.columns:
            cols = self.columns[("front", v.index)]
        elif isinstance(v, Input):
            cols = self.columns[id(v.group)]
        elif isinstance(v, MatMul):
            cols = self.columns[v.matrix.index]
        else:
            return set().union(*(self.support(a) for a in v.args))
        return set(range(cols.start, cols.stop))

    def _gram_components(self) -> list[np.ndarray]:
        """Groups of basis columns whose mutual Gram entries some dot or matrix application reads. Disjoint groups
        of columns of an iid matrix have independent Grams, so each group gets its own (small) Wishart draw."""
        parent = list(range(self.size))

        def find(i):
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        def link(columns):
            columns = sorted(columns)
            for c in columns[1:]:
                parent[find(c)] = find(columns[0])

        for node in self.needed:
            if isinstance(node, Dot) and node.index not in self.front and node.args[0].dim == WIDTH:
                link(self.support(node.args[0]) | self.support(node.args[1]))
        for w, args in self.args.items():
            if w in self.columns or self.uses[w][0].index not in self.front:
                link(set().union(*(self.support(a) for a in args if a.dim == WIDTH)))
        link(c for c, _ in self.front_columns)  # their Gram is computed exactly, all at once
        groups: dict[int, list[int]] = {}
        for c in range(self.size):
            groups.setdefault(find(c), []).append(c)
        return [np.array(g) for g in groups.values()]


def _wishart(rng_normal, rng_chi, dof: int, M: int, S: int) -> np.ndarray:
    """(S, M, M) draws of Wishart(dof, I_M): Bartlett's T Tᵀ when dof ≥ M, else ZᵀZ for explicit Z (dof × M)."""
    if dof < M:
        Z = rng_normal.standard_normal((S, dof, M))
        return np.einsum("sdi,sdj->sij", Z, Z)
    T = np.zeros((S, M, M))
    rows, cols = np.tril_indices(M, -1)
    T[:, rows, cols] = rng_normal.standard_normal((S, len(rows)))
    T[:, np.arange(M), np.arange(M)] = np.sqrt(rng_chi.chisquare(dof - np.arange(M), size=(S, M)))
    return T @ T.transpose(0, 2, 1)


def _row_factor(row_cov: np.ndarray) -> np.ndarray:
    """Per-network L with L Lᵀ = row_cov, (S, k, k) → (S, k, k)."""
    return semidefinite_cholesky(np.ascontiguousarray(row_cov.transpose(1, 2, 0))).transpose(2, 0, 1)


def _explicit_row_factor(matrix: Matrix, V: np.ndarray) -> np.ndarray:
    """L with L Lᵀ = σ² VᵀV/d for explicit argument rows V (S, d, k): the row covariance of W V."""
    return _row_factor(matrix.var / V.shape[1] * np.einsum("sdi,sdj->sij", V, V))


def _draw_uses(plan: ExactPlan, matrix: Matrix, L: np.ndarray, rng, rows: int, values: dict) -> None:
    """W V = Z Lᵀ with Z (S, rows, k) standard normal: the explicit rows of every MatMul by W, into `values`."""
    args = plan.args[matrix.index]
    drawn = rng.standard_normal((L.shape[0], rows, len(args))) @ L.transpose(0, 2, 1)
    position = {a.index: j for j, a in enumerate(args)}
    for use in plan.uses[matrix.index]:
        values[use.index] = drawn[:, :, position[use.arg.index]]


def _front_values(plan: ExactPlan, width: int, root, block: int, S: int) -> dict:
    """The explicit front of `S` networks: vectors (S, n), scalars (S,)."""
    values: dict = {}

    def value(node: Node):
        if node.index in values:
            return values[node.index]
        if isinstance(node, Input):
            factor = plan.factors[id(node.group)]
            members = [n for n in plan.needed if isinstance(n, Input) and n.group is node.group]
            z = stream(root, block, 3, members[0].index).standard_normal((S, width, factor.shape[1]))
            drawn = z @ factor.T
            for m in members:
                values[m.index] = drawn[:, :, m.position]
            return values[node.index]
        if isinstance(node, MatMul):  # W V = Z Lᵀ, L Lᵀ = σ² VᵀV/n_in: O(n k²), no n×n matrix
            V = np.stack([value(a) for a in plan.args[node.matrix.index]], axis=2)
            _draw_uses(plan, node.matrix, _explicit_row_factor(node.matrix, V),
                       stream(root, block, 4, node.matrix.index), width if node.dim == WIDTH else node.dim, values)
            return values[node.index]
        if isinstance(node, Nonlin):
            out = node.phi(*(value(a) for a in node.args))
        elif isinstance(node, LinComb):
            out = 0.0
            for c, a in zip(node.coeffs, node.args):
                out = out + (value(c)[:, None] if isinstance(c, Scalar) else c) * value(a)
        elif isinstance(node, Moment):
            out = np.mean(node.phi(*(value(a) for a in node.args)), axis=1)
        elif isinstance(node, Dot):
            a, b = node.args
            out = np.einsum("sn,sn->s", value(a), value(b)) / float(width) ** node.exponent
        else:  # ScalarFn, SoftmaxEntry
            out = scalar_function_value(node, value, values)
        values[node.index] = out
        return out

    for node in plan.needed:
        if node.index in plan.front:
            value(node)
    return values


def simulate_exact_block(plan: ExactPlan, width: int, targets, root, block: int, count: int,
                         limit: bool = False, moments: bool = False):
    """`count` networks of block `block`: coordinate 0 of each vector target, the value of each scalar target.

    limit=True draws the n → ∞ law from the *same* random numbers (row 0 b₀ and Bartlett's below-diagonal
    normals Ξ): G/n → I and (G − nI)/sqrt(n) → Ξ + Ξᵀ, so 1/sqrt(n) dots of disjoint supports become c_uᵀ(Ξ+Ξᵀ)c_v
    and matrix row covariances σ² CᵀC. moments=True also returns the mean and covariance of the draws given
    everything but the row-0 entries of free columns (those no Gram reads), (S, k) and (S, k, k).
    """
    M, S = plan.size, count
    if limit and plan.front:
        raise ProgramError("coupled limit draws do not cover a nonlinear front yet; use inputs with a Gaussian law")
    front = _front_values(plan, width, root, block, S) if plan.front else {}
    b0 = stream(root, block, 0).standard_normal((S, M))  # row 0 of the basis
    for col, idx in plan.front_columns:
        b0[:, col] = front[idx][:, 0]
    front_cols = {c for c, _ in plan.front_columns}
    grams = []  # G = b₀b₀ᵀ + Wishart(n − 1), kept only within each component (nothing reads across)
    free = set(plan.free_columns.tolist())
    for i, cols in enumerate(plan.components):
        if free.issuperset(cols.tolist()):  # nothing reads this Gram
            grams.append(None)
            continue
        if limit:  # Ξ + Ξᵀ from the normals Bartlett puts below the diagonal
            r = len(cols)
            xi = np.zeros((S, r, r))
            below = np.tril_indices(r, -1)
            xi[:, below[0], below[1]] = stream(root, block, 1, i).standard_normal((S, len(below[0])))
            grams.append(xi + xi.transpose(0, 2, 1))
            continue
        if int(cols[0]) in front_cols:  # explicit front vectors: their Gram, exactly
            F = np.stack([front[dict(plan.front_columns)[int(c)]] for c in cols], axis=2)
            grams.append(np.einsum("sni,snj->sij", F, F))
            continue
        rows = b0[:, cols]
        wishart = _wishart(stream(root, block, 1, i), stream(root, block, 2, i), width - 1, len(cols), S)
        grams.append(wishart + rows[:, :, None] * rows[:, None, :])
    coef: dict[int, np.ndarray] = {}
    values: dict = {}

    def gram(iu: np.ndarray, iv: np.ndarray) -> np.ndarray:
        """G on basis columns iu × iv (S, |iu|, |iv|), all in one component by construction of the plan."""
        where = [plan.component_of[int(c)] for c in np.concatenate([iu, iv])]
        local = np.array([j for _, j in where])
        return grams[where[0][0]][:, local[:len(iu), None], local[None, len(iu):]]

    def coefficients(v: Vector) -> np.ndarray:
        """c_v (S, M) with v = B c_v."""
        v = _linear_source(v)
        if v.index in coef:
            return coef[v.index]
        c = np.zeros((S, M))
        if ("front", v.index) in plan.columns:
            c[:, plan.columns[("front", v.index)]] = 1.0
        elif isinstance(v, Input):
            c[:, plan.columns[id(v.group)]] = plan.factors[id(v.group)][v.position]
        elif isinstance(v, MatMul):
            apply_matrix(v.matrix)
            return coef[v.index]
        elif isinstance(v, LinComb):
            for k, arg in zip(v.coeffs, v.args):
                weight = scalar(k)[:, None] if isinstance(k, Scalar) else k
                c += weight * coefficients(arg)
        coef[v.index] = c
        return c

    def support(*vectors) -> np.ndarray:
        """The basis columns the vectors can use (the plan's static supports): Grams are only read on these."""
        return np.array(sorted(set().union(*(plan.support(v) for v in vectors))), dtype=int)

    def bilinear(u: Vector, v: Vector) -> np.ndarray:
        """c_uᵀ G c_v per network, (S,), on the columns the two use (limit: c_uᵀ(Ξ+Ξᵀ)c_v)."""
        iu, iv = support(u), support(v)
        if len(iu) == 0 or len(iv) == 0:
            return np.zeros(S)
        return bilinear_forms(np.ascontiguousarray(coefficients(u)[:, iu]), gram(iu, iv),
                              np.ascontiguousarray(coefficients(v)[:, iv]))

    def dot(s: Dot) -> np.ndarray:
        if not limit:
            return bilinear(*s.args) / float(width) ** s.exponent
        cu, cv = coefficients(s.args[0]), coefficients(s.args[1])
        inner = np.einsum("sm,sm->s", cu, cv)  # the order-n part of G
        if s.exponent == 1.0:
            return inner
        if np.any(np.abs(inner) > 1e-9 * np.sqrt(np.einsum("sm,sm->s", cu, cu) * np.einsum("sm,sm->s", cv, cv))):
            raise ProgramError(f"{s.name} := {s.definition()}: E[Z^{s.args[0].name} Z^{s.args[1].name}] ≠ 0, so the "
                               f"dot diverges as n → ∞ and has no coupled limit")
        return bilinear(*s.args) if s.exponent == 0.5 else np.zeros(S)

    def linear_row_factor(matrix: Matrix) -> np.ndarray:
        """L with L Lᵀ = σ² CᵀGC/n (limit: σ² CᵀC), the row covariance of W applied to its width-n arguments."""
        args = plan.args[matrix.index]
        used = support(*args)
        Cu = np.stack([coefficients(a)[:, used] for a in args], axis=2)  # (S, |used|, k)
        row_cov = np.einsum("smi,smj->sij", Cu, Cu) if limit else congruences(Cu, gram(used, used)) / width
        return _row_factor(matrix.var * row_cov)

    def apply_matrix(matrix: Matrix) -> None:
        """All MatMuls by one matrix at once: W V = B_W Lᵀ with L Lᵀ the row covariance of W V."""
        args = plan.args[matrix.index]
        if matrix.shape[1] != WIDTH:  # from a fixed dimension: the Gram of the explicit rows, at any width
            L = _explicit_row_factor(matrix, np.stack([small(a) for a in args], axis=2))
        else:
            L = linear_row_factor(matrix)
        position = {a.index: j for j, a in enumerate(args)}
        for use in plan.uses[matrix.index]:
            c = np.zeros((S, M))
            c[:, plan.columns[matrix.index]] = L[:, position[use.arg.index], :]
            coef[use.index] = c

    def small(v: Vector) -> np.ndarray:
        """The N explicit rows (S, N) of a fixed-dimension vector."""
        if v.index in front:
            return front[v.index]
        if v.index in values:
            return values[v.index]
        if isinstance(v, MatMul):  # rows iid N(0, σ² CᵀGC/n) (limit: σ² CᵀC), drawn for all uses at once
            _draw_uses(plan, v.matrix, linear_row_factor(v.matrix), stream(root, block, 5, v.matrix.index), v.dim,
                       values)
            return values[v.index]
        if isinstance(v, Nonlin):
            out = v.phi(*(small(a) for a in v.args))
        else:  # LinComb
            out = 0.0
            for k, a in zip(v.coeffs, v.args):
                out = out + (scalar(k)[:, None] if isinstance(k, Scalar) else k) * small(a)
        values[v.index] = out
        return out

    def scalar(s: Scalar) -> np.ndarray:
        if s.index in front:
            return front[s.index]
        if s.index in values:
            return values[s.index]
        if isinstance(s, Dot) and s.args[0].dim != WIDTH:
            value = np.einsum("sr,sr->s", small(s.args[0]), small(s.args[1])) / float(s.args[0].dim) ** s.exponent
        elif isinstance(s, Moment):  # over a fixed dimension (width-n moments are in the front)
            value = np.mean(s.phi(*(small(a) for a in s.args)), axis=1)
        elif isinstance(s, Dot):
            value = dot(s)
        else:
            value = scalar_function_value(s, scalar, values)
        values[s.index] = value
        return value

    out = np.empty((S, len(targets)))
    for j, t in enumerate(targets):
        if isinstance(t, Scalar):
            out[:, j] = scalar(t)
        elif t.dim != WIDTH:
            out[:, j] = small(t)[:, 0]
        else:
            out[:, j] = np.einsum("sm,sm->s", b0, coefficients(t))
    if not moments:
        return out
    # given everything else, the free columns' row-0 entries are iid N(0, 1): a Gaussian with these moments
    free = plan.free_columns
    weights = np.zeros((S, len(targets), len(free)))
    for j, t in enumerate(targets):
        if isinstance(t, Vector) and t.dim == WIDTH:
            weights[:, j] = coefficients(t)[:, free]
    mean = out - np.einsum("skf,sf->sk", weights, b0[:, free])
    return out, mean, np.einsum("skf,slf->skl", weights, weights)


def reducible(program: Program, targets) -> bool:
    try:
        ExactPlan(program, targets)
        return True
    except ProgramError:
        return False


def simulate_coupled(program: Program, width: int, variables, size: int, seed=None):
    """Finite-width and limit draws from common random numbers (DESIGN §5), with their conditional moments.

    Returns a `CoupledDraws`: `finite` and `limit` (size, k) — each has exactly its own law (the finite-width
    law at `width`, the infinite-width law), but both are driven by the same row-0 normals and Bartlett
    normals, so their difference has a small variance that shrinks with n — and, for each, the mean and
    covariance of the draws given the random scalars and Grams (`finite_mean`, `finite_cov`, `limit_mean`,
    `limit_cov`), the Gaussian components of Rao-Blackwellized density estimates.
    """
    from ._random import check_size, seed_sequence
    from .finite_width import check_width

    if not isinstance(program, Program):
        raise ProgramError(f"simulate_coupled: expected a netsor Program, got {type(program).__name__}")
    width = check_width(width)
    targets = program.resolve(variables, "simulate_coupled")
    size = check_size(size)
    root = seed_sequence(seed)
    plan = ExactPlan(program, targets)
    if plan.front:
        raise ProgramError("simulate_coupled: coupled limit draws do not cover a nonlinear front yet "
                           f"({next(n.name for n in plan.needed if n.index in plan.front)} is computed through one)")
    k = len(targets)
    parts = {name: np.empty((size, k)) for name in ("finite", "limit", "finite_mean", "limit_mean")}
    parts.update({name: np.empty((size, k, k)) for name in ("finite_cov", "limit_cov")})
    block = plan.block_size(width)
    for b, start in enumerate(range(0, size, block)):
        count = min(block, size - start)
        for kind, limit in (("finite", False), ("limit", True)):
            draws, mean, cov = simulate_exact_block(plan, width, targets, root, b, count, limit=limit, moments=True)
            parts[kind][start:start + count] = draws
            parts[f"{kind}_mean"][start:start + count] = mean
            parts[f"{kind}_cov"][start:start + count] = cov
    return CoupledDraws(**parts)


class CoupledDraws:
    """Paired finite-width and limit draws, with the conditional Gaussian moments of each."""

    def __init__(self, finite, limit, finite_mean, finite_cov, limit_mean, limit_cov):
        self.finite, self.limit = finite, limit
        self.finite_mean, self.finite_cov = finite_mean, finite_cov
        self.limit_mean, self.limit_cov = limit_mean, limit_cov

    def __repr__(self) -> str:
        return f"<CoupledDraws: {self.finite.shape[0]} pairs of {self.finite.shape[1]} variables>"
