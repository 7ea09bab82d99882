"""Statistical checks of a sampled law against an exact covariance, with tolerances computed from the sample.

relative_frobenius_error(samples, cov) = ‖Ĉ − C‖_F / ‖C‖_F.  Its tolerance is z·sqrt(Σ_ij Var(ĉ_ij)) / ‖C‖_F with
Var(ĉ_ij) ≈ Var((y_i − ȳ_i)(y_j − ȳ_j)) / N estimated from the same sample, so it shrinks like 1/sqrt(N):
under the null N‖Ĉ − C‖² is a weighted χ² with that mean, and z = 4 rejects a true law with probability
below P(χ²_1 > 16) ≈ 6·10⁻⁵.
"""
from __future__ import annotations

import numpy as np

__all__ = ["relative_frobenius_error", "frobenius_tolerance", "cov_check", "assert_cov_close",
           "two_sample_cov_check"]


def relative_frobenius_error(samples: np.ndarray, cov: np.ndarray) -> float:
    """‖Ĉ − C‖_F / ‖C‖_F for the sample covariance Ĉ of (N, k) samples."""
    emp = np.atleast_2d(np.cov(np.asarray(samples, float), rowvar=False))
    return float(np.linalg.norm(emp - cov) / np.linalg.norm(cov))


def frobenius_tolerance(samples: np.ndarray, cov: np.ndarray, z: float = 4.0) -> float:
    """z standard deviations of ‖Ĉ − C‖_F / ‖C‖_F at this sample size (the sample's own fourth moments)."""
    y = np.asarray(samples, float)
    y = y - y.mean(axis=0)
    products = y[:, :, None] * y[:, None, :]
    var = products.reshape(len(y), -1).var(axis=0).sum() / len(y)
    return float(z * np.sqrt(var) / np.linalg.norm(cov))


def cov_check(samples: np.ndarray, cov: np.ndarray, z: float = 4.0) -> tuple[bool, float, float]:
    """(passes, relative Frobenius error, tolerance) for samples against an exact covariance."""
    err = relative_frobenius_error(samples, cov)
    tol = frobenius_tolerance(samples, cov, z)
    return err <= tol, err, tol


def assert_cov_close(samples: np.ndarray, cov: np.ndarray, z: float = 4.0) -> None:
    ok, err, tol = cov_check(samples, cov, z)
    assert ok, f"relative Frobenius error {err:.4g} exceeds the tolerance {tol:.4g} for N = {len(samples)}"


def two_sample_cov_check(a: np.ndarray, b: np.ndarray, z: float = 4.0) -> tuple[bool, float, float]:
    """(passes, ‖Ĉ_a − Ĉ_b‖_F / ‖Ĉ_b‖_F, tolerance) for two independent samples of the same law; the tolerance
    adds the two samples' variances of the covariance estimates."""
    ca = np.atleast_2d(np.cov(np.asarray(a, float), rowvar=False))
    cb = np.atleast_2d(np.cov(np.asarray(b, float), rowvar=False))
    scale = np.linalg.norm(cb)
    err = float(np.linalg.norm(ca - cb) / scale)
    tol = float(np.hypot(frobenius_tolerance(a, cb, z), frobenius_tolerance(b, cb, z)))
    return err <= tol, err, tol
