"""Gaussian quadrature rules, public: Gauss–Hermite rules for E[f(z)], z ~ N(0, I), the rank-revealing factor of a
covariance, and E[f(g)] for g ~ N(0, Σ) with its coarse-rule error (see `netsor.limit.quadrature`)."""
from .limit.quadrature import gaussian_expectation, gaussian_factor, hermite_rule, tensor_hermite_rule

__all__ = ["hermite_rule", "tensor_hermite_rule", "gaussian_factor", "gaussian_expectation"]
