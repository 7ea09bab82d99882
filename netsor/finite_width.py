"""Finite-width interpreters: run a program at width n and report coordinate 0 of each requested variable.

method="dense" builds real Gaussian matrices and multiplies them, the brute-force reference every faster method
is checked against; method="exact" (netsor.exact) draws the same law from Gram matrices at a cost independent of n;
method="lazy" (netsor.lazy) runs any program at O(n) per network, drawing each MatMul from the Gram of its
arguments given the matrix's earlier uses, never an n×n matrix. Networks are processed in blocks; each block draws
every input group and matrix from its own stream keyed by (seed, block, node), so results do not depend on chunk
size or thread count. Dense draws only the rows of a matrix that some requested coordinate depends on, and rows are
drawn first-row-first, so the values of the rows that are drawn do not depend on which variables were requested.
"""
from __future__ import annotations

import numbers
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from threadpoolctl import threadpool_limits

from . import exact, lazy
from ._random import check_size, seed_sequence, stream
from .errors import ProgramError
from .kernels import gaussian_factor
from .program import (Dot, Input, LinComb, MatMul, Matrix, Moment, Nonlin, Program, Scalar, ScalarFn, SoftmaxEntry,
                      dim_size, scalar_function_value)

METHODS = ("auto", "dense", "exact", "lazy")
MOMENT_METHODS = ("exact", "lazy")
BLOCK_FLOATS = 1 << 21  # ~16 MB of matrix entries per block of networks


def block_size(program: Program, width: int) -> int:
    """Networks per random stream: a function of the program and width only (never of chunk or thread count)."""
    largest = max((dim_size(m.shape[0], width) * dim_size(m.shape[1], width)
                   for m in program.nodes if isinstance(m, Matrix)), default=width)
    return int(max(1, min(1024, BLOCK_FLOATS // max(largest, 1))))


def _rows_needed(program: Program, targets, width: int) -> dict[int, int]:
    """For each node, how many leading coordinates must be computed (1 for a requested coordinate 0)."""
    rows: dict[int, int] = {}

    def need(node, r):
        if isinstance(node, Scalar):
            r = 1
        if rows.get(node.index, 0) >= r:
            return
        rows[node.index] = r
        if isinstance(node, (Moment, Dot)):
            for a in node.args:
                need(a, dim_size(a.dim, width))
        elif isinstance(node, (ScalarFn, SoftmaxEntry)):
            for p in node.parents():
                need(p, 1)
        elif isinstance(node, MatMul):
            need(node.matrix, r)  # for a matrix: rows of it
            need(node.arg, dim_size(node.arg.dim, width))
        elif isinstance(node, (Nonlin, LinComb)):
            for p in node.parents():
                need(p, r)

    for t in targets:
        need(t, 1)
    return rows


_workspace = threading.local()


def _buffer(key: int, shape: tuple) -> np.ndarray:
    """A per-thread scratch array reused across blocks: fresh 10–100 MB arrays per block cost more in page faults
    than drawing the normals that fill them."""
    buffers = _workspace.__dict__.setdefault("buffers", {})
    buf = buffers.get(key)
    if buf is None or buf.shape != shape:
        buf = buffers[key] = np.empty(shape)
    return buf


def _simulate_block(program: Program, width: int, targets, rows, root, block: int, full: int,
                    count: int) -> np.ndarray:
    """`count` networks of block number `block`; the stream always holds `full` networks (the first `count` kept),
    so a network's values do not depend on the total size requested."""
    values: dict[int, np.ndarray] = {}
    for group, members in program.input_groups:
        r = max(rows.get(m.index, 0) for m in members)
        if r == 0:
            continue
        # coordinates iid across α, jointly N(0, Σ) across the group; drawn row-major over (α, network, input)
        factor = gaussian_factor(group.cov)
        z = stream(root, block, members[0].index).standard_normal((r, full, factor.shape[1]))[:, :count]
        x = z @ factor.T  # (r, count, k)
        for m in members:
            values[m.index] = np.ascontiguousarray(x[:, :, m.position].T)  # (count, r)
    for node in program.nodes:
        r = rows.get(node.index, 0)
        if r == 0 or isinstance(node, Input):
            continue
        if isinstance(node, Matrix):
            cols = dim_size(node.shape[1], width)
            w = stream(root, block, node.index).standard_normal(out=_buffer(node.index, (r, full, cols)))
            values[node.index] = w[:, :count].transpose(1, 0, 2)  # standard normal entries, (count, rows, cols)
        elif isinstance(node, MatMul):
            w = values[node.matrix.index][:, :r, :]
            cols = w.shape[2]
            # scale the O(n) product rather than the O(n²) matrix: W = sqrt(var/cols) · standard normal entries
            values[node.index] = np.sqrt(node.matrix.var / cols) * np.matmul(w, values[node.arg.index][:, :, None])[:, :, 0]
        elif isinstance(node, Nonlin):
            values[node.index] = node.phi(*(values[a.index][:, :r] for a in node.args))
        elif isinstance(node, LinComb):
            total = np.zeros((count, r))
            for c, a in zip(node.coeffs, node.args):
                coeff = values[c.index][:, None] if isinstance(c, Scalar) else c
                total += coeff * values[a.index][:, :r]
            values[node.index] = total
        elif isinstance(node, Moment):
            values[node.index] = np.mean(node.phi(*(values[a.index] for a in node.args)), axis=1)
        elif isinstance(node, Dot):
            a, b = node.args
            values[node.index] = np.einsum("br,br->b", values[a.index], values[b.index]) / \
                dim_size(a.dim, width) ** node.exponent
        elif isinstance(node, (ScalarFn, SoftmaxEntry)):
            values[node.index] = scalar_function_value(node, lambda a: values[a.index], values)
        else:
            raise ProgramError(f"{node.name}: method='dense' has no rule for {type(node).__name__} nodes")
    out = np.empty((count, len(targets)))
    for j, t in enumerate(targets):
        v = values[t.index]
        out[:, j] = v if v.ndim == 1 else v[:, 0]
    return out


def simulate(program: Program, width: int, variables, size: int, seed=None, method: str = "auto",
             chunk_size: int | None = None, threads: int | None = None) -> np.ndarray:
    """Coordinate 0 of each requested variable (scalars: their value) in `size` independent width-`width` networks.

    method: "dense" multiplies real Gaussian matrices (any program, O(n²) per network); "exact" draws the same
    law from Gram matrices at a cost independent of n (programs linear in their vectors, see `netsor.exact`);
    "lazy" draws the same law for any program at O(n) per network, each MatMul from the Gram of its arguments
    given the matrix's earlier uses (see `netsor.lazy`); "auto" (the default) uses exact wherever it applies and
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
        method = "exact" if exact.reducible(program, targets) else "lazy"
    if method == "exact":
        plan = exact.ExactPlan(program, targets)
        work = lambda b: exact.simulate_exact_block(plan, width, targets, root, b[0], b[2])  # noqa: E731
        return _run_blocks(work, size, plan.block_size(width), len(targets), chunk_size, threads)
    if method == "lazy":
        plan = lazy.LazyPlan(program, targets)
        work = lambda b: lazy.simulate_lazy_block(plan, width, root, b[0], b[2])  # noqa: E731
        return _run_blocks(work, size, plan.block_size(width), len(targets), chunk_size, threads)
    block = block_size(program, width)
    rows = _rows_needed(program, targets, width)
    work = lambda b: _simulate_block(program, width, targets, rows, root, b[0], block, b[2])  # noqa: E731
    return _run_blocks(work, size, block, len(targets), chunk_size, threads)


def simulate_with_moments(program: Program, width: int, variables, size: int, seed=None,
                          threads: int | None = None, method: str = "exact"):
    """`simulate(..., method=method)` plus, per network, the mean and covariance of the draws given everything
    but the last Gaussian rows: the finite-width law is the Gaussian mixture mean_m N(means_m, covs_m), the
    component form the "mixture" KL estimator needs.

    method="exact" conditions on the Grams and random scalars (programs `netsor.exact` reduces). method="lazy"
    conditions on everything else the lazy interpreter draws: every vector target must be a MatMul whose
    coordinate 0 feeds nothing else (coordinate 0 of the targets by one matrix W is then jointly Gaussian, from
    W's row 0 given its other uses; different matrices independent), a scalar target is its value (covariance 0).

    Returns (draws (size, k), means (size, k), covs (size, k, k)); draws equal `simulate`'s for the same seed.
    """
    if method not in MOMENT_METHODS:
        raise ProgramError(f"simulate_with_moments: unknown method {method!r}; choose from "
                           f"{', '.join(MOMENT_METHODS)}")
    width, targets, size, root, threads = checked_arguments("simulate_with_moments", program, width, variables,
                                                            size, seed, threads)
    k = len(targets)
    if method == "lazy":
        plan = lazy.LazyPlan(program, targets)
        plan.moment_groups()  # ProgramError naming a target that is not Gaussian given the rest, before any work
        work = lambda b: lazy.simulate_lazy_block(plan, width, root, b[0], b[2], moments=True)  # noqa: E731
        return tuple(run_blocks_in_parts(work, size, plan.block_size(width), [(k,), (k,), (k, k)], threads))
    plan = exact.ExactPlan(program, targets)  # ProgramError naming the node where exact sampling does not apply
    work = lambda b: exact.simulate_exact_block(plan, width, targets, root, b[0], b[2], moments=True)  # noqa: E731
    return tuple(run_blocks_in_parts(work, size, plan.block_size(width), [(k,), (k,), (k, k)], threads))


def checked_arguments(where: str, program: Program, width, variables, size, seed, threads=None):
    """The checks every finite-width entry point makes: (width, target nodes, size, root SeedSequence, threads)."""
    if not isinstance(program, Program):
        raise ProgramError(f"{where}: expected a netsor Program, got {type(program).__name__}")
    width = check_width(width)
    targets = program.resolve(variables, where)
    size = check_size(size)
    root = seed_sequence(seed)
    if threads is not None:
        threads = check_size(threads, "threads")
    return width, targets, size, root, threads


def check_width(width) -> int:
    if isinstance(width, bool) or not isinstance(width, numbers.Integral) or width < 1:
        raise ProgramError(f"simulate: width must be a positive integer, got {width!r}")
    return int(width)


def run_blocks_in_parts(work, size: int, block: int, shapes, threads) -> list[np.ndarray]:
    """`_run_blocks` for work returning a tuple of arrays (count, *shapes[i]): one array (size, *shapes[i]) each."""
    widths = [int(np.prod(shape)) for shape in shapes]

    def flat(b):
        return np.concatenate([part.reshape(b[2], -1) for part in work(b)], axis=1)

    out = _run_blocks(flat, size, block, sum(widths), None, threads)
    parts = np.split(out, np.cumsum(widths)[:-1], axis=1)
    return [part.reshape((size,) + tuple(shape)) for part, shape in zip(parts, shapes)]


def _run_blocks(work, size: int, block: int, columns: int, chunk_size, threads) -> np.ndarray:
    """work((block index, start, count)) → (count, columns) for every block of networks, in parallel, written in
    order into one array; chunk_size bounds how many networks are in flight at once."""
    threads = threads or os.cpu_count() or 1
    blocks = [(b, start, min(block, size - start)) for b, start in enumerate(range(0, size, block))]
    # a chunk is a run of whole blocks; chunk_size only bounds memory
    per_chunk = max(threads, (chunk_size or block * threads) // block)
    out = np.empty((size, columns))
    # our threads split the networks; BLAS threads on top of them only contend for the same cores
    with ThreadPoolExecutor(max_workers=threads) as pool, threadpool_limits(1 if threads > 1 else None, "blas"):
        for i in range(0, len(blocks), per_chunk):
            chunk = blocks[i:i + per_chunk]
            for (b, start, count), res in zip(chunk, pool.map(work, chunk)):
                out[start:start + count] = res
    return out
