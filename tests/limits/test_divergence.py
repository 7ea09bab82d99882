"""KL estimators: closed forms, brute-force quadrature, same-law floors, and power (they must reject)."""
import math

import numpy as np
import pytest
from scipy import integrate, stats

import netsor
from limits import attention_layer
from limits.divergence import KLEstimate, kl


def gaussian_kl(var_p: float, var_q: float) -> float:
    """KL(N(0, var_p) ‖ N(0, var_q))."""
    r = var_p / var_q
    return 0.5 * (r - 1 - math.log(r))


@pytest.mark.parametrize("eps", [1e-1, 1e-2, 1e-3])
def test_mixture_analytic_pair_within_5_percent(eps):
    truth = 0.5 * (eps - math.log1p(eps))  # KL(N(0, 1+ε) ‖ N(0, 1))
    assert truth == pytest.approx(gaussian_kl(1 + eps, 1.0))
    single = kl(np.array([1 + eps]), np.array([1.0]), "mixture")
    assert single.value == pytest.approx(truth, rel=0.05)
    # the same pair as 10^5 draws of a scale mixture: y = s·z with s² ~ (1+ε)·χ²_ν/ν vs χ²_ν/ν, ν large, so the
    # laws are t-like; their KL equals the Gaussian pair's to O(1/ν) — compare with the exact quadrature of both
    rng = np.random.default_rng(int(1 / eps))
    nu = 400
    var = rng.chisquare(nu, size=(2, 100_000)) / nu
    est = kl((1 + eps) * var[0], var[1], "mixture")
    scale = math.sqrt(1 + eps)
    exact = 2 * integrate.quad(lambda y: stats.t.pdf(y, nu, scale=scale) *
                               (stats.t.logpdf(y, nu, scale=scale) - stats.t.logpdf(y, nu)), 0, 60, limit=200)[0]
    # χ²-mixtures are approximately t; the estimator's own SE plus that O(1/ν²) model gap bound the difference
    assert abs(est.value - exact) < 4 * est.se + 0.05 * exact


def test_mixture_matches_brute_force_quadrature_of_a_two_scale_mixture():
    eps = 0.02
    def mix(v1, v2):
        return lambda y: 0.5 * stats.norm.pdf(y, scale=math.sqrt(v1)) + 0.5 * stats.norm.pdf(y, scale=math.sqrt(v2))
    fn, fl = mix(1 + eps, 2 + eps), mix(1.0, 2.0)
    truth = 2 * integrate.quad(lambda y: fn(y) * math.log(fn(y) / fl(y)), 0, 40, limit=200)[0]
    rng = np.random.default_rng(0)
    M = 100_000
    vn = np.where(rng.random(M) < 0.5, 1 + eps, 2 + eps)
    vl = np.where(rng.random(M) < 0.5, 1.0, 2.0)
    one_d = kl(vn, vl, "mixture")
    assert abs(one_d.value - truth) < 4 * one_d.se
    # power: the truth for a different ε is rejected by the same tolerance
    fn_other = mix(1 + 2 * eps, 2 + 2 * eps)
    other = 2 * integrate.quad(lambda y: fn_other(y) * math.log(fn_other(y) / fl(y)), 0, 40, limit=200)[0]
    assert abs(one_d.value - other) > 4 * one_d.se
    # the general route (Gauss–Hermite in evaluation components), forced by a negligible non-zero mean
    joint = kl((np.full((M, 1), 1e-9), vn[:, None, None]), (np.zeros((M, 1)), vl[:, None, None]), "mixture")
    assert abs(joint.value - truth) < 4 * joint.se


def test_joint_mixture_two_dimensional_closed_form_and_mixture():
    A = np.array([[1.0, 0.3], [0.3, 0.8]])
    B = np.array([[1.1, 0.2], [0.2, 0.9]])
    closed = 0.5 * (np.trace(np.linalg.solve(B, A)) - 2 + math.log(np.linalg.det(B) / np.linalg.det(A)))
    assert kl(A[None], B[None], "mixture").value == pytest.approx(closed, rel=1e-6)
    # 2-D scale mixtures N(0, s A) vs N(0, s B), s ∈ {1, 3}: truth by a dense 2-D grid integral
    rng = np.random.default_rng(1)
    M = 40_000
    s = np.where(rng.random((2, M)) < 0.5, 1.0, 3.0)
    est = kl(s[0, :, None, None] * A, s[1, :, None, None] * B, "mixture")
    grid = np.linspace(-12, 12, 801)
    Y = np.stack(np.meshgrid(grid, grid, indexing="ij"), -1)
    def density(C):
        return 0.5 * stats.multivariate_normal(cov=C).pdf(Y) + 0.5 * stats.multivariate_normal(cov=3 * C).pdf(Y)
    p, q = density(A), density(B)
    truth = np.sum(p * np.log(p / q)) * (grid[1] - grid[0]) ** 2
    assert abs(est.value - truth) < 4 * est.se + 1e-4 * truth


@pytest.fixture(scope="module")
def attention_limit_components():
    layer = attention_layer(seq_len=4, heads=2, inputs="paper")
    law = layer.law()
    y = layer.outputs[:1]
    return layer, law, y


def test_same_law_floors(attention_limit_components):
    layer, law, y = attention_limit_components
    # mixture: two independent 10^5-component samples of the limit's conditional variances
    a = law.conditional_moments(y, 100_000, seed=10)
    b = law.conditional_moments(y, 100_000, seed=11)
    same = kl(a, b, "mixture")
    assert abs(same.value) < 3e-6 and same.upper_bound
    # kde (published): the floor ≈ 1e-3 at 5·10^4 per side (README, *Measuring KL(finite n ‖ limit)*: 7.7e-4 ± 2.1e-4)
    floors = [kl(law.sample(y, 50_000, seed=2 * s), law.sample(y, 50_000, seed=2 * s + 1), "kde").value
              for s in range(3)]
    assert all(f > 0 for f in floors) and 2e-4 < np.mean(floors) < 3e-3
    x, z = law.sample(y, 50_000, seed=20), law.sample(y, 50_000, seed=21)
    fft = kl(x, z, "fftkde")
    assert 0 < fft.value < 5e-3
    knn = kl(x, z, "knn")
    assert abs(knn.value) < 4 * knn.se and knn.se < 1e-2
    # coupled: at n = 2^30 the finite and limit halves nearly coincide
    gaussian = attention_layer(seq_len=4, heads=2, inputs="gaussian")
    pairs = netsor.simulate_coupled(gaussian.program, 2 ** 30, gaussian.outputs[:1], 20_000, seed=3)
    coupled = kl(pairs, method="coupled")
    assert abs(coupled.value) < 1e-9 and coupled.upper_bound


def test_estimators_reject_width_16(attention_limit_components):
    layer, law, y = attention_limit_components
    _, means, covs = netsor.simulate_with_moments(layer.program, 16, y, 50_000, seed=4)
    mixture = kl((means, covs), law.conditional_moments(y, 50_000, seed=5), "mixture")
    assert mixture.value > 10 * mixture.se and not mixture.upper_bound
    finite, limit = netsor.simulate(layer.program, 16, y, 50_000, seed=6), law.sample(y, 50_000, seed=7)
    assert 1e-2 < kl(finite, limit, "kde").value < 1  # 10× its floor, and finite despite the heavy tails
    knn = kl(finite, limit, "knn", k=5)
    assert knn.value > 3 * knn.se


def test_coupled_agrees_with_mixture_and_is_sharper():
    layer = attention_layer(seq_len=4, heads=2, inputs="gaussian")
    y = layer.outputs[:1]
    pairs = netsor.simulate_coupled(layer.program, 1024, y, 50_000, seed=8)
    coupled = kl(pairs, method="coupled")
    _, means, covs = netsor.simulate_with_moments(layer.program, 1024, y, 50_000, seed=9)
    mixture = kl((means, covs), netsor.limit(layer.program).conditional_moments(y, 50_000, seed=10), "mixture")
    assert abs(coupled.value - mixture.value) < 4 * math.hypot(coupled.se, mixture.se)
    assert coupled.se < mixture.se / 3 and coupled.value > 4 * coupled.se  # resolved by coupling only
    # paired arrays give the same estimate as the CoupledDraws object
    again = kl((pairs.finite_mean, pairs.finite_cov), (pairs.limit_mean, pairs.limit_cov), "coupled")
    assert again.value == coupled.value


def test_estimate_reporting():
    est = KLEstimate(1e-6, 1e-6, "mixture", 10, 10)
    assert est.upper_bound and est.bound == pytest.approx(3e-6) and "KL <" in str(est)
    est = KLEstimate(1e-3, 1e-5, "mixture", 10, 10)
    assert not est.upper_bound and float(est) == 1e-3 and "±" in str(est)
    est = KLEstimate(1e-3, math.nan, "kde", 10, 10)
    assert not est.upper_bound and est.bound == 1e-3


@pytest.mark.parametrize("call, message", [
    (lambda: kl([1.0, 2.0], [1.0, 2.0], "entropy"), "unknown method"),
    (lambda: kl(np.ones((10, 2)), np.ones((10, 1)), "knn"), "different dimensions"),
    (lambda: kl(np.ones((10, 2)), np.ones((10, 2)), "kde"), "1-D"),
    (lambda: kl([1.0, np.nan, 2.0], [1.0, 2.0, 3.0], "knn"), "NaN"),
    (lambda: kl(np.array([1.0, -1.0]), np.array([1.0]), "mixture"), "non-positive variance"),
    (lambda: kl(np.array([1.0, 2.0]), np.array([1.0]), "coupled"), "pairs"),
    (lambda: kl(np.array([1.0]), np.array([1.0]), "mixture", order=3), "do not apply"),
    (lambda: kl(np.array([1.0, 2.0]), None, "kde"), "needs both"),
    (lambda: kl(np.arange(10.0), np.arange(10.0), "knn", k=0), "integer k"),
])
def test_bad_input_is_a_program_error(call, message):
    with pytest.raises(netsor.ProgramError, match=message):
        call()
