"""Static facts about a program's limit: which nodes are random, at which level of the hierarchy, and
whether SKI25's theorem covers its 1/sqrt(n) dots."""
from __future__ import annotations

import numpy as np

from ..errors import ProgramError
from ..ir.program import (WIDTH, Dot, HeadSum, Input, LinComb, MatMul, Matrix, Moment, Node, Nonlin, Program,
                          ScalarFn, SoftmaxEntry, Vector, is_gvar, is_source)

SAMPLE_BLOCK = 1 << 15  # samples per random stream; fixed so results do not depend on chunking or threads
ZERO_KERNEL_RTOL = 1e-9


# --------------------------------------------------------------------------------------------------- structure
class _Structure:
    """Static facts: which nodes are random in the limit, at which level, and whether the limit is covered."""

    def __init__(self, program: Program):
        self.program = program
        self.random: set[int] = set()
        self.level: dict[int, int] = {}
        self.uncovered_dots: list[tuple[Dot, str]] = []  # reported after the more telling zero-kernel check
        for node in program.nodes:
            if isinstance(node, Matrix):
                continue
            if isinstance(node, HeadSum):  # Gaussian with a fixed covariance, independent of the rest (the Law's)
                self.level[node.index] = 0
                continue
            self._check_supported(node)
            parents = [p for p in node.parents() if not isinstance(p, Matrix)]
            level = max((self.level[p.index] for p in parents), default=0)
            random = any(p.index in self.random for p in parents) or is_source(node)
            if isinstance(node, MatMul) and node.arg.dim != WIDTH:
                random = True  # its covariance is a mean over the N sampled rows of its argument
            if isinstance(node, (Moment, Dot)) and node.args[0].dim != WIDTH:
                random = True
            self.level[node.index] = level + 1 if is_source(node) else level
            if random:
                self.random.add(node.index)

    def is_random(self, node: Node) -> bool:
        return node.index in self.random

    def is_gaussian(self, v: Vector) -> bool:
        """Whether Z^v is Gaussian given the random scalars: a combination of G-vars (identity passes through)."""
        if is_gvar(v) or isinstance(v, HeadSum):
            return True
        if isinstance(v, Nonlin):
            return v.phi.linear and self.is_gaussian(v.args[0])
        return isinstance(v, LinComb) and all(self.is_gaussian(a) for a in v.args)

    def _check_supported(self, node: Node) -> None:
        if isinstance(node, MatMul) and node.arg.dim != WIDTH and node.dim != WIDTH:
            raise ProgramError(f"{node.name} := {node.definition()}: a MatMul between two fixed dimensions "
                               f"({node.arg.dim} → {node.dim}) has no limit rule here")
        if isinstance(node, Dot) and node.args[0].dim == WIDTH:
            a = node.exponent
            if a < 0.5:
                raise ProgramError(f"{node.name} := {node.definition()}: with exponent {a:g} < 1/2 the dot "
                                   f"diverges as n → ∞; use scale='sqrt' or 'linear'")
            if a == 0.5:
                problem = _sqrt_dot_structure_problem(node)
                if problem:
                    self.uncovered_dots.append((node, problem))
        if not isinstance(node, (Input, MatMul, Nonlin, LinComb, Moment, Dot, ScalarFn, SoftmaxEntry)):
            raise ProgramError(f"{node.name}: limit() has no rule for {type(node).__name__} nodes")


def _sqrt_dot_structure_problem(dot: Dot) -> str | None:
    """SKI25's CLT needs one side to be W u with W absent from the other side (or two independent inputs):
    then, given everything else, the dot is an exact Gaussian sum of iid terms. Returns the complaint, if any."""
    g1, g2 = dot.args
    program = dot.program

    def fresh_matmul(g, other):
        return isinstance(g, MatMul) and g.matrix not in program.ancestors([other])

    if fresh_matmul(g1, g2) or fresh_matmul(g2, g1) or (isinstance(g1, Input) and isinstance(g2, Input)):
        return None
    return (f"{dot.name} := {dot.definition()}: a 1/sqrt(n) dot needs one side W·u with W unused by the other "
            f"side (as in scores q·k with independent W_Q, W_K), or two uncorrelated inputs; here neither holds, "
            f"so its limit is not covered (use scale='linear' for the deterministic 1/n dot)")


def _check_zero_kernel(dot: Dot, K: np.ndarray) -> None:
    """A dot over n scaled by n^{-a}, a < 1, needs E[Z^g1 Z^g2] = 0, else it diverges like n^{1−a}."""
    cross, var1, var2 = K[0, 1], K[0, 0], K[1, 1]
    if np.any(np.abs(cross) > ZERO_KERNEL_RTOL * np.sqrt(np.abs(var1 * var2)) + 1e-300):
        value = float(np.max(np.abs(cross)))
        growth = "sqrt(n)" if dot.exponent == 0.5 else f"n^{1 - dot.exponent:g}"
        raise ProgramError(
            f"{dot.name} := {dot.definition()}: E[Z^{dot.args[0].name} Z^{dot.args[1].name}] = {value:.4g} ≠ 0, "
            f"so the score diverges like {growth} as n → ∞; use scale='linear' (the 1/n dot, deterministic limit) "
            f"or untie the matrices")


