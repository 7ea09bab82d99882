"""Dense finite-width simulation (method="dense" throughout): agreement with the limit at large width, visible
disagreement at width 4, exact finite-n facts, and determinism under chunking, threads and requested variables."""
import numpy as np
import pytest

import netsor
from netsor.testing import cov_check
from tests.programs import mlp

SIGMA = np.array([[1.0, 0.6], [0.6, 1.5]])


def mlp_with_fourth_moments(nonlinearity):
    """2-hidden-layer MLP on two points; the squared output makes the check see the kurtosis, which finite
    width inflates (the output is a Gaussian scale mixture given the hidden layers)."""
    net = mlp(depth=2, nonlinearity=nonlinearity, inputs=SIGMA, weight_var=2.0)
    f1, f2 = net.outputs
    square = netsor.nonlin(np.square, f1, name="f1_squared")
    cross = netsor.nonlin(np.multiply, f1, f2, name="f1_f2")
    return net, list(net.layers[1]) + [f1, f2, square, cross]


@pytest.mark.parametrize("nonlinearity", ["relu", "erf"])
def test_dense_agrees_with_limit_at_width_2048_and_rejects_at_width_4(nonlinearity):
    net, variables = mlp_with_fourth_moments(nonlinearity)
    exact = net.law().cov(variables)
    wide = netsor.simulate(net.program, 2048, variables, 256, seed=11, method="dense")
    ok, err, tol_all = cov_check(wide, exact)
    assert ok, f"width 2048: error {err:.3f} > tolerance {tol_all:.3f}"
    # the Gaussian part alone has light tails, hence a tighter tolerance at the same N
    ok, err, tol = cov_check(wide[:, :4], exact[:4, :4])
    assert ok and tol < tol_all, f"width 2048, (h2, f): error {err:.3f}, tolerance {tol:.3f}"
    narrow = netsor.simulate(net.program, 4, variables, 20_000, seed=12, method="dense")
    ok, err, tol = cov_check(narrow, exact)
    assert not ok, f"width 4 should be visibly non-Gaussian: error {err:.3f} <= tolerance {tol:.3f}"


@pytest.mark.parametrize("nonlinearity", ["relu", "erf"])
def test_dense_agrees_with_limit_at_width_256_with_many_networks(nonlinearity):
    net, variables = mlp_with_fourth_moments(nonlinearity)
    draws = netsor.simulate(net.program, 256, variables, 6000, seed=13, method="dense")
    ok, err, tol = cov_check(draws, net.law().cov(variables))
    assert ok, (err, tol)


def test_single_matmul_has_the_exact_finite_width_kurtosis():
    """h = W x with x iid N(0,1): given W, h ~ N(0, |W_0|²), |W_0|² ~ χ²_n/n, so E[h²] = 1, E[h⁴] = 3(1 + 2/n)."""
    prog = netsor.Program()
    x = prog.input("x")
    h = prog.matrix("W") @ x
    draws = netsor.simulate(prog, 4, [h], 200_000, seed=3, method="dense")[:, 0]
    fourth = draws ** 4
    se = fourth.std() / np.sqrt(len(fourth))
    assert abs(fourth.mean() - 4.5) < 4 * se
    assert abs(fourth.mean() - 3.0) > 4 * se  # the limit's value is rejected at this width
    assert abs((draws ** 2).mean() - 1.0) < 4 * (draws ** 2).std() / np.sqrt(len(draws))


def test_moment_scalar_fluctuates_like_chi_square():
    """m = (1/n) Σ x_α², x_α iid N(0, 2): E m = 2, Var m = 8/n."""
    prog = netsor.Program()
    x = prog.input("x", var=2.0)
    m = netsor.moment(np.square, x, name="m")
    draws = netsor.simulate(prog, 8, [m], 50_000, seed=4, method="dense")[:, 0]
    assert abs(draws.mean() - 2.0) < 4 * np.sqrt(1.0 / 50_000)
    assert draws.var() == pytest.approx(1.0, rel=0.05)


def test_rectangular_matrices():
    """q = W_Q x ∈ R^4, y = W_O q ∈ R^n: E[y_0²] = var_O · var_Q · E[x²] = 3 · 2 · 1."""
    prog = netsor.Program()
    x = prog.input("x")
    q = prog.matrix("WQ", var=2.0, shape=(4, "n")) @ x
    y = prog.matrix("WO", var=3.0, shape=("n", 4)) @ q
    draws = netsor.simulate(prog, 16, [q, y], 40_000, seed=5, method="dense")
    assert (draws[:, 1] ** 2).mean() == pytest.approx(6.0, rel=0.05)
    assert (draws[:, 0] ** 2).mean() == pytest.approx(2.0, rel=0.05)


def test_results_do_not_depend_on_chunks_threads_or_size():
    net, variables = mlp_with_fourth_moments("relu")
    a = netsor.simulate(net.program, 48, variables, 1500, seed=7, method="dense", threads=1)
    b = netsor.simulate(net.program, 48, variables, 1500, seed=7, method="dense", chunk_size=5, threads=2)
    c = netsor.simulate(net.program, 48, variables, 700, seed=np.random.SeedSequence(7), method="dense",
                           chunk_size=100)
    assert np.array_equal(a, b)
    assert np.array_equal(a[:700], c)
    d = netsor.simulate(net.program, 48, variables, 1500, seed=8, method="dense")
    assert not np.allclose(a, d)
    # asking for fewer variables draws fewer matrix rows but the same values (up to rounding)
    e = netsor.simulate(net.program, 48, variables[:2], 1500, seed=7, method="dense")
    np.testing.assert_allclose(e, a[:, :2], rtol=0, atol=1e-12)


@pytest.mark.parametrize("kwargs, message", [
    (dict(width=0), "width must be a positive integer"),
    (dict(width=2.5), "width must be a positive integer"),
    (dict(size=0), "size must be a positive integer"),
    (dict(seed=-1), "seed must be"),
    (dict(method="fast"), "unknown method 'fast'"),
    (dict(threads=0), "threads must be"),
    (dict(chunk_size=0), "chunk_size must be"),
    (dict(variables=["missing"]), "no variable named 'missing'"),
])
def test_bad_arguments(kwargs, message):
    net = mlp(depth=1)
    args = dict(width=8, variables=net.outputs, size=4, seed=0)
    args.update(kwargs)
    with pytest.raises(netsor.ProgramError, match=message):
        netsor.simulate(net.program, **args)


@pytest.mark.parametrize("inputs", ["paper", "gaussian"])
def test_simulate_with_moments_is_the_finite_law_as_a_gaussian_mixture(inputs):
    """y = W_O u is Gaussian given the rest, so E[y²] = E[s²] and E[y⁴] = 3 E[s⁴] over the components; checked
    against dense networks (an independent interpreter); the components of width 64 are rejected at width 8."""
    from tests.programs import attention_layer
    layer = attention_layer(seq_len=3, heads=2, inputs=inputs)
    y = layer.outputs[:1]
    draws, means, covs = netsor.simulate_with_moments(layer.program, 8, y, 40_000, seed=1)
    np.testing.assert_array_equal(draws, netsor.simulate(layer.program, 8, y, 40_000, seed=1, method="exact"))
    assert np.all(means == 0) and covs.shape == (40_000, 1, 1)
    dense = netsor.simulate(layer.program, 8, y, 40_000, seed=2, method="dense")[:, 0]
    wide = netsor.simulate_with_moments(layer.program, 64, y, 40_000, seed=3)[2][:, 0, 0]

    def z_scores(s2):
        """(second, fourth) moment differences dense − mixture in units of their SE."""
        out = []
        for dense_terms, mixture_terms in ((dense ** 2, s2), (dense ** 4, 3 * s2 ** 2)):
            se = np.hypot(dense_terms.std(), mixture_terms.std()) / np.sqrt(len(dense))
            out.append(abs(dense_terms.mean() - mixture_terms.mean()) / se)
        return out

    assert max(z_scores(covs[:, 0, 0])) < 4
    assert max(z_scores(wide)) > 4  # power: the fourth moment at width 64 is not width 8's


@pytest.mark.parametrize("call, message", [
    (lambda p, v: netsor.simulate(p, 2 ** 63, v, 10), "at most 2\\^62"),
    (lambda p, v: netsor.simulate(p, 16, v, 2 ** 40), "GiB of results"),
    (lambda p, v: netsor.limit(p).sample(v, 2 ** 40), "GiB of results"),
    (lambda p, v: netsor.limit(p).sample(v, 10, threads=0), "threads"),
    (lambda p, v: netsor.simulate(p, 16, v, 10, threads=0), "threads"),
])
def test_impossible_sizes_widths_and_thread_counts_are_refused_up_front(call, message):
    prog = netsor.Program("bounds")
    x = prog.input("x")
    h = prog.matrix("W") @ x
    with pytest.raises(netsor.ProgramError, match=message):
        call(prog, [h])
    assert netsor.simulate(prog, 2 ** 62, [h], 10, seed=0).shape == (10, 1)  # the largest width still runs
