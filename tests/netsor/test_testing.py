"""The statistical check itself: calibrated under the null, powerful against a small error at large N."""
import numpy as np

from netsor.testing import cov_check, frobenius_tolerance

COV = np.array([[2.0, 0.5, 0.0], [0.5, 1.0, 0.3], [0.0, 0.3, 1.5]])


def test_null_passes_across_seeds_and_tolerance_shrinks_like_root_n():
    rng = np.random.default_rng(0)
    passes = [cov_check(rng.multivariate_normal(np.zeros(3), COV, size=2000), COV)[0] for _ in range(50)]
    assert all(passes)
    small = rng.multivariate_normal(np.zeros(3), COV, size=1000)
    large = rng.multivariate_normal(np.zeros(3), COV, size=16000)
    ratio = frobenius_tolerance(small, COV) / frobenius_tolerance(large, COV)
    assert abs(ratio - 4.0) < 0.4  # sqrt(16000 / 1000)


def test_rejects_a_three_percent_error_at_large_n():
    draws = np.random.default_rng(1).multivariate_normal(np.zeros(3), COV, size=200_000)
    assert cov_check(draws, COV)[0]
    assert not cov_check(draws, COV * 1.03)[0]
