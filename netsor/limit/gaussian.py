"""A Gaussian law over named variables, in the style of scipy.stats: the infinite-head (and any other
normalised-sum) limit, and a summary of any law by its first two moments."""
from __future__ import annotations

import numpy as np
from scipy import stats

from ..errors import ProgramError
from ..ir.program import Node
from ..random import check_size, seed_sequence, stream
from .quadrature import gaussian_factor


class GaussianLaw:
    """N(mean, cov) over `variables`; `cov_se` is the Monte Carlo standard error of cov where it was estimated."""

    def __init__(self, variables, mean, cov, cov_se=None, description: str = ""):
        self.variables = tuple(variables)
        self.mean = np.asarray(mean, dtype=float)
        self.cov = np.asarray(cov, dtype=float)
        self.cov_se = None if cov_se is None else np.asarray(cov_se, dtype=float)
        self.description = description
        k = len(self.variables)
        if self.mean.shape != (k,) or self.cov.shape != (k, k):
            raise ProgramError(f"GaussianLaw: mean must be ({k},) and cov ({k}, {k})")
        if not (np.all(np.isfinite(self.mean)) and np.all(np.isfinite(self.cov))):
            raise ProgramError("GaussianLaw: mean and cov must be finite")
        stats.multivariate_normal(self.mean, self.cov, allow_singular=True)  # refuses a cov that is not PSD

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
        frozen = stats.multivariate_normal(self.mean[index], self.cov[np.ix_(index, index)], allow_singular=True)
        return np.asarray(frozen.logpdf(np.asarray(y, dtype=float)))

    def pdf(self, y, variables=None) -> np.ndarray:
        return np.exp(self.logpdf(y, variables))

    def describe(self) -> str:
        names = ", ".join(v.name for v in self.variables)
        cov = np.array2string(self.cov, precision=4, suppress_small=True)
        text = f"({names}) ~ N(0, C)" if not np.any(self.mean) else f"({names}) ~ N(μ, C), μ = {self.mean}"
        return "\n".join(filter(None, [self.description, text, f"C =\n{cov}"]))
