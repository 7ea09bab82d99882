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
n − 1 < M). The cost per network is O(M³), whatever n.
"""
from __future__ import annotations

import numpy as np

from ._compiled import bilinear_forms, congruences, semidefinite_cholesky
from ._random import stream
from .errors import ProgramError
from .kernels import gaussian_factor
from .program import (WIDTH, Dot, Input, LinComb, MatMul, Matrix, Node, Nonlin, Program, Scalar, ScalarFn,
                      SoftmaxEntry, Vector, stable_softmax)

EXACT_BLOCK = 1 << 12  # networks per random stream


def _linear_source(node: Node) -> Node:
    """Identity nonlinearities pass through."""
    while isinstance(node, Nonlin) and node.phi.name == "identity":
        node = node.args[0]
    return node


class ExactPlan:
    """The basis columns of a program's inputs and matrices, checked to be reducible for the requested nodes."""

    def __init__(self, program: Program, targets):
        self.program = program
        self.needed = program.ancestors(targets)
        self.columns: dict = {}  # key (input group id or matrix index) → slice of basis columns
        self.uses: dict[int, list[MatMul]] = {}  # matrix index → its MatMuls among the needed nodes
        self.args: dict[int, list[Vector]] = {}  # matrix index → distinct arguments
        self.factors: dict[int, np.ndarray] = {}  # input group id → L₀
        size = 0
        for node in self.needed:
            reason = self._irreducible(node)
            if reason:
                raise ProgramError(f"{node.name} := {node.definition()}: method='exact' cannot reduce this program: "
                                   f"{reason}; use method='dense'")
            if isinstance(node, Input) and id(node.group) not in self.columns:
                factor = gaussian_factor(node.group.cov)
                self.factors[id(node.group)] = factor
                self.columns[id(node.group)] = slice(size, size + factor.shape[1])
                size += factor.shape[1]
            if isinstance(node, MatMul):
                self.uses.setdefault(node.matrix.index, []).append(node)
        for w, uses in self.uses.items():
            distinct = list({u.arg.index: u.arg for u in uses}.values())
            self.args[w] = distinct
            self.columns[w] = slice(size, size + len(distinct))
            size += len(distinct)
            matrix = uses[0].matrix
            for u in uses:
                if matrix in self.program.ancestors([u.arg]):
                    raise ProgramError(f"{u.name} := {u.definition()}: {matrix.name} is applied to a vector computed "
                                       f"from {matrix.name} itself, which needs conditioning; use method='dense'")
        self.size = size
        self.components = self._gram_components()
        self.component_of = {}  # basis column → (its component, its position there)
        for i, cols in enumerate(self.components):
            for j, c in enumerate(cols):
                self.component_of[int(c)] = (i, j)

    def support(self, v: Vector) -> set[int]:
        """The basis columns v can use: its coefficients vanish elsewhere."""
        v = _linear_source(v)
        if isinstance(v, Input):
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
            if isinstance(node, Dot):
                link(self.support(node.args[0]) | self.support(node.args[1]))
        for args in self.args.values():
            link(set().union(*(self.support(a) for a in args)))
        groups: dict[int, list[int]] = {}
        for c in range(self.size):
            groups.setdefault(find(c), []).append(c)
        return [np.array(g) for g in groups.values()]

    @staticmethod
    def _irreducible(node: Node) -> str | None:
        if isinstance(node, Matrix):
            return None if node.shape == (WIDTH, WIDTH) else "matrices of a fixed dimension are not reduced yet"
        if isinstance(node, Vector) and node.dim != WIDTH:
            return "vectors of a fixed dimension are not reduced yet"
        if isinstance(node, Nonlin) and node.phi.name != "identity":
            return f"the nonlinearity {node.phi.name} is not linear in the vectors"
        if isinstance(node, Scalar) and not isinstance(node, (Dot, ScalarFn, SoftmaxEntry)):
            return f"a {type(node).__name__} scalar is not a function of Gram matrices"
        return None


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


def simulate_exact_block(plan: ExactPlan, width: int, targets, root, block: int, count: int) -> np.ndarray:
    """`count` networks of block `block`: coordinate 0 of each vector target, the value of each scalar target."""
    M, S = plan.size, count
    b0 = stream(root, block, 0).standard_normal((S, M))  # row 0 of the basis
    grams = []  # G = b₀b₀ᵀ + Wishart(n − 1), kept only within each component (nothing reads across)
    for i, cols in enumerate(plan.components):
        rows = b0[:, cols]
        wishart = _wishart(stream(root, block, 1, i), stream(root, block, 2, i), width - 1, len(cols), S)
        grams.append(wishart + rows[:, :, None] * rows[:, None, :])

    def gram(iu: np.ndarray, iv: np.ndarray) -> np.ndarray:
        """G on basis columns iu × iv (S, |iu|, |iv|), all in one component by construction of the plan."""
        where = [plan.component_of[int(c)] for c in np.concatenate([iu, iv])]
        component = where[0][0]
        local = np.array([j for _, j in where])
        return grams[component][:, local[:len(iu), None], local[None, len(iu):]]
    coef: dict[int, np.ndarray] = {}
    values: dict = {}

    def coefficients(v: Vector) -> np.ndarray:
        """c_v (S, M) with v = B c_v."""
        v = _linear_source(v)
        if v.index in coef:
            return coef[v.index]
        c = np.zeros((S, M))
        if isinstance(v, Input):
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

    def support(*cs) -> np.ndarray:
        """The basis columns any of the coefficient arrays uses: Grams are only ever needed on these."""
        return np.flatnonzero(np.any([np.any(c != 0.0, axis=0) for c in cs], axis=0))

    def bilinear(cu: np.ndarray, cv: np.ndarray) -> np.ndarray:
        """c_uᵀ G c_v per network, (S,), on the columns the two use."""
        iu, iv = support(cu), support(cv)
        if len(iu) == 0 or len(iv) == 0:
            return np.zeros(S)
        return bilinear_forms(np.ascontiguousarray(cu[:, iu]), gram(iu, iv), np.ascontiguousarray(cv[:, iv]))

    def apply_matrix(matrix: Matrix) -> None:
        """All MatMuls by one matrix at once: W V = B_W Lᵀ with L Lᵀ = σ² CᵀGC / n."""
        args = plan.args[matrix.index]
        C = np.stack([coefficients(a) for a in args], axis=2)  # (S, M, k)
        used = support(*(C[:, :, j] for j in range(C.shape[2])))
        Cu = C[:, used, :]
        row_cov = matrix.var / width * congruences(np.ascontiguousarray(Cu), gram(used, used))
        L = semidefinite_cholesky(np.ascontiguousarray(row_cov.transpose(1, 2, 0))).transpose(2, 0, 1)
        position = {a.index: j for j, a in enumerate(args)}
        for use in plan.uses[matrix.index]:
            c = np.zeros((S, M))
            c[:, plan.columns[matrix.index]] = L[:, position[use.arg.index], :]
            coef[use.index] = c

    def scalar(s: Scalar) -> np.ndarray:
        if s.index in values:
            return values[s.index]
        if isinstance(s, Dot):
            value = bilinear(coefficients(s.args[0]), coefficients(s.args[1])) / float(width) ** s.exponent
        elif isinstance(s, ScalarFn):
            value = np.asarray(s.fn(*(scalar(a) for a in s.args)), dtype=float)
        else:  # SoftmaxEntry
            key = ("softmax", id(s.group))
            if key not in values:
                values[key] = stable_softmax([scalar(p) for p in s.group.scores])
            value = values[key][s.position]
        values[s.index] = value
        return value

    out = np.empty((S, len(targets)))
    for j, t in enumerate(targets):
        out[:, j] = scalar(t) if isinstance(t, Scalar) else np.einsum("sm,sm->s", b0, coefficients(t))
    return out


def reducible(program: Program, targets) -> bool:
    try:
        ExactPlan(program, targets)
        return True
    except ProgramError:
        return False
