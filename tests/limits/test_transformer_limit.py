"""The compiled transformer-kernel sampler (limits.transformer_limit) against independent numpy Monte Carlo, closed
forms, scipy quadrature and its own H → ∞ limit. Tolerances are computed from the sample sizes (z = 4)."""
import math

import numpy as np
import pytest
from scipy import integrate, special

import netsor
from limits import transformer_limit as tl
from netsor import ProgramError
from netsor.random import stream
from netsor.testing import two_sample_cov_check

# Four tokens with strong, unequal correlations (so the score law's covariance matters) and unequal norms
K0 = np.array([[1.0, 0.6, 0.3, 0.1],
               [0.6, 1.2, 0.5, 0.2],
               [0.3, 0.5, 0.9, 0.4],
               [0.1, 0.2, 0.4, 1.1]])
UPPER = np.triu_indices(4)  # the distinct entries of a symmetric kernel


def layer_norm(kernel):
    sd = np.sqrt(np.diagonal(kernel, axis1=-2, axis2=-1))
    return kernel / sd[..., :, None] / sd[..., None, :]


def softmax_rows(scores):
    e = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def relu_kernel(correlation):
    """Arc-cosine kernel of a correlation matrix, written out independently of the module."""
    rho = np.clip(correlation, -1, 1)
    theta = np.arccos(rho)
    return (np.sin(theta) + (np.pi - theta) * rho) / (2 * np.pi)


def max_z(a, b):
    """Largest |difference of means| / its standard error over the distinct kernel entries of two samples."""
    a, b = a[:, UPPER[0], UPPER[1]], b[:, UPPER[0], UPPER[1]]
    se = np.sqrt(a.var(axis=0) / len(a) + b.var(axis=0) / len(b))
    return float(np.max(np.abs(a.mean(axis=0) - b.mean(axis=0)) / se))


# ------------------------------------------------------------------------------------------ one block vs numpy
def numpy_depth_one(score_cov, heads, beta0, size, seed):
    """K¹ = K⁰ + c² H⁻¹ Σ_h A_h K̃ A_hᵀ with the scores drawn by np.random multivariate_normal from a given
    covariance of vec(p) (row-major), no MLP: a loop-free path independent of the compiled sampler."""
    rng = np.random.default_rng(seed)
    correlation = layer_norm(K0)
    scores = rng.multivariate_normal(np.zeros(16), score_cov, size=(size, heads)).reshape(size, heads, 4, 4)
    attention = softmax_rows(scores)
    head_kernels = np.einsum("nhij,jk,nhlk->nhil", attention, correlation, attention)
    return K0 + beta0 ** 2 * head_kernels.mean(axis=1)


def test_depth_one_matches_numpy_monte_carlo_and_rejects_a_wrong_score_covariance():
    size, heads, beta0 = 100_000, 2, 1.5
    ours = tl.sample_kernels(K0, 1, heads, mlp=None, beta0=beta0, size=size, seed=11)
    kronecker = np.kron(layer_norm(K0), layer_norm(K0))  # Cov(p_ij, p_kl) = K̃_ik K̃_jl
    reference = numpy_depth_one(kronecker, heads, beta0, size, seed=12)
    assert max_z(ours, reference) < 4
    flat = lambda k: k[:, UPPER[0], UPPER[1]]
    assert two_sample_cov_check(flat(ours), flat(reference))[0]  # the law, not only the mean
    wrong = numpy_depth_one(np.eye(16), heads, beta0, size, seed=12)  # SKI25's scripts' p ~ N(0, I)
    assert max_z(ours, wrong) > 4


def test_first_samples_equal_a_numpy_recursion_on_the_documented_stream():
    """The compiled kernel consumes, sample by sample, exactly the normals rng.standard_normal((count, per sample))
    of the block's Generator, in the documented layout (block, head, then Ξ or Ξ_Q, Ξ_K, Ξ_V)."""
    depth, heads, beta0, alpha, count, seed = 2, 2, 1.3, 0.5, 11, 5
    c2 = beta0 ** 2 * depth ** (-2 * alpha)
    for head_dim, exponent in [(None, 0.5), (3, 0.7)]:
        ours = tl.sample_kernels(K0, depth, heads, head_dim=head_dim, score_exponent=exponent, beta0=beta0,
                                 residual_exponent=alpha, mlp="relu", size=count, seed=seed)
        per_head = 16 if head_dim is None else 3 * 4 * head_dim
        normals = stream(np.random.SeedSequence(seed), 0).standard_normal((count, depth * heads * per_head))
        for n in range(count):
            kernel = K0.copy()
            for layer in range(depth):
                correlation = layer_norm(kernel)
                chol = np.linalg.cholesky(correlation)
                update = np.zeros((4, 4))
                for h in range(heads):
                    xi = normals[n, (layer * heads + h) * per_head:(layer * heads + h + 1) * per_head]
                    if head_dim is None:
                        attention, gram = softmax_rows(chol @ xi.reshape(4, 4) @ chol.T), correlation
                    else:
                        q, k, v = (chol @ part.reshape(4, head_dim) for part in np.split(xi, 3))
                        attention, gram = softmax_rows(q @ k.T / head_dim ** exponent), v @ v.T / head_dim
                    update += attention @ gram @ attention.T / heads
                kernel = kernel + c2 * update
                kernel = kernel + c2 * 2.0 * relu_kernel(layer_norm(kernel))
            np.testing.assert_allclose(ours[n], kernel, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------------ closed forms
def test_uniform_attention_is_deterministic_and_closed_form():
    depth, beta0, alpha = 3, 1.2, 0.5
    c2 = beta0 ** 2 * depth ** (-2 * alpha)
    for mlp in (None, "relu"):
        draws = tl.sample_kernels(K0, depth, 3, score_exponent=1.0, beta0=beta0, residual_exponent=alpha, mlp=mlp,
                                  size=50, seed=0, per_block=True)
        expected = [K0]
        for _ in range(depth):
            kernel = expected[-1] + c2 * layer_norm(expected[-1]).mean() * np.ones((4, 4))  # (1/s²) 1ᵀK̃1 11ᵀ
            if mlp == "relu":
                kernel = kernel + c2 * 2.0 * relu_kernel(layer_norm(kernel))
            expected.append(kernel)
        np.testing.assert_allclose(draws, np.broadcast_to(expected, draws.shape), rtol=1e-13, atol=1e-13)
        recursion = tl.kernel_recursion(K0, depth, score_exponent=1.0, beta0=beta0, mlp=mlp, samples=1000)
        np.testing.assert_allclose(recursion.kernels, expected, rtol=1e-13)
        assert np.all(recursion.se == 0)


PHIS = {"identity": (lambda x: x, ()), "relu": (lambda x: max(x, 0.0), (0.0,)), "erf": (math.erf, ()),
        "tanh": (math.tanh, ()), "gelu": (lambda x: x * special.ndtr(x), ()),
        "clip(1)": (lambda x: min(max(x, -1.0), 1.0), (-1.0, 1.0)),
        "clip(0.3)": (lambda x: min(max(x, -0.3), 0.3), (-0.3, 0.3))}
MLP_TOLERANCE = {"tanh": 1e-8}  # documented ≤ 3e-9; every other φ is exact to rounding (closed forms)


def dblquad_product(phi, kinks, rho):
    """E[φ(z₁) φ(ρ z₁ + r z₂)] by scipy dblquad over (z₁, z₂) ∈ [−10, 10]², split into the regions where the
    integrand is smooth (z₁ at the kinks, z₂ where ρ z₁ + r z₂ crosses one), so adaptive quadrature converges."""
    r = math.sqrt(1 - rho * rho)
    density = lambda z2, z1: phi(z1) * phi(rho * z1 + r * z2) * math.exp(-(z1 * z1 + z2 * z2) / 2) / (2 * math.pi)
    outer = [-10.0, *kinks, 10.0]
    inner = [lambda z1: -10.0] + [lambda z1, k=k: min(10.0, max(-10.0, (k - rho * z1) / r)) for k in kinks] \
        + [lambda z1: 10.0]
    total = 0.0
    for lo, hi in zip(outer[:-1], outer[1:]):
        for below, above in zip(inner[:-1], inner[1:]):
            total += integrate.dblquad(density, lo, hi, below, above, epsabs=1e-13, epsrel=1e-11)[0]
    return total


@pytest.mark.parametrize("name", list(PHIS))
def test_mlp_kernel_against_scipy_quadrature(name):
    phi, kinks = PHIS[name]
    rhos = np.array([-0.9, -0.3, 0.5, 0.95])
    # a 5×5 correlation matrix whose off-diagonal entries (0, j) are the ρ's (only the pairs matter)
    correlation = np.eye(5)
    correlation[0, 1:] = correlation[1:, 0] = rhos
    phi_matrix = tl.mlp_kernel(correlation, name)
    tolerance = MLP_TOLERANCE.get(name, 1e-10)
    for j, rho in enumerate(rhos, 1):
        assert abs(phi_matrix[0, j] - dblquad_product(phi, kinks, rho)) < tolerance, (name, rho)
        assert phi_matrix[j, 0] == phi_matrix[0, j]
    second_moment = integrate.quad(lambda x: phi(x) ** 2 * math.exp(-x * x / 2) / math.sqrt(2 * math.pi), -12, 12,
                                   points=kinks or None, epsabs=1e-14, limit=200)[0]
    np.testing.assert_allclose(np.diag(phi_matrix), second_moment, rtol=1e-10)
    assert tl.mlp_weight(name) == pytest.approx(1 / second_moment, rel=1e-10)  # the branch has unit variance


def test_mlp_closed_forms_and_weights():
    rho = np.linspace(-1, 1, 9)
    for value in rho:
        pair = np.array([[1.0, value], [value, 1.0]])
        assert tl.mlp_kernel(pair, "relu")[0, 1] == pytest.approx(relu_kernel(value), abs=1e-15)
        assert tl.mlp_kernel(pair, "erf")[0, 1] == pytest.approx(2 / np.pi * np.arcsin(2 * value / 3), abs=1e-15)
        assert tl.mlp_kernel(pair, "identity")[0, 1] == value
    assert tl.mlp_weight("relu") == 2.0
    assert tl.mlp_weight("identity") == 1.0
    # near |ρ| = 1 the clip rule grades its pieces towards the smoothed kink, and stays exact
    for value in (0.99999, -0.99999):
        pair = np.array([[1.0, value], [value, 1.0]])
        assert abs(tl.mlp_kernel(pair, "clip(1)")[0, 1] - dblquad_product(*PHIS["clip(1)"], value)) < 1e-10


def test_mlp_kernel_agrees_with_netsor_closed_forms_and_limit():
    """The compiled kernels' numba closed forms (relu, erf) are twins of netsor's registered ones, and their
    Gauss–Hermite rule (tanh, gelu) agrees with netsor's quadrature limit within the documented error (≤ 3e-9
    tanh, ≤ 1e-15 gelu) plus netsor's own error bound."""
    rhos = np.concatenate([np.linspace(-1, 1, 41), [-0.99999, 0.99999]])
    for phi in (netsor.relu, netsor.erf, netsor.identity):
        closed_form = phi.closed_form_product(phi)
        for value in rhos:
            pair = np.array([[1.0, value], [value, 1.0]])
            ours = tl.mlp_kernel(pair, phi)
            assert abs(ours[0, 1] - float(closed_form(1.0, 1.0, value))) < 1e-12, (phi, value)
            assert abs(ours[0, 0] - float(closed_form(1.0, 1.0, 1.0))) < 1e-12
        assert tl.mlp_kernel(np.eye(2), phi.name)[0, 0] == tl.mlp_kernel(np.eye(2), phi)[0, 0]  # name = object
    for phi, documented in ((netsor.tanh, 3e-9), (netsor.gelu, 1e-15)):
        for value in (-0.99999, -0.9, -0.5, 0.0, 0.3, 0.7, 0.95, 0.99999):
            program = netsor.Program()
            u, v = program.inputs(2, cov=[[1.0, value], [value, 1.0]])
            pair = [netsor.nonlin(phi, u), netsor.nonlin(phi, v)]
            kernel, error = netsor.limit(program).kernel(pair, error=True)
            ours = tl.mlp_kernel(np.array([[1.0, value], [value, 1.0]]), phi)
            assert abs(ours[0, 1] - kernel[0, 1]) <= documented + error[0, 1] + 1e-15, (phi, value)
            assert abs(ours[0, 0] - kernel[0, 0]) <= error[0, 0] + 1e-15  # E[φ(Z)²] is netsor's limit


def test_mlp_accepts_netsor_nonlinearities_and_rejects_those_without_a_compiled_kernel():
    for phi, name in ((netsor.clip(1.0), "clip(1)"), (netsor.gelu, "gelu")):
        np.testing.assert_array_equal(tl.sample_kernels(K0, 2, 2, mlp=phi, size=20, seed=1),
                                      tl.sample_kernels(K0, 2, 2, mlp=name, size=20, seed=1))
    relu_named = netsor.Nonlinearity("relu", lambda x: np.maximum(x, 0.0))  # a user's φ: never matched by name
    for bad in (netsor.leaky_relu(0.1), "leaky_relu(0.1)", netsor.square, "square", relu_named,
                lambda x: np.maximum(x, 0.0)):
        with pytest.raises(ProgramError, match="mlp"):
            tl.sample_kernels(K0, 2, 2, mlp=bad, size=10, seed=0)
        with pytest.raises(ProgramError, match="mlp"):
            tl.mlp_weight(bad)


# ------------------------------------------------------------------------------------------ many heads
def test_heads_to_infinity_concentrates_like_one_over_h():
    depth, samples = 4, 20_000
    limit = tl.kernel_recursion(K0, depth, samples=1 << 19, seed=1)
    heads = np.array([1, 2, 4, 8, 16, 32, 64])
    mean_square = []
    for h in heads:
        draws = tl.sample_kernels(K0, depth, int(h), size=samples, seed=100 + int(h))
        deviation = ((draws - limit.kernels[-1]) ** 2).sum(axis=(1, 2))
        mean_square.append(deviation.mean())
        assert deviation.std() / math.sqrt(samples) < 0.02 * deviation.mean()  # each point resolved to 2%
    slope = np.polyfit(np.log(heads), np.log(mean_square), 1)[0]
    assert abs(slope + 1) < 0.2, slope
    # the mean at H = 64 is the limit, within the two Monte Carlo errors
    se = np.sqrt(draws.var(axis=0) / samples + limit.se[-1] ** 2)
    assert np.all(np.abs(draws.mean(axis=0) - limit.kernels[-1]) < 4 * se)
    # sample_kernels with heads = inf is that deterministic recursion
    infinite = tl.sample_kernels(K0, depth, math.inf, size=3, seed=1, per_block=True)
    assert infinite.shape == (3, depth + 1, 4, 4)
    assert np.all(np.abs(infinite[0] - limit.kernels) < 4 * np.sqrt(2) * limit.se + 1e-15)


def test_kernel_recursion_standard_error_is_honest():
    """Two independent runs differ by about sqrt(se₁² + se₂²) (its standard error is not understated), and the
    fixed-head-dimension recursion (values integrated out) has the mean of the sampled depth-1 kernel."""
    a = tl.kernel_recursion(K0, 3, mlp="tanh", samples=1 << 16, seed=1)
    b = tl.kernel_recursion(K0, 3, mlp="tanh", samples=1 << 16, seed=2)
    z = np.abs(a.kernels - b.kernels)[1:] / np.sqrt(a.se ** 2 + b.se ** 2)[1:]
    assert np.all(z < 4) and np.all(a.se[1:] > 0)
    assert abs(a.pooled - b.pooled) < 4 * math.hypot(a.pooled_se, b.pooled_se)
    assert a.pooled == pytest.approx(tl.pooled_variance(a.kernels[-1]))
    recursion = tl.kernel_recursion(K0, 1, head_dim=4, mlp=None, samples=1 << 17, seed=3)
    draws = tl.sample_kernels(K0, 1, 1, head_dim=4, mlp=None, size=100_000, seed=4)
    se = np.sqrt(draws.var(axis=0) / len(draws) + recursion.se[-1] ** 2)
    assert np.all(np.abs(draws.mean(axis=0) - recursion.kernels[-1]) < 4 * se)


# ------------------------------------------------------------------------------------------ fixed head dimension
def test_large_head_dim_approaches_the_proportional_limit():
    size = 40_000
    proportional = tl.sample_kernels(K0, 1, 1, mlp=None, beta0=1.5, size=size, seed=21)
    wide = tl.sample_kernels(K0, 1, 1, head_dim=512, mlp=None, beta0=1.5, size=size, seed=22)
    assert max_z(proportional, wide) < 4
    # with scores scaled by 1/N instead of 1/sqrt(N), attention is nearly uniform: a different law, rejected
    flat = tl.sample_kernels(K0, 1, 1, head_dim=512, score_exponent=1.0, mlp=None, beta0=1.5, size=size, seed=22)
    assert max_z(proportional, flat) > 4


def excess_kurtosis_with_se(x, batches=50):
    """Excess kurtosis of x and its standard error from the spread over independent batches."""
    kurtosis = lambda y: np.mean((y - y.mean()) ** 4) / np.var(y) ** 2 - 3
    parts = [kurtosis(part) for part in np.array_split(x, batches)]
    return kurtosis(x), np.std(parts, ddof=1) / math.sqrt(batches)


@pytest.mark.parametrize("head_dim, exponent", [(1, 0.5), (4, 0.5), (4, 1.0), (None, 0.5)])
def test_score_marginals_are_variance_gamma(head_dim, exponent):
    """p_ij = N^{-a} Σ_t q_it k_jt: Var = N^{1−2a} K̃_ii K̃_jj = N^{1−2a}, excess kurtosis 6/N (0 for head_dim None)."""
    scores = tl.sample_scores(K0, head_dim=head_dim, score_exponent=exponent, size=1_000_000, seed=7)
    for i, j in [(0, 1), (2, 2), (3, 0)]:
        p = scores[:, i, j]
        dim = head_dim or 1
        expected_var = dim ** (1 - 2 * exponent) if head_dim else 1.0
        var_se = math.sqrt(np.var(p ** 2) / len(p))
        assert abs(np.mean(p ** 2) - expected_var) < 4 * var_se
        kurtosis, se = excess_kurtosis_with_se(p)
        assert abs(kurtosis - (6 / dim if head_dim else 0.0)) < 4 * se, (kurtosis, se)
    # across positions the covariance is Kronecker: Cov(p_01, p_23) = K̃_02 K̃_13 · N^{1−2a}
    correlation = layer_norm(K0)
    scale = (head_dim or 1) ** (1 - 2 * exponent) if head_dim else 1.0
    product = scores[:, 0, 1] * scores[:, 2, 3]
    assert abs(product.mean() - scale * correlation[0, 2] * correlation[1, 3]) < 4 * product.std() / 1000


# ------------------------------------------------------------------------------------------ streams and arguments
def test_draws_do_not_depend_on_size_and_per_block_ends_in_the_final_kernel():
    small = tl.sample_kernels(K0, 2, 2, size=5000, seed=3)
    large = tl.sample_kernels(K0, 2, 2, size=10_000, seed=3)
    np.testing.assert_array_equal(small, large[:5000])
    np.testing.assert_array_equal(small, tl.sample_kernels(K0, 2, 2, size=5000, seed=3))
    assert not np.array_equal(small, tl.sample_kernels(K0, 2, 2, size=5000, seed=4))
    blocks = tl.sample_kernels(K0, 2, 2, size=5000, seed=3, per_block=True)
    np.testing.assert_array_equal(blocks[:, -1], small)
    np.testing.assert_array_equal(blocks[:, 0], np.broadcast_to(K0, (5000, 4, 4)))
    assert tl.pooled_variance(small).shape == (5000,)
    wide = tl.sample_kernels(K0, 2, 2, head_dim=5, mlp="clip(2)", size=300, seed=3)
    np.testing.assert_array_equal(wide[:100], tl.sample_kernels(K0, 2, 2, head_dim=5, mlp="clip(2)", size=100, seed=3))


@pytest.mark.parametrize("arguments, name", [
    (dict(input_kernel=[[1.0, 2.0], [2.0, 1.0]]), "input_kernel"),  # indefinite
    (dict(input_kernel=[[1.0, 0.1], [0.2, 1.0]]), "input_kernel"),  # not symmetric
    (dict(input_kernel=[[1.0, np.nan], [np.nan, 1.0]]), "input_kernel"),
    (dict(input_kernel=np.ones(3)), "input_kernel"),
    (dict(depth=0), "depth"), (dict(depth=1.5), "depth"), (dict(depth=True), "depth"),
    (dict(heads=0), "heads"), (dict(heads=2.5), "heads"), (dict(heads=-math.inf), "heads"),
    (dict(head_dim=0), "head_dim"),
    (dict(score_exponent=0.25), "score_exponent"), (dict(score_exponent=math.nan), "score_exponent"),
    (dict(residual_exponent=math.inf), "residual_exponent"), (dict(residual_exponent="half"), "residual_exponent"),
    (dict(beta0=-1.0), "beta0"),
    (dict(mlp="swish"), "mlp"), (dict(mlp="clip(-1)"), "mlp"), (dict(mlp=3), "mlp"),
    (dict(size=0), "size"), (dict(seed=-1), "seed"), (dict(per_block="yes"), "per_block"),
])
def test_bad_arguments_raise_program_error_naming_them(arguments, name):
    call = dict(input_kernel=K0, depth=2, heads=2, size=10, seed=0) | arguments
    with pytest.raises(ProgramError, match=name):
        tl.sample_kernels(**call)


def test_bad_recursion_and_helper_arguments():
    with pytest.raises(ProgramError, match="samples"):
        tl.kernel_recursion(K0, 2, samples=10)
    with pytest.raises(ProgramError, match="score_exponent"):
        tl.kernel_recursion(K0, 2, score_exponent=0.4)
    with pytest.raises(ProgramError, match="correlation"):
        tl.mlp_kernel(K0, "relu")  # not a correlation matrix
    with pytest.raises(ProgramError, match="mlp"):
        tl.mlp_weight(None)
