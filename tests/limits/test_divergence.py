"""KL estimators: closed forms, brute-force quadrature, same-law floors, and power (they must reject)."""
import math

import numpy as np
import pytest
from scipy import integrate, stats
from scipy.special import logsumexp

import netsor
from limits import attention_layer
from limits.divergence import KLEstimate, _silverman, kl


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
    assert pairs.antithetic and coupled.n_finite == 100_000  # triples: both twins entered
    # without twins: paired arrays give the same estimate as the CoupledDraws object, with a larger SE
    plain = netsor.simulate_coupled(layer.program, 1024, y, 50_000, seed=8, antithetic=False)
    alone = kl(plain, method="coupled")
    again = kl((plain.finite_mean, plain.finite_cov), (plain.limit_mean, plain.limit_cov), "coupled")
    assert again.value == alone.value and np.array_equal(plain.finite, pairs.finite)
    assert abs(alone.value - coupled.value) < 4 * alone.se and coupled.se < alone.se / 2


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
    (lambda: kl(np.arange(10.0), np.arange(10.0), "knn", k=0), "option k"),
])
def test_bad_input_is_a_program_error(call, message):
    with pytest.raises(netsor.ProgramError, match=message):
        call()


# ---- the joint (k ≥ 2) estimator and the options (issue 13, item 3): no floor, identical inputs, what was used
A2 = np.array([[1.0, 0.3], [0.3, 0.8]])
B2 = np.array([[1.1, 0.2], [0.2, 0.9]])
TAU2 = 0.25


def mean_mixture(M, cov, seed):
    """M components N(μ_m, C), μ_m ~ N(0, τ² I): their law is exactly N(0, C + τ² I), so every KL is closed-form."""
    mu = np.random.default_rng(seed).standard_normal((M, len(cov))) * math.sqrt(TAU2)
    return mu, np.broadcast_to(cov, (M, *cov.shape))


def law_kl(cov_finite, cov_limit) -> float:
    """KL between the laws of two `mean_mixture`s: ½ [tr(B⁻¹A) − k + log det B / det A], A, B = C + τ² I."""
    a, b = (c + TAU2 * np.eye(len(c)) for c in (cov_finite, cov_limit))
    return 0.5 * (np.trace(np.linalg.solve(b, a)) - len(a) + math.log(np.linalg.det(b) / np.linalg.det(a)))


def test_joint_coupled_has_no_floor_at_large_width():
    layer = attention_layer(seq_len=4, heads=2, inputs="gaussian")
    pairs = netsor.simulate_coupled(layer.program, 2 ** 30, layer.outputs[:2], 20_000, seed=3)
    est = kl(pairs, method="coupled", budget=2 ** 24)
    # KL at n = 2^30 is O(n^-2) ≈ 1e-18: the estimate must be consistent with 0 (it was 1.6e-5 ± 5e-7, a floor)
    assert abs(est.value) < 3 * est.se and est.upper_bound and est.bound < 1e-9
    # power: coupled mixtures whose laws differ by an exact KL of 1.1e-2 are resolved, and match it
    mu, finite = mean_mixture(6000, A2, seed=4)
    truth = law_kl(A2, B2)
    coupled = kl((mu, finite), (mu, np.broadcast_to(B2, finite.shape)), "coupled", budget=2 ** 23)
    assert abs(coupled.value - truth) < 4 * coupled.se and coupled.value > 4 * coupled.se


@pytest.mark.parametrize("method", ["mixture", "coupled"])
def test_joint_identical_inputs_are_zero_within_their_se(method):
    mu, covs = mean_mixture(4000, A2, seed=5)
    same = kl((mu, covs), (mu.copy(), covs.copy()), method, budget=2 ** 22)
    assert abs(same.value) <= 2 * same.se and (same.upper_bound or same.value == same.se == 0), same
    # power: against 1.5× the covariances (exact KL 0.047) the same components are resolved, at the truth
    other = kl((mu, covs), (mu.copy(), 1.5 * covs), method, budget=2 ** 22)
    truth = law_kl(A2, 1.5 * A2)
    assert abs(other.value - truth) < 4 * other.se and other.value > 4 * other.se, other


def test_joint_uses_what_it_is_given_and_says_what_it_used():
    (mu, finite), (nu, limit) = mean_mixture(40_000, A2, seed=6), mean_mixture(40_000, B2, seed=7)
    cut = kl((mu, finite), (nu, limit), "mixture", budget=2 ** 21)
    assert cut.n_finite < 40_000 and cut.n_limit < 40_000 and "of 40000 finite" in cut.note and cut.note in str(cut)
    # with room in the budget every finite component enters (the limit's first E are left out: with identical
    # inputs the densities then coincide), and the SE falls as 1/√M
    small = kl((mu[:500], finite[:500]), (nu[:500], limit[:500]), "mixture", budget=2 ** 25)
    large = kl((mu[:2000], finite[:2000]), (nu[:2000], limit[:2000]), "mixture", budget=2 ** 25)
    assert (small.n_finite, large.n_finite, large.n_limit) == (500, 2000, 1000) and "1000 of 2000 limit" in large.note
    assert large.se < 0.7 * small.se
    truth = law_kl(A2, B2)
    assert abs(large.value - truth) < 4 * large.se and abs(small.value - truth) < 4 * small.se


@pytest.mark.parametrize("call, message", [
    (lambda x, v, c: kl(x, x[::-1], "kde", grid_points=1), "grid_points"),
    (lambda x, v, c: kl(x, x[::-1], "kde", grid_points=0), "grid_points"),
    (lambda x, v, c: kl(x, x[::-1], "kde", grid_points=2.5), "grid_points"),
    (lambda x, v, c: kl(x, x[::-1], "fftkde", grid_points=1), "grid_points"),
    (lambda x, v, c: kl(x, x[::-1], "kde", bins=10), r"\['bins'\] do not apply to kde"),
    (lambda x, v, c: kl(x, x[::-1], "knn", grid_points=10), r"\['grid_points'\] do not apply to knn"),
    (lambda x, v, c: kl(x, x[::-1], "knn", k=-1), "option k"),
    (lambda x, v, c: kl(x, x[::-1], "knn", k=len(x)), "option k"),
    (lambda x, v, c: kl(x, x[:5], "knn", k=6), "option k"),
    (lambda x, v, c: kl(x, x[::-1], "knn", k=1.5), "option k"),
    (lambda x, v, c: kl(v, 1.01 * v, "mixture", bins=1), "option bins"),
    (lambda x, v, c: kl(v, 1.01 * v, "mixture", bins=0), "option bins"),
    (lambda x, v, c: kl(v, 1.01 * v, "mixture", bins=-3), "option bins"),
    (lambda x, v, c: kl(v, 1.01 * v, "mixture", bins=100.5), "option bins"),
    (lambda x, v, c: kl(v, 1.01 * v, "mixture", eval_components=4), r"\['eval_components'\] do not apply"),
    (lambda x, v, c: kl(c, 1.01 * c, "mixture", density_components=0), "option density_components"),
    (lambda x, v, c: kl(c, 1.01 * c, "mixture", density_components=1), "option density_components"),
    (lambda x, v, c: kl(c, 1.01 * c, "mixture", eval_components=0), "option eval_components"),
    (lambda x, v, c: kl(c, 1.01 * c, "coupled", eval_components=len(c)), "option eval_components"),
    (lambda x, v, c: kl(c, 1.01 * c, "mixture", eval_components=100, density_components=len(c)),
     "density_components"),
    (lambda x, v, c: kl(c, 1.01 * c, "mixture", points=3), "option points"),
    (lambda x, v, c: kl(c, 1.01 * c, "mixture", points=0), "option points"),
    (lambda x, v, c: kl(c, 1.01 * c, "mixture", budget=0), "option budget"),
    (lambda x, v, c: kl(c, 1.01 * c, "mixture", budget=math.nan), "option budget"),
    (lambda x, v, c: kl(c, 1.01 * c, "mixture", budget=10), "option budget"),
    (lambda x, v, c: kl(c, 1.01 * c, "mixture", seed=-1), "option seed"),
    (lambda x, v, c: kl(c, 1.01 * c, "mixture", order=1), r"\['order'\] do not apply"),
    (lambda x, v, c: kl(c, 1.01 * c, "coupled", bins=64), r"\['bins'\] do not apply"),
    (lambda x, v, c: kl(c[:3], 1.01 * c[:3], "mixture"), "at least 4"),
])
def test_bad_options_are_refused_by_name(call, message):
    rng = np.random.default_rng(12)
    x = rng.standard_normal(500)
    variances = rng.chisquare(8, 400) / 8
    covs = variances[:, None, None] * A2
    with pytest.raises(netsor.ProgramError, match=message):
        call(x, variances, covs)


def test_knn_refuses_ties_and_resolves_continuous_samples():
    rng = np.random.default_rng(13)
    x, z = rng.standard_normal(4000), rng.standard_normal(4000)
    for finite, limit in [(np.repeat(x[:2000], 2), z),  # duplicated draws
                          (np.round(x, 1), z),  # discrete (rounded) draws
                          (x, np.concatenate([z[:2000], x[:2000]])),  # draws shared between the samples
                          (x, np.repeat(z[:2000], 2))]:  # duplicated limit draws
        with pytest.raises(netsor.ProgramError, match="ties"):
            kl(finite, limit, "knn")
    # continuous samples: N(½, 1) against N(0, 1) (KL = 1/8) is resolved at its value; the same law is ~0
    shifted = kl(x + 0.5, z, "knn", k=4)
    assert abs(shifted.value - 0.125) < 4 * shifted.se + 0.02 and shifted.value > 4 * shifted.se
    same = kl(x, z, "knn", k=4)
    assert abs(same.value) < 4 * same.se + 0.02


def test_no_estimate_is_nan_or_a_floor():
    with pytest.raises(netsor.ProgramError, match="value must be a finite number"):
        KLEstimate(math.nan, 1.0, "mixture", 10, 10)
    with pytest.raises(netsor.ProgramError, match="se must be"):
        KLEstimate(1.0, -1.0, "mixture", 10, 10)
    rng = np.random.default_rng(14)
    x, z = rng.standard_normal(2000), rng.standard_normal(2000)
    # the finite sample far outside the limit's: kde's grid sees no finite mass (it returned nan)
    with pytest.raises(netsor.ProgramError, match="vanishes"):
        kl(x + 200, z, "kde")
    # fftkde is the KL of the two KDEs; in heavy tails (t₃ against a normal sample) the FFT's values are
    # round-off and a truncated kernel, and it gave 0.73 for 7.16: it must match the KDEs summed directly
    t3 = rng.standard_t(3, 2000)
    h = [_silverman(a) for a in (t3, z)]
    grid = np.linspace(min(t3.min(), z.min()) - 6 * max(h), max(t3.max(), z.max()) + 6 * max(h), 4097)
    log_p, log_q = (np.concatenate([logsumexp(-0.5 * ((g[:, None] - a[None]) / b) ** 2, axis=1) for g in
                                    np.array_split(grid, 16)]) - math.log(len(a) * b * math.sqrt(2 * math.pi))
                    for a, b in ((t3, h[0]), (z, h[1])))
    direct = integrate.trapezoid(np.exp(log_p) * (log_p - log_q) - np.exp(log_p) + np.exp(log_q), grid)
    assert kl(t3, z, "fftkde").value == pytest.approx(direct, rel=2e-3)
    # non-finite components are refused, naming the argument
    covs = np.broadcast_to(A2, (100, 2, 2)).copy()
    bad = covs.copy()
    bad[3, 0, 0] = math.inf
    with pytest.raises(netsor.ProgramError, match="limit components contain NaN or inf"):
        kl(covs, bad, "mixture")
    means = np.zeros((100, 2))
    means[5, 1] = math.nan
    with pytest.raises(netsor.ProgramError, match="finite components contain NaN or inf"):
        kl((means, covs), covs, "coupled")
    with pytest.raises(netsor.ProgramError, match="limit samples contain NaN or inf"):
        kl(x, np.append(z, math.inf), "kde")
    # power: far-apart Gaussians as components have their closed form (≈ 3·10⁴), its SE a bound on rounding
    far = kl((np.full((1, 2), 200.0), A2[None]), (np.zeros((1, 2)), A2[None]), "mixture")
    assert far.value == pytest.approx(0.5 * 200.0 ** 2 * np.linalg.inv(A2).sum(), rel=1e-12) and far.se < 1e-9


def test_far_apart_variances_are_refused_at_once():
    """Component variances 1e-300 against 1 made the 1-D grid grow without bound (the call never returned)."""
    for v in (1e-300, 1e300):
        with pytest.raises(netsor.ProgramError, match=r"^kl: the component variances span a factor e\^691"):
            kl(np.full(10, v), np.ones(10), method="mixture")
    assert kl(np.full(10, 1e-6), np.ones(10), method="mixture").value > 5  # e^14 apart: still estimated


def _log_normal_mixture(mu, var, y):
    """∫ N(y; 0, e^u) N(u; mu, var) du by Gauss–Hermite (80 nodes): a 1-D zero-mean mixture in closed-enough form."""
    x, w = np.polynomial.hermite_e.hermegauss(80)
    v = np.exp(mu + math.sqrt(var) * x)
    return (w / w.sum()) @ (np.exp(-0.5 * y[None] ** 2 / v[:, None]) / np.sqrt(2 * math.pi * v[:, None]))


def test_coupled_twins_resolve_a_tiny_kl_known_by_quadrature():
    """Triples log t = τ, log s = τ + c + bζ, log s′ = τ + c − bζ (τ ~ N(0, σ²), ζ ~ N(0, 1)): the finite law's
    components are N(c, σ² + b²) in log-variance, the limit's N(0, σ²), so KL is a 1-D quadrature. With a
    first-order spread b = 0.02 and a second-order shift c = 0.002 (as twins at n ≈ 2500), KL ≈ 1.06e-6: the twins
    resolve it to 0.3%, pairs alone only to ~15%; 1.2c (KL 1.48e-6) is rejected."""
    from scipy import integrate
    sigma, b, c, M = 0.3, 0.02, 2e-3, 20_000

    def truth(shift):
        y = np.linspace(0, 12, 20_001)
        fn, fl = _log_normal_mixture(shift, sigma ** 2 + b ** 2, y), _log_normal_mixture(0.0, sigma ** 2, y)
        return 2 * integrate.simpson(fn * np.log(fn / fl) - fn + fl, x=y)

    rng = np.random.default_rng(11)
    tau, zeta = sigma * rng.standard_normal(M), rng.standard_normal(M)
    var = lambda u: np.exp(u)[:, None, None]  # noqa: E731
    zero = np.zeros((M, 1))
    draws = netsor.CoupledDraws(zero, zero, zero, var(tau + c + b * zeta), zero, var(tau), twin=zero, twin_mean=zero,
                                twin_cov=var(tau + c - b * zeta))
    est = kl(draws, method="coupled")
    assert abs(est.value - truth(c)) < 4 * est.se and est.se < 0.005 * est.value
    assert abs(est.value - truth(1.2 * c)) > 20 * est.se
    draws.twin = None
    pairs = kl(draws, method="coupled")
    assert abs(pairs.value - truth(c)) < 4 * pairs.se and pairs.se > 20 * est.se
