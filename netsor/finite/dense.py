"""The dense interpreter: real Gaussian matrices, the brute-force reference every faster method is checked
against (O(n²) per network)."""
from __future__ import annotations

import threading

import numpy as np

from ..ir.program import (Dot, Input, LinComb, MatMul, Matrix, Moment, Nonlin, Program, Scalar, ScalarFn, SoftmaxEntry,
                          dim_size)
from ..ir.semantics import derived_value
from ..limit.quadrature import gaussian_factor
from ..random import stream

BLOCK_FLOATS = 1 << 21  # ~16 MB of matrix entries per block of networks


def block_size(program: Program, width: int) -> int:
    """Networks per block (one random stream) of method='dense': ~2^21 matrix entries, a function of the program
    and width only (never of chunk or thread count)."""
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
            product = np.matmul(w, values[node.arg.index][:, :, None])[:, :, 0]
            values[node.index] = np.sqrt(node.matrix.var / cols) * product
        else:  # derived nodes: the semantics every interpreter shares
            values[node.index] = derived_value(node, lambda a: values[a.index], width, values, rows=r)
    out = np.empty((count, len(targets)))
    for j, t in enumerate(targets):
        v = values[t.index]
        out[:, j] = v if v.ndim == 1 else v[:, 0]
    return out


