"""Compiled Bartlett draws: numpy's numbers from the same streams, and the Wishart law."""
import numpy as np
import pytest

from netsor.compiled.wishart import bartlett_factor, bartlett_wishart


def numpy_bartlett(seed_normal, seed_chi, dof, M, S):
    """Bartlett's factors drawn with numpy's Generator methods, in the order the kernels document."""
    rn, rc = np.random.default_rng(seed_normal), np.random.default_rng(seed_chi)
    T = np.zeros((S, M, M))
    below = np.tril_indices(M, -1)
    for s in range(S):
        T[s][below] = rn.standard_normal(len(below[0]))
        T[s][np.diag_indices(M)] = np.sqrt([rc.chisquare(dof - i) for i in range(M)])
    return T


@pytest.mark.parametrize("dof, M", [(1024, 4), (9, 4), (5, 4), (4, 4), (3, 2), (1, 1), (2, 1)])
def test_bartlett_draws_are_numpys_numbers(dof, M):
    """Both χ² paths (the squeeze for df > 2, numba's χ² for df ≤ 2) give numpy's numbers bit for bit."""
    T = bartlett_factor(np.random.default_rng(1), np.random.default_rng(2), dof, M, 300)
    assert np.array_equal(T, numpy_bartlett(1, 2, dof, M, 300))
    rows = np.random.default_rng(3).standard_normal((300, M))
    W = bartlett_wishart(np.random.default_rng(1), np.random.default_rng(2), dof, M, 300, rows)
    np.testing.assert_allclose(W, np.einsum("sij,skj->sik", T, T) + rows[:, :, None] * rows[:, None, :],
                               rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("dof", [3, 40])
def test_bartlett_wishart_has_the_wishart_moments(dof):
    """E W = dof·I, Var W_ii = 2·dof, Var W_ij = dof (i ≠ j), within 5 standard errors; one degree of freedom
    fewer (a wrong χ² index) is rejected on the diagonal mean."""
    M, S = 3, 40_000
    W = bartlett_wishart(np.random.default_rng(5), np.random.default_rng(6), dof, M, S, np.zeros((S, 0)))
    diag, off = W[:, np.arange(M), np.arange(M)], W[:, 1, 0]
    se = np.sqrt(2 * dof / S)
    assert np.all(np.abs(diag.mean(0) - dof) < 5 * se)
    assert abs(off.mean()) < 5 * np.sqrt(dof / S)
    assert np.all(np.abs(diag.var(0) / (2 * dof) - 1) < 5 * np.sqrt(2 / S) * 3)  # kurtosis ≤ 4.5 for χ²₃
    assert abs(off.var() / dof - 1) < 5 * np.sqrt(2 / S) * 3
    wrong = bartlett_wishart(np.random.default_rng(5), np.random.default_rng(6), dof - 1, M, S, np.zeros((S, 0)))
    assert np.any(np.abs(wrong[:, np.arange(M), np.arange(M)].mean(0) - dof) > 5 * se)
