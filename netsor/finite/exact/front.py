"""Nonlinear fronts of exact sampling: one streamed layer (`FrontLayer`) or explicit O(n) vectors per network.

Every function takes the `plan.ExactPlan` that builds its front from this module (so this module does not import it)."""
from __future__ import annotations

import math

import numpy as np
from scipy.special import betaln

from ...compiled.front import front_layer_grams, layer_grams_from_bartlett, layer_row0
from ...compiled.linalg import semidefinite_cholesky_rows
from ...compiled.wishart import bartlett_factor, bartlett_wishart, standard_normals
from ...ir.nonlinearities import CODE_CLIP, CODE_IDENTITY, CODE_RELU
from ...ir.program import WIDTH, Input, MatMul, Matrix, Node
from ...ir.semantics import derived_value
from ...random import stream
from .antithetic import antithetic_factor

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
        self._streams: dict[int, bool] = {}
        kmax = int(self.ranks.max())
        # the n → ∞ row factors: XᵀX/n → I in the inputs' basis, so L_j L_jᵀ = σ_j² A_j A_jᵀ (one for every network)
        self.limit_factors = np.zeros((1, len(self.matrices), kmax, kmax))
        for j, (lift, var) in enumerate(zip(self.lifts, self.var)):
            k = lift.shape[0]
            self.limit_factors[0, j, :k, :k] = _row_factor(var * (lift @ lift.T)[None])[0]

    def streams(self, width: int) -> bool:
        """Whether a network's n rows are streamed (O(n)), or drawn from their Gram (O(1)): the latter where no
        column is relu and the clip bounds are rarely reached — the bound `_log_clip_bound` on the probability
        that any of coordinates 1..n−1 clips, at a pessimistic column norm d·E[u²](1 + 8/sqrt(d)), is below
        GRAM_CLIP_BOUND (each network then checks its own bound and corrects exactly, `_from_gram`). Widths whose
        explicit rows would exceed EXPLICIT_ROWS stream too: memory stays bounded however rare such a network is.
        A function of the width only (kept per width: every block asks)."""
        known = self._streams.get(width)
        if known is None:
            known = self._streams[width] = self._decide_streams(width)
        return known

    def _decide_streams(self, width: int) -> bool:
        d = width - 1
        clipped = self.col_phi == CODE_CLIP
        if np.any(self.col_phi == CODE_RELU) or not np.any(clipped) or d < max(self.draws, 4) or \
                d * self.draws > EXPLICIT_ROWS:
            return True
        norms2 = d * self.col_var[clipped] * (1 + 8 / np.sqrt(d))
        return bool(_log_clip_bound(norms2[None], self.col_bound[clipped] ** 2, d)[0] > math.log(GRAM_CLIP_BOUND))

    def row0(self, root, block: int, factors: np.ndarray, S: int) -> np.ndarray:
        """Coordinate 0 of the front columns, φ(L z₀), from the block's own stream of z₀ (S, D): the normals the
        finite draw and its coupled limit (factors `limit_factors`) share."""
        z0 = standard_normals(stream(root, block, 6, 3), np.empty((S, self.draws)))
        row0 = np.empty((S, len(self.col_matrix)))
        layer_row0(factors, self.offsets, self.col_matrix, self.col_arg, self.col_phi, self.col_bound, z0, row0)
        return row0

    def sample(self, root, block: int, width: int, S: int, limit: bool = False, twin: bool = False):
        """Row 0 (S, m) and Gram (S, m, m) of the front columns, in the order of plan.front_columns.

        limit=True: row 0 of the n → ∞ front, φ(L_∞ z₀) from the same z₀, and no Gram (its n → ∞ form is the
        constant n·E[φ φᵀ], `ExactPlan.limit_metric`). twin=True: the antithetic twin of the finite draw (its
        Bartlett factors' twins, `antithetic_factor`; a streamed front is drawn again as it is)."""
        if limit:
            return self.row0(root, block, self.limit_factors, S), None
        gram_in = (_twin_wishart if twin else _wishart)(stream(root, block, 6, 0), stream(root, block, 6, 1), width,
                                                         self.rank, S)
        kmax = int(self.ranks.max())
        factors = np.zeros((S, len(self.matrices), kmax, kmax))
        for j, (lift, var) in enumerate(zip(self.lifts, self.var)):
            k = lift.shape[0]
            factors[:, j, :k, :k] = _row_factor(var / width * (lift @ gram_in @ lift.T))
        row0 = self.row0(root, block, factors, S)
        gram = np.empty((S, len(self.col_matrix), len(self.col_matrix)))
        if self.streams(width):
            front_layer_grams(stream(root, block, 6, 2), width, factors, self.ranks, self.col_matrix, self.col_arg,
                              self.col_phi, self.col_bound, row0, gram)
        else:
            self._from_gram(root, block, width, factors, row0, gram, twin)
        return row0, gram

    def _from_gram(self, root, block: int, width: int, factors: np.ndarray, row0: np.ndarray, gram: np.ndarray,
                   twin: bool = False):
        """The Gram of coordinates 1..n−1 from Bartlett's factor alone, corrected exactly where a clip could act.

        Stack the normals of all matrices, Z′ ((n − 1) × D), so column c is u_c = Z′ e_c (e_c: L_j's row for its
        argument, placed at matrix j's offset); Z′ᵀZ′ = T Tᵀ ~ Wishart(n − 1) (Bartlett) gives the unclipped Gram.
        Given T, Z′ = Q Tᵀ with Q Haar on the Stiefel manifold, so u_c is uniform on the sphere of radius
        r_c = ‖Tᵀe_c‖ and the event E_αc (coordinate α of u_c clips) has probability P(ω₁² > ε_c²), ε_c = b_c/r_c,
        ω uniform on S^{n−2}. With B a bound on Σ_αc P(E_αc) (`_log_clip_bound`):
        - B ≥ ½: the rows are drawn given T (Z′ = Q Tᵀ) and clipped explicitly (O(n));
        - else the network enters a correction with probability B (`bernoulli_exp`) — Karp–Luby–Madras over the
          union of the E_αc (`_clip_correction`): it returns clipped rows with probability exactly
          P(any clip | T)/B, distributed as the rows given T and a clip — and keeps the unclipped Gram otherwise.
        Either way the Gram is exactly the clipped front's (README, *Exact finite-width sampling*)."""
        S, m, D = gram.shape[0], gram.shape[1], self.draws
        E = np.zeros((S, m, D))
        for c, (j, a) in enumerate(zip(self.col_matrix, self.col_arg)):
            k = self.ranks[j]
            E[:, c, self.offsets[j]:self.offsets[j] + k] = factors[:, j, a, :k]
        T = bartlett_factor(stream(root, block, 6, 4), stream(root, block, 6, 5), width - 1, D, S)
        if twin:
            T = antithetic_factor(T, width - 1)
        norms2 = np.empty((S, m))
        layer_grams_from_bartlett(E, T, row0, gram, norms2)
        clipped = self.col_phi == CODE_CLIP
        if not clipped.any():
            return
        d = width - 1
        bound2 = self.col_bound[clipped] ** 2
        log_bound = _log_clip_bound(norms2[:, clipped], bound2, d)
        rng = stream(root, block, 6, 6)
        explicit = np.flatnonzero(log_bound >= math.log(0.5))
        maybe = np.flatnonzero(log_bound < math.log(0.5))
        enter = maybe[bernoulli_exp(stream(root, block, 6, 7), log_bound[maybe])]
        for s in np.concatenate([explicit, enter]):
            if log_bound[s] >= math.log(0.5):
                Z = _rows_given_factor(rng, T[s], d)
            else:
                Z = _clip_correction(rng, T[s], E[s][clipped], norms2[s, clipped], bound2, d)
                if Z is None:
                    continue  # the unclipped Gram stands
            X = Z @ E[s].T
            X[:, clipped] = np.clip(X[:, clipped], -self.col_bound[clipped], self.col_bound[clipped])
            gram[s] = np.outer(row0[s], row0[s]) + X.T @ X


GRAM_CLIP_BOUND = 1e-3  # widths whose typical clip bound exceeds this stream their rows instead


def _log_per_coordinate(norms2: np.ndarray, bound2: np.ndarray, d: int) -> np.ndarray:
    """log b_c, b_c = ∫ e over β > ε² of the envelope e(β) = ε⁻¹ e^{−κβ} / B(½, (d−1)/2) ≥ the density
    β^{−½}(1 − β)^κ / B(½, (d−1)/2) of β = ω₁² (ω uniform on S^{d−1}, κ = (d − 3)/2, ε² = b²/r²):
    log b_c = −log ε − κε² − log κ − log B(½, (d−1)/2) ≥ log P(ω₁² > ε²); −inf where r ≤ b (no clip can act)."""
    kappa = (d - 3) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        eps2 = bound2 / norms2
        out = -0.5 * np.log(eps2) - kappa * eps2 - math.log(kappa) - betaln(0.5, (d - 1) / 2)
    return np.where(eps2 < 1, out, -np.inf)


def _log_clip_bound(norms2: np.ndarray, bound2: np.ndarray, d: int) -> np.ndarray:
    """log B, B = d Σ_c b_c ≥ P(some coordinate 1..d of a clipped column exceeds its bound | the Gram), per
    network: the union bound over coordinates and columns (norms2 (S, c) the squared column norms over the d
    coordinates, bound2 (c,) the squared bounds; −inf where no column can clip)."""
    logs = _log_per_coordinate(norms2, bound2[None], d)
    top = logs.max(axis=1)
    safe = np.where(np.isfinite(top), top, 0.0)  # rows where no column can clip stay −inf
    with np.errstate(divide="ignore"):
        return math.log(d) + safe + np.log(np.exp(logs - safe[:, None]).sum(axis=1))


def bernoulli_exp(rng, log_p: np.ndarray) -> np.ndarray:
    """Independent coins with P(True) = exp(log_p) (log_p ≤ 0), exact even far below the smallest double: e^{−t}
    as ⌊t⌋ coins of probability e^{−1} and one of e^{−(t − ⌊t⌋)} (the expected number of uniforms is < 1.6)."""
    log_p = np.asarray(log_p, dtype=float).copy()
    alive = np.isfinite(log_p)
    out = np.zeros(len(log_p), dtype=bool)
    while alive.any():
        at = np.flatnonzero(alive)
        u = rng.random(len(at))
        whole = log_p[at] < -1
        alive[at[whole & (u >= math.exp(-1))]] = False  # a factor e^{−1} failed
        log_p[at[whole]] += 1
        last = at[~whole]
        out[last] = u[~whole] < np.exp(log_p[last])
        alive[last] = False
    return out


def _rows_given_factor(rng, T: np.ndarray, d: int) -> np.ndarray:
    """Z′ = Q Tᵀ (d × D), Q Haar on the Stiefel manifold (QR of a Gaussian matrix, signs fixed): the rows given
    their Gram T Tᵀ."""
    Q, R = np.linalg.qr(standard_normals(rng, np.empty((d, T.shape[0]))))
    return (Q * np.sign(np.diag(R))) @ T.T


def _clip_correction(rng, T: np.ndarray, E: np.ndarray, norms2: np.ndarray, bound2: np.ndarray, d: int):
    """Karp–Luby–Madras for the union of E_αc (coordinate α of clipped column c clips), given Bartlett's T: returns
    rows Z′ (d × D) with probability P(∪ E_αc | T)/B, distributed as the rows given T and the union, else None.

    Pick (α, c) with probability b_c/Σb (α uniform: the rows are exchangeable, so α is the first); draw β = ω_α²
    from the envelope e ∝ e^{−κβ} on β > ε_c² and keep it with probability f/e (so (α, c) is kept with probability
    P(E_αc)/b_c and β has its law given E_αc); put ω_α = ±sqrt(β) into the Haar frame by a reflection (the frame
    given Q t̂ = v is the reflected frame given v′); accept with probability 1/N, N the number of (α, c) that clip."""
    log_b = _log_per_coordinate(norms2, bound2, d)
    weights = np.exp(log_b - log_b.max())
    c = rng.choice(len(log_b), p=weights / weights.sum())
    kappa = (d - 3) / 2
    eps2 = bound2[c] / norms2[c]
    beta = eps2 + rng.standard_exponential() / kappa
    if beta >= 1 or math.log(rng.random()) >= 0.5 * math.log(eps2 / beta) + kappa * (math.log1p(-beta) + beta):
        return None
    Q, R = np.linalg.qr(standard_normals(rng, np.empty((d, T.shape[0]))))
    Q *= np.sign(np.diag(R))
    t = T.T @ E[c]
    t /= np.linalg.norm(t)  # the column's direction in the frame's coordinates: u_c = r_c Q t
    v = Q @ t
    target = v.copy()
    rest = np.linalg.norm(v[1:])
    target[0] = math.sqrt(beta) * (1.0 if rng.random() < 0.5 else -1.0)
    target[1:] *= math.sqrt(1 - beta) / rest
    h = v - target
    norm_h = np.linalg.norm(h)
    if norm_h > 0:
        h /= norm_h
        Q -= 2 * np.outer(h, h @ Q)  # the reflection taking v to target: Q t = target
    Z = Q @ T.T
    U = Z @ E.T
    count = int(np.count_nonzero(U ** 2 > bound2[None, :]))
    return Z if rng.random() * count < 1 else None


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


def _twin_wishart(rng_normal, rng_chi, dof: int, M: int, S: int, rows=None, flip_below: bool = True) -> np.ndarray:
    """The antithetic twin of `_wishart`'s draw from the same streams (`antithetic_factor`: Bartlett's normals
    negated where `flip_below`, its χ's reflected): Wishart(dof, I_M) exactly, with the first draw's first-order
    fluctuation negated. Where dof < M (explicit rows ZᵀZ, even in Z) the twin is the draw itself."""
    if dof < M:
        return _wishart(rng_normal, rng_chi, dof, M, S, rows)
    T = antithetic_factor(bartlett_factor(rng_normal, rng_chi, dof, M, S), dof, flip_below)
    out = np.einsum("sik,sjk->sij", T, T)
    if rows is not None:
        out += rows[:, :, None] * rows[:, None, :]
    return out


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
