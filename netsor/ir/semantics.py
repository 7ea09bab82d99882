"""The finite-width semantics of derived nodes on a batch of networks — one copy that every interpreter (dense,
lazy, exact fronts and fixed dimensions, the limit's per-sample rows) uses; interpreters differ only in how they
produce inputs and MatMuls.

Batches: a vector is (S, r), its first r coordinates in each of S networks; a scalar is (S,).

    φ(v_1, ..., v_k)      coordinatewise
    Σ_j c_j v_j           c_j a constant or a scalar node (one value per network)
    (1/d) Σ_α φ(v)_α      over all d coordinates
    u·v / d^a             over all d coordinates
    f(s_1, ..., s_k)      a scalar function, vectorised over networks
    softmax(p)_i          exp(p_i − max p) / Σ_j exp(p_j − max p): all entries of one softmax evaluated once
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import ProgramError
from .program import WIDTH, Dot, LinComb, Moment, Nonlin, Scalar, ScalarFn, SoftmaxEntry


def stable_softmax(scores: Sequence[np.ndarray]) -> np.ndarray:
    """softmax over a list of k equally shaped arrays, as one (k, ...) array: exp(p_i − max p) / Σ_j exp(p_j − max p).

    The array form of the one softmax rule; compiled kernels use its numba twin `compiled.softmax_into` (a test
    checks they agree to rounding). numpy's vectorised exp is why the array form is not routed through numba:
    doing so cost the limit sampler 10–20% of its throughput."""
    stacked = np.stack([np.asarray(p, dtype=float) for p in scores])
    weights = np.exp(stacked - stacked.max(axis=0))
    weights /= weights.sum(axis=0)
    return weights


def scalar_function_value(node: Scalar, value_of, cache: dict):
    """The value of a ScalarFn or SoftmaxEntry from its arguments' values (`value_of`); the entries of one
    softmax are evaluated together, once per `cache`."""
    if isinstance(node, ScalarFn):
        return np.asarray(node.fn(*(value_of(a) for a in node.args)), dtype=float)
    key = ("softmax", id(node.group))
    if key not in cache:
        cache[key] = stable_softmax([value_of(p) for p in node.group.scores])
    return cache[key][node.position]


def _column(x):
    return x[:, None]


def derived_value(node, value_of, width: int, cache: dict, rows: int | None = None, per_network=_column):
    """The batch value of a Nonlin, LinComb, Moment, Dot, ScalarFn or SoftmaxEntry from its parents' values.

    value_of(parent) gives the parent's batch; vectors are cut to their first `rows` coordinates (None: all);
    per_network(s) shapes a scalar coefficient (S,) to multiply a vector batch (default s[:, None]); `cache` holds
    the softmax groups already evaluated.
    """
    def vector(a):
        value = value_of(a)
        return value if rows is None else value[:, :rows]

    if isinstance(node, Nonlin):
        return node.phi(*(vector(a) for a in node.args))
    if isinstance(node, LinComb):
        total = None
        for c, a in zip(node.coeffs, node.args):
            term = (per_network(value_of(c)) if isinstance(c, Scalar) else c) * vector(a)
            if total is None:
                total = term
            else:
                total += term  # in place: one fresh array per combination, not one per term
        return total
    if isinstance(node, Moment):
        return np.mean(node.phi(*(value_of(a) for a in node.args)), axis=1)
    if isinstance(node, Dot):
        a, b = node.args
        dim = width if a.dim == WIDTH else a.dim
        return np.einsum("sr,sr->s", value_of(a), value_of(b)) / float(dim) ** node.exponent
    if isinstance(node, (ScalarFn, SoftmaxEntry)):
        return scalar_function_value(node, value_of, cache)
    raise ProgramError(f"{node.name}: no finite-width rule for {type(node).__name__} nodes")
