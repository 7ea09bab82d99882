"""Antithetic twins of Bartlett factors: a second exact Wishart draw whose first-order fluctuation is the first's,
negated (for coupled draws whose finite-minus-limit gap then cancels at first order within a pair of twins).

Bartlett's factor T of Wishart(ν, I_M) has independent entries: T_ij ~ N(0, 1) below the diagonal and
T_ii² ~ χ²_{ν−i}. The twin T′ has T′_ij = −T_ij (the law of a normal is symmetric) and T′_ii² = F⁻¹(1 − F(T_ii²)),
F the χ²_{ν−i} distribution function (the reflection of a continuous law through its median keeps the law), so
T′T′ᵀ ~ Wishart(ν, I_M) exactly. With T/sqrt(ν) = I + ε E + O(ε²), ε = ν^{-1/2}, the twin has −E at first order
(χ² is asymptotically symmetric), so a function of the Gram averaged over the twins has no first-order term."""
from __future__ import annotations

import numpy as np

from ...random import reflect_chisquare


def antithetic_factor(T: np.ndarray, dof: int, flip_below: bool = True) -> np.ndarray:
    """The twin of Bartlett factors T (S, M, M) of Wishart(dof, I_M): below-diagonal entries negated (kept where
    `flip_below` is False: where they also drive a limit quantity at order one), diagonal χ's reflected through
    their distribution function."""
    M = T.shape[1]
    out = -T if flip_below else T.copy()
    squares = np.einsum("sii->si", T) ** 2
    idx = np.arange(M)
    out[:, idx, idx] = np.sqrt(reflect_chisquare(squares, np.broadcast_to(dof - np.arange(M), squares.shape)))
    return out
