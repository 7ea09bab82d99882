"""Dot-product scalars, scalar functions, softmax, random coefficients, densities and the symbolic description."""
import warnings

import numpy as np
import pytest
from scipy import integrate, special, stats

import netsor
from netsor.ir.semantics import stable_softmax
from netsor.testing import cov_check


def two_inputs(rho=0.0):
    prog = netsor.Program()
    x, y = prog.inputs(["x", "z"], cov=[[1.0, rho], [rho, 2.0]])
    return prog, x, y


def test_linear_dot_is_the_kernel_and_concentrates_at_finite_width():
    prog, x, y = two_inputs(rho=0.5)
    d = netsor.dot(x, y, scale="linear", name="d")
    assert netsor.limit(prog).value(d) == pytest.approx(0.5, abs=1e-14)
    finite = netsor.simulate(prog, 4096, [d], 400, seed=0)[:, 0]
    assert abs(finite.mean() - 0.5) < 4 * np.sqrt((1 * 2 + 0.25) / 4096 / 400)


def test_sqrt_dot_of_uncorrelated_inputs_is_gaussian_with_isserlis_variance():
    prog, x, y = two_inputs()
    p = netsor.dot(x, y, name="p")
    law = netsor.limit(prog)
    assert law.score_cov([p])[0, 0] == pytest.approx(2.0, abs=1e-14)  # Σ_xx Σ_yy + Σ_xy² = 1·2 + 0
    assert law.cov([p])[0, 0] == pytest.approx(2.0, abs=1e-14)
    draws = law.sample_scalars([p], 100_000, seed=1)[:, 0]
    assert stats.kstest(draws / np.sqrt(2), "norm").pvalue > 1e-3
    finite = netsor.simulate(prog, 512, [p], 20_000, seed=2)[:, 0]
    assert stats.ks_2samp(draws, finite).pvalue > 1e-3
    narrow = netsor.simulate(prog, 2, [p], 20_000, seed=3)[:, 0]  # power: width 2 is far from Gaussian
    assert stats.ks_2samp(draws, narrow).pvalue < 1e-6


@pytest.mark.parametrize("build, message", [
    (lambda x, y: netsor.dot(x, y), r"diverges like sqrt\(n\).*scale='linear'"),
    (lambda x, y: netsor.dot(x, y, scale=0.75), r"diverges like n\^0.25"),
    (lambda x, y: netsor.dot(x, y, scale=0.3), "exponent 0.3 < 1/2 the dot diverges"),
])
def test_divergent_dots_are_refused_by_the_limit(build, message):
    prog, x, y = two_inputs(rho=0.5)
    build(x, y)
    netsor.simulate(prog, 8, [x], 2, seed=0)  # a valid finite-width program all the same
    with pytest.raises(netsor.ProgramError, match=message):
        netsor.limit(prog)


def test_dot_with_a_faster_decay_vanishes():
    prog, x, y = two_inputs()
    d = netsor.dot(x, y, scale=0.75)
    assert netsor.limit(prog).value(d) == 0.0


def test_sqrt_dot_through_one_matrix_is_not_covered():
    prog, x, y = two_inputs()
    W = prog.matrix("W")
    netsor.dot(W @ x, W @ y, name="pW")
    with pytest.raises(netsor.ProgramError, match="pW := Wx·Wz / sqrt\\(n\\): a 1/sqrt\\(n\\) dot needs one side"):
        netsor.limit(prog)


def test_dot_arguments_are_checked():
    prog, x, y = two_inputs()
    q = prog.matrix("WQ", shape=(3, "n")) @ x
    with pytest.raises(netsor.ProgramError, match="different dimensions"):
        netsor.dot(q, y)
    with pytest.raises(netsor.ProgramError, match="scale must be 'sqrt', 'linear' or a number"):
        netsor.dot(x, y, scale="cubic")


def test_random_coefficient_gives_a_product_normal_law():
    """y = p·x with p ~ N(0,1) independent of x: the product of two normals, density K₀(|y|)/π, kurtosis 6."""
    prog = netsor.Program()
    x, z = prog.inputs(["x", "z"])
    p = netsor.dot(x, z, name="p")  # Var p = 1·1
    y = netsor.lincomb([p], [x], name="y")
    law = netsor.limit(prog)
    draws = law.sample([y, p], 400_000, seed=4)
    assert stats.kurtosis(draws[:, 0]) == pytest.approx(6.0, abs=0.6)
    grid = np.array([0.05, 0.3, 1.0, 2.5])
    exact = special.k0(grid) / np.pi
    approx = law.pdf(grid, [y], mixture_size=200_000, seed=5)
    np.testing.assert_allclose(approx, exact, rtol=0.03)
    assert not np.allclose(law.pdf(grid, [y], mixture_size=1, seed=5), exact, rtol=0.03)  # power
    total = integrate.quad(lambda t: 2 * law.pdf(np.array([t]), [y], mixture_size=4096)[0], 0, 30, limit=200)[0]
    assert total == pytest.approx(1.0, abs=2e-3)


def test_logpdf_of_a_gaussian_law_is_exact():
    prog, x, y = two_inputs(rho=0.3)
    W = prog.matrix("W", var=2.0)
    h = W @ netsor.nonlin("relu", x)
    law = netsor.limit(prog)
    points = np.array([[0.1, -0.2, 0.3], [1.0, 2.0, -1.0]])
    cov = law.cov([x, y, h])
    np.testing.assert_allclose(law.logpdf(points, [x, y, h]),
                               stats.multivariate_normal(np.zeros(3), cov).logpdf(points), rtol=1e-12)
    with pytest.raises(netsor.ProgramError, match="last dimension 3"):
        law.logpdf(np.zeros((2, 2)), [x, y, h])


def test_moment_of_a_random_vector_is_its_conditional_expectation():
    prog, x, z = two_inputs()
    p = netsor.dot(x, z, name="p")
    m = netsor.moment(np.square, netsor.lincomb([p], [x]), name="m")  # (1/n) Σ (p x_α)² → p² E[x²] = p²
    draws = netsor.limit(prog).sample([p, m], 10_000, seed=6)
    np.testing.assert_allclose(draws[:, 1], draws[:, 0] ** 2, rtol=1e-9)


def test_scalar_functions_and_nonlinear_random_vectors():
    prog, x, z = two_inputs()
    p = netsor.dot(x, z, name="p")
    t = netsor.scalar_fn(np.tanh, p, name="t")
    v = netsor.nonlin("tanh", netsor.lincomb([t], [x]), name="v")  # tanh(tanh(p) x): quadrature per sample
    law = netsor.limit(prog)
    draws = law.sample([p, t, v], 50_000, seed=7)
    np.testing.assert_allclose(draws[:, 1], np.tanh(draws[:, 0]), rtol=1e-12)
    rng = np.random.default_rng(0)
    pp, xx = rng.normal(0, np.sqrt(2), 1_000_000), rng.normal(size=1_000_000)
    reference = np.tanh(np.tanh(pp) * xx) ** 2
    second = law.kernel([v], size=20_000, seed=8)[0, 0]
    assert abs(second - reference.mean()) < 5 * reference.std() / np.sqrt(20_000)
    with pytest.raises(netsor.ProgramError, match="must be vectorised"):
        netsor.scalar_fn(lambda s: float(s), p)


def test_softmax_is_stable_for_huge_scores():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a = stable_softmax([np.array([1e4, -1e4]), np.array([1e4 - 1, 1e4]), np.array([-1e4, 0.0])])
    assert np.all(np.isfinite(a))
    np.testing.assert_allclose(a.sum(axis=0), 1.0)
    np.testing.assert_allclose(a[:, 0], [1 / (1 + np.exp(-1)), np.exp(-1) / (1 + np.exp(-1)), 0.0])


def test_sampling_is_deterministic_across_threads_and_sizes():
    prog, x, z = two_inputs()
    p = netsor.dot(x, z, name="p")
    y = netsor.lincomb([netsor.softmax([p, netsor.dot(z, x, name="p2")])[0]], [x], name="y")
    law = netsor.limit(prog)
    a = law.sample([y, p], 70_000, seed=9, threads=1)
    b = law.sample([y, p], 70_000, seed=9, threads=2)
    c = law.sample([y, p], 40_000, seed=np.random.SeedSequence(9))
    assert np.array_equal(a, b) and np.array_equal(a[:40_000], c)
    conditional = law.conditional_cov([y], 40_000, seed=9)
    assert conditional.shape == (40_000, 1, 1)
    assert cov_check(a[:, :1], conditional.mean(axis=0))[0]


def test_describe_shows_the_hierarchy():
    prog, x, z = two_inputs()
    p = netsor.dot(x, z, name="p")
    y = netsor.lincomb([p], [x], name="y")
    m = netsor.moment(np.square, x, name="m")
    text = netsor.limit(prog).describe([y, m])
    assert "(p) ~ N(0, C), C = Matrix([[2]])" in text
    assert "Given the random scalars: (y) ~ N(0, K) with" in text and "K[y,y] = p**2" in text
    assert "m = 1" in text
    latex = netsor.limit(prog).describe([y], latex=True)
    assert "p^{2}" in latex


def tempered_attention(temperature=2.0, bias=0.3):
    """One head over two tokens with scores p_ij / T + b_ij (scalar arithmetic), then softmax."""
    prog = netsor.Program("tempered")
    xs = prog.inputs(["x1", "x2"], cov=[[1.0, 0.4], [0.4, 1.0]])
    WQ, WK, WV = prog.matrix("WQ"), prog.matrix("WK"), prog.matrix("WV")
    q, k, v = [WQ @ x for x in xs], [WK @ x for x in xs], [WV @ x for x in xs]
    scores = [[netsor.dot(q[i], k[j]) / temperature + (bias if i == j else 0.0) for j in range(2)]
              for i in range(2)]
    rows = [netsor.softmax(row) for row in scores]
    return prog, [netsor.lincomb(rows[i], v) for i in range(2)], scores


def test_scalar_arithmetic_is_exact_in_the_limit_and_at_finite_width():
    prog, outputs, scores = tempered_attention()
    law = netsor.limit(prog)
    raw = [s.args[0].args[0] for s in scores[0]]  # the dots under (p / T) + b
    np.testing.assert_allclose(law.cov(scores[0], size=200_000, seed=0), law.score_cov(raw) / 4.0, rtol=0.02)
    assert law.mean([scores[0][0]])[0] == pytest.approx(0.3, abs=0.01)
    cov = law.cov(outputs, size=200_000, seed=1)
    draws = netsor.simulate(prog, 512, outputs, 40_000, seed=2)
    ok, err, tol = cov_check(draws, cov)
    assert ok, (err, tol)
    # power: a layer without the temperature (T = 1) has another law, rejected by the same check
    other, other_outputs, _ = tempered_attention(temperature=0.25, bias=0.0)
    assert not cov_check(netsor.simulate(other, 512, other_outputs, 40_000, seed=2), cov)[0]


def test_scalar_arithmetic_nodes_print_pickle_and_refuse_bad_operands():
    import pickle

    prog = netsor.Program("ops")
    x, y = prog.inputs(["x", "y"])
    p = netsor.dot(prog.matrix("A") @ x, prog.matrix("B") @ y, name="p")
    q = netsor.dot(prog.matrix("C") @ x, prog.matrix("D") @ y, name="q")
    nodes = [2.0 * p, p / 4.0 + 1.0, p - q, -p, 1.0 - p, p * q]
    assert [n.definition() for n in nodes] == ["2 · p", "(p/4) + 1", "p − q", "-1 · p", "1 − p", "p · q"]
    values = netsor.limit(prog).sample_scalars([p, q] + nodes, 1000, seed=0)
    P, Q = values[:, 0], values[:, 1]
    np.testing.assert_allclose(values[:, 2:], np.stack([2 * P, P / 4 + 1, P - Q, -P, 1 - P, P * Q], axis=1),
                               rtol=1e-14, atol=1e-15)
    back = pickle.loads(pickle.dumps(prog))
    np.testing.assert_array_equal(netsor.limit(back).sample_scalars([n.name for n in nodes], 1000, seed=0),
                                  values[:, 2:])
    with pytest.raises(netsor.ProgramError, match="division by zero"):
        p / 0
    with pytest.raises(netsor.ProgramError, match="finite"):
        p + float("nan")
    with pytest.raises(TypeError):
        p + "a"


def test_describe_is_right_for_ragged_scores_and_later_levels():
    """A causal mask's six scores are no Kronecker grid (they used to print as 2×2 ⊗ 3×3); the full grid is Σ ⊗ Σ;
    scores of a second layer print their conditional law, not the tautology p = p."""
    prog = netsor.Program("causal")
    xs = prog.inputs(["x1", "x2", "x3"], cov=[[1.0, 0.5, 0.2], [0.5, 1.0, 0.5], [0.2, 0.5, 1.0]])
    WQ, WK, WV = prog.matrix("WQ"), prog.matrix("WK"), prog.matrix("WV")
    q, k, v = [WQ @ x for x in xs], [WK @ x for x in xs], [WV @ x for x in xs]
    causal = [netsor.softmax([netsor.dot(q[i], k[j], name=f"c{i + 1}{j + 1}") for j in range(i + 1)])
              for i in range(3)]
    UQ, UK = prog.matrix("UQ"), prog.matrix("UK")  # a second head, unmasked
    q2, k2 = [UQ @ x for x in xs], [UK @ x for x in xs]
    full = [[netsor.dot(q2[i], k2[j], name=f"f{i + 1}{j + 1}") for j in range(3)] for i in range(3)]
    y = netsor.lincomb(causal[2], v, name="y")
    z = netsor.lincomb(netsor.softmax(full[0]), v, name="z")
    # describe lists the scalars the requested variables depend on: these read every score
    every_causal = netsor.lincomb([a for row in causal for a in row], [v[j] for i in range(3) for j in range(i + 1)])
    every_full = netsor.lincomb([a for row in full for a in netsor.softmax(row)], v * 3)
    law = netsor.limit(prog)
    text = law.describe([y, z, every_causal, every_full])
    assert "c11" not in law.describe([y]) and "c31, c32, c33" in law.describe([y])  # y reads row 3 only
    (ragged,) = [line for line in text.splitlines() if "c11" in line and "~ N(0, C)" in line]
    assert "⊗" not in ragged and "Isserlis" in ragged
    (grid,) = [line for line in text.splitlines() if "f11" in line and "~ N(0, C)" in line]
    assert "C = Σ ⊗ Σ" in grid
    # the printed rule is the true covariance: K_ac K_bd + K_ad K_bc over the printed kernel
    dots = [d for row in full for d in row]
    Sigma = np.array([[1.0, 0.5, 0.2], [0.5, 1.0, 0.5], [0.2, 0.5, 1.0]])
    np.testing.assert_allclose(law.score_cov(dots), np.kron(Sigma, Sigma), atol=1e-12)
    # a second layer on top: its scores are described by their conditional law
    W2Q, W2K = prog.matrix("W2Q"), prog.matrix("W2K")
    second = netsor.dot(W2Q @ y, W2K @ z, name="s")
    u = netsor.lincomb([second], [xs[0]], name="u")
    later = netsor.limit(prog).describe([u])
    (line,) = [row for row in later.splitlines() if row.strip().startswith("s:")]
    assert "s = s" not in later and "level 2" in line and "Isserlis" in line


def test_describe_evaluates_what_is_deterministic_and_defines_its_symbols():
    prog = netsor.Program()
    x, z = prog.inputs(["x", "z"])
    WQ, WK, WV, W2 = (prog.matrix(n) for n in ("WQ", "WK", "WV", "W2"))
    p = netsor.dot(WQ @ x, WK @ z, name="p")
    t = netsor.nonlin("tanh", netsor.lincomb([p], [WV @ x]), name="t")
    y = netsor.matmul(W2, t, name="y")
    c = netsor.matmul(W2, netsor.nonlin("tanh", x, name="tx"), name="c")  # E[c c] = E[tanh(x)²], a number
    text = netsor.limit(prog).describe([y, c])
    reference = integrate.quad(lambda g: np.tanh(g) ** 2 * stats.norm.pdf(g), -12, 12)[0]
    value = float(text.split("K[c,c] = ")[1].split()[0])
    assert value == pytest.approx(reference, rel=1e-5)
    assert "K[y,c] = E[t·tx]" in text and "where E[a·b] = E[Z^a Z^b | the random scalars]" in text
    with pytest.raises(netsor.ProgramError, match="latex must be True or False"):
        netsor.limit(prog).describe([y], latex="no")
