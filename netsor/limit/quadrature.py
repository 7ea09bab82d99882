"""Gaussian expectations E[f(g)], g ~ N(0, Σ), where no closed form is registered (closed forms live with the
nonlinearities, `netsor.ir.nonlinearities`): composite Gauss–Legendre in one effective dimension, tensor
Gauss–Hermite rules up to six, Monte Carlo beyond, each with a coarse rule beside it for an error bound; and, one
per draw of the random scalars, per-sample tensor rules with their half-order error (for values used
nonlinearly) and unbiased antithetic Monte Carlo estimates (for moments, which are linear in them).
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from ..compiled.linalg import RANK_RTOL, semidefinite_cholesky

# Tensor Gauss–Hermite orders per effective dimension, keeping the rule under ~10^6 nodes (numpy's rule is
# stable to order 300).
# The coarse rule (half the order) is evaluated alongside to state an error bound.
FINE_ORDERS = {1: 300, 2: 160, 3: 48, 4: 24, 5: 14, 6: 10}
MONTE_CARLO_POINTS = 1 << 18  # beyond six effective dimensions the rule would be too coarse


@lru_cache(maxsize=None)
def hermite_rule(order: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights of the order-point rule for E[f(z)], z ~ N(0, 1)."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(order)
    return nodes, weights / math.sqrt(2 * math.pi)


@lru_cache(maxsize=64)
def tensor_hermite_rule(order: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes (order^dim, dim) and weights of the tensor-product rule for E[f(z)], z ~ N(0, I_dim)."""
    nodes, weights = hermite_rule(order)
    grid = np.stack(np.meshgrid(*([nodes] * dim), indexing="ij"), axis=-1).reshape(-1, dim)
    w = np.ones(1)
    for _ in range(dim):
        w = np.multiply.outer(w, weights).ravel()
    grid.setflags(write=False)  # cached and shared
    w.setflags(write=False)
    return grid, w


def linear_binning(u: np.ndarray, lo: float, step: float, bins: int):
    """Left node and fraction of each point on the node grid lo + step·j (cloud-in-cell weights)."""
    if bins == 1:
        return np.zeros(len(u), dtype=np.intp), np.zeros(len(u))
    t = np.clip((u - lo) / step, 0, bins - 1)
    left = np.minimum(t.astype(np.intp), bins - 2)
    return left, t - left


MAX_LOG_VARIANCE_RANGE = 60.0  # log V spans beyond which half_line_rule's grid is not built (mixtures e^60 apart)


def half_line_rule(log_var_lo: float, log_var_hi: float) -> tuple[np.ndarray, np.ndarray]:
    """Points y and weights dy for ∫_0^∞ of even mixtures of N(0, V), log V in [lo, hi]: y = e^t, Simpson in t
    (dy = y dt, step 0.004), resolving every component from 1e-4 σ_min to 14 σ_max; [0, y₀] where all are flat."""
    t_lo, t_hi = log_var_lo / 2 + math.log(1e-4), log_var_hi / 2 + math.log(14.0)
    G = max(2001, int((t_hi - t_lo) / 0.004) | 1)
    t = np.linspace(t_lo, t_hi, G)
    y = np.exp(t)
    simpson = np.ones(G)
    simpson[1:-1:2], simpson[2:-1:2] = 4.0, 2.0
    dy = simpson * (t[1] - t[0]) / 3 * y
    dy[0] += y[0]
    return y, dy


def gaussian_factor(cov: np.ndarray, rtol: float = RANK_RTOL) -> np.ndarray:
    """F with F Fᵀ = cov and F of full column rank (rank-revealing eigendecomposition; cov may be singular)."""
    cov = np.atleast_2d(np.asarray(cov, dtype=float))
    vals, vecs = np.linalg.eigh((cov + cov.T) / 2)
    keep = vals > rtol * max(vals.max(initial=0.0), 1e-300)
    return vecs[:, keep] * np.sqrt(vals[keep])


def gaussian_expectation(integrand, cov: np.ndarray, coarse: bool = False, kinks=()) -> np.ndarray:
    """E[integrand(g)] for g ~ N(0, cov); integrand maps (points, d) to (points,) or (points, m).

    One effective dimension: composite Gauss–Legendre against the normal density on [−12, 12], split at the
    integrand's kinks (`kinks`: pairs (a, k), a kink where a·g = k), so piecewise-smooth integrands converge
    exponentially. Two to six: a tensor Gauss–Hermite rule on the rank of cov. Beyond: Monte Carlo with a fixed
    stream. `coarse` halves the order; callers report twice the fine–coarse difference as the error bound
    (Gauss–Hermite converges only like 1/order across a kink).
    """
    factor = gaussian_factor(cov)
    rank = factor.shape[1]
    d = factor.shape[0]
    if rank == 0:
        return np.asarray(integrand(np.zeros((1, d))))[0]
    if rank == 1:
        breaks = []
        for a, k in kinks:
            slope = float(np.dot(a, factor[:, 0]))
            if slope != 0.0 and abs(k / slope) < LEGENDRE_HALF_WIDTH:
                breaks.append(k / slope)
        t, w = piecewise_legendre_rule(tuple(sorted(set(breaks))), coarse)
        values = np.asarray(integrand(t[:, None] * factor[:, 0]), dtype=float)
        return np.tensordot(w, values, axes=(0, 0))
    if rank in FINE_ORDERS:
        grid, w = tensor_hermite_rule(FINE_ORDERS[rank] // 2 if coarse else FINE_ORDERS[rank], rank)
        values = np.asarray(integrand(grid @ factor.T), dtype=float)
        return np.tensordot(w, values, axes=(0, 0))
    rng = np.random.default_rng(np.random.SeedSequence(20261123, spawn_key=(int(coarse),)))
    count = MONTE_CARLO_POINTS // 4 if coarse else MONTE_CARLO_POINTS
    z = rng.standard_normal((count, rank))
    return np.asarray(integrand(z @ factor.T), dtype=float).mean(axis=0)


LEGENDRE_HALF_WIDTH = 12.0  # the normal mass beyond ±12 is 3.6e-33
LEGENDRE_PIECE = 1.5  # longest piece between breakpoints
LEGENDRE_ORDER = 24  # nodes per piece (12 for the coarse rule)


@lru_cache(maxsize=256)
def piecewise_legendre_rule(breaks: tuple, coarse: bool) -> tuple[np.ndarray, np.ndarray]:
    """Nodes t and weights w with Σ w f(t) ≈ E[f(z)], z ~ N(0, 1), for f smooth between the breakpoints."""
    edges = np.union1d(np.linspace(-LEGENDRE_HALF_WIDTH, LEGENDRE_HALF_WIDTH,
                                   int(2 * LEGENDRE_HALF_WIDTH / LEGENDRE_PIECE) + 1), np.asarray(breaks, float))
    x, wx = np.polynomial.legendre.leggauss(LEGENDRE_ORDER // 2 if coarse else LEGENDRE_ORDER)
    lo, hi = edges[:-1, None], edges[1:, None]
    t = ((hi - lo) / 2 * x + (hi + lo) / 2).ravel()
    w = ((hi - lo) / 2 * wx).ravel() * np.exp(-t ** 2 / 2) / math.sqrt(2 * math.pi)
    return t, w


# Per-sample rules run once per draw of the random scalars; each is paired with a rule of half its order, and the
# pair's difference is the per-sample error that callers check against `PER_SAMPLE_RTOL` (Gauss–Hermite converges
# only like a power of the order across a kink, so the coarse rule is a conservative bound there).
BATCHED_ORDERS = {1: 200, 2: 32, 3: 12, 4: 8}
PER_SAMPLE_RTOL = 1e-3
BATCH_POINTS = 1 << 22


def batched_gaussian_expectation(integrand, cov: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """E[integrand(g)] for g ~ N(0, cov[:, :, b]) separately for every b, an error estimate per b (the difference
    from the half-order rule) and the scale E|integrand(g)| to judge it against (an integral that cancels to 0 is
    resolved when its error is small next to what cancels); cov (d, d, B), integrand maps points (b, P, d) and the
    slice of samples they belong to to values (b, P). A tensor Gauss–Hermite rule through a per-sample
    semi-definite Cholesky factor; at most `max(BATCHED_ORDERS)` dimensions (callers refuse more)."""
    d, _, B = cov.shape
    fine, coarse = (tensor_hermite_rule(order, d) for order in (BATCHED_ORDERS[d], BATCHED_ORDERS[d] // 2))
    factors = semidefinite_cholesky(np.ascontiguousarray(cov, dtype=float))
    out, error, scale = np.empty(B), np.empty(B), np.empty(B)
    step = max(1, BATCH_POINTS // len(fine[0]))
    for start in range(0, B, step):
        part = slice(start, start + step)
        values = []
        for grid, w in (fine, coarse):
            points = np.einsum("ijb,pj->bpi", factors[:, :, part], grid)
            f = np.asarray(integrand(points, part), float)
            values.append(f @ w)
            if grid is fine[0]:
                scale[part] = np.abs(f) @ w
        out[part], error[part] = values[0], np.abs(values[0] - values[1])
    return out, error, scale


def monte_carlo_gaussian_expectation(integrand, cov: np.ndarray, rng: np.random.Generator,
                                     draws: int) -> np.ndarray:
    """An unbiased estimate of E[integrand(g)], g ~ N(0, cov[:, :, b]), for every b: the mean over `draws`
    antithetic draws (g and −g). Averaged over the samples b its noise is part of the outer Monte Carlo error, so
    this serves quantities that are linear in the per-sample expectation; same calling convention as
    `batched_gaussian_expectation`."""
    d, _, B = cov.shape
    factors = semidefinite_cholesky(np.ascontiguousarray(cov, dtype=float))
    z = rng.standard_normal((B, draws // 2, d))  # sample-major: the first samples never depend on B
    z = np.concatenate([z, -z], axis=1)
    out = np.empty(B)
    step = max(1, BATCH_POINTS // z.shape[1])
    for start in range(0, B, step):
        part = slice(start, start + step)
        points = np.einsum("ijb,bpj->bpi", factors[:, :, part], z[part])
        out[part] = np.asarray(integrand(points, part), float).mean(axis=1)
    return out
