"""Gaussian expectations E[φ(u) ψ(v)]: closed forms where they exist, Gauss–Hermite quadrature otherwise.

Closed forms (u, v jointly Gaussian with variances s_uu, s_vv and covariance s_uv):
    identity·identity  s_uv
    relu·relu          sqrt(s_uu s_vv)/(2π) (sin θ + (π − θ) cos θ),  cos θ = s_uv / sqrt(s_uu s_vv)
    erf·erf            (2/π) arcsin(2 s_uv / sqrt((1 + 2 s_uu)(1 + 2 s_vv)))
    identity·φ         s_uv E[φ'(v)] (Stein):  relu → s_uv/2,  erf → s_uv · 2/sqrt(π (1 + 2 s_vv))
    E[relu(v)] = sqrt(s_vv/(2π)),  E[erf(v)] = 0
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np


def relu_relu(s_uu: float, s_vv: float, s_uv: float) -> float:
    """Arc-cosine kernel of degree 1 (Cho & Saul)."""
    norm = math.sqrt(s_uu * s_vv)
    if norm == 0.0:
        return 0.0
    cos = min(1.0, max(-1.0, s_uv / norm))
    theta = math.acos(cos)
    return norm / (2 * math.pi) * (math.sin(theta) + (math.pi - theta) * cos)


def erf_erf(s_uu: float, s_vv: float, s_uv: float) -> float:
    """Williams' arcsine kernel for erf."""
    return 2 / math.pi * math.asin(min(1.0, max(-1.0, 2 * s_uv / math.sqrt((1 + 2 * s_uu) * (1 + 2 * s_vv)))))


def identity_relu(s_uu: float, s_vv: float, s_uv: float) -> float:
    return 0.5 * s_uv if s_vv > 0 else 0.0


def identity_erf(s_uu: float, s_vv: float, s_uv: float) -> float:
    return s_uv * 2 / math.sqrt(math.pi * (1 + 2 * s_vv))


# E[φ(u) ψ(v)] keyed by (name φ, name ψ); identity·identity is the covariance itself
CLOSED_FORM_PRODUCTS = {
    ("identity", "identity"): lambda s_uu, s_vv, s_uv: s_uv,
    ("relu", "relu"): relu_relu,
    ("erf", "erf"): erf_erf,
    ("identity", "relu"): identity_relu,
    ("identity", "erf"): identity_erf,
}

CLOSED_FORM_MEANS = {
    "identity": lambda s: 0.0,
    "relu": lambda s: math.sqrt(max(s, 0.0) / (2 * math.pi)),
    "erf": lambda s: 0.0,
}


def closed_form_product(phi: str, psi: str, s_uu: float, s_vv: float, s_uv: float) -> float | None:
    """E[φ(u) ψ(v)] in closed form, or None when no closed form is known for the pair."""
    if (phi, psi) in CLOSED_FORM_PRODUCTS:
        return CLOSED_FORM_PRODUCTS[(phi, psi)](s_uu, s_vv, s_uv)
    if (psi, phi) in CLOSED_FORM_PRODUCTS:
        return CLOSED_FORM_PRODUCTS[(psi, phi)](s_vv, s_uu, s_uv)
    return None


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


def gaussian_factor(cov: np.ndarray, rtol: float = 1e-12) -> np.ndarray:
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
        order = FINE_ORDERS[rank] // 2 if coarse else FINE_ORDERS[rank]
        nodes, weights = hermite_rule(order)
        grid = np.stack(np.meshgrid(*([nodes] * rank), indexing="ij"), axis=-1).reshape(-1, rank)
        w = np.ones(1)
        for _ in range(rank):
            w = np.multiply.outer(w, weights).ravel()
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
