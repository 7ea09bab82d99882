"""Gaussian quadrature rules, public: Gauss–Hermite rules for E[f(z)], z ~ N(0, I), the rank-revealing factor of a
covariance, E[f(g)] for g ~ N(0, Σ) with its coarse-rule error, and the half-line rule and cloud-in-cell binning
that integrate even Gaussian scale mixtures (see `netsor.limit.quadrature`)."""
from .limit.quadrature import (MAX_LOG_VARIANCE_RANGE, gaussian_expectation, gaussian_factor, half_line_rule,
                               hermite_rule, linear_binning, tensor_hermite_rule)

__all__ = ["hermite_rule", "tensor_hermite_rule", "gaussian_factor", "gaussian_expectation", "half_line_rule",
           "linear_binning", "MAX_LOG_VARIANCE_RANGE"]
