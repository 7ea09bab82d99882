"""The linear part of an exact block compiled to register operations run by one numba kernel."""
from __future__ import annotations

import threading
import weakref

import numpy as np

from ...compiled import linear as _ops
from ...compiled.linear import run_linear
from ...ir.program import WIDTH, Dot, Input, LinComb, MatMul, Matrix, Nonlin, Scalar, SoftmaxEntry, Vector
from ...random import stream
from .plan import ExactPlan, _linear_source


class _Unsupported(Exception):
    """A program outside what `LinearProgram` covers: the step-by-step path runs it."""


class LinearProgram:
    """The linear part of a block (no front, width-n vectors only, scalars that are dots and softmax entries) as
    operations with integer operands on per-network registers, run by one compiled kernel (`compiled.linear.run_linear`,
    over tiles of networks, without the GIL) with no Python between steps. It mirrors the step-by-step path of
    `simulate_exact_block` (limit=False) operation by operation and reads the same random streams in the same
    order, so its draws are that path's up to rounding, and stay coupled to the limit draws (`simulate_coupled`)."""

    def __init__(self, plan: ExactPlan, width: int, targets):
        if plan.front and plan.layer is None:  # a front of one layer is drawn before the kernel and loaded
            raise _Unsupported
        for node in plan.needed:
            if node.index in plan.front:
                continue
            if isinstance(node, Vector) and (node.dim != WIDTH or
                                             (isinstance(node, Nonlin) and not node.phi.linear)):
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
        # the front layer's row 0 and Gram (ext: row 0 (m), then the m × m Gram row-major), over the normals just drawn
        self.layer = plan.layer
        m = len(plan.front_columns)
        front_cols = {col: j for j, (col, _) in enumerate(plan.front_columns)}
        for col, j in front_cols.items():
            self.op(_ops.OP_LOAD, self.b0[col], self.pool([j]), 1)
        self.grams = []
        for i, cols in enumerate(plan.components):
            if not plan.read_components[i]:
                self.grams.append(None)
                continue
            r = len(cols)
            g = self.alloc(r * r)
            self.grams.append(g)
            if int(cols[0]) in front_cols:
                at = [front_cols[int(c)] for c in cols]
                self.op(_ops.OP_LOAD, g, self.pool([m + a * m + b for a in at for b in at]), r * r)
                continue
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
        self.k = len(targets)
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
        self.free = len(plan.free_columns)
        # the plan caches this program (_linear_program): a reference back to it would be a reference cycle
        del self.plan

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
        """Marsaglia–Tsang's constants b, c for χ²_{dof−i}, i < m (as compiled.wishart._chi_constants)."""
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
        if ("front", v.index) in self.plan.columns:  # a front vector is its own basis column
            c = self.alloc(1)
            self.op(_ops.OP_CONST, c, self.const([1.0]), 1)
        elif isinstance(v, Input):
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
        F = self.free if moments else 0
        if self.layer is None:
            ext = np.zeros((S, 1))
        else:
            row0, gram = self.layer.sample(root, block, self.width, S)
            ext = np.concatenate([row0, gram.reshape(S, -1)], axis=1)
        return run_linear(gens, self.code[moments], self.int_pool, self.float_pool, _registers(self.size), S,
                          self.k, F, ext)


_SCRATCH = threading.local()  # each thread's register file, reused: a fresh one per block is page faults


def _registers(size: int) -> np.ndarray:
    """This thread's register file, (size, LINEAR_TILE) (a view of one at least that large; the kernel zeroes it)."""
    size = max(size, 1)
    reg = getattr(_SCRATCH, "reg", None)
    if reg is None or reg.shape[0] < size:
        reg = _SCRATCH.reg = np.empty((size, _ops.LINEAR_TILE))
    return reg[:size]


# program → {(width, target indices): LinearProgram or None}: plans are rebuilt on every simulate call, and
# compiling the program each time cost as much as drawing 10⁴ networks
_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_COMPILED_PER_PROGRAM = 64  # widths kept per program (the oldest dropped first)


def _linear_program(plan: ExactPlan, width: int, targets):
    """The plan's LinearProgram at this width, or None when the step-by-step path must run (cached on the plan,
    and per program: a plan is a function of the program and targets)."""
    key = ("linear", width, tuple(t.index for t in targets))
    if key not in plan._cache:
        compiled = _COMPILED.setdefault(plan.program, {})
        if key not in compiled:
            try:
                compiled[key] = LinearProgram(plan, width, targets)
            except _Unsupported:
                compiled[key] = None
            while len(compiled) > _COMPILED_PER_PROGRAM:
                compiled.pop(next(iter(compiled)))
        plan._cache[key] = compiled[key]
    return plan._cache[key]
