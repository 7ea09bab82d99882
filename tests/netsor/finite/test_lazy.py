"""The lazy interpreter (method="lazy") against dense networks, with the power to see a wrong conditioning or a
wrong width, its Rao-Blackwellized moments, its determinism and its errors."""
import numpy as np
import pytest
from scipy import stats

import netsor
from netsor.finite import lazy
from netsor.testing import two_sample_cov_check
from tests.programs import attention_layer, transformer

SIZE = 20_000


def agree(a, b):
    """KS on every column (Bonferroni over them) and a two-sample check of the second and fourth moments (the
    columns plus the squares of the first two and their product). Returns (passes, KS p-values, moment check)."""
    ks = [stats.ks_2samp(a[:, i], b[:, i]).pvalue for i in range(a.shape[1])]

    def features(d):
        pair = d[:, :2] if d.shape[1] > 1 else np.column_stack([d[:, 0], d[:, 0]])
        return np.column_stack([d, pair ** 2, pair[:, 0] * pair[:, 1]])

    moments = two_sample_cov_check(features(a), features(b))
    return min(ks) > 1e-3 / len(ks) and moments[0], ks, moments


def reused_mlp():
    """h1 = W x, h2 = W relu(h1), h3 = W tanh(h2): each use of W is drawn given the earlier ones, on an argument
    built from them."""
    prog = netsor.Program("reused")
    x = prog.input("x")
    W = prog.matrix("W", var=2.0)
    h1 = netsor.matmul(W, x, name="h1")
    h2 = netsor.matmul(W, netsor.nonlin("relu", h1, name="r1"), name="h2")
    h3 = netsor.matmul(W, netsor.nonlin("tanh", h2, name="t2"), name="h3")
    # (1/n) Σ x_α h2_α = xᵀW relu(W x)/n has mean ≈ 1/n from W's diagonal, which both uses share
    m = netsor.moment(lambda a, b: a * b, x, h2, name="m")
    return prog, [h1, h2, h3, m]


def attention():
    layer = attention_layer(seq_len=3, heads=2, inputs="gaussian")
    return layer.program, list(layer.outputs) + [layer.scores[1][0][1]]


def two_block_transformer():
    net = transformer(depth=2, seq_len=3, heads=2)
    return net.program, list(net.outputs) + [net.blocks[1].scores[0][0][1], net.residual[0]]


CASES = {"reused MLP": reused_mlp, "attention": attention, "2-block transformer": two_block_transformer}


@pytest.mark.parametrize("width", [4, 8, 16])
@pytest.mark.parametrize("case", sorted(CASES))
def test_lazy_matches_dense(case, width):
    program, variables = CASES[case]()
    drawn = netsor.simulate(program, width, variables, SIZE, seed=1, method="lazy")
    dense = netsor.simulate(program, width, variables, SIZE, seed=2, method="dense")
    ok, ks, moments = agree(drawn, dense)
    assert ok, (ks, moments)


def test_the_comparison_rejects_a_lazy_interpreter_that_ignores_reuse(monkeypatch):
    """Drawing W relu(W x) with a fresh W (no conditioning on W x) is rejected by the same test."""
    program, variables = reused_mlp()
    dense = netsor.simulate(program, 4, variables, SIZE, seed=2, method="dense")
    monkeypatch.setattr(lazy, "project_out", lambda A, X: (np.zeros((A.shape[0], A.shape[1], X.shape[1])), X))
    fresh = netsor.simulate(program, 4, variables, SIZE, seed=1, method="lazy")
    ok, ks, moments = agree(fresh, dense)
    assert not ok, (ks, moments)


@pytest.mark.parametrize("case", ["reused MLP", "attention"])
def test_the_comparison_rejects_the_wrong_width(case):
    program, variables = CASES[case]()
    narrow = netsor.simulate(program, 4, variables, SIZE, seed=3, method="lazy")
    wide = netsor.simulate(program, 64, variables, SIZE, seed=4, method="dense")
    ok, ks, moments = agree(narrow, wide)
    assert not ok, (ks, moments)


def test_reuse_on_a_dependent_argument_is_exact():
    """W x, then W applied again to x itself (through a vector computed from W x): the second use is W x exactly,
    and W (2x + 0·relu(W x)) is 2 W x — the conditional covariance is zero on the span of earlier arguments."""
    prog = netsor.Program()
    x = prog.input("x")
    W = prog.matrix("W")
    h1 = netsor.matmul(W, x, name="h1")
    r = netsor.nonlin("relu", h1, name="r")
    again = netsor.matmul(W, netsor.lincomb([1.0, 0.0], [x, r]), name="again")
    twice = netsor.matmul(W, netsor.lincomb([2.0, 0.0], [x, r]), name="twice")
    plan = lazy.LazyPlan(prog, [h1, again, twice])
    assert [len(b.uses) for b in plan.batches[W.index]] == [1, 2]
    out = netsor.simulate(prog, 16, [h1, again, twice], 500, seed=5, method="lazy")
    np.testing.assert_allclose(out[:, 1], out[:, 0], rtol=0, atol=1e-10)
    np.testing.assert_allclose(out[:, 2], 2 * out[:, 0], rtol=0, atol=1e-10)


def test_fixed_head_dimension_matches_dense():
    """MatMuls from the width to a fixed N = 3 and back, dots over N."""
    layer = attention_layer(seq_len=3, heads=2, head_dim=3, inputs="gaussian")
    variables = list(layer.outputs) + [layer.scores[0][1][2]]
    drawn = netsor.simulate(layer.program, 8, variables, SIZE, seed=13, method="lazy")
    dense = netsor.simulate(layer.program, 8, variables, SIZE, seed=14, method="dense")
    ok, ks, moments = agree(drawn, dense)
    assert ok, (ks, moments)


def crossed_matrices():
    """W x and W tanh(V z) form one batch, which needs V z first; V relu(W x) is then V's second batch."""
    prog = netsor.Program("crossed")
    x, z = prog.inputs(["x", "z"])
    W, V = prog.matrix("W"), prog.matrix("V")
    wx = netsor.matmul(W, x, name="wx")
    vz = netsor.matmul(V, z, name="vz")
    wvz = netsor.matmul(W, netsor.nonlin("tanh", vz), name="wvz")
    vwx = netsor.matmul(V, netsor.nonlin("relu", wx), name="vwx")
    return prog, [wx, wvz, vwx, netsor.moment(lambda a, b: a * b, wvz, vwx, name="m")]


def test_a_batch_pulls_its_arguments_ahead_through_other_matrices():
    program, variables = crossed_matrices()
    plan = lazy.LazyPlan(program, variables)
    names = {program.nodes[w].name: [[u.name for u in b.uses] for b in bs] for w, bs in plan.batches.items()}
    assert names == {"W": [["wx", "wvz"]], "V": [["vz"], ["vwx"]]}
    drawn = netsor.simulate(program, 4, variables, SIZE, seed=15, method="lazy")
    dense = netsor.simulate(program, 4, variables, SIZE, seed=16, method="dense")
    ok, ks, moments = agree(drawn, dense)
    assert ok, (ks, moments)


def test_deep_programs_need_no_recursion():
    prog = netsor.Program()
    x, W = prog.input("x"), prog.matrix("W")
    first = netsor.matmul(W, x, name="first")
    chain = x
    for i in range(3000):
        chain = netsor.nonlin("tanh", chain, name=f"t{i}")
    last = netsor.matmul(W, chain, name="last")
    assert [len(b.uses) for b in lazy.LazyPlan(prog, [first, last]).batches[W.index]] == [2]
    assert np.all(np.isfinite(netsor.simulate(prog, 8, [first, last], 4, seed=0, method="lazy")))


def test_per_token_uses_form_one_batch():
    """The transformer builds o_i = W_O m_i token by token; each matrix is still drawn in one batch."""
    net = transformer(depth=2, seq_len=3, heads=2)
    plan = lazy.LazyPlan(net.program, net.outputs)
    assert all(len(batches) == 1 for batches in plan.batches.values())
    program, variables = reused_mlp()
    assert [len(b) for b in lazy.LazyPlan(program, variables).batches.values()] == [3]


def test_huge_width_needs_no_matrix():
    """Width 2^20: dense would need an 8 TB matrix; lazy holds a few n-vectors per network."""
    program, variables = reused_mlp()
    draws = netsor.simulate(program, 1 << 20, variables, 8, seed=6, method="lazy")
    assert draws.shape == (8, 4) and np.all(np.isfinite(draws))
    assert np.all(np.abs(draws[:, 3]) < 0.02)  # m has mean 1/n (W's diagonal) and fluctuations O(n^{-1/2})


def test_auto_uses_lazy_where_exact_does_not_apply():
    program, variables = reused_mlp()
    auto = netsor.simulate(program, 8, variables, 300, seed=7)
    np.testing.assert_array_equal(auto, netsor.simulate(program, 8, variables, 300, seed=7, method="lazy"))


def test_lazy_is_deterministic_across_chunks_threads_and_sizes():
    for program, variables in (reused_mlp(), two_block_transformer()):
        a = netsor.simulate(program, 32, variables, 3000, seed=8, method="lazy", threads=1)
        b = netsor.simulate(program, 32, variables, 3000, seed=8, method="lazy", threads=2, chunk_size=100)
        c = netsor.simulate(program, 32, variables, 1700, seed=8, method="lazy")
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a[:1700], c)
        assert not np.array_equal(a, netsor.simulate(program, 32, variables, 3000, seed=9, method="lazy"))


def paired_z(draws, means, covs):
    """E[(y − mean)² − cov] = 0 under the mixture: the sample mean of that difference in units of its SE."""
    diff = (draws - means) ** 2 - covs
    return diff.mean() / (diff.std() / np.sqrt(len(diff)))


def test_moments_of_the_transformer_readout():
    net = transformer(depth=2, seq_len=3, heads=2)
    score = net.blocks[0].scores[0][0][1]
    variables = [net.outputs[0], score]
    draws, means, covs = netsor.simulate_with_moments(net.program, 8, variables, SIZE, seed=10, method="lazy")
    np.testing.assert_array_equal(draws, netsor.simulate(net.program, 8, variables, SIZE, seed=10, method="lazy"))
    assert np.all(means[:, 0] == 0)  # W_out is used once: nothing to condition on
    np.testing.assert_array_equal(means[:, 1], draws[:, 1])  # a scalar is its own mean, with covariance 0
    assert np.all(covs[:, 1, :] == 0) and np.all(covs[:, :, 1] == 0)
    f, s2 = draws[:, 0], covs[:, 0, 0]
    assert abs(paired_z(f, 0.0, s2)) < 4
    tolerance = 4 * np.hypot((f ** 2).std(), s2.std()) / np.sqrt(SIZE)
    assert abs(f.var() - s2.mean()) < tolerance  # mean of the conditional variances ≈ variance of the draws
    assert stats.kstest(f / np.sqrt(s2), "norm").pvalue > 1e-3
    wide = netsor.simulate_with_moments(net.program, 64, variables, SIZE, seed=11, method="lazy")[2][:, 0, 0]
    assert stats.ks_2samp(s2, wide).pvalue < 1e-6  # the components do see the width


@pytest.mark.parametrize("target", ["h2", "h3"])
def test_moments_of_a_reused_matrix_condition_on_its_other_uses(target):
    """Target h2 = W relu(W x) (or h3 = W tanh(h2)): given the earlier uses of W (and everything else) its
    coordinate 0 has a non-zero mean."""
    program, _ = reused_mlp()
    target = program[target]
    draws, means, covs = netsor.simulate_with_moments(program, 4, [target], SIZE, seed=12, method="lazy")
    np.testing.assert_array_equal(draws, netsor.simulate(program, 4, [target], SIZE, seed=12, method="lazy"))
    y, mean, s2 = draws[:, 0], means[:, 0], covs[:, 0, 0]
    assert np.mean(np.abs(mean)) > 0.1
    assert abs(paired_z(y, mean, s2)) < 4
    # relu(h1) = 0 (every coordinate of W x negative: probability 1/16 at n = 4) makes the argument (relu(h1), or
    # tanh(W 0) = 0) lie in the span of the earlier ones: nothing is left to draw
    degenerate = s2 < 1e-12
    assert abs(degenerate.mean() - 1 / 16) < 4 * np.sqrt(15 / 16 ** 2 / SIZE)
    np.testing.assert_allclose(y[degenerate], mean[degenerate], rtol=0, atol=1e-9)
    standardised = (y - mean)[~degenerate] / np.sqrt(s2[~degenerate])
    assert stats.kstest(standardised, "norm").pvalue > 1e-3
    assert abs(paired_z(y, 0.0, s2)) > 8  # ignoring the mean is visibly wrong


def test_moments_refuse_targets_that_are_not_gaussian_given_the_rest():
    program, (h1, h2, _, _) = reused_mlp()
    with pytest.raises(netsor.ProgramError, match=r"r1 := relu\(h1\).*needs each vector target to be a MatMul"):
        netsor.simulate_with_moments(program, 8, [program["r1"]], 10, method="lazy")
    with pytest.raises(netsor.ProgramError, match=r"h1 := W x: .*feed nothing else, but r1 := relu\(h1\) uses it"):
        netsor.simulate_with_moments(program, 8, [h1, h2], 10, method="lazy")


@pytest.mark.parametrize("call, message", [
    (lambda p, v: netsor.simulate(p, 8, v, 4, method="lazzy"), "unknown method 'lazzy'"),
    (lambda p, v: netsor.simulate_with_moments(p, 8, v[1:2], 4, method="dense"), "unknown method 'dense'"),
    (lambda p, v: netsor.simulate(p, 0, v, 4, method="lazy"), "width must be a positive integer"),
    (lambda p, v: netsor.simulate(p, 8, ["missing"], 4, method="lazy"), "no variable named 'missing'"),
])
def test_bad_arguments(call, message):
    program, variables = reused_mlp()
    with pytest.raises(netsor.ProgramError, match=message):
        call(program, variables)
