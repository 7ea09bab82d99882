"""One block of exact finite-width networks (or of coupled limit draws) from Grams and row 0."""
from __future__ import annotations

from functools import partial

import numpy as np

from ...compiled.linalg import softmax_columns
from ...compiled.linear import add_scaled_at, bipartite_gram, sandwiches_at
from ...compiled.wishart import bartlett_factor, standard_normals
from ...errors import ProgramError
from ...ir.program import WIDTH, Dot, Input, LinComb, MatMul, Matrix, Moment, Scalar, SoftmaxEntry, Vector
from ...ir.semantics import derived_value, scalar_function_value
from ...random import stream
from .antithetic import antithetic_factor
from .front import _draw_uses, _explicit_row_factor, _front_values, _row_factor, _twin_wishart, _wishart
from .linear import _linear_program
from .plan import ExactPlan, _linear_source


def simulate_exact_block(plan: ExactPlan, width: int, targets, root, block: int, count: int,
                         limit: bool = False, moments: bool = False, twin: bool = False):
    """`count` networks of block `block`: coordinate 0 of each vector target, the value of each scalar target.

    limit=True draws the n → ∞ law from the *same* random numbers (row 0 b₀ and Bartlett's below-diagonal
    normals Ξ): G/n → I and (G − nI)/sqrt(n) → Ξ + Ξᵀ, so 1/sqrt(n) dots of disjoint supports become c_uᵀ(Ξ+Ξᵀ)c_v
    and matrix row covariances σ² CᵀC. moments=True also returns the mean and covariance of the draws given
    everything but the row-0 entries of free columns (those no Gram reads), (S, k) and (S, k, k).
    twin=True draws the antithetic twin of the finite draw (README, *Coupled draws*): the same streams, every
    Bartlett factor replaced by its twin (`antithetic_factor`) — exactly the finite law again, with the Grams'
    first-order fluctuations negated. Bartlett normals that also drive an order-one limit quantity (those of a
    full Gram that a 1/sqrt(n) dot reads) are kept; a bipartite block's Ξ is kept, its factor T twinned.
    """
    M, S = plan.size, count
    fused = None if limit or twin else _linear_program(plan, width, targets)
    if fused is not None:
        out, weights, shift = fused.run(root, block, S, moments)
        if not moments:
            return out
        return out, out - shift, np.einsum("skf,slf->skl", weights, weights)
    if limit and plan.front and plan.layer is None:
        raise ProgramError("coupled limit draws cover a nonlinear front of one layer (φ(W x) of inputs, φ relu or "
                           "clip) only; this program's front is deeper")
    front, front_gram = {}, None
    if plan.layer is not None:  # streamed: only the front columns' row 0 and Gram (limit: no Gram, the metric)
        front_row0, front_gram = plan.layer.sample(root, block, width, S, limit=limit, twin=twin)
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
        if int(cols[0]) in front_cols:  # explicit front vectors: their Gram, exactly (limit: the metric n·E[φφᵀ])
            at = np.array([front_cols[int(c)] for c in cols])
            grams.append(None if limit else front_gram[:, at[:, None], at[None, :]])
            continue
        dof = width if plan.gram_only[i] else width - 1  # b₀ = 0 on gram-only components
        halves = plan.bipartite[i]
        if halves is not None and (limit or dof >= len(halves[0])):  # only G_AB is read
            A, B = halves
            if twin:  # G_AB = b_A b_Bᵀ + T′Ξ: bipartite_gram's Ξ and T from the same streams, T twinned
                xi = standard_normals(stream(root, block, 1, i), np.empty((S, len(A), len(B))))
                T = antithetic_factor(bartlett_factor(stream(root, block, 7, i), stream(root, block, 2, i), dof,
                                                      len(A), S), dof)
                rows = b0[:, cols]
                G = np.zeros((S, len(cols), len(cols)))
                G[:, A[:, None], B[None, :]] = rows[:, A, None] * rows[:, None, B] + T @ xi
                G[:, B[:, None], A[None, :]] = G[:, A[:, None], B[None, :]].transpose(0, 2, 1)
                grams.append(G)
                continue
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
        draw = partial(_twin_wishart, flip_below=i not in plan.sqrt_read_components()) if twin else _wishart
        grams.append(draw(stream(root, block, 1, i), stream(root, block, 2, i), dof, len(cols), S,
                          None if plan.gram_only[i] else np.ascontiguousarray(b0[:, cols])))
    return outputs_given_grams(plan, width, targets, root, block, S, limit, moments, b0, grams, front)


def outputs_given_grams(plan: ExactPlan, width, targets, root, block: int, S: int, limit: bool, moments: bool,
                        b0: np.ndarray, grams: list, front: dict | None = None):
    """The targets of `S` networks given their basis row 0 `b0` (S, M), the Gram of each component (`grams`, as
    `simulate_exact_block` draws them) and the explicit front values: the one evaluation of a reduced program,
    shared by the sampler and the finite-width correction (`netsor.finite.correction`, which passes Grams of its
    own at non-integer pseudo-widths). Returns out, or (out, mean, cov) with moments (see simulate_exact_block)."""
    steps = _Steps(plan, width, root, block, S, limit, {} if front is None else front, grams)
    out = np.empty((S, len(targets)))
    for j, t in enumerate(targets):
        if isinstance(t, Scalar):
            out[:, j] = steps.scalar(t)
        elif t.dim != WIDTH:
            out[:, j] = steps.small(t)[:, 0]
        else:
            out[:, j] = np.einsum("sm,sm->s", b0[:, plan.cols(t)], steps.coefficients(t))
    if not moments:
        return out
    # given everything else, the free columns' row-0 entries are iid N(0, 1): a Gaussian with these moments
    free = plan.free_columns
    weights = np.zeros((S, len(targets), len(free)))
    for j, t in enumerate(targets):
        if isinstance(t, Vector) and t.dim == WIDTH:
            weights[:, j] = steps.full(t)[:, free]
    mean = out - np.einsum("skf,sf->sk", weights, b0[:, free])
    return out, mean, np.einsum("skf,slf->skl", weights, weights)


class _Steps:
    """The step-by-step path of one block: coefficients c_v (v = B c_v) and scalar values, each computed once.

    An object, not closures nested in simulate_exact_block: recursive closures reference their own cells, a
    reference cycle that would keep every block's arrays (coefficients, Grams, front values) alive until the
    cycle collector runs, so memory grew with the number of blocks. Nothing here refers back to the object."""

    def __init__(self, plan: ExactPlan, width: int, root, block: int, S: int, limit: bool, front: dict,
                 grams: list):
        self.plan, self.width, self.root, self.block, self.S, self.limit = plan, width, root, block, S, limit
        self.front, self.grams = front, grams
        self.coef: dict[int, np.ndarray] = {}  # c_v stored on v's static support plan.cols(v) only: (S, |support|)
        self.values: dict = {}

    def coefficients(self, v: Vector) -> np.ndarray:
        """c_v on the columns plan.cols(v), (S, |support|)."""
        plan, S = self.plan, self.S
        v = _linear_source(v)
        if v.index in self.coef:
            return self.coef[v.index]
        if ("front", v.index) in plan.columns:
            c = np.ones((S, 1))
        elif isinstance(v, Input):
            c = np.repeat(plan.factors[id(v.group)][v.position][None, :], S, axis=0)
        elif isinstance(v, MatMul):
            self.apply_matrix(v.matrix)
            return self.coef[v.index]
        else:
            c = np.zeros((S, len(plan.cols(v))))
            if isinstance(v, LinComb):
                for k, arg in zip(v.coeffs, v.args):
                    weight = self.scalar(k) if isinstance(k, Scalar) else np.full(1, float(k))
                    add_scaled_at(c, self.coefficients(arg), weight, plan.within(v, arg))
        self.coef[v.index] = c
        return c

    def full(self, v: Vector) -> np.ndarray:
        """c_v on all M basis columns, (S, M)."""
        c = np.zeros((self.S, self.plan.size))
        c[:, self.plan.cols(v)] = self.coefficients(v)
        return c

    def bilinear(self, u: Vector, v: Vector) -> np.ndarray:
        """c_uᵀ G c_v per network, (S,), on the columns the two use (limit: c_uᵀ(Ξ+Ξᵀ)c_v)."""
        iu, iv = self.plan.cols(u), self.plan.cols(v)
        if len(iu) == 0 or len(iv) == 0:
            return np.zeros(self.S)
        component, lu, lv = self.plan.local(u, v)
        left, right = self.coefficients(u)[:, None, :], self.coefficients(v)[:, None, :]
        return sandwiches_at(left, self.grams[component], lu, lv, right)[0, 0]

    def dot(self, s: Dot) -> np.ndarray:
        plan, width, values = self.plan, self.width, self.values
        if not self.limit:
            pair = plan.dot_pair(s)
            if pair is None:
                return self.bilinear(*s.args) / float(width) ** s.exponent
            Wu, Wv, i, j, u, v = pair
            key = ("dots", Wu.index, Wv.index)
            if key not in values:  # every (W_u a)·(W_v b) at once: L_u G L_vᵀ, kept (a, b, S)
                component, iu, iv = plan.local(u, v)
                values[key] = sandwiches_at(self.row_factor(Wu), self.grams[component], iu, iv, self.row_factor(Wv))
            return values[key][i, j] / float(width) ** s.exponent
        u, v = s.args
        inner = self.order_n(u, v)  # the order-n part of G
        if s.exponent == 1.0:
            return inner
        if np.any(np.abs(inner) > 1e-9 * np.sqrt(self.order_n(u, u) * self.order_n(v, v))):
            raise ProgramError(f"{s.name} := {s.definition()}: E[Z^{u.name} Z^{v.name}] ≠ 0, so the "
                               f"dot diverges as n → ∞ and has no coupled limit")
        if s.exponent != 0.5:
            return np.zeros(self.S)
        iu, iv = np.intersect1d(plan.cols(u), plan.cols(v), return_indices=True)[1:]
        if np.any(self.coefficients(u)[:, iu] * self.coefficients(v)[:, iv] != 0):
            # (G_ii − n)/sqrt(n) → N(0, 2) from χ², which the coupled limit does not draw (Ξ + Ξᵀ has no diagonal)
            raise ProgramError(f"{s.name} := {s.definition()}: the two sides of this 1/sqrt(n) dot share basis "
                               f"columns, whose Gram diagonal has no coupled limit draw (nor a netsor.limit law)")
        if self.grams[plan.local(u, v)[0]] is None:
            raise ProgramError(f"{s.name} := {s.definition()}: a 1/sqrt(n) dot of vectors computed through a "
                               f"nonlinearity has no coupled limit draw yet (its Gaussian fluctuation is not drawn)")
        return self.bilinear(u, v)

    def order_n(self, u: Vector, v: Vector) -> np.ndarray:
        """lim G/n between u and v, per network: c_uᵀ P c_v, P = I on Gaussian columns and the front's kernel
        E[φ φᵀ] on its columns (`ExactPlan.limit_metric`), summed over the columns the two can share."""
        plan = self.plan
        iu, iv = plan.cols(u), plan.cols(v)
        metric = plan.limit_metric()
        if metric is None:
            _, at_u, at_v = np.intersect1d(iu, iv, return_indices=True)
            return np.einsum("sm,sm->s", self.coefficients(u)[:, at_u], self.coefficients(v)[:, at_v])
        block = metric[np.ix_(iu, iv)]
        return np.einsum("sm,mk,sk->s", self.coefficients(u), block, self.coefficients(v))

    def linear_row_factor(self, matrix: Matrix) -> np.ndarray:
        """L with L Lᵀ = σ² CᵀGC/n (limit: σ² CᵀC), the row covariance of W applied to its width-n arguments."""
        plan = self.plan
        args = plan.args[matrix.index]
        used = plan.cols(*args)
        Cu = np.zeros((self.S, len(used), len(args)))
        for j, a in enumerate(args):
            Cu[:, plan.within(args, a), j] = self.coefficients(a)
        if self.limit:
            metric = plan.limit_metric()
            if metric is None:
                return _row_factor(matrix.var * np.einsum("smi,smj->sij", Cu, Cu))
            return _row_factor(matrix.var * np.einsum("smi,mk,skj->sij", Cu, metric[np.ix_(used, used)], Cu))
        component, local, _ = plan.local(args, args)
        Ct = Cu.transpose(0, 2, 1)  # σ² CᵀGC/n is the sandwich Cᵀ G (Cᵀ)ᵀ; it comes network-last
        congruence = sandwiches_at(Ct, self.grams[component], local, local, Ct).transpose(2, 0, 1)
        return _row_factor(matrix.var / self.width * congruence)

    def row_factor(self, matrix: Matrix) -> np.ndarray:
        """linear_row_factor, shared by matrices of one variance applied to the same vectors (W_Q, W_K, W_V)."""
        key = ("row factor", matrix.var, tuple(a.index for a in self.plan.args[matrix.index]))
        if key not in self.values:
            self.values[key] = self.linear_row_factor(matrix)
        return self.values[key]

    def apply_matrix(self, matrix: Matrix) -> None:
        """All MatMuls by one matrix at once: W V = B_W Lᵀ with L Lᵀ the row covariance of W V."""
        args = self.plan.args[matrix.index]
        if matrix.shape[1] != WIDTH:  # from a fixed dimension: the Gram of the explicit rows, at any width
            L = _explicit_row_factor(matrix, np.stack([self.small(a) for a in args], axis=2))
        else:
            L = self.row_factor(matrix)
        position = {a.index: j for j, a in enumerate(args)}
        for use in self.plan.uses[matrix.index]:
            self.coef[use.index] = L[:, position[use.arg.index], :]

    def small(self, v: Vector) -> np.ndarray:
        """The N explicit rows (S, N) of a fixed-dimension vector."""
        values = self.values
        if v.index in self.front:
            return self.front[v.index]
        if v.index in values:
            return values[v.index]
        if isinstance(v, MatMul):  # rows iid N(0, σ² CᵀGC/n) (limit: σ² CᵀC), drawn for all uses at once
            _draw_uses(self.plan, v.matrix, self.row_factor(v.matrix),
                       stream(self.root, self.block, 5, v.matrix.index), v.dim, values)
            return values[v.index]
        out = derived_value(v, self._value, self.width, values)
        values[v.index] = out
        return out

    def _value(self, node):
        return self.scalar(node) if isinstance(node, Scalar) else self.small(node)

    def scalar(self, s: Scalar) -> np.ndarray:
        values = self.values
        if s.index in self.front:
            return self.front[s.index]
        if s.index in values:
            return values[s.index]
        if isinstance(s, (Dot, Moment)) and s.args[0].dim != WIDTH:  # over a fixed dimension: its explicit rows
            value = derived_value(s, self.small, self.width, values)
        elif isinstance(s, Dot):
            value = self.dot(s)
        elif isinstance(s, SoftmaxEntry):  # the entries of one softmax at once
            key = ("softmax", id(s.group))
            if key not in values:
                scores = s.group.scores
                stacked = np.empty((len(scores), self.S))
                for i, p in enumerate(scores):
                    stacked[i] = self.scalar(p)
                values[key] = softmax_columns(stacked)
            value = values[key][s.position]
        else:
            value = scalar_function_value(s, self.scalar, values)
        values[s.index] = value
        return value
