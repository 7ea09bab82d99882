"""The lazy finite-width interpreter: any Netsor program at width n, exactly in law, never forming an n×n matrix.

A matrix W (entries iid N(0, σ²/n_in)) is never drawn; its MatMuls are drawn a batch at a time. Given the batch's
arguments X ∈ R^{n_in×k}, the rows of W X are iid N(0, σ² XᵀX/n_in), so

    W X = Z Lᵀ,   Z ∈ R^{n_out×k} iid N(0, 1),   L Lᵀ = σ² XᵀX/n_in,           O(n k²) instead of O(n² k).

When W was already applied to earlier arguments A with W A = Y, row r of W is w_r ~ N(0, σ²/n_in I) with
w_rᵀA = y_r known. Split X = A C + R with C = (AᵀA)⁺AᵀX and R ⟂ A; w_rᵀR is independent of w_rᵀA, so

    W X | (W A = Y)  =  Y C + Z Lᵀ,   L Lᵀ = σ² RᵀR/n_in,

exact in law even when AᵀA is singular and when X depends on Y (W φ(W x)). Everything else (inputs, nonlinearities,
linear combinations, moments, dots, scalar functions) is computed on full vectors, O(n) per network, as
method="dense" does — except the compressed vectors below. Vectors are (networks, n) arrays.

Compressed vectors. Z above is iid N(0, 1), independent of everything drawn before it. A vector that is only ever
read through inner products — by dots, mean squares (1/n)|x|², linear combinations of such vectors and the
Grams of MatMul batches — is a linear combination Σ_a c_a z_a of such fresh Gaussian "atoms" z_a ∈ R^n (the
columns of Z of single-use matrices, the inputs' iid factors), with coefficients that depend on the atoms only
through their inner products. Only the Gram ZᵀZ of the atoms matters, and ZᵀZ ~ Wishart(n, I_m) = T Tᵀ in law
with T the m×m lower-triangular Bartlett factor (T_ii² ~ χ²_{n−i}, T_ij ~ N(0, 1) below). So atom a is held as
row a of T and the vector as Σ_a c_a T[a] ∈ R^m: its inner products have exactly the finite-width law at O(m²)
draws per network instead of O(n m). Atoms that meet (in a dot, a combination, one matrix's arguments) form one
component with one T; components are independent; one with more atoms than n keeps the n coordinates of its
atoms instead. In a transformer everything but the MLP's hidden layer is compressed: the residual stream, the
queries, keys and values. `LazyPlan._compress` finds them (a fixpoint from every candidate), `LazyPlan.schedule`
turns the steps on compressed vectors and scalars into one `run_tape` kernel call per run of them, and a hidden
layer W_out φ(W_in x) whose activations feed only W_out runs as one `hidden_atoms` call that never stores them.

Rao-Blackwellized moments: a target g = W x that nothing else depends on has, given everything else drawn,
coordinate 0 w_0ᵀX_t | (w_0ᵀA = y_0) ~ N(y_0 C, σ² RᵀR/n_in) with A now every other argument W is applied to —
the Gaussian component of the finite-width mixture the "mixture" KL estimator needs.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from ..compiled.lazy import (FUSED_CODES, OP_ATOMS, OP_DOT, OP_LINCOMB, OP_RSQRT, OP_SOFTMAX, OP_SQUARE,
                              add_gaussian_rows, combine_atoms, fill_basis, gaussian_rows, gram_factors, hidden_atoms,
                              run_tape)
from ..compiled.linalg import RANK_RTOL  # Gram eigenvalues below it are the rank deficiency, not data
from ..compiled.wishart import standard_normals
from ..errors import ProgramError
from ..ir.program import (Dot, Input, LinComb, MatMul, Matrix, Moment, Node, Nonlin, Program, Scalar, ScalarFn,
                          SoftmaxEntry, Vector, dim_size)
from ..ir.layers import inverse_sqrt
from ..ir.nonlinearities import square
from ..ir.semantics import derived_value
from ..limit.quadrature import gaussian_factor
from ..random import stream

LAZY_FLOATS = 1 << 22  # bound on the vector coordinates one block of networks holds (~32 MB)
VECTOR_FLOATS = 1 << 16  # one stored vector's numbers across a block (Python's cost per block is then ~1%)
MAX_BLOCK = 4096  # networks per block at small widths, where the bounds above would allow more
INPUT_STREAM, BATCH_STREAM = 0, 1  # the first key of a block's streams after the block number
JUMP = 0x9E3779B97F4A7C15F39CC0605CEDC835  # (φ − 1)·2^128, odd: numpy's PCG64.jumped step between substreams
TAPE, STEP, FUSED = 0, 1, 2  # a schedule entry: a run_tape call, one step in Python, a fused hidden layer

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
        self.compressed, self.components, self.atoms = self._compress()
        self._schedules: dict = {}
        self._layouts: dict = {}
        self.batch_position = {(b.matrix.index, b.number): j for j, b in
                               enumerate(step for step in self.steps if isinstance(step, Batch))}
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

    def _compress(self):
        """The vectors only ever seen through inner products, held compressed (module docstring): node index →
        component, the components (dimension, atoms), and per atom source — a batch (matrix index, number) or an
        input group (its position in input_groups) — its (component, first atom). A fixpoint that only removes: a
        candidate leaves when a consumer would need its coordinates."""
        nodes = self.program.nodes
        children: dict[int, list] = {}
        for node in self.needed:
            for parent in node.parents():
                children.setdefault(parent.index, []).append(node)
        targets = {t.index for t in self.targets}
        single = {w for w, bs in self.batches.items() if len(bs) == 1 and w not in self.keeps_history}
        arguments = {w: [a for b in bs for a in b.args] for w, bs in self.batches.items()}
        group_of = {m.index: members for members, _ in self.input_groups for m in members}
        kept = {n.index for n in self.needed if n.index not in targets and (
            isinstance(n, LinComb) or isinstance(n, MatMul) and n.matrix.index in single
            or isinstance(n, Input) and all(m.dim == n.dim for m in group_of[n.index]))}

        def fits(node) -> bool:
            if isinstance(node, LinComb):
                sources = node.args
            elif isinstance(node, MatMul):
                sources = self.batch_of[node.index][0].uses  # one batch's outputs share their atoms
            else:
                sources = group_of[node.index]  # so do an input group's members
            if not all(v.index in kept for v in sources):
                return False
            for child in children.get(node.index, ()):
                if isinstance(child, Dot):
                    ok = all(a.index in kept for a in child.args)
                elif isinstance(child, Moment):  # (1/d) Σ x_α² = x·x/d; any other φ needs coordinates
                    ok = child.phi is square and len(child.args) == 1
                elif isinstance(child, LinComb):
                    ok = child.index in kept
                elif isinstance(child, MatMul):  # an argument: every argument of the matrix compressed alike
                    ok = all(a.index in kept for a in arguments[child.matrix.index])
                else:
                    ok = False
                if not ok:
                    return False
            return True

        changed = True
        while changed:
            changed = False
            for index in sorted(kept):
                if index in kept and not fits(nodes[index]):
                    kept.discard(index)
                    changed = True
        # components: the compressed vectors that meet in a dot, a combination or one matrix's arguments
        parent = {i: i for i in kept}

        def find(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        def union(vectors) -> None:
            roots = [find(v.index) for v in vectors]
            for r in roots[1:]:
                parent[r] = roots[0]

        for index in kept:
            node = nodes[index]
            if isinstance(node, LinComb):
                union((node,) + node.args)
            elif isinstance(node, MatMul):
                union(self.batch_of[index][0].uses)
            else:
                union(group_of[index])
            for child in children.get(index, ()):
                if isinstance(child, Dot):
                    union(child.args)
                elif isinstance(child, MatMul):
                    union(arguments[child.matrix.index])
        sources = [(("input", g), members[0], factor.shape[1]) for g, (members, factor) in
                   enumerate(self.input_groups) if members[0].index in kept]
        sources += [((step.matrix.index, step.number), step.uses[0], len(step.args)) for step in self.steps
                    if isinstance(step, Batch) and step.uses[0].index in kept]
        components, atoms, of_root = [], {}, {}
        for key, vector, count in sources:  # inputs, then batches in step order
            root = find(vector.index)
            if root not in of_root:
                of_root[root] = len(components)
                components.append([vector.dim, 0])
            c = of_root[root]
            atoms[key] = (c, components[c][1])
            components[c][1] += count
        return ({i: of_root[find(i)] for i in kept}, [tuple(c) for c in components], atoms)

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

    def layout(self, width: int):
        """The compressed atoms at this width: per component its dof and atom count, the first atom's row, and D,
        the length of every compressed vector (the longest component row: Bartlett rows for components of at
        most dof atoms, else the dof coordinates themselves); a shorter component's rows are zero beyond it."""
        if width in self._layouts:
            return self._layouts[width]
        dofs = np.array([dim_size(dim, width) for dim, _ in self.components], dtype=np.int64)
        sizes = np.array([m for _, m in self.components], dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        D = int(np.minimum(dofs, sizes).max()) if len(sizes) else 0
        self._layouts[width] = dofs, sizes, starts, D
        return self._layouts[width]

    def schedule(self, width: int):
        """The steps at this width as (entries, slot of each compressed vector, slot of each scalar, compressed
        slots): an entry is (TAPE, code, consts), a run of steps on compressed vectors and scalars for one
        `run_tape` call; (FUSED, (W_in's batch, W_out's batch, kernel operands), released), a hidden layer for
        `hidden_atoms`; or (STEP, step, released) for Python. Scalars get a slot each, compressed vectors a slot
        freed after its last use (the slab stays small)."""
        if width in self._schedules:
            return self._schedules[width]
        scalar = {n.index: i for i, n in enumerate(n for n in self.needed if isinstance(n, Scalar))}
        slot: dict[int, int] = {}
        free: list[int] = []
        used = 0

        def allocate(node) -> None:
            nonlocal used
            if free:
                slot[node.index] = free.pop()
            else:
                slot[node.index], used = used, used + 1

        for g, (members, _) in enumerate(self.input_groups):
            if ("input", g) in self.atoms:
                for m in members:
                    allocate(m)
        starts = self.layout(width)[2]
        entries, code, consts, softmaxes = [], [], [], set()

        def const(value) -> int:
            consts.append(float(value))
            return len(consts) - 1

        def flush() -> None:
            if code:
                entries.append((TAPE, np.array(code, dtype=np.int64), np.array(consts)))
                code.clear()
                consts.clear()

        def taped(step) -> bool:
            """Append the step to the tape if it runs there."""
            c = self.compressed
            if isinstance(step, Batch):
                if (step.matrix.index, step.number) not in self.atoms or step.args[0].index not in c:
                    return False
                component, offset = self.atoms[(step.matrix.index, step.number)]
                code.extend([OP_ATOMS, len(step.args)] + [slot[a.index] for a in step.args])
                code.extend([const(step.matrix.var / dim_size(step.matrix.shape[1], width)),
                             starts[component] + offset, len(step.uses)])
                for use, column in zip(step.uses, step.columns):
                    code.extend([column, slot[use.index]])
            elif isinstance(step, LinComb) and step.index in c:
                code.extend([OP_LINCOMB, slot[step.index], len(step.args)])
                for coeff, a in zip(step.coeffs, step.args):
                    code.extend([slot[a.index], scalar[coeff.index], 0] if isinstance(coeff, Scalar) else
                                [slot[a.index], -1, const(coeff)])
            elif isinstance(step, Dot) and all(a.index in c for a in step.args):
                code.extend([OP_DOT, scalar[step.index], slot[step.args[0].index], slot[step.args[1].index],
                             const(float(dim_size(step.args[0].dim, width)) ** step.exponent)])
            elif isinstance(step, Moment) and step.args[0].index in c:  # square (_compress): |x|²/d
                code.extend([OP_SQUARE, scalar[step.index], slot[step.args[0].index],
                             const(dim_size(step.args[0].dim, width))])
            elif isinstance(step, SoftmaxEntry):
                if id(step.group) not in softmaxes:  # all needed entries at the first
                    softmaxes.add(id(step.group))
                    wanted = {e.position: scalar[e.index] for e in self.needed
                              if isinstance(e, SoftmaxEntry) and e.group is step.group}
                    m = len(step.group.scores)
                    code.extend([OP_SOFTMAX, m] + [scalar[p.index] for p in step.group.scores]
                                + [wanted.get(i, -1) for i in range(m)])
            elif isinstance(step, ScalarFn) and step.fn is inverse_sqrt and len(step.args) == 1:
                code.extend([OP_RSQRT, scalar[step.index], scalar[step.args[0].index]])
            else:
                return False
            return True

        fused, skipped = self._fused_hidden_layers(), set()
        for step, released in zip(self.steps, self.released):
            if (step.matrix.index, step.number) in skipped if isinstance(step, Batch) else step.index in skipped:
                pass
            elif isinstance(step, Batch) and step.matrix.index in fused:
                after, nonlins = fused[step.matrix.index]
                for out in after.uses:
                    allocate(out)
                flush()
                component, offset = self.atoms[(after.matrix.index, after.number)]
                columns = [step.columns[step.uses.index(nonlins[a.index].args[0])] for a in after.args]
                entries.append((FUSED, (step, after, dict(
                    rows=dim_size(step.matrix.shape[0], width),
                    columns=np.array(columns, dtype=np.int64),
                    codes=np.array([nonlins[a.index].phi.code for a in after.args], dtype=np.int64),
                    parameters=np.array([nonlins[a.index].phi.parameter for a in after.args]),
                    scale_out=after.matrix.var / dim_size(after.matrix.shape[1], width),
                    first=int(starts[component] + offset),
                    use_args=np.array(after.columns, dtype=np.int64),
                    use_slots=np.array([slot[u.index] for u in after.uses], dtype=np.int64))), released))
                skipped.update(n.index for n in nonlins.values())
                skipped.add((after.matrix.index, after.number))
            else:
                for out in step.uses if isinstance(step, Batch) else (step,):
                    if out.index in self.compressed:
                        allocate(out)
                if not taped(step):
                    flush()
                    entries.append((STEP, step, released))
            for index in released:
                if index in slot:
                    free.append(slot[index])
        flush()
        self._schedules[width] = (entries, slot, scalar, used)
        return self._schedules[width]

    def _fused_hidden_layers(self) -> dict:
        """The hidden layers W_out φ(W_in x) run as one `hidden_atoms` call, keyed by W_in's index: (W_out's
        batch, {hidden vector index: its Nonlin}). W_in drawn once with nothing to condition on, each output read
        only by one Nonlin of a compiled code (FUSED_CODES), those read only by W_out's one compressed batch and
        together all of its arguments; nothing of it requested."""
        children: dict[int, list] = {}
        for node in self.needed:
            for parent in node.parents():
                children.setdefault(parent.index, []).append(node)
        targets = {t.index for t in self.targets}
        fused = {}
        for w, batches in self.batches.items():
            if len(batches) != 1 or w in self.keeps_history or (w, 0) in self.atoms:
                continue
            batch = batches[0]
            nonlins, after = {}, None
            for use in batch.uses:
                readers = children.get(use.index, [])
                if use.index in targets or len(readers) != 1 or not isinstance(readers[0], Nonlin):
                    break
                nonlin = readers[0]
                if (nonlin.index in targets or nonlin.args != (use,) or nonlin.phi.code not in FUSED_CODES
                        or not children.get(nonlin.index)):
                    break
                matrices = {(r.matrix.index if isinstance(r, MatMul) else None) for r in children[nonlin.index]}
                if len(matrices) != 1 or None in matrices:
                    break
                candidate = self.batches[matrices.pop()][0]
                if after is not None and candidate is not after:
                    break
                after = candidate
                nonlins[nonlin.index] = nonlin
            else:
                if (after is not None and (after.matrix.index, after.number) in self.atoms
                        and {a.index for a in after.args} == set(nonlins)):
                    fused[w] = (after, nonlins)
        return fused

    def block_size(self, width: int) -> int:
        """Networks per block (and per random stream): a function of the program and the width only. The block
        holds at most LAZY_FLOATS numbers even if every stored vector were live at once (its rows; compressed ones
        have D; the hidden layers of `_fused_hidden_layers` are never stored), and one vector of it at most
        VECTOR_FLOATS (each step then reads its arguments from cache)."""
        D = self.layout(width)[3]
        hidden = set()
        for w, (after, nonlins) in self._fused_hidden_layers().items():
            hidden.update(u.index for u in self.batches[w][0].uses)
            hidden.update(nonlins)
        rows = self.rows(width)
        dims = [D if v.index in self.compressed else max(1, rows.get(v.index, 1)) for v in self.needed
                if isinstance(v, Vector) and v.index not in hidden]
        if not dims:
            return MAX_BLOCK
        floats = sum(dims) + sum(m for _, m in self.components) * D  # the vectors and the basis
        return int(max(1, min(MAX_BLOCK, VECTOR_FLOATS // max(dims), LAZY_FLOATS // floats)))

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


_SCRATCH = threading.local()


def _scratch(*shapes) -> list:
    """Per thread, arrays of these shapes reused from its previous block of the same shapes: every entry is
    written before it is read, and fresh buffers of megabytes per block would each be faulted in anew."""
    kept = getattr(_SCRATCH, "arrays", None)
    if kept is None or [a.shape for a in kept] != list(shapes):
        kept = _SCRATCH.arrays = [np.empty(shape) for shape in shapes]
    return kept


def _substream(rng, start_state: dict, j: int) -> None:
    """Set rng to substream j of its starting state, j·JUMP draws on (mod 2^128): one Generator per block whose
    batches each start at a fixed place (a network's draws then do not depend on the block's count), reused so
    numba types it once, and no SeedSequence per batch (both cost more than a batch's arithmetic at S ≈ 64)."""
    rng.bit_generator.state = start_state
    rng.bit_generator.advance(j * JUMP % (1 << 128))


def _draw_batch(plan: LazyPlan, batch: Batch, width: int, rows: int, rng, value_of, history: dict) -> np.ndarray:
    """The outputs of the batch's arguments, (k, S, rows): Y C + L Z given the matrix's earlier batches."""
    W = batch.matrix
    args = tuple(np.ascontiguousarray(value_of(a)) for a in batch.args)  # (S, n_in) each, or (S, D) compressed
    scale = W.var / dim_size(W.shape[1], width)
    earlier = [history[(W.index, b.number)] for b in plan.batches[W.index][:batch.number]]
    X = np.stack(args, axis=1) if earlier or W.index in plan.keeps_history else None
    if earlier:
        A = np.concatenate([args for args, _ in earlier], axis=1)
        Y = np.concatenate([outs for _, outs in earlier], axis=1)
        C, R = project_out(A, X)
        out = add_gaussian_rows(rng, R, scale, C.transpose(0, 2, 1) @ Y).transpose(1, 0, 2).copy()
    else:
        out = gaussian_rows(rng, args, scale, np.empty((len(args), args[0].shape[0], rows)))
    if W.index in plan.keeps_history:
        history[(W.index, batch.number)] = (X, out.transpose(1, 0, 2))
    return out


def simulate_lazy_block(plan: LazyPlan, width: int, root, block: int, count: int, moments: bool = False):
    """`count` networks of block `block`: coordinate 0 of each vector target, the value of each scalar target,
    (count, k). moments=True also returns the mean (count, k) and covariance (count, k, k) of the targets given
    everything else drawn (`LazyPlan.moment_groups`)."""
    rows = plan.rows(width)
    entries, slot, scalar, slots = plan.schedule(width)
    values: dict = {}  # coordinate vectors; compressed ones are cv[slot], scalars sv[scalar]
    history: dict = {}  # (matrix index, batch number) → (arguments, outputs), where something conditions on them
    dofs, sizes, starts, D = plan.layout(width)
    cv, sv, basis = _scratch((slots, count, D), (len(scalar), count), (count, int(sizes.sum()), D))
    rng = stream(root, block, BATCH_STREAM)
    start_state = rng.bit_generator.state
    # every compressed atom of the block at once, network-major (no network depends on count), after the batches
    _substream(rng, start_state, len(plan.batch_position))
    fill_basis(rng, dofs, sizes, basis)

    def value_of(node):
        if isinstance(node, Scalar):
            return sv[scalar[node.index]]
        return cv[slot[node.index]] if node.index in slot else values[node.index]

    for g, (members, factor) in enumerate(plan.input_groups):
        atoms = plan.atoms.get(("input", g))
        if atoms is not None:  # x_i = Σ_j F_ij z_j, the z_j atoms of the basis
            first = starts[atoms[0]] + atoms[1]
            for m in members:
                cv[slot[m.index]] = np.einsum("h,shd->sd", factor[m.position], basis[:, first:first + factor.shape[1]])
            continue
        r = max(rows.get(m.index, 0) for m in members)
        z = standard_normals(stream(root, block, INPUT_STREAM, members[0].index), np.empty((count, factor.shape[1], r)))
        drawn = np.einsum("gh,shr->gsr", factor, z)  # (group size, count, r): coordinates iid N(0, Σ) across α
        for m in members:
            values[m.index] = drawn[m.position]
    cache: dict = {}
    for kind, step, released in entries:
        if kind == TAPE:
            run_tape(step, released, cv, sv, basis)  # (TAPE, code, consts)
            continue
        if kind == FUSED:
            first, after, o = step
            _substream(rng, start_state, plan.batch_position[(first.matrix.index, first.number)])
            hidden_atoms(rng, tuple(np.ascontiguousarray(value_of(a)) for a in first.args),
                         first.matrix.var / dim_size(first.matrix.shape[1], width), o["rows"], o["columns"], o["codes"],
                         o["parameters"], o["scale_out"], basis, o["first"], o["use_args"], o["use_slots"], cv)
            for index in released:
                values.pop(index, None)
            continue
        if isinstance(step, Batch) and (step.matrix.index, step.number) in plan.atoms:  # on coordinates
            W = step.matrix
            factors = gram_factors(tuple(np.ascontiguousarray(value_of(a)) for a in step.args),
                                   W.var / dim_size(W.shape[1], width))
            component, offset = plan.atoms[(W.index, step.number)]
            out = combine_atoms(factors, basis, np.array([starts[component] + offset], dtype=np.int64),
                                np.empty((len(step.args), count, D)))
            for use, column in zip(step.uses, step.columns):
                cv[slot[use.index]] = out[column]
        elif isinstance(step, Batch):
            _substream(rng, start_state, plan.batch_position[(step.matrix.index, step.number)])
            out = _draw_batch(plan, step, width, rows.get(step.matrix.index, 0), rng, value_of, history)
            for use, column in zip(step.uses, step.columns):
                values[use.index] = out[column]
        else:
            value = derived_value(step, value_of, width, cache, rows=rows.get(step.index, 1))
            if isinstance(step, Scalar):
                sv[scalar[step.index]] = value
            else:
                values[step.index] = value
        for index in released:
            values.pop(index, None)
    out = np.empty((count, len(plan.targets)))
    for j, t in enumerate(plan.targets):
        v = value_of(t)
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
        covs[:, at[:, None], at[None, :]] = matrix.var / dim_size(matrix.shape[1], width) * (R @ R.transpose(0, 2, 1))
    return means, covs
