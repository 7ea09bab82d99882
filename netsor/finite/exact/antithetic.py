"""Antithetic twins of Bartlett factors: a second exact Wishart draw whose first-order fluctuation is the first's,
negated (for coupled draws whose finite-minus-limit gap then cancels at first order within a pair of twins).

Bartlett's factor T of Wishart(ν, I_M) has independent entries: T_ij ~ N(0, 1) below the diagonal and
T_ii² ~ χ²_{ν−i}. The twin T′ has T′_ij = −T_ij (the law of a normal is symmetric) and T′_ii² = F⁻¹(1 − F(T_ii²)),
F the χ²_{ν−i} distribution function (the reflection of a continuous law through its median keeps the law), so
T′T′ᵀ ~ Wishart(ν, I_M) exactly. With T/sqrt(ν) = I + ε E + O(ε²), ε = ν^{-1/2}, the twin has −E at first order
(χ² is asymptotically symmetric), so a function of the Gram averaged over the twins has no first-order term."""
from __future__ import annotations

import numpy as np
from scipy.special import gammainc, gammaincc, gammainccinv, gammaincinv


def antithetic_factor(T: np.ndarray, dof: int, flip_below: bool = True) -> np.ndarray:
    """The twin of Bartlett factors T (S, M, M) of Wishart(dof, I_M): below-diagonal entries negated (kept where
    `flip_below` is False: where they also drive a limit quantity at order one), diagonal χ's reflected through
    their distribution function."""
    M = T.shape[1]
    out = -T if flip_below else T.copy()
    half = (dof - np.arange(M)) / 2.0  # χ²_{ν−i} = 2·Gamma((ν − i)/2)
    x = np.einsum("sii->si", T) ** 2 / 2.0
    half = np.broadcast_to(half, x.shape)
    lower = gammainc(half, x)
    twin = np.empty_like(x)
    # F(x′) = 1 − F(x), each side inverted from the tail that keeps its digits
    low = lower < 0.5
    twin[low] = gammainccinv(half[low], lower[low])
    high = ~low
    twin[high] = gammaincinv(half[high], gammaincc(half[high], x[high]))
    idx = np.arange(M)
    out[:, idx, idx] = np.sqrt(2.0 * twin)
    return out
