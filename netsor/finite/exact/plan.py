"""Exact finite-width sampling at a cost that does not depend on the width (README, *Exact finite-width sampling*).

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
nonlinearity or moment) is computed explicitly at O(n) per network — a MatMul of explicit vectors V is drawn as
Z Lᵀ with L Lᵀ = σ² VᵀV/n, never as an n×n matrix — and the explicit vectors the linear part uses become basis columns
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

from ...errors import ProgramError
from ...ir.program import WIDTH, Dot, Input, MatMul, Matrix, Moment, Node, Nonlin, Program, Vector
from ...limit.quadrature import gaussian_factor
from .front import FrontLayer, _phi_code

EXACT_BLOCK = 1 << 12  # networks per random stream (fewer when a front holds n-vectors)
FRONT_FLOATS = 1 << 22  # bound on the explicit front's floats per block
LAYER_DRAWS = 1 << 23  # bound on the normals a streamed one-layer front draws per block


def _linear_source(node: Node) -> Node:
    """Identity nonlinearities pass through."""
    while isinstance(node, Nonlin) and node.phi.linear:
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
            shared = front_groups & linear_groups
            _refuse(next(n for n in self.needed if isinstance(n, Input) and id(n.group) in shared),
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

    def sqrt_read_components(self) -> frozenset:
        """The Gram components a 1/sqrt(n) dot (outside the front) reads in full: their Bartlett normals are an
        order-one part of the limit (Ξ + Ξᵀ), not only a fluctuation (bipartite blocks keep Ξ apart)."""
        if "sqrt read" not in self._cache:
            read = set()
            for node in self.needed:
                if isinstance(node, Dot) and node.index not in self.front and node.args[0].dim == WIDTH and \
                        node.exponent == 0.5:
                    cols = self.support(node.args[0]) | self.support(node.args[1])
                    if cols:
                        read.add(self.component_of[min(cols)][0])
            self._cache["sqrt read"] = frozenset(read)
        return self._cache["sqrt read"]

    def limit_metric(self):
        """lim G/n of the basis (M, M) when it has front columns: I on Gaussian columns, and on the front columns
        their limit kernel E[Z^{x_a} Z^{x_b}] as `netsor.limit` derives it (the one copy of the limit's rule); None
        without a front (then lim G/n = I)."""
        if "metric" not in self._cache:
            metric = None
            if self.front_columns:
                from ...limit.law import Law  # the limit semantics, needed only by coupled limit draws
                nodes = {n.index: n for n in self.needed}
                cols = [c for c, _ in self.front_columns]
                metric = np.eye(self.size)
                metric[np.ix_(cols, cols)] = Law(self.program).kernel([nodes[i] for _, i in self.front_columns])
            self._cache["metric"] = metric
        return self._cache["metric"]

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
        seeds = [n for n in self.needed if ((isinstance(n, Nonlin) and not n.phi.linear) and n.dim == WIDTH)
                 or (isinstance(n, Moment) and n.args[0].dim == WIDTH)]
        return {n.index for n in self.program.ancestors(seeds) if not isinstance(n, Matrix)}

    @staticmethod
    def _check(node: Node) -> None:
        if isinstance(node, Matrix) and WIDTH not in node.shape:
            _refuse(node, "a matrix between two fixed dimensions is not reduced")
        if isinstance(node, Input) and node.dim != WIDTH:
            _refuse(node, "inputs of a fixed dimension are not reduced")

    def network_floats(self, width: int) -> int:
        """A bound on the floats one network holds: its explicit front vectors (a streamed layer holds O(1))."""
        if self.layer is not None:
            return 0
        return width * sum(1 for n in self.needed if n.index in self.front and isinstance(n, Vector))

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


def reducible(program: Program, targets) -> bool:
    try:
        ExactPlan(program, targets)
        return True
    except ProgramError:
        return False


