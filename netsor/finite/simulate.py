"""Finite-width interpreters: run a program at width n and report coordinate 0 of each requested variable.

method="dense" builds real Gaussian matrices and multiplies them, the brute-force reference every faster method is
checked against; method="exact" (netsor.finite.exact) draws the same law from Gram matrices at a cost independent of
n; method="lazy" (netsor.finite.lazy) runs any program at O(n) per network, drawing each MatMul from the Gram of its
arguments given the matrix's earlier uses, never an n×n matrix. Networks are processed in blocks; each block draws
every input group and matrix from its own stream keyed by (seed, block, node), so results do not depend on chunk
size or thread count. Dense draws only the rows of a matrix that some requested coordinate depends on, and rows are
drawn first-row-first, so the values of the rows that are drawn do not depend on which variables were requested.
"""
from __future__ import annotations

import numpy as np

from ..errors import ProgramError
from ..ir.program import Matrix, Program, Vector, dim_size
from ..random import check_size
from .dense import _rows_needed, _simulate_block, block_size
from .exact.block import simulate_exact_block
from .exact.plan import ExactPlan, reducible
from .lazy import LazyPlan, simulate_lazy_block
from .runner import _run_blocks, check_network_memory, checked_arguments, run_blocks_in_parts, with_moments

METHODS = ("auto", "dense", "exact", "lazy")
MOMENT_METHODS = ("auto", "exact", "lazy")


def simulate(program: Program, width: int, variables, size: int, seed=None, method: str = "auto",
             chunk_size: int | None = None, threads: int | None = None) -> np.ndarray:
    """Coordinate 0 of each requested variable (scalars: their value) in `size` independent width-`width` networks.

    method: "dense" multiplies real Gaussian matrices (any program, O(n²) per network); "exact" draws the same
    law from Gram matrices at a cost independent of n (programs linear in their vectors, see `netsor.finite.exact`);
    "lazy" draws the same law for any program at O(n) per network, each MatMul from the Gram of its arguments
    given the matrix's earlier uses (see `netsor.finite.lazy`); "auto" (the default) uses exact wherever it applies and
    lazy elsewhere.

    Returns an array (size, len(variables)). `chunk_size` bounds how many networks are held in memory at once;
    `threads` (default: all cores) runs blocks in parallel. Neither changes the result for a given seed, and a
    network's values do not depend on `size`; with method="dense" they do not depend on which variables are
    requested either (up to floating-point rounding of matrix products of different shapes), while "lazy" batches
    only the MatMuls the requested variables need, so its draws (not their law) change with them.
    """
    if method not in METHODS:
        raise ProgramError(f"simulate: unknown method {method!r}; choose from {', '.join(METHODS)}")
    width, targets, size, root, threads = checked_arguments("simulate", program, width, variables, size, seed,
                                                            threads)
    if chunk_size is not None:
        chunk_size = check_size(chunk_size, "chunk_size")
    if method == "auto":
        method = "exact" if reducible(program, targets) else "lazy"
    if method == "exact":
        plan = ExactPlan(program, targets)
        check_network_memory("simulate", width, plan.network_floats(width), method)
        work = lambda b: simulate_exact_block(plan, width, targets, root, b[0], b[2])  # noqa: E731
        return _run_blocks(work, size, plan.block_size(width), len(targets), chunk_size, threads)
    if method == "lazy":
        plan = LazyPlan(program, targets)
        check_network_memory("simulate", width, _lazy_floats(plan, width), method)
        work = lambda b: simulate_lazy_block(plan, width, root, b[0], b[2])  # noqa: E731
        return _run_blocks(work, size, plan.block_size(width), len(targets), chunk_size, threads)
    block = block_size(program, width)
    rows = _rows_needed(program, targets, width)
    check_network_memory("simulate", width, _dense_floats(program, rows, width), method)
    work = lambda b: _simulate_block(program, width, targets, rows, root, b[0], block, b[2])  # noqa: E731
    return _run_blocks(work, size, block, len(targets), chunk_size, threads)


def simulate_with_moments(program: Program, width: int, variables, size: int, seed=None,
                          threads: int | None = None, method: str = "exact"):
    """`simulate(..., method=method)` plus, per network, the mean and covariance of the draws given everything
    but the last Gaussian rows: the finite-width law is the Gaussian mixture mean_m N(means_m, covs_m), the
    component form the "mixture" KL estimator needs.

    method="auto" takes "exact" wherever it applies and "lazy" elsewhere. method="exact" conditions on the Grams and
    random scalars (programs the exact sampler reduces, `netsor.finite.exact`). method="lazy" conditions on
    everything else the lazy interpreter draws: every vector target must be a MatMul whose coordinate 0 feeds
    nothing else (coordinate 0 of the targets by one matrix W is then jointly Gaussian, from W's row 0 given its
    other uses; different matrices independent), a scalar target is its value (covariance 0).

    Returns (draws (size, k), means (size, k), covs (size, k, k)); draws equal `simulate`'s for the same seed.
    """
    if method not in MOMENT_METHODS:
        raise ProgramError(f"simulate_with_moments: unknown method {method!r}; choose from "
                           f"{', '.join(MOMENT_METHODS)}")
    width, targets, size, root, threads = checked_arguments("simulate_with_moments", program, width, variables,
                                                            size, seed, threads, with_moments)
    k = len(targets)
    if method == "auto":
        method = "exact" if reducible(program, targets) else "lazy"
    if method == "lazy":
        plan = LazyPlan(program, targets)
        plan.moment_groups()  # ProgramError naming a target that is not Gaussian given the rest, before any work
        check_network_memory("simulate_with_moments", width, _lazy_floats(plan, width), method)
        work = lambda b: simulate_lazy_block(plan, width, root, b[0], b[2], moments=True)  # noqa: E731
        return tuple(run_blocks_in_parts(work, size, plan.block_size(width), [(k,), (k,), (k, k)], threads))
    plan = ExactPlan(program, targets)  # ProgramError naming the node where exact sampling does not apply
    check_network_memory("simulate_with_moments", width, plan.network_floats(width), method)
    work = lambda b: simulate_exact_block(plan, width, targets, root, b[0], b[2], moments=True)  # noqa: E731
    return tuple(run_blocks_in_parts(work, size, plan.block_size(width), [(k,), (k,), (k, k)], threads))


def _lazy_floats(plan: LazyPlan, width: int) -> int:
    """The coordinates one network of method="lazy" computes, as if all were live at once: a bound on its memory."""
    rows = plan.rows(width)
    return sum(rows.get(v.index, 0) for v in plan.needed if isinstance(v, Vector))


def _dense_floats(program: Program, rows: dict, width: int) -> int:
    """The matrix entries and vector coordinates one network of method="dense" draws: a bound on its memory."""
    return sum(rows.get(n.index, 0) * (dim_size(n.shape[1], width) if isinstance(n, Matrix) else 1)
               for n in program.nodes if isinstance(n, (Matrix, Vector)))
