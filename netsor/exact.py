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
own small Wishart. A component whose row 0 nothing reads except through its Gram (no target uses its columns) has
no row 0 drawn: its G is one Wishart(n, I) (Bartlett with n degrees of freedom), whose below-diagonal normals
still drive the coupled limit. The cost per network does not depend on n.

Vectors of a fixed dimension N (head dimensions) are drawn explicitly, N rows per network: a MatMul from the
width to N has rows iid N(0, σ² CᵀGC/n); a MatMul from N to the width opens a basis block with row covariance
σ² UᵀU/N from those explicit rows.

A nonlinear *front* (tokens x_i = clip(W^i h), relu(W^i h): everything upstream of a width-n non-identity
nonlinearity or moment) is computed explicitly at O(n) per network — a MatMul of explicit vectors V is drawn as Z Lᵀ with
L Lᵀ = σ² VᵀV/n, never as an n×n matrix — and the explicit vectors the linear part uses become basis columns
whose Gram and row 0 are known exactly. A front of one layer, φ(W x) of inputs x with φ identity, relu or clip
(`FrontLayer`), needs only the inputs' Gram and is streamed row by row through a compiled kernel, keeping only the
columns' Gram and row 0; with clip bounds its columns rarely reach, it is drawn from its Gram alone (no clip can
act when ‖u‖₂ ≤ c), with explicit rows drawn given that Gram only where one could.

Where the program reads only the cross block G_AB of a component (dots q_i·k_j of two different matrices),
only that block is drawn (`ExactPlan._bipartite`), and all the dots of one pair of matrices are one product
L_u G L_vᵀ (`ExactPlan.dot_pair`).

Programs with no front, only width-n vectors and only dots and softmax entries as scalars are compiled once per
width into a list of register operations run by one kernel (`LinearProgram`); the others take the step-by-step path.
"""
from __future__ import annotations

import numpy as np

from . import _compiled as _ops
from ._compiled import (PHI_CLIP, PHI_IDENTITY, PHI_RELU, add_scaled_at, bartlett_factor, bartlett_wishart,
                        bipartite_gram, front_layer_grams, run_linear, sandwiches_at, semidefinite_cholesky_rows,
                        softmax_columns, standard_normals, unclipped_layer_grams)
from ._random import stream
from .errors import ProgramError
from .kernels import gaussian_factor
from .nonlinearities import _relu, clip as _clip, identity
from .program import (WIDTH, Dot, Input, LinComb, MatMul, Matrix, Moment, Node, Nonlin, Program, Scalar, SoftmaxEntry,
                      Vector, scalar_function_value)

EXACT_BLOCK = 1 << 12  # networks per random stream (fewer when a front holds n-vectors)
FRONT_FLOATS = 1 << 22  # bound on the explicit front's floats per block
LAYER_DRAWS = 1 << 23  # bound on the normals a streamed one-layer front draws per block
_CLIP_CODE = _clip(1.0).fn.__code__


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
        self._cache: dict = {}  # static index arrays, computed once per plan (any thread may fill it)
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
        self.read_components = [not set(self.free_columns.tolist()).issuperset(cols.tolist())
                                for cols in self.components]
        self.bipartite = self._bipartite(front_cols)
        # components whose row 0 nothing reads but through their Gram (no target's support, no front column):
        # their Gram G = BᵀB is drawn as one Wishart(n) and their row 0 is not drawn
        shown = set(front_cols).union(*(self.support(t) for t in targets if isinstance(t, Vector) and t.dim == WIDTH))
        self.gram_only = [self.read_components[i] and not shown.intersection(cols.tolist())
                          for i, cols in enumerate(self.components)]
        self.row0_columns = np.array(sorted(set(range(size)).difference(
            *(cols.tolist() for i, cols in enumerate(self.components) if self.gram_only[i]))), dtype=np.int64)
        for cols in self.components:
            if 0 < len(front_cols.intersection(cols.tolist())) < len(cols):
                culprit = next(n for n in self.needed if n.index not in self.front and not isinstance(n, Matrix)
                               and isinstance(n, (Dot, MatMul)) and self._reads(n, front_cols, cols))
                _refuse(culprit, "it mixes a vector computed through a nonlinearity with Gaussian vectors")
        self.layer = self._front_layer()

    def _front_layer(self):
        """A front that is one layer, φ(W x) for inputs x, with φ identity, relu or clip: streamed (`FrontLayer`)
        instead of materialised. None for any other front, which is computed node by node."""
        front = [n for n in self.needed if n.index in self.front]
        if not front or not self.front_columns:
            return None
        children: dict[int, list[Node]] = {}
        for node in self.needed:
            for parent in node.parents():
                children.setdefault(parent.index, []).append(node)
        inputs, matmuls = [], {}
        for node in front:
            kids = children.get(node.index, [])
            if isinstance(node, Input):
                if ("front", node.index) in self.columns or not all(isinstance(k, MatMul) for k in kids):
                    return None
                inputs.append(node)
            elif isinstance(node, MatMul):
                if node.matrix.shape != (WIDTH, WIDTH) or not isinstance(node.arg, Input) or \
                        any(k.index in self.front and not isinstance(k, Nonlin) for k in kids):
                    return None
                matmuls[node.index] = node
            elif isinstance(node, Nonlin):
                if len(node.args) != 1 or node.args[0].index not in matmuls or _phi_code(node.phi) is None or \
                        any(k.index in self.front for k in kids):
                    return None
            else:
                return None
        return FrontLayer(self, inputs, matmuls)

    def _bipartite(self, front_cols: set) -> list:
        """Per component, (A, B) (positions in it) when everything that reads its Gram reads only the block
        G_AB (dots u·v with u on A, v on B, e.g. q_i·k_j), else None. Then G_AB = b₀_A b₀_Bᵀ + T Ξ with T Bartlett's
        factor of the A columns' Gram and Ξ iid N(0, 1): Z_Aᵀ Z_B = R_Aᵀ (Q_Aᵀ Z_B), and given Z_A = Q_A R_A the
        a × b matrix Q_Aᵀ Z_B is iid N(0, 1). Fewer draws than the whole Wishart, and nothing else is needed."""
        full = set()
        edges: dict[int, list] = {}  # column → [(column, parity)]
        for node in self.needed:
            if isinstance(node, Dot) and node.index not in self.front and node.args[0].dim == WIDTH:
                su, sv = sorted(self.support(node.args[0])), sorted(self.support(node.args[1]))
                if not su or not sv:
                    continue
                if set(su) & set(sv):
                    full.add(self.component_of[su[0]][0])
                    continue
                for side in (su, sv):
                    for c in side[1:]:
                        edges.setdefault(side[0], []).append((c, 0))
                        edges.setdefault(c, []).append((side[0], 0))
                edges.setdefault(su[0], []).append((sv[0], 1))
                edges.setdefault(sv[0], []).append((su[0], 1))
        for w, args in self.args.items():
            if self.uses[w][0].index not in self.front:
                cols = set().union(*(self.support(a) for a in args if a.dim == WIDTH))
                if cols:
                    full.add(self.component_of[min(cols)][0])
        out = []
        for i, cols in enumerate(self.components):
            if i in full or not self.read_components[i] or front_cols.intersection(cols.tolist()):
                out.append(None)
                continue
            colour = {int(cols[0]): 0}
            stack, consistent = [int(cols[0])], True
            while stack and consistent:
                c = stack.pop()
                for d, parity in edges.get(c, []):
                    if d not in colour:
                        colour[d] = colour[c] ^ parity
                        stack.append(d)
                    elif colour[d] != colour[c] ^ parity:
                        consistent = False
                        break
            if not consistent or len(colour) != len(cols):
                out.append(None)
                continue
            A = np.array([j for j, c in enumerate(cols) if colour[int(c)] == 0], dtype=np.int64)
            B = np.array([j for j, c in enumerate(cols) if colour[int(c)] == 1], dtype=np.int64)
            if len(A) > len(B):  # the cheaper side gets Bartlett's factor
                A, B = B, A
            out.append((A, B))
        return out

    def dot_pair(self, node: Dot):
        """(W_u, W_v, i, j) when the dot is (W_u a_i)·(W_v b_j) for width-n matrices with basis columns: all such
        dots of one pair of matrices are the entries of L_u G L_vᵀ, computed at once. None otherwise."""
        key = ("pair", node.index)
        if key not in self._cache:
            u, v = (_linear_source(a) for a in node.args)
            pair = None
            if isinstance(u, MatMul) and isinstance(v, MatMul) and u.matrix.index in self.columns and \
                    v.matrix.index in self.columns and u.matrix.shape[1] == WIDTH and v.matrix.shape[1] == WIDTH:
                pair = (u.matrix, v.matrix, [a.index for a in self.args[u.matrix.index]].index(u.arg.index),
                        [a.index for a in self.args[v.matrix.index]].index(v.arg.index), u, v)
            self._cache[key] = pair
        return self._cache[key]

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
        if self.layer is not None:
            if not self.layer.streams(width):
                return EXACT_BLOCK
            return int(max(1, min(EXACT_BLOCK, LAYER_DRAWS // (width * self.layer.draws))))
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

    def cols(self, *vectors) -> np.ndarray:
        """The sorted basis columns the vectors can use (their static supports), where coefficients are kept."""
        key = ("cols",) + tuple(v.index for v in vectors)
        hit = self._cache.get(key)
        if hit is None:
            hit = np.array(sorted(set().union(*(self.support(v) for v in vectors))), dtype=np.int64)
            self._cache[key] = hit
        return hit

    def within(self, outer, inner: Vector) -> np.ndarray:
        """Positions of cols(inner) among cols(*outer) (outer: a vector or a list of them)."""
        outer = tuple(outer) if isinstance(outer, (list, tuple)) else (outer,)
        key = ("within", tuple(v.index for v in outer), inner.index)
        hit = self._cache.get(key)
        if hit is None:
            hit = np.searchsorted(self.cols(*outer), self.cols(inner))
            self._cache[key] = hit
        return hit

    def local(self, u, v):
        """(component, positions of cols(u) in it, positions of cols(v) in it); u, v a vector or a list of
        them, whose columns lie in one Gram component by construction of the plan."""
        u = tuple(u) if isinstance(u, (list, tuple)) else (u,)
        v = tuple(v) if isinstance(v, (list, tuple)) else (v,)
        key = ("local", tuple(a.index for a in u), tuple(a.index for a in v))
        hit = self._cache.get(key)
        if hit is None:
            where = [self.component_of[int(c)] for c in np.concatenate([self.cols(*u), self.cols(*v)])]
            local = np.array([j for _, j in where], dtype=np.int64)
            hit = (where[0][0], local[:len(self.cols(*u))].copy(), local[len(self.cols(*u)):].copy())
            self._cache[key] = hit
        return hit

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


def _phi_code(phi):
    """(code, bound) of a nonlinearity a streamed front layer applies itself: identity, relu, clip(c); else None."""
    if phi is identity or phi.fn is identity.fn:
        return PHI_IDENTITY, 0.0
    if phi.fn is _relu:
        return PHI_RELU, 0.0
    if getattr(phi.fn, "__code__", None) is _CLIP_CODE:
        return PHI_CLIP, float(phi.fn.__closure__[0].cell_contents)
    return None


class FrontLayer:
    """A front of one layer: columns x = φ(W a), W (n×n) applied to front inputs a, φ identity, relu or clip.

    Only the inputs' Gram matters: stacked, the front inputs are X = B L₀ᵀ, so XᵀX = L₀ (BᵀB) L₀ᵀ with
    BᵀB ~ Wishart(n, I) (Bartlett). Given it, the rows of each W applied to its arguments A X are iid
    N(0, σ² A XᵀX Aᵀ/n) = L z, independently across matrices (DESIGN §5); each network streams its n rows
    through φ, keeping only the columns' Gram and row 0 (O(n) time, no n-vector in memory)."""

    def __init__(self, plan: ExactPlan, inputs: list[Input], matmuls: dict[int, MatMul]):
        offsets: dict[int, int] = {}
        rank = 0
        for x in inputs:
            if id(x.group) not in offsets:
                offsets[id(x.group)] = rank
                rank += plan.factors[id(x.group)].shape[1]
        self.rank = rank
        self.matrices = list(dict.fromkeys(m.matrix.index for m in matmuls.values()))
        self.var, self.lifts = [], []  # per matrix: σ², and A (k × rank) with its arguments = B Aᵀ
        for w in self.matrices:
            args = plan.args[w]
            lift = np.zeros((len(args), rank))
            for i, x in enumerate(args):
                factor = plan.factors[id(x.group)]
                lift[i, offsets[id(x.group)]:offsets[id(x.group)] + factor.shape[1]] = factor[x.position]
            self.lifts.append(lift)
            self.var.append(plan.uses[w][0].matrix.var)
        self.ranks = np.array([len(plan.args[w]) for w in self.matrices], dtype=np.int64)
        self.draws = int(self.ranks.sum())  # normals per coordinate
        nodes = {n.index: n for n in plan.needed}
        matrix_of, arg_of, phi_of, bound_of = [], [], [], []
        for _, idx in plan.front_columns:
            node = nodes[idx]
            code, bound = (PHI_IDENTITY, 0.0) if isinstance(node, MatMul) else _phi_code(node.phi)
            use = node if isinstance(node, MatMul) else matmuls[node.args[0].index]
            matrix_of.append(self.matrices.index(use.matrix.index))
            arg_of.append([a.index for a in plan.args[use.matrix.index]].index(use.arg.index))
            phi_of.append(code)
            bound_of.append(bound)
        self.col_matrix = np.array(matrix_of, dtype=np.int64)
        self.col_arg = np.array(arg_of, dtype=np.int64)
        self.col_phi = np.array(phi_of, dtype=np.int64)
        self.col_bound = np.array(bound_of, dtype=float)
        # the limit variance of each column's pre-activation: σ² times its argument's input variance
        self.col_var = np.array([self.var[j] * float(self.lifts[j][a] @ self.lifts[j][a])
                                 for j, a in zip(matrix_of, arg_of)])
        self.offsets = np.concatenate([[0], np.cumsum(self.ranks)[:-1]]).astype(np.int64)

    def streams(self, width: int) -> bool:
        """Whether a network's n rows are streamed, or (no relu, and clip bounds the columns rarely reach:
        ‖u‖₂² = n E[u²] (1 ± O(2/sqrt(n))) stays 4 standard deviations below c²) drawn from their Gram, with
        explicit rows only for the networks where a clip could act. A function of the width only."""
        clipped = self.col_phi == PHI_CLIP
        return bool(np.any(self.col_phi == PHI_RELU) or not np.any(clipped) or width - 1 < self.draws
                    or np.any(width * self.col_var[clipped] * (1 + 8 / np.sqrt(width)) > self.col_bound[clipped] ** 2))

    def sample(self, root, block: int, width: int, S: int):
        """Row 0 (S, m) and Gram (S, m, m) of the front columns, in the order of plan.front_columns."""
        gram_in = _wishart(stream(root, block, 6, 0), stream(root, block, 6, 1), width, self.rank, S)
        kmax = int(self.ranks.max())
        factors = np.zeros((S, len(self.matrices), kmax, kmax))
        for j, (lift, var) in enumerate(zip(self.lifts, self.var)):
            k = lift.shape[0]
            factors[:, j, :k, :k] = _row_factor(var / width * (lift @ gram_in @ lift.T))
        m = len(self.col_matrix)
        row0, gram = np.empty((S, m)), np.empty((S, m, m))
        if self.streams(width):
            front_layer_grams(stream(root, block, 6, 2), width, factors, self.ranks, self.col_matrix, self.col_arg,
                              self.col_phi, self.col_bound, row0, gram)
        else:
            self._from_gram(root, block, width, factors, row0, gram)
        return row0, gram

    def _from_gram(self, root, block: int, width: int, factors: np.ndarray, row0: np.ndarray, gram: np.ndarray):
        """Stack the normals of all matrices, Z (n × D), so column c is u_c = Z e_c (e_c: L_j's row for its
        argument, placed at matrix j's offset). Row 0 z₀ ~ N(0, I) and the other rows' Gram T Tᵀ ~ Wishart(n − 1)
        (Bartlett) give u's row 0 and Gram. Where every clipped column has ‖u‖₂ ≤ c, no coordinate is clipped and
        these are exact. Elsewhere the rows are drawn given the Gram: Z′ = Q Tᵀ with Q Haar on the Stiefel
        manifold, independent of T (the QR decomposition of a Gaussian matrix), then clipped explicitly."""
        S, m, D = gram.shape[0], gram.shape[1], self.draws
        E = np.zeros((S, m, D))
        for c, (j, a) in enumerate(zip(self.col_matrix, self.col_arg)):
            k = self.ranks[j]
            E[:, c, self.offsets[j]:self.offsets[j] + k] = factors[:, j, a, :k]
        z0 = standard_normals(stream(root, block, 6, 3), np.empty((S, D)))
        T = bartlett_factor(stream(root, block, 6, 4), stream(root, block, 6, 5), width - 1, D, S)
        ok = unclipped_layer_grams(E, z0, T, self.col_phi, self.col_bound, row0, gram)
        if ok.all():
            return
        rng = stream(root, block, 6, 6)
        clipped = self.col_phi == PHI_CLIP
        for s in np.flatnonzero(~ok):
            Q, R = np.linalg.qr(standard_normals(rng, np.empty((width - 1, D))))
            Z = np.concatenate([z0[s][None, :], (Q * np.sign(np.diag(R))) @ T[s].T])
            X = Z @ E[s].T
            X[:, clipped] = np.clip(X[:, clipped], -self.col_bound[clipped], self.col_bound[clipped])
            row0[s] = X[0]
            gram[s] = X.T @ X


def _wishart(rng_normal, rng_chi, dof: int, M: int, S: int, rows=None) -> np.ndarray:
    """(S, M, M) draws of Wishart(dof, I_M): Bartlett's T Tᵀ when dof ≥ M, else ZᵀZ for explicit Z (dof × M);
    plus rows[s] rows[s]ᵀ when rows (S, M) are given (a Gram with its row 0 drawn apart)."""
    if dof < M:
        Z = standard_normals(rng_normal, np.empty((S, dof, M)))
        out = np.einsum("sdi,sdj->sij", Z, Z)
        if rows is not None:
            out += rows[:, :, None] * rows[:, None, :]
        return out
    return bartlett_wishart(rng_normal, rng_chi, dof, M, S, np.zeros((S, 0)) if rows is None else rows)


def _row_factor(row_cov: np.ndarray) -> np.ndarray:
    """Per-network L with L Lᵀ = row_cov, (S, k, k) → (S, k, k)."""
    return semidefinite_cholesky_rows(np.ascontiguousarray(row_cov))


def _explicit_row_factor(matrix: Matrix, V: np.ndarray) -> np.ndarray:
    """L with L Lᵀ = σ² VᵀV/d for explicit argument rows V (S, d, k): the row covariance of W V."""
    return _row_factor(matrix.var / V.shape[1] * np.einsum("sdi,sdj->sij", V, V))


def _draw_uses(plan: ExactPlan, matrix: Matrix, L: np.ndarray, rng, rows: int, values: dict) -> None:
    """W V = Z Lᵀ with Z (S, rows, k) standard normal: the explicit rows of every MatMul by W, into `values`."""
    args = plan.args[matrix.index]
    drawn = standard_normals(rng, np.empty((L.shape[0], rows, len(args)))) @ L.transpose(0, 2, 1)
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
            z = standard_normals(stream(root, block, 3, members[0].index), np.empty((S, width, factor.shape[1])))
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


class _Unsupported(Exception):
    """A program outside what `LinearProgram` covers: the step-by-step path runs it."""


class LinearProgram:
    """The linear part of a block (no front, width-n vectors only, scalars that are dots and softmax entries) as
    operations with integer operands on per-network registers, run by one compiled kernel (`_compiled.run_linear`,
    over tiles of networks, without the GIL) with no Python between steps. It mirrors the step-by-step path of
    `simulate_exact_block` (limit=False) operation by operation and reads the same random streams in the same
    order, so its draws are that path's up to rounding, and stay coupled to the limit draws (`simulate_coupled`)."""

    def __init__(self, plan: ExactPlan, width: int, targets):
        if plan.front:
            raise _Unsupported
        for node in plan.needed:
            if isinstance(node, Vector) and (node.dim != WIDTH or
                                             (isinstance(node, Nonlin) and node.phi.name != "identity")):
                raise _Unsupported
            if isinstance(node, MatMul) and node.matrix.shape != (WIDTH, WIDTH):
                raise _Unsupported
            if isinstance(node, Scalar) and not isinstance(node, (Dot, SoftmaxEntry)):
                raise _Unsupported
        self.plan, self.width = plan, width
        self.ops, self.ints, self.floats, self.keys = [], [], [], [(0,)]
        self.size = 0
        self.coef, self.scalars, self.factors = {}, {}, {}
        drawn = len(plan.row0_columns)
        self.b0 = np.full(plan.size, -1, dtype=np.int64)  # register of each column's row-0 entry (-1: not drawn)
        self.b0[plan.row0_columns] = self.alloc(drawn) + np.arange(drawn)
        self.op(_ops.OP_NORMALS, 0, self.b0[plan.row0_columns[0]] if drawn else 0, drawn)
        self.grams = []
        for i, cols in enumerate(plan.components):
            if not plan.read_components[i]:
                self.grams.append(None)
                continue
            r = len(cols)
            g = self.alloc(r * r)
            self.grams.append(g)
            gram_only = plan.gram_only[i]  # Wishart(n), no row 0 (operand -1)
            dof = width if gram_only else width - 1
            rows = -1 if gram_only else self.pool(self.b0[cols])
            halves = plan.bipartite[i]
            if halves is not None and dof >= len(halves[0]):
                A, B = halves
                cols = np.asarray(cols)
                xi = self.alloc(len(A) * len(B) + len(A) * len(A))  # Ξ, then T
                self.op(_ops.OP_BIPARTITE, self.stream(1, i), self.stream(7, i), self.stream(2, i), dof,
                        len(A), len(B), self.pool(A), self.pool(B), -1 if gram_only else self.pool(self.b0[cols[A]]),
                        -1 if gram_only else self.pool(self.b0[cols[B]]), g, r, self.chi(dof, len(A)), xi)
            elif dof >= r:
                self.op(_ops.OP_WISHART, self.stream(1, i), self.stream(2, i), dof, r, rows, g,
                        self.chi(dof, r), self.alloc(r * r))
            else:
                self.op(_ops.OP_WISHART_Z, self.stream(1, i), dof, r, rows, g, self.alloc(dof * r))
        self.targets = targets
        for j, t in enumerate(targets):
            if isinstance(t, Scalar):
                self.op(_ops.OP_OUT_SCALAR, j, self.scalar(t))
            else:
                c, m = self.coefficients(t)
                self.op(_ops.OP_OUT_VECTOR, j, c, self.pool(self.b0[plan.cols(t)]), m)
        self.free_ops = []
        position = {int(c): f for f, c in enumerate(plan.free_columns)}
        for j, t in enumerate(targets):
            if isinstance(t, Vector):
                at = [p for p, c in enumerate(plan.cols(t)) if int(c) in position]
                if at:
                    self.free_ops.append([_ops.OP_WEIGHTS, j, self.coefficients(t)[0], self.pool(at),
                                          self.pool([position[int(plan.cols(t)[p])] for p in at]), len(at),
                                          self.pool(self.b0[plan.cols(t)[at]])] + [0] * (_ops.OP_FIELDS - 7))
        self.code = {moments: np.array(self.ops + (self.free_ops if moments else []),
                                       dtype=np.int64).reshape(-1, _ops.OP_FIELDS) for moments in (False, True)}
        self.int_pool = np.array(self.ints + [0], dtype=np.int64)
        self.float_pool = np.array(self.floats + [0.0])

    # ---- assembling
    def alloc(self, n: int) -> int:
        self.size += int(n)
        return self.size - int(n)

    def pool(self, values) -> int:
        self.ints.extend(int(v) for v in values)
        return len(self.ints) - len(values)

    def const(self, values) -> int:
        self.floats.extend(float(v) for v in values)
        return len(self.floats) - len(values)

    def stream(self, *key) -> int:
        self.keys.append(key)
        return len(self.keys) - 1

    def chi(self, dof: int, m: int) -> int:
        """Marsaglia–Tsang's constants b, c for χ²_{dof−i}, i < m (as _compiled._chi_constants)."""
        b = [(dof - i) / 2.0 - 1.0 / 3.0 for i in range(m)]
        return self.const(b + [1.0 / np.sqrt(9.0 * x) if x > 0.0 else 0.0 for x in b])

    def op(self, *fields) -> None:
        self.ops.append([int(f) for f in fields] + [0] * (_ops.OP_FIELDS - len(fields)))

    # ---- the operations of simulate_exact_block's step-by-step path
    def coefficients(self, v: Vector):
        """(register, length) of c_v on plan.cols(v)."""
        v = _linear_source(v)
        if v.index in self.coef:
            return self.coef[v.index]
        m = len(self.plan.cols(v))
        if isinstance(v, Input):
            c = self.alloc(m)
            self.op(_ops.OP_CONST, c, self.const(self.plan.factors[id(v.group)][v.position]), m)
        elif isinstance(v, MatMul):
            self.apply_matrix(v.matrix)
            return self.coef[v.index]
        elif isinstance(v, LinComb):
            terms = [(self.scalar(k) if isinstance(k, Scalar) else -1, self.const([k]) if not isinstance(k, Scalar)
                      else 0, self.coefficients(a), self.plan.within(v, a)) for k, a in zip(v.coeffs, v.args)]
            c = self.alloc(m)
            self.op(_ops.OP_ZERO, c, m)
            for w_reg, w_const, (src, n), at in terms:
                self.op(_ops.OP_AXPY, c, 1, src, n, self.pool(at), w_reg, w_const)
        else:
            raise _Unsupported
        self.coef[v.index] = (c, m)
        return self.coef[v.index]

    def apply_matrix(self, matrix: Matrix) -> None:
        plan = self.plan
        args = plan.args[matrix.index]
        key = (matrix.var, tuple(a.index for a in args))
        if key not in self.factors:
            used = plan.cols(*args)
            m, k = len(used), len(args)
            if m == 0:
                raise _Unsupported
            sources = [self.coefficients(a) for a in args]
            C = self.alloc(m * k)
            self.op(_ops.OP_ZERO, C, m * k)
            one = self.const([1.0])
            for j, (a, (src, n)) in enumerate(zip(args, sources)):
                self.op(_ops.OP_AXPY, C + j, k, src, n, self.pool(plan.within(args, a)), -1, one)
            component, local, _ = plan.local(args, args)
            L = self.alloc(k * k)
            self.op(_ops.OP_FACTOR, C, m, k, self.grams[component], len(plan.components[component]),
                    self.pool(local), self.const([matrix.var / self.width]), L, self.alloc(m * k))
            self.factors[key] = L
        L, k = self.factors[key], len(args)
        position = {a.index: j for j, a in enumerate(args)}
        for use in plan.uses[matrix.index]:
            self.coef[use.index] = (L + position[use.arg.index] * k, k)

    def scalar(self, s: Scalar) -> int:
        """The register holding s."""
        if s.index in self.scalars:
            return self.scalars[s.index]
        if isinstance(s, Dot):
            u, v = s.args
            out = self.alloc(1)
            if len(self.plan.cols(u)) == 0 or len(self.plan.cols(v)) == 0:
                self.op(_ops.OP_CONST, out, self.const([0.0]), 1)
            else:
                (cu, nu), (cv, nv) = self.coefficients(u), self.coefficients(v)
                component, lu, lv = self.plan.local(u, v)
                key = ("gemv", _linear_source(v).index, component, tuple(lu))
                if key not in self.scalars:  # G[lu, lv] c_v, shared by the dots of v with vectors on lu
                    t = self.alloc(nu)
                    self.op(_ops.OP_GEMV, self.grams[component], len(self.plan.components[component]),
                            self.pool(lu), nu, self.pool(lv), nv, cv, t)
                    self.scalars[key] = t
                self.op(_ops.OP_DOT, cu, self.scalars[key], nu, self.const([float(self.width) ** -s.exponent]), out)
        elif isinstance(s, SoftmaxEntry):
            key = ("softmax", id(s.group))
            if key not in self.scalars:
                scores = [self.scalar(p) for p in s.group.scores]
                self.scalars[key] = self.alloc(len(scores))
                self.op(_ops.OP_SOFTMAX, self.pool(scores), len(scores), self.scalars[key])
            out = self.scalars[key] + s.position
        else:
            raise _Unsupported
        self.scalars[s.index] = out
        return out

    def run(self, root, block: int, S: int, moments: bool):
        """out (S, k), and the targets' weights on the free columns (S, k, F) with their products with those
        columns' row 0 (S, k) (F = 0 unless moments)."""
        gens = tuple(stream(root, block, *key) for key in self.keys)
        F = len(self.plan.free_columns) if moments else 0
        return run_linear(gens, self.code[moments], self.int_pool, self.float_pool, max(self.size, 1), S,
                          len(self.targets), F)


def _linear_program(plan: ExactPlan, width: int, targets):
    """The plan's LinearProgram at this width, or None when the step-by-step path must run (cached)."""
    key = ("linear", width, tuple(t.index for t in targets))
    if key not in plan._cache:
        try:
            plan._cache[key] = LinearProgram(plan, width, targets)
        except _Unsupported:
            plan._cache[key] = None
    return plan._cache[key]


def simulate_exact_block(plan: ExactPlan, width: int, targets, root, block: int, count: int,
                         limit: bool = False, moments: bool = False):
    """`count` networks of block `block`: coordinate 0 of each vector target, the value of each scalar target.

    limit=True draws the n → ∞ law from the *same* random numbers (row 0 b₀ and Bartlett's below-diagonal
    normals Ξ): G/n → I and (G − nI)/sqrt(n) → Ξ + Ξᵀ, so 1/sqrt(n) dots of disjoint supports become c_uᵀ(Ξ+Ξᵀ)c_v
    and matrix row covariances σ² CᵀC. moments=True also returns the mean and covariance of the draws given
    everything but the row-0 entries of free columns (those no Gram reads), (S, k) and (S, k, k).
    """
    M, S = plan.size, count
    fused = None if limit else _linear_program(plan, width, targets)
    if fused is not None:
        out, weights, shift = fused.run(root, block, S, moments)
        if not moments:
            return out
        return out, out - shift, np.einsum("skf,slf->skl", weights, weights)
    if limit and plan.front:
        raise ProgramError("coupled limit draws do not cover a nonlinear front yet; use inputs with a Gaussian law")
    front, front_gram = {}, None
    if plan.layer is not None:  # streamed: only the front columns' row 0 and Gram
        front_row0, front_gram = plan.layer.sample(root, block, width, S)
    elif plan.front:
        front = _front_values(plan, width, root, block, S)
        if plan.front_columns:
            F = np.stack([front[idx] for _, idx in plan.front_columns], axis=2)
            front_row0, front_gram = F[:, 0, :], np.einsum("sni,snj->sij", F, F)
    b0 = np.zeros((S, M))  # row 0 of the basis, drawn where something reads it (zero elsewhere, never used)
    b0[:, plan.row0_columns] = standard_normals(stream(root, block, 0), np.empty((S, len(plan.row0_columns))))
    front_cols = {}  # basis column → its position among the front columns
    for j, (col, _) in enumerate(plan.front_columns):
        b0[:, col] = front_row0[:, j]
        front_cols[col] = j
    grams = []  # G = b₀b₀ᵀ + Wishart(n − 1) (Wishart(n) where b₀ is not read), kept within each component
    for i, cols in enumerate(plan.components):
        if not plan.read_components[i]:  # nothing reads this Gram
            grams.append(None)
            continue
        dof = width if plan.gram_only[i] else width - 1  # b₀ = 0 on gram-only components
        halves = plan.bipartite[i]
        if halves is not None and (limit or dof >= len(halves[0])):  # only G_AB is read
            A, B = halves
            grams.append(bipartite_gram(stream(root, block, 1, i), stream(root, block, 7, i), stream(root, block, 2, i),
                                        dof, A, B, np.ascontiguousarray(b0[:, cols]), limit))
            continue
        if limit:  # Ξ + Ξᵀ from the normals Bartlett puts below the diagonal
            r = len(cols)
            xi = np.zeros((S, r, r))
            below = np.tril_indices(r, -1)
            xi[:, below[0], below[1]] = standard_normals(stream(root, block, 1, i), np.empty((S, len(below[0]))))
            grams.append(xi + xi.transpose(0, 2, 1))
            continue
        if int(cols[0]) in front_cols:  # explicit front vectors: their Gram, exactly
            at = np.array([front_cols[int(c)] for c in cols])
            grams.append(front_gram[:, at[:, None], at[None, :]])
            continue
        grams.append(_wishart(stream(root, block, 1, i), stream(root, block, 2, i), dof, len(cols), S,
                              None if plan.gram_only[i] else np.ascontiguousarray(b0[:, cols])))
    # c_v with v = B c_v, stored on v's static support plan.cols(v) only: (S, |support|)
    coef: dict[int, np.ndarray] = {}
    values: dict = {}

    def coefficients(v: Vector) -> np.ndarray:
        """c_v on the columns plan.cols(v), (S, |support|)."""
        v = _linear_source(v)
        if v.index in coef:
            return coef[v.index]
        if ("front", v.index) in plan.columns:
            c = np.ones((S, 1))
        elif isinstance(v, Input):
            c = np.repeat(plan.factors[id(v.group)][v.position][None, :], S, axis=0)
        elif isinstance(v, MatMul):
            apply_matrix(v.matrix)
            return coef[v.index]
        else:
            c = np.zeros((S, len(plan.cols(v))))
            if isinstance(v, LinComb):
                for k, arg in zip(v.coeffs, v.args):
                    weight = scalar(k) if isinstance(k, Scalar) else np.full(1, float(k))
                    add_scaled_at(c, coefficients(arg), weight, plan.within(v, arg))
        coef[v.index] = c
        return c

    def full(v: Vector) -> np.ndarray:
        """c_v on all M basis columns, (S, M)."""
        c = np.zeros((S, M))
        c[:, plan.cols(v)] = coefficients(v)
        return c

    def bilinear(u: Vector, v: Vector) -> np.ndarray:
        """c_uᵀ G c_v per network, (S,), on the columns the two use (limit: c_uᵀ(Ξ+Ξᵀ)c_v)."""
        iu, iv = plan.cols(u), plan.cols(v)
        if len(iu) == 0 or len(iv) == 0:
            return np.zeros(S)
        component, lu, lv = plan.local(u, v)
        left, right = coefficients(u)[:, None, :], coefficients(v)[:, None, :]
        return sandwiches_at(left, grams[component], lu, lv, right)[0, 0]

    def dot(s: Dot) -> np.ndarray:
        if not limit:
            pair = plan.dot_pair(s)
            if pair is None:
                return bilinear(*s.args) / float(width) ** s.exponent
            Wu, Wv, i, j, u, v = pair
            key = ("dots", Wu.index, Wv.index)
            if key not in values:  # every (W_u a)·(W_v b) at once: L_u G L_vᵀ, kept (a, b, S)
                component, iu, iv = plan.local(u, v)
                values[key] = sandwiches_at(row_factor(Wu), grams[component], iu, iv, row_factor(Wv))
            return values[key][i, j] / float(width) ** s.exponent
        cu, cv = full(s.args[0]), full(s.args[1])
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
        used = plan.cols(*args)
        Cu = np.zeros((S, len(used), len(args)))
        for j, a in enumerate(args):
            Cu[:, plan.within(args, a), j] = coefficients(a)
        if limit:
            return _row_factor(matrix.var * np.einsum("smi,smj->sij", Cu, Cu))
        component, local, _ = plan.local(args, args)
        Ct = Cu.transpose(0, 2, 1)  # σ² CᵀGC/n is the sandwich Cᵀ G (Cᵀ)ᵀ; it comes network-last
        congruence = sandwiches_at(Ct, grams[component], local, local, Ct).transpose(2, 0, 1)
        return _row_factor(matrix.var / width * congruence)

    def row_factor(matrix: Matrix) -> np.ndarray:
        """linear_row_factor, shared by matrices of one variance applied to the same vectors (W_Q, W_K, W_V)."""
        key = ("row factor", matrix.var, tuple(a.index for a in plan.args[matrix.index]))
        if key not in values:
            values[key] = linear_row_factor(matrix)
        return values[key]

    def apply_matrix(matrix: Matrix) -> None:
        """All MatMuls by one matrix at once: W V = B_W Lᵀ with L Lᵀ the row covariance of W V."""
        args = plan.args[matrix.index]
        if matrix.shape[1] != WIDTH:  # from a fixed dimension: the Gram of the explicit rows, at any width
            L = _explicit_row_factor(matrix, np.stack([small(a) for a in args], axis=2))
        else:
            L = row_factor(matrix)
        position = {a.index: j for j, a in enumerate(args)}
        for use in plan.uses[matrix.index]:
            coef[use.index] = L[:, position[use.arg.index], :]

    def small(v: Vector) -> np.ndarray:
        """The N explicit rows (S, N) of a fixed-dimension vector."""
        if v.index in front:
            return front[v.index]
        if v.index in values:
            return values[v.index]
        if isinstance(v, MatMul):  # rows iid N(0, σ² CᵀGC/n) (limit: σ² CᵀC), drawn for all uses at once
            _draw_uses(plan, v.matrix, row_factor(v.matrix), stream(root, block, 5, v.matrix.index), v.dim,
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
        elif isinstance(s, SoftmaxEntry):  # the entries of one softmax at once
            key = ("softmax", id(s.group))
            if key not in values:
                scores = s.group.scores
                stacked = np.empty((len(scores), S))
                for i, p in enumerate(scores):
                    stacked[i] = scalar(p)
                values[key] = softmax_columns(stacked)
            value = values[key][s.position]
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
            out[:, j] = np.einsum("sm,sm->s", b0[:, plan.cols(t)], coefficients(t))
    if not moments:
        return out
    # given everything else, the free columns' row-0 entries are iid N(0, 1): a Gaussian with these moments
    free = plan.free_columns
    weights = np.zeros((S, len(targets), len(free)))
    for j, t in enumerate(targets):
        if isinstance(t, Vector) and t.dim == WIDTH:
            weights[:, j] = full(t)[:, free]
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
    from .finite_width import checked_arguments, run_blocks_in_parts

    width, targets, size, root, _ = checked_arguments("simulate_coupled", program, width, variables, size, seed)
    plan = ExactPlan(program, targets)
    if plan.front:
        raise ProgramError("simulate_coupled: coupled limit draws do not cover a nonlinear front yet "
                           f"({next(n.name for n in plan.needed if n.index in plan.front)} is computed through one)")
    k = len(targets)

    def work(b):  # the finite and the limit draws of one block, from the same streams
        return (*simulate_exact_block(plan, width, targets, root, b[0], b[2], moments=True),
                *simulate_exact_block(plan, width, targets, root, b[0], b[2], limit=True, moments=True))

    parts = run_blocks_in_parts(work, size, plan.block_size(width), [(k,), (k,), (k, k)] * 2, None)
    return CoupledDraws(finite=parts[0], finite_mean=parts[1], finite_cov=parts[2],
                        limit=parts[3], limit_mean=parts[4], limit_cov=parts[5])


class CoupledDraws:
    """Paired finite-width and limit draws, with the conditional Gaussian moments of each."""

    def __init__(self, finite, limit, finite_mean, finite_cov, limit_mean, limit_cov):
        self.finite, self.limit = finite, limit
        self.finite_mean, self.finite_cov = finite_mean, finite_cov
        self.limit_mean, self.limit_cov = limit_mean, limit_cov

    def __repr__(self) -> str:
        return f"<CoupledDraws: {self.finite.shape[0]} pairs of {self.finite.shape[1]} variables>"
