"""The lazy finite-width interpreter: any Netsor program at width n, exactly in law, never forming an n×n matrix.

A matrix W (entries iid N(0, σ²/n_in)) is never drawn; its MatMuls are drawn a batch at a time. Given the batch's
arguments X ∈ R^{n_in×k}, the rows of W X are iid N(0, σ² XᵀX/n_in), so

    W X = Z Lᵀ,   Z ∈ R^{n_out×k} iid N(0, 1),   L Lᵀ = σ² XᵀX/n_in,           O(n k²) instead of O(n² k).

When W was already applied to earlier arguments A with W A = Y, row r of W is w_r ~ N(0, σ²/n_in I) with
w_rᵀA = y_r known. Split X = A C + R with C = (AᵀA)⁺AᵀX and R ⟂ A; w_rᵀR is independent of w_rᵀA, so

    W X | (W A = Y)  =  Y C + Z Lᵀ,   L Lᵀ = σ² RᵀR/n_in,

exact in law even when AᵀA is singular and when X depends on Y (W φ(W x)). Everything else (inputs, nonlinearities,
linear combinations, moments, dots, scalar functions) is computed on full vectors, O(n) per network, as
method="dense" does. Arrays are (networks, k, n): a network's vectors are rows, so the Gram is X Xᵀ in code.

Batches are static: when the first MatMul by W not yet drawn is reached in program order, its batch is every
needed MatMul by W not yet drawn whose argument can be computed without drawing a MatMul by W (those arguments are
computed first), so the uses of W_O in a per-token loop form one batch while W φ(W x) needs two. Each batch and
each input group draws from its own stream keyed by (seed, block, …), network-major, so a network's values depend
on neither the number of networks requested nor the chunking or threads.

Rao-Blackwellized moments: a target g = W x that nothing else depends on has, given everything else drawn,
coordinate 0 w_0ᵀX_t | (w_0ᵀA = y_0) ~ N(y_0 C, σ² RᵀR/n_in) with A now every other argument W is applied to —
the Gaussian component of the finite-width mixture the "mixture" KL estimator needs.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..compiled.lazy import add_gaussian_rows
from ..compiled.linalg import RANK_RTOL  # Gram eigenvalues below it are the rank deficiency, not data
from ..compiled.wishart import standard_normals
from ..errors import ProgramError
from ..ir.program import (Dot, Input, LinComb, MatMul, Matrix, Moment, Node, Nonlin, Program, Scalar, ScalarFn,
                          SoftmaxEntry, Vector, dim_size)
from ..ir.semantics import derived_value
from ..limit.quadrature import gaussian_factor
from ..random import stream

LAZY_FLOATS = 1 << 22  # bound on the vector coordinates one block of networks holds (~32 MB)
VECTOR_FLOATS = 1 << 13  # coordinates of one vector across a block: small enough to stay in cache between steps
MAX_BLOCK = 4096  # networks per block at small widths, where the bounds above would allow more
INPUT_STREAM, BATCH_STREAM = 0, 1  # the first key of a block's streams after the block number

_KINDS = (Input, Matrix, MatMul, Nonlin, LinComb, Moment, Dot, ScalarFn, SoftmaxEntry)


@dataclass(frozen=True, eq=False)
class Batch:
    """MatMuls by one matrix drawn together: `args` are their distinct arguments and `columns[i]` is the position
    of uses[i]'s argument among them; `number` orders the matrix's batches (and keys its random stream)."""

    matrix: Matrix
    number: int
    uses: tuple
    args: tuple
    columns: tuple


class LazyPlan:
    """The static schedule of a program under the lazy interpreter: input groups, then nodes and MatMul batches
    in a topological order close to program order, and when each value can be dropped. A function of the program
    and the requested variables only."""

    def __init__(self, program: Program, targets):
        self.program = program
        self.targets = tuple(targets)
        self.needed = program.ancestors(self.targets)
        for node in self.needed:
            if not isinstance(node, _KINDS):
                raise ProgramError(f"{node.name}: method='lazy' has no rule for {type(node).__name__} nodes")
        needed = {node.index for node in self.needed}
        self.input_groups = []  # (needed members, factor F with F Fᵀ = Σ) per group with a needed member
        for group, members in program.input_groups:
            if any(m.index in needed for m in members):
                self.input_groups.append(([m for m in members if m.index in needed], gaussian_factor(group.cov)))
        self.steps, self.batches = self._schedule()
        self.released = self._last_uses()
        self.batch_of = {u.index: (batch, batch.columns[i]) for bs in self.batches.values() for batch in bs
                         for i, u in enumerate(batch.uses)}
        # a matrix's earlier arguments and outputs are kept while a later batch (or a moment) conditions on them
        target_matrices = {t.matrix.index for t in self.targets if isinstance(t, MatMul)}
        self.keeps_history = {w for w, bs in self.batches.items() if len(bs) > 1} | target_matrices
        self._rows: dict[int, dict[int, int]] = {}
        self._moment_groups = None

    def _schedule(self):
        """Steps in a topological order close to program order. A batch of W is formed when its first use is
        reached: every needed use of W not yet drawn whose argument can be computed without drawing a MatMul by W
        (or by a matrix whose batch is being formed); those arguments are computed first, out of program order if
        need be, so per-token loops (o_i = W_O m_i built token by token) still make one batch. A depth-first walk
        with an explicit stack: pulling a long chain ahead must not hit Python's recursion limit."""
        uses_of: dict[int, list[MatMul]] = {}
        for node in self.needed:
            if isinstance(node, MatMul):
                uses_of.setdefault(node.matrix.index, []).append(node)
        # bit i set: the value depends on MatMul node i (itself included)
        matmuls_in: dict[int, int] = {}
        for node in self.needed:
            mask = 1 << node.index if isinstance(node, MatMul) else 0
            for parent in node.parents():
                mask |= matmuls_in[parent.index]
            matmuls_in[node.index] = mask
        pending = {w: sum(1 << u.index for u in uses) for w, uses in uses_of.items()}  # uses not yet drawn
        steps, batches = [], {}
        done = {node.index for node in self.needed if isinstance(node, (Input, Matrix))}  # drawn up front / no value

        def open_batch(matrix: Matrix, forming: tuple) -> tuple:
            blocked = 0
            for w in forming + (matrix.index,):
                blocked |= pending[w]
            return matrix, tuple(u for u in uses_of[matrix.index]
                                 if u.index not in done and not matmuls_in[u.arg.index] & blocked)

        def close_batch(matrix: Matrix, uses: tuple) -> None:
            args = tuple({u.arg.index: u.arg for u in uses}.values())
            position = {a.index: j for j, a in enumerate(args)}
            number = len(batches.setdefault(matrix.index, []))
            batch = Batch(matrix, number, uses, args, tuple(position[u.arg.index] for u in uses))
            batches[matrix.index].append(batch)
            steps.append(batch)
            for u in uses:
                done.add(u.index)
                pending[matrix.index] &= ~(1 << u.index)

        for first in self.needed:  # program order: a node's parents are done unless a batch pulled them ahead
            walk = [(first, ())]  # (a node, or a batch being formed as (matrix, uses); the matrices being formed)
            while walk:
                item, forming = walk[-1]
                if isinstance(item, tuple):  # a batch: its arguments first, computed with its matrix blocked
                    matrix, uses = item
                    waiting = next((u.arg for u in uses if u.arg.index not in done), None)
                    if waiting is not None:
                        walk.append((waiting, forming + (matrix.index,)))
                    else:
                        walk.pop()
                        close_batch(matrix, uses)
                    continue
                if item.index in done:
                    walk.pop()
                    continue
                inputs = (item.arg,) if isinstance(item, MatMul) else item.parents()
                waiting = next((p for p in inputs if p.index not in done), None)
                if waiting is not None:
                    walk.append((waiting, forming))
                    continue
                walk.pop()
                if isinstance(item, MatMul):
                    walk.append((open_batch(item.matrix, forming), forming))
                else:
                    done.add(item.index)
                    steps.append(item)
        return steps, batches

    def _last_uses(self) -> list[list[int]]:
        """Per step, the nodes whose values nothing later reads: dropping them keeps a block's working set to the
        live vectors, so memory is reused hot instead of faulted in fresh for every vector."""
        last: dict[int, int] = {}
        for position, step in enumerate(self.steps):
            for node in step.args if isinstance(step, Batch) else step.parents():
                last[node.index] = position
        for t in self.targets:
            last.pop(t.index, None)
        released = [[] for _ in self.steps]
        for index, position in last.items():
            released[position].append(index)
        return released

    def rows(self, width: int) -> dict[int, int]:
        """Leading coordinates computed per node, as method="dense" draws them: 1 for a requested coordinate 0, all
        of them for the arguments of MatMuls, moments and dots; a matrix's entry is the rows every one of its
        batches draws. One pass in reverse program order (no recursion: programs may be deep)."""
        if width in self._rows:
            return self._rows[width]
        rows = {t.index: 1 for t in self.targets}

        def need(node: Node, r: int) -> None:
            rows[node.index] = max(rows.get(node.index, 0), 1 if isinstance(node, Scalar) else r)

        for node in reversed(self.needed):
            r = rows.get(node.index, 0)
            if isinstance(node, (Moment, Dot)):
                for a in node.args:
                    need(a, dim_size(a.dim, width))
            elif isinstance(node, MatMul):
                need(node.matrix, r)
                need(node.arg, dim_size(node.arg.dim, width))
            else:  # Nonlin, LinComb: coordinate by coordinate; scalar functions and coefficients: their value
                for parent in node.parents():
                    need(parent, r)
        self._rows[width] = rows
        return rows

    def block_size(self, width: int) -> int:
        """Networks per block (and per random stream): a function of the program and the width only. The block
        holds at most LAZY_FLOATS coordinates even if every vector were live at once, and one vector of it at
        most VECTOR_FLOATS (measured fastest: each step then reads its arguments from cache)."""
        dims = [dim_size(v.dim, width) for v in self.program.nodes if isinstance(v, Vector)]
        if not dims:
            return MAX_BLOCK
        return int(max(1, min(MAX_BLOCK, VECTOR_FLOATS // max(dims), LAZY_FLOATS // sum(dims))))

    def moment_groups(self):
        """Per matrix with target MatMuls: (matrix, target positions, their (batch, column), every other needed
        use's (batch, column)). ProgramError for a target whose coordinate 0 is not Gaussian given the rest."""
        if self._moment_groups is not None:
            return self._moment_groups
        children = {}
        for node in self.needed:
            for parent in node.parents():
                children.setdefault(parent.index, node)
        targeted: dict[int, list[int]] = {}
        for j, t in enumerate(self.targets):
            if isinstance(t, Scalar):
                continue
            if not isinstance(t, MatMul):
                raise ProgramError(f"{t.name} := {t.definition()}: simulate_with_moments(method='lazy') needs each "
                                   f"vector target to be a MatMul (Gaussian given the rest); {t.name} is a "
                                   f"{type(t).__name__}")
            if t.index in children:
                child = children[t.index]
                raise ProgramError(f"{t.name} := {t.definition()}: simulate_with_moments(method='lazy') needs the "
                                   f"target's coordinate 0 to feed nothing else, but {child.name} := "
                                   f"{child.definition()} uses it")
            targeted.setdefault(t.matrix.index, []).append(j)
        groups = []
        for positions in targeted.values():
            matrix = self.targets[positions[0]].matrix
            own = [self.batch_of[self.targets[j].index] for j in positions]
            wanted = {self.targets[j].index for j in positions}
            others = {(b.number, b.columns[i]): (b, b.columns[i]) for b in self.batches[matrix.index]
                      for i, u in enumerate(b.uses) if u.index not in wanted}
            groups.append((matrix, positions, own, list(others.values())))
        self._moment_groups = groups
        return groups


def project_out(A: np.ndarray, X: np.ndarray):
    """X = Cᵀ A + R with R ⟂ the rows of A: C = (A Aᵀ)⁺ A Xᵀ, for (S, m, n) A and (S, k, n) X → C (S, m, k), R."""
    if A.shape[1] == 0:
        return np.zeros((X.shape[0], 0, X.shape[1])), X
    gram = A @ A.transpose(0, 2, 1)
    values, vectors = np.linalg.eigh(gram)
    keep = values > RANK_RTOL * np.maximum(values[:, -1:], 0.0)
    inverse = np.where(keep, 1.0 / np.where(keep, values, 1.0), 0.0)
    pinv = (vectors * inverse[:, None, :]) @ vectors.transpose(0, 2, 1)
    C = pinv @ (A @ X.transpose(0, 2, 1))
    return C, X - C.transpose(0, 2, 1) @ A


def _draw_batch(plan: LazyPlan, batch: Batch, rows: int, rng, values: dict, history: dict) -> None:
    """The outputs of every MatMul of the batch, (S, rows) each: Y C + L Z given the matrix's earlier batches."""
    W = batch.matrix
    X = np.stack([values[a.index] for a in batch.args], axis=1)  # (S, k, n_in)
    S, k, n_in = X.shape
    earlier = [history[(W.index, b.number)] for b in plan.batches[W.index][:batch.number]]
    if earlier:
        A = np.concatenate([args for args, _ in earlier], axis=1)
        Y = np.concatenate([outs for _, outs in earlier], axis=1)
        C, R = project_out(A, X)
        out = add_gaussian_rows(rng, R, W.var / n_in, C.transpose(0, 2, 1) @ Y)
    else:
        out = add_gaussian_rows(rng, X, W.var / n_in, np.zeros((S, k, rows)))
    if W.index in plan.keeps_history:
        history[(W.index, batch.number)] = (X, out)
    for use, column in zip(batch.uses, batch.columns):
        values[use.index] = out[:, column, :]


def _evaluate(node: Node, width: int, r: int, values: dict) -> np.ndarray:
    """A node other than an input or a MatMul, from its arguments' values: vectors (S, r), scalars (S,)."""
    return derived_value(node, lambda a: values[a.index], width, values, rows=r)


def simulate_lazy_block(plan: LazyPlan, width: int, root, block: int, count: int, moments: bool = False):
    """`count` networks of block `block`: coordinate 0 of each vector target, the value of each scalar target,
    (count, k). moments=True also returns the mean (count, k) and covariance (count, k, k) of the targets given
    everything else drawn (`LazyPlan.moment_groups`)."""
    rows = plan.rows(width)
    values: dict = {}
    history: dict = {}  # (matrix index, batch number) → (arguments, outputs), where something conditions on them
    for members, factor in plan.input_groups:
        r = max(rows.get(m.index, 0) for m in members)
        z = standard_normals(stream(root, block, INPUT_STREAM, members[0].index),
                             np.empty((count, factor.shape[1], r)))
        drawn = factor @ z  # (count, group size, r): coordinates iid N(0, Σ) across α
        for m in members:
            values[m.index] = drawn[:, m.position, :]
    for step, released in zip(plan.steps, plan.released):
        if isinstance(step, Batch):
            rng = stream(root, block, BATCH_STREAM, step.matrix.index, step.number)
            _draw_batch(plan, step, rows[step.matrix.index], rng, values, history)
        else:
            values[step.index] = _evaluate(step, width, rows.get(step.index, 1), values)
        for index in released:
            values.pop(index, None)
    out = np.empty((count, len(plan.targets)))
    for j, t in enumerate(plan.targets):
        v = values[t.index]
        out[:, j] = v if v.ndim == 1 else v[:, 0]
    if not moments:
        return out
    means, covs = _conditional_moments(plan, width, history, out)
    return out, means, covs


def _conditional_moments(plan: LazyPlan, width: int, history: dict, out: np.ndarray):
    """Mean and covariance of the targets given everything else: a scalar is its value; coordinate 0 of the
    targets by one matrix is w_0ᵀX given w_0ᵀA = y_0 (A its other arguments), N(y_0 C, σ² RᵀR/n_in)."""
    count, k = out.shape
    means, covs = out.copy(), np.zeros((count, k, k))
    for matrix, positions, own, others in plan.moment_groups():
        def arguments(columns):
            stacked = [history[(matrix.index, batch.number)][0][:, column, :] for batch, column in columns]
            return np.stack(stacked, axis=1) if stacked else np.zeros((count, 0, dim_size(matrix.shape[1], width)))
        X, A = arguments(own), arguments(others)
        y0 = np.zeros((count, 0)) if not others else np.stack(
            [history[(matrix.index, batch.number)][1][:, column, 0] for batch, column in others], axis=1)
        C, R = project_out(A, X)
        at = np.array(positions)
        means[:, at] = np.einsum("smk,sm->sk", C, y0)
        covs[:, at[:, None], at[None, :]] = matrix.var / X.shape[2] * (R @ R.transpose(0, 2, 1))
    return means, covs
