"""A Gaussian law over named variables, in the style of scipy.stats: the infinite-head (and any other
normalised-sum) limit, and a summary of any law by its first two moments."""
from __future__ import annotations

import numpy as np

from ..errors import ProgramError
from ..ir.program import Node
from ..random import check_size, seed_sequence, stream
from .quadrature import gaussian_factor


class GaussianLaw:
    """N(mean, cov) over `variables`; `cov_se` is the Monte Carlo standard error of cov where it was estimated."""

    def __init__(self, variables, mean, cov, cov_se=None, description: str = ""):
        self.variables = (variables,) if isinstance(variables, Node) else tuple(variables)
        if not self.variables or not all(isinstance(v, Node) for v in self.variables):
            raise ProgramError(f"GaussianLaw: variables must be nodes of a program, got {variables!r}")
        if len({id(v) for v in self.variables}) != len(self.variables):
            raise ProgramError(f"GaussianLaw: variables repeat ({', '.join(v.name for v in self.variables)})")
        try:
            self.mean = np.asarray(mean, dtype=float)
            self.cov = np.asarray(cov, dtype=float)
            self.cov_se = None if cov_se is None else np.asarray(cov_se, dtype=float)
        except (TypeError, ValueError):
            raise ProgramError("GaussianLaw: mean, cov and cov_se must be arrays of numbers") from None
        self.description = description
        k = len(self.variables)
        if self.mean.shape != (k,) or self.cov.shape != (k, k):
            raise ProgramError(f"GaussianLaw: mean must be ({k},) and cov ({k}, {k})")
        if self.cov_se is not None and (self.cov_se.shape != (k, k) or np.any(self.cov_se < 0)):
            raise ProgramError(f"GaussianLaw: cov_se must be a non-negative ({k}, {k}) array")
        arrays = [self.mean, self.cov] + ([] if self.cov_se is None else [self.cov_se])
        if not all(np.all(np.isfinite(a)) for a in arrays):
            raise ProgramError("GaussianLaw: mean, cov and cov_se must be finite")
        from scipy import stats  # here, not at import: scipy.stats alone costs most of netsor's start-up

        try:
            stats.multivariate_normal(self.mean, self.cov, allow_singular=True)
        except ValueError:
            raise ProgramError("GaussianLaw: cov must be a symmetric positive semi-definite matrix") from None

    def __repr__(self) -> str:
        return f"<GaussianLaw over {', '.join(v.name for v in self.variables)}>"

    def _positions(self, variables, where: str) -> list[int]:
        """Positions of `variables` (nodes or names of this law's variables); None means all of them."""
        if variables is None:
            return list(range(len(self.variables)))
        if isinstance(variables, (str, Node)):
            variables = [variables]
        try:
            variables = list(variables)
        except TypeError:
            variables = [variables]
        out = []
        for v in variables:
            found = [i for i, u in enumerate(self.variables) if u is v or isinstance(v, str) and u.name == v]
            if not found:
                raise ProgramError(f"{where}: {v!r} is not one of this law's variables "
                                   f"({', '.join(u.name for u in self.variables)}); the signature is "
                                   f"{where}(variables, size, seed), as for netsor.Law")
            out.append(found[0])
        if not out:
            raise ProgramError(f"{where}: no variables given")
        return out

    def sample(self, variables, size: int, seed=None, threads: int | None = None) -> np.ndarray:
        """(size, k) draws of `variables` (the signature of `netsor.Law.sample`; None for all variables)."""
        index = self._positions(variables, "sample")
        size = check_size(size, floats_per_item=len(index))
        if threads is not None:
            check_size(threads, "threads")  # one BLAS product: accepted for the common signature
        factor = gaussian_factor(self.cov[np.ix_(index, index)])
        z = stream(seed_sequence(seed), 0).standard_normal((size, factor.shape[1]))
        return self.mean[index] + z @ factor.T

    rvs = sample

    def logpdf(self, y, variables=None) -> np.ndarray:
        """log N(y; μ, C) over `variables` (None: all), points y (..., k)."""
        index = self._positions(variables, "logpdf")
        try:
            y = np.asarray(y, dtype=float)
        except (TypeError, ValueError):
            raise ProgramError(f"logpdf: points must be an array of numbers, got {y!r}") from None
        if len(index) > 1 and y.shape[-1:] != (len(index),):
            raise ProgramError(f"logpdf: points must have last dimension {len(index)}, got shape {y.shape}")
        if not np.all(np.isfinite(y)):
            raise ProgramError("logpdf: points must be finite")
        from scipy import stats

        frozen = stats.multivariate_normal(self.mean[index], self.cov[np.ix_(index, index)], allow_singular=True)
        return np.asarray(frozen.logpdf(y))

    def pdf(self, y, variables=None) -> np.ndarray:
        return np.exp(self.logpdf(y, variables))

    def describe(self) -> str:
        names = ", ".join(v.name for v in self.variables)
        cov = np.array2string(self.cov, precision=4, suppress_small=True)
        text = f"({names}) ~ N(0, C)" if not np.any(self.mean) else f"({names}) ~ N(μ, C), μ = {self.mean}"
        return "\n".join(filter(None, [self.description, text, f"C =\n{cov}"]))
