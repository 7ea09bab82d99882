"""A Gaussian law over named variables, in the style of scipy.stats: the infinite-head (and any other
normalised-sum) limit, and a summary of any law by its first two moments."""
from __future__ import annotations

import numpy as np
from scipy import stats

from ..errors import ProgramError
from ..random import check_size, seed_sequence, stream


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
        self._frozen = stats.multivariate_normal(self.mean, self.cov, allow_singular=True)

    def __repr__(self) -> str:
        return f"<GaussianLaw over {', '.join(v.name for v in self.variables)}>"

    def sample(self, size: int, seed=None) -> np.ndarray:
        """(size, k) draws."""
        size = check_size(size)
        return self._frozen.rvs(size=size, random_state=stream(seed_sequence(seed), 0)).reshape(size, -1)

    rvs = sample

    def logpdf(self, y) -> np.ndarray:
        return np.asarray(self._frozen.logpdf(y))

    def pdf(self, y) -> np.ndarray:
        return np.exp(self.logpdf(y))

    def describe(self) -> str:
        names = ", ".join(v.name for v in self.variables)
        cov = np.array2string(self.cov, precision=4, suppress_small=True)
        text = f"({names}) ~ N(0, C)" if not np.any(self.mean) else f"({names}) ~ N(μ, C), μ = {self.mean}"
        return "\n".join(filter(None, [self.description, text, f"C =\n{cov}"]))
