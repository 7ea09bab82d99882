"""Nonlinear fronts of exact sampling: one streamed layer (`FrontLayer`) or explicit O(n) vectors per network.

Every function takes the `plan.ExactPlan` that builds its front from this module (so this module does not import it)."""
from __future__ import annotations

import numpy as np

from ...compiled.front import front_layer_grams, unclipped_layer_grams
from ...compiled.linalg import semidefinite_cholesky_rows
from ...compiled.wishart import bartlett_factor, bartlett_wishart, standard_normals
from ...ir.nonlinearities import CODE_CLIP, CODE_IDENTITY, CODE_RELU
from ...ir.program import WIDTH, Input, MatMul, Matrix, Node
from ...ir.semantics import derived_value
from ...random import stream

STREAMED_CODES = (CODE_IDENTITY, CODE_RELU, CODE_CLIP)  # what compiled.front.front_layer_grams applies
EXPLICIT_ROWS = 1 << 27  # floats of the explicit rows FrontLayer._from_gram may draw for one network (1 GiB)


def _phi_code(phi):
    """(code, bound) of a nonlinearity a streamed front layer applies itself: identity, relu, clip(c); else None."""
    if phi.code in STREAMED_CODES:
        return phi.code, phi.parameter
    return None


class FrontLayer:
    """A front of one layer: columns x = φ(W a), W (n×n) applied to front inputs a, φ identity, relu or clip.

    Only the inputs' Gram matters: stacked, the front inputs are X = B L₀ᵀ, so XᵀX = L₀ (BᵀB) L₀ᵀ with
    BᵀB ~ Wishart(n, I) (Bartlett). Given it, the rows of each W applied to its arguments A X are iid
    N(0, σ² A XᵀX Aᵀ/n) = L z, independently across matrices (README, *Exact finite-width sampling*); each network
    streams its n rows through φ, keeping only the columns' Gram and row 0 (O(n) time, no n-vector in memory)."""

    def __init__(self, plan, inputs: list[Input], matmuls: dict[int, MatMul]):
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
            code, bound = (CODE_IDENTITY, 0.0) if isinstance(node, MatMul) else _phi_code(node.phi)
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
        explicit rows only for the networks where a clip could act. A function of the width only. Widths whose
        explicit rows would exceed EXPLICIT_ROWS stream too: memory stays bounded however rare such a network is."""
        clipped = self.col_phi == CODE_CLIP
        return bool(np.any(self.col_phi == CODE_RELU) or not np.any(clipped) or width - 1 < self.draws
                    or (width - 1) * self.draws > EXPLICIT_ROWS
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
        clipped = self.col_phi == CODE_CLIP
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


def _draw_uses(plan, matrix: Matrix, L: np.ndarray, rng, rows: int, values: dict) -> None:
    """W V = Z Lᵀ with Z (S, rows, k) standard normal: the explicit rows of every MatMul by W, into `values`."""
    args = plan.args[matrix.index]
    drawn = standard_normals(rng, np.empty((L.shape[0], rows, len(args)))) @ L.transpose(0, 2, 1)
    position = {a.index: j for j, a in enumerate(args)}
    for use in plan.uses[matrix.index]:
        values[use.index] = drawn[:, :, position[use.arg.index]]


def _front_values(plan, width: int, root, block: int, S: int) -> dict:
    """The explicit front of `S` networks: vectors (S, n), scalars (S,)."""
    front = _Front(plan, width, root, block, S)
    for node in plan.needed:
        if node.index in plan.front:
            front.value(node)
    return front.values


class _Front:
    """The explicit front's values, each node computed once (recursively, from its parents).

    An object rather than a recursive closure: a closure that calls itself holds its own cell, a reference cycle
    that would keep the block's (S, n) front vectors alive until the cycle collector runs."""

    def __init__(self, plan, width: int, root, block: int, S: int):
        self.plan, self.width, self.root, self.block, self.S = plan, width, root, block, S
        self.values: dict = {}

    def value(self, node: Node):
        plan, values, S = self.plan, self.values, self.S
        if node.index in values:
            return values[node.index]
        if isinstance(node, Input):
            factor = plan.factors[id(node.group)]
            members = [n for n in plan.needed if isinstance(n, Input) and n.group is node.group]
            z = standard_normals(stream(self.root, self.block, 3, members[0].index),
                                 np.empty((S, self.width, factor.shape[1])))
            drawn = z @ factor.T
            for m in members:
                values[m.index] = drawn[:, :, m.position]
            return values[node.index]
        if isinstance(node, MatMul):  # W V = Z Lᵀ, L Lᵀ = σ² VᵀV/n_in: O(n k²), no n×n matrix
            V = np.stack([self.value(a) for a in plan.args[node.matrix.index]], axis=2)
            _draw_uses(plan, node.matrix, _explicit_row_factor(node.matrix, V),
                       stream(self.root, self.block, 4, node.matrix.index),
                       self.width if node.dim == WIDTH else node.dim, values)
            return values[node.index]
        out = derived_value(node, self.value, self.width, values)
        values[node.index] = out
        return out
