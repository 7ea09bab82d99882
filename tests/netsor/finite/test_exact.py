"""Exact finite-width sampling from Gram matrices against dense networks, a closed form, and the limit."""
import math

import numpy as np
import pytest
from scipy import stats

import netsor
from netsor.testing import two_sample_cov_check
from tests.programs import attention_layer

SPD = np.array([[1.0, 0.3, 0.1, 0.0], [0.3, 1.2, 0.2, 0.1], [0.1, 0.2, 0.8, 0.3], [0.0, 0.1, 0.3, 1.1]])


def with_quadratic_features(draws, k):
    """Outputs plus y1² and y1·y2: the moment check then sees fourth moments as well as covariances."""
    return np.column_stack([draws[:, :k], draws[:, 0] ** 2, draws[:, 0] * draws[:, 1]])


def agree(a, b, k):
    """KS on every coordinate (Bonferroni over them) and the two-sample check of second and fourth moments."""
    ks = [stats.ks_2samp(a[:, i], b[:, i]).pvalue for i in range(a.shape[1])]
    moments = two_sample_cov_check(with_quadratic_features(a, k), with_quadratic_features(b, k))
    return min(ks) > 1e-3 / len(ks) and moments[0], ks, moments


LAYERS = {
    "1 head, gaussian": dict(seq_len=4, heads=1, inputs="gaussian"),
    "1 head, paper (clip front)": dict(seq_len=4, heads=1, inputs="paper", clip=1.0),
    "3 heads, relu front": dict(seq_len=3, heads=3, inputs="relu"),
    "head_dim 4, gaussian": dict(seq_len=3, heads=2, head_dim=4, inputs="gaussian"),
    "head_dim 2, paper": dict(seq_len=3, heads=1, head_dim=2, inputs="paper", clip=1.0),
    "3 heads, SPD": dict(seq_len=4, heads=3, inputs=SPD),
    "2 heads, linear scaling": dict(seq_len=3, heads=2, inputs=SPD[:3, :3], scaling="linear"),
    "tied linear": dict(seq_len=3, heads=1, inputs="gaussian", scaling="linear", tied_qk=True),
}


@pytest.mark.parametrize("width", [4, 8, 32])
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_exact_matches_dense(name, width):
    layer = attention_layer(**LAYERS[name])
    variables = list(layer.outputs) + [layer.scores[0][0][1]]
    k = len(layer.outputs)
    exact = netsor.simulate(layer.program, width, variables, 20_000, seed=1, method="exact")
    dense = netsor.simulate(layer.program, width, variables, 20_000, seed=2, method="dense")
    ok, ks, moments = agree(exact, dense, k)
    assert ok, (ks, moments)


def test_exact_at_width_4_rejects_the_limit():
    layer = attention_layer(seq_len=4, heads=1, inputs="gaussian")
    exact = netsor.simulate(layer.program, 4, layer.outputs, 20_000, seed=3, method="exact")
    limit = layer.law().sample(layer.outputs, 20_000, seed=4)
    ok, ks, moments = agree(exact, limit, 4)
    assert not ok, (ks, moments)


def test_deep_linear_network_has_the_exact_fourth_moment():
    """h = W2 W1 x: given the layers, h ~ N(0, s1 s2) with s_l ~ χ²_n/n independent, so E[h⁴] = 3(1 + 2/n)²."""
    prog = netsor.Program()
    x = prog.input("x")
    h = prog.matrix("W2") @ (prog.matrix("W1") @ x)
    draws = netsor.simulate(prog, 4, [h], 400_000, seed=5, method="exact")[:, 0]
    fourth = draws ** 4
    se = fourth.std() / np.sqrt(len(fourth))
    assert abs(fourth.mean() - 3 * 1.5 ** 2) < 4 * se
    assert abs(fourth.mean() - 3 * 1.5) > 4 * se  # one layer's value is rejected


def test_huge_widths_need_no_memory_and_approach_the_limit():
    layer = attention_layer(seq_len=4, heads=2, inputs="gaussian")
    draws = netsor.simulate(layer.program, 2 ** 30, layer.outputs, 50_000, seed=6, method="exact")
    limit = layer.law().sample(layer.outputs, 50_000, seed=7)
    ok, ks, moments = agree(draws, limit, 4)
    assert ok, (ks, moments)


def test_exact_is_deterministic_across_chunks_threads_and_sizes():
    layer = attention_layer(seq_len=3, heads=2, inputs="gaussian")
    a = netsor.simulate(layer.program, 64, layer.outputs, 9000, seed=8, method="exact", threads=1)
    b = netsor.simulate(layer.program, 64, layer.outputs, 9000, seed=8, method="exact", threads=2, chunk_size=100)
    c = netsor.simulate(layer.program, 64, layer.outputs, 5000, seed=8, method="exact")
    assert np.array_equal(a, b) and np.array_equal(a[:5000], c)


def test_mlp_front_matches_dense_and_the_single_layer_closed_form():
    """A ReLU MLP is all front but its readout: exact draws it at O(n) per network, never an n×n matrix."""
    from tests.programs import mlp
    net = mlp(depth=2, nonlinearity="relu", inputs=[[1.0, 0.5], [0.5, 1.0]])
    variables = list(net.layers[1]) + list(net.outputs)
    exact = netsor.simulate(net.program, 8, variables, 20_000, seed=10, method="exact")
    dense = netsor.simulate(net.program, 8, variables, 20_000, seed=11, method="dense")
    ok, ks, moments = agree(exact, dense, 4)
    assert ok, (ks, moments)


def test_auto_picks_exact_where_it_applies_and_lazy_elsewhere():
    for layer in (attention_layer(seq_len=3, heads=1, inputs="gaussian"),
                  attention_layer(seq_len=3, heads=1, inputs="paper")):
        auto = netsor.simulate(layer.program, 32, layer.outputs, 100, seed=9)
        assert np.array_equal(auto, netsor.simulate(layer.program, 32, layer.outputs, 100, seed=9, method="exact"))
    prog = netsor.Program()
    x = prog.input("x")
    W = prog.matrix("W")
    twice = W @ (W @ x)
    auto = netsor.simulate(prog, 32, [twice], 100, seed=9)
    assert np.array_equal(auto, netsor.simulate(prog, 32, [twice], 100, seed=9, method="lazy"))


def test_irreducible_programs_are_named():
    prog = netsor.Program()
    q = prog.matrix("WQ", shape=(4, "n")) @ prog.input("x")
    r = prog.matrix("WF", shape=(3, 4)) @ q
    with pytest.raises(netsor.ProgramError, match=r"WF := .*method='exact' cannot reduce.*two fixed dimensions"):
        netsor.simulate(prog, 16, [r], 10, method="exact")
    prog = netsor.Program()
    x = prog.input("x")
    W = prog.matrix("W")
    twice = W @ (W @ x)
    with pytest.raises(netsor.ProgramError, match="W is applied to a vector computed from W itself"):
        netsor.simulate(prog, 16, [twice], 10, method="exact")
    assert netsor.simulate(prog, 16, [twice], 10).shape == (10, 1)  # auto falls back to dense
    prog = netsor.Program()
    x, g = prog.input("x"), prog.input("g")
    mixed = prog.matrix("W") @ (netsor.nonlin("relu", x) + g)
    with pytest.raises(netsor.ProgramError, match=r"Wrelu\(x\)\+g := .*mixes a vector computed through a nonlin"):
        netsor.simulate(prog, 16, [mixed], 10, method="exact")
    assert netsor.simulate(prog, 16, [mixed], 10).shape == (10, 1)


@pytest.mark.parametrize("name", ["1 head, gaussian", "3 heads, SPD", "2 heads, linear scaling",
                                  "head_dim 4, gaussian"])
def test_coupled_marginals_are_the_uncoupled_laws(name):
    """The limit half is a second derivation of the limit (Bartlett's normals, no Isserlis formula): it must
    agree with netsor.limit; the finite half must agree with dense networks."""
    layer = attention_layer(**LAYERS[name])
    variables = list(layer.outputs) + [layer.scores[0][0][1]]
    k = len(layer.outputs)
    pairs = netsor.simulate_coupled(layer.program, 16, variables, 20_000, seed=12)
    dense = netsor.simulate(layer.program, 16, variables, 20_000, seed=13, method="dense")
    ok, ks, moments = agree(pairs.finite, dense, k)
    assert ok, (ks, moments)
    limit = layer.law().sample(variables, 20_000, seed=14)
    ok, ks, moments = agree(pairs.limit, limit, k)
    assert ok, (ks, moments)
    ok, ks, moments = agree(pairs.finite, limit, k)  # power: width 16 is distinguishable from the limit
    assert not ok or name == "2 heads, linear scaling", (ks, moments)


def test_coupled_differences_shrink_like_one_over_root_n():
    layer = attention_layer(seq_len=4, heads=2, inputs="gaussian")
    spread = []
    for width in (64, 1024, 16384):
        pairs = netsor.simulate_coupled(layer.program, width, layer.outputs, 20_000, seed=15)
        spread.append(np.abs(pairs.finite - pairs.limit).mean())
    ratios = np.array(spread[:-1]) / np.array(spread[1:])
    np.testing.assert_allclose(ratios, 4.0, rtol=0.25)  # sqrt(16) per step


def test_coupled_conditional_moments_are_the_formula():
    """Given the scores, the limit output is N(0, H⁻¹ Σ_h A_h Σ A_hᵀ); given the Grams, the finite output's
    covariance averages to the finite-width covariance."""
    layer = attention_layer(seq_len=3, heads=1, inputs=SPD[:3, :3])
    scores = [p for row in layer.scores[0] for p in row]
    pairs = netsor.simulate_coupled(layer.program, 64, list(layer.outputs) + scores, 20_000, seed=16)
    p = pairs.limit[:, 3:].reshape(-1, 3, 3)
    a = np.exp(p - p.max(axis=2, keepdims=True))
    a /= a.sum(axis=2, keepdims=True)
    np.testing.assert_allclose(pairs.limit_cov[:, :3, :3], a @ SPD[:3, :3] @ a.transpose(0, 2, 1), atol=1e-10)
    np.testing.assert_allclose(pairs.limit_mean[:, :3], 0.0, atol=1e-12)
    assert np.all(pairs.finite_cov[:, 3:, :] == 0.0)  # scores are known given the Grams
    empirical = np.cov(pairs.finite[:, :3], rowvar=False)
    ok = np.abs(empirical - pairs.finite_cov[:, :3, :3].mean(axis=0)) < 0.02
    assert ok.all()


@pytest.mark.parametrize("name, width", [("1 head, paper (clip front)", 16), ("3 heads, relu front", 16),
                                         ("head_dim 2, paper", 8), ("paper, clip 100", 16)])
def test_coupled_through_a_front_has_both_laws(name, width):
    """Coupled draws through a nonlinear front of one layer (clip or relu tokens): the finite half is the dense
    network's law, the limit half is netsor.limit's, and (power) the finite half at this width is not the limit."""
    kwargs = LAYERS.get(name, dict(seq_len=3, heads=2, inputs="paper"))
    layer = attention_layer(**kwargs)
    variables = list(layer.outputs) + [layer.scores[0][0][1]]
    k = len(layer.outputs)
    pairs = netsor.simulate_coupled(layer.program, width, variables, 20_000, seed=22)
    dense = netsor.simulate(layer.program, width, variables, 20_000, seed=23, method="dense")
    ok, ks, moments = agree(pairs.finite, dense, k)
    assert ok, (ks, moments)
    limit = layer.law().sample(variables, 20_000, seed=24)
    ok, ks, moments = agree(pairs.limit, limit, k)
    assert ok, (ks, moments)
    ok, ks, moments = agree(pairs.finite, limit, k)
    assert not ok, (ks, moments)


def test_coupled_through_a_front_differences_shrink_like_one_over_root_n():
    """Paper tokens (clip at 100: drawn from the front's Gram at every width) and relu tokens (streamed)."""
    for inputs, widths in (("paper", (64, 1024, 16384)), ("relu", (64, 1024))):
        layer = attention_layer(seq_len=3, heads=2, inputs=inputs)
        spread = []
        for width in widths:
            pairs = netsor.simulate_coupled(layer.program, width, layer.outputs, 10_000, seed=25)
            spread.append(np.abs(pairs.finite - pairs.limit).mean())
        np.testing.assert_allclose(np.array(spread[:-1]) / np.array(spread[1:]), 4.0, rtol=0.25)


def test_coupled_refuses_what_it_does_not_draw():
    from limits import mlp
    net = mlp(depth=3, nonlinearity="relu")
    with pytest.raises(netsor.ProgramError, match="front of one layer .* only; h1_1 is computed through a deeper"):
        netsor.simulate_coupled(net.program, 16, net.outputs, 10)
    prog = netsor.Program()  # a 1/sqrt(n) dot whose sides share columns: its limit needs the Gram's diagonal
    x1, x2 = prog.inputs(["x1", "x2"])
    d = netsor.dot(x1 + x2, x1 - x2, scale="sqrt")
    assert netsor.simulate(prog, 64, [d], 10).shape == (10, 1)
    with pytest.raises(netsor.ProgramError, match="share basis columns, whose Gram diagonal has no coupled limit"):
        netsor.simulate_coupled(prog, 64, [d], 10)
    paper = attention_layer(seq_len=2, heads=1, inputs="paper")  # a 1/sqrt(n) dot of front vectors
    x = paper.inputs
    with pytest.raises(netsor.ProgramError, match=r"a 1/sqrt\(n\) dot needs one side"):
        netsor.simulate_coupled(paper.program, 64, [netsor.dot(x[0], x[1], scale="sqrt")], 10)


def _front_draws(plan, width, seed, size):
    """Row 0 and the Gram of a one-layer front, as FrontLayer.sample draws them: a few features of each."""
    from netsor.random import seed_sequence
    row0, gram = plan.layer.sample(seed_sequence(seed), 0, width, size)
    return np.column_stack([row0[:, 0], row0[:, 1], gram[:, 0, 0], gram[:, 0, 1], gram[:, 1, 2], gram[:, 2, 2]])


@pytest.mark.parametrize("width, clip", [(8, 1.5), (8, 3.0), (16, 5.0)])
def test_clip_front_from_its_gram_matches_the_streamed_front(monkeypatch, width, clip):
    """clip(W^i h) from the Gram of W^i h, with explicit rows given that Gram (Haar frame) wherever a clip could
    act, against the rows streamed coordinate by coordinate. The widths and bounds mix both cases; drawing fresh
    rows instead of rows given the Gram fails this by many standard errors."""
    from netsor.finite.exact import front
    from netsor.finite.exact import plan as exact_plan
    layer = attention_layer(seq_len=3, heads=1, inputs="paper", clip=clip)
    plan = exact_plan.ExactPlan(layer.program, list(layer.outputs))
    monkeypatch.setattr(front.FrontLayer, "streams", lambda self, width: True)
    streamed = _front_draws(plan, width, 20, 50_000)
    monkeypatch.setattr(front.FrontLayer, "streams", lambda self, width: False)
    from_gram = _front_draws(plan, width, 21, 50_000)
    ks = [stats.ks_2samp(streamed[:, i], from_gram[:, i]).pvalue for i in range(streamed.shape[1])]
    assert min(ks) > 1e-3 / len(ks), ks
    assert two_sample_cov_check(streamed, from_gram)[0]


def _correction_case(clip, d=63, seed=40):
    """One network's Bartlett factor T and column factors E of three clipped tokens, and their column norms."""
    from netsor.compiled.wishart import bartlett_factor
    rng = np.random.default_rng(seed)
    T = bartlett_factor(rng, rng, d, 3, 1)[0]
    E = np.diag([1.0, 0.9, 1.1])  # coordinates of variance about 1
    norms2 = np.einsum("cd,de,ce->c", E @ T, np.eye(3), E @ T)
    return T, E, norms2, np.full(3, clip ** 2), d


@pytest.mark.parametrize("clip", [2.5, 3.5])
def test_clip_correction_is_the_law_of_rows_given_their_gram(clip):
    """Karp–Luby–Madras given Bartlett's T: P(rows returned) · B = P(some coordinate clips | T), and the returned
    rows are the rows given T and a clip. Brute force: rows given T (Haar frame), clipped when they clip. Power:
    accepting every proposal (no 1/N) or dropping the envelope's acceptance gives another probability."""
    from netsor.finite.exact import front
    T, E, norms2, bound2, d = _correction_case(clip)
    B = math.exp(front._log_clip_bound(norms2[None], bound2, d)[0])
    rng = np.random.default_rng(41)
    size = 10_000
    brute = [front._rows_given_factor(rng, T, d) @ E.T for _ in range(size)]
    clipped = np.array([np.any(u ** 2 > bound2) for u in brute])
    p, se_p = clipped.mean(), clipped.std() / math.sqrt(size)
    lost = lambda u: float(np.sum(u ** 2 - np.minimum(u ** 2, bound2)))  # what clipping takes off the Gram's trace
    returned = [front._clip_correction(rng, T, E, norms2, bound2, d) for _ in range(size)]
    kept = [z @ E.T for z in returned if z is not None]
    q = len(kept) / size * B
    se_q = B * math.sqrt(len(kept)) / size
    assert B >= p and abs(q - p) < 4 * math.hypot(se_p, se_q), (p, q, B)
    assert stats.ks_2samp([lost(u) for u in kept], [lost(u) for u, c in zip(brute, clipped) if c]).pvalue > 1e-3
    # power: a sampler without the 1/N returns rows with probability E[N]/B (N the number of clipping (α, c)),
    # one without the envelope's acceptance with probability ≈ 1; this test tells both from the right one
    mean_count = np.mean([np.count_nonzero(u ** 2 > bound2) for u in brute])
    assert abs(mean_count - q) > 6 * math.hypot(se_p, se_q) or clip == 3.5  # at 3.5 two clips at once are rare
    assert abs(B - q) > 6 * se_q


def test_exact_coins_for_tiny_probabilities():
    from netsor.finite.exact.front import bernoulli_exp
    rng = np.random.default_rng(43)
    for p in (0.3, 0.05, 0.004):
        coins = bernoulli_exp(rng, np.full(200_000, math.log(p)))
        assert abs(coins.mean() - p) < 4 * math.sqrt(p * (1 - p) / 200_000), (p, coins.mean())
    assert not bernoulli_exp(rng, np.array([-5000.0, -np.inf] * 1000)).any()


@pytest.mark.parametrize("width, clip", [(64, 3.5), (256, 4.0)])
def test_clip_front_corrected_from_its_gram_matches_the_streamed_front(monkeypatch, width, clip):
    """Widths where a clip acts in ~5–10% of networks, all drawn from the Gram and corrected where the coin says
    (not the explicit fallback): the same law as the rows streamed coordinate by coordinate."""
    from netsor.finite.exact import front
    from netsor.finite.exact import plan as exact_plan
    layer = attention_layer(seq_len=3, heads=1, inputs="paper", clip=clip)
    plan = exact_plan.ExactPlan(layer.program, list(layer.outputs))
    assert plan.layer.streams(width)  # by default: the bound is not small enough to skip the rows
    monkeypatch.setattr(front.FrontLayer, "streams", lambda self, width: True)
    streamed = _front_draws(plan, width, 44, 40_000)
    monkeypatch.setattr(front.FrontLayer, "streams", lambda self, width: False)
    from_gram = _front_draws(plan, width, 45, 40_000)
    ks = [stats.ks_2samp(streamed[:, i], from_gram[:, i]).pvalue for i in range(streamed.shape[1])]
    assert min(ks) > 1e-3 / len(ks), ks
    assert two_sample_cov_check(streamed, from_gram)[0]


def _layer_program():
    """A one-layer front with every case the streamed front handles: a correlated input group and a second
    group, a matrix applied to two inputs, relu, clip, and a pre-activation used linearly (identity column)."""
    prog = netsor.Program()
    x, y = prog.inputs(["x", "y"], cov=[[1.0, 0.6], [0.6, 1.5]])
    z = prog.input("z", var=0.5)
    W1, W2, W3 = prog.matrix("W1"), prog.matrix("W2", var=2.0), prog.matrix("W3")
    u = W1 @ x
    a = netsor.nonlin("relu", u)
    b = netsor.nonlin(netsor.clip(1.0), W2 @ y)
    c = netsor.nonlin("relu", W2 @ z)
    d = netsor.nonlin(netsor.clip(0.8), W3 @ x)
    V = prog.matrix("V")
    out = V @ (a + u - b + 0.5 * c + d)
    return prog, [out, netsor.dot(a, b, scale="sqrt"), netsor.dot(u, d, scale="linear"), c]


@pytest.mark.parametrize("width", [4, 16])
def test_streamed_front_matches_the_explicit_front_and_dense(width):
    from netsor.finite.exact import block
    from netsor.finite.exact import plan as exact_plan
    from netsor.random import seed_sequence
    prog, variables = _layer_program()
    streamed = exact_plan.ExactPlan(prog, variables)
    assert streamed.layer is not None and streamed.layer.streams(width)
    explicit = exact_plan.ExactPlan(prog, variables)
    explicit.layer = None  # node by node, every n-vector materialised
    a = block.simulate_exact_block(streamed, width, variables, seed_sequence(30), 0, 20_000)
    b = block.simulate_exact_block(explicit, width, variables, seed_sequence(31), 0, 20_000)
    ok, ks, moments = agree(a, b, 4)
    assert ok, (ks, moments)
    dense = netsor.simulate(prog, width, variables, 20_000, seed=32, method="dense")
    ok, ks, moments = agree(a, dense, 4)
    assert ok, (ks, moments)


@pytest.mark.parametrize("clip", [1.0, 100.0])  # the front streamed, and drawn from its Gram
def test_paper_front_is_deterministic_across_chunks_threads_and_sizes(clip):
    layer = attention_layer(seq_len=3, heads=2, inputs="paper", clip=clip)
    a = netsor.simulate(layer.program, 64, layer.outputs, 9000, seed=8, method="exact", threads=1)
    b = netsor.simulate(layer.program, 64, layer.outputs, 9000, seed=8, method="exact", threads=2, chunk_size=100)
    c = netsor.simulate(layer.program, 64, layer.outputs, 5000, seed=8, method="exact")
    assert np.array_equal(a, b) and np.array_equal(a[:5000], c)


@pytest.mark.parametrize("width", [16, 1024])
@pytest.mark.parametrize("kwargs", [dict(inputs="gaussian"), dict(inputs=SPD, tied_qk=True),
                                    dict(inputs="gaussian", out_proj=False, scaling="linear"),
                                    dict(inputs="paper"), dict(inputs="relu")])  # fronts: loaded into the kernel
def test_fused_linear_kernel_is_the_step_by_step_path(kwargs, width):
    """The fused per-network kernel (LinearProgram) reads the same random streams as the step-by-step path:
    the same draws and conditional moments up to rounding, so the finite draws stay coupled to the limit path."""
    layer = attention_layer(seq_len=4, heads=2, **kwargs)
    targets = list(layer.outputs) + [layer.scores[0][0][1], layer.attention[1][2][0]]
    for a, b in zip(*fused_and_step_by_step(layer.program, targets, width)):
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-9)


def fused_and_step_by_step(program, targets, width):
    """One block (300 networks, with moments) by the fused kernel and, from the same streams, by the step-by-step
    path (the fused program's cache entry set to None)."""
    from netsor.finite.exact import block, linear
    from netsor.finite.exact import plan as exact_plan
    plan = exact_plan.ExactPlan(program, targets)
    assert linear._linear_program(plan, width, targets) is not None
    root = np.random.SeedSequence(21)
    fused = block.simulate_exact_block(plan, width, targets, root, 3, 300, moments=True)
    plan._cache[("linear", width, tuple(t.index for t in targets))] = None  # force the step-by-step path
    return fused, block.simulate_exact_block(plan, width, targets, root, 3, 300, moments=True)


@pytest.mark.parametrize("show_rows", [False, True])
def test_grams_without_row_zero_are_one_wishart_of_n_rows(show_rows):
    """Columns whose row 0 nothing reads (only dots of them are targets) get their Gram as one Wishart(n), with no
    row 0 drawn; with a vector target on them, as row 0 plus Wishart(n − 1). Both are the law of n-vector dots."""
    from netsor import dot
    from netsor.finite.exact import plan as exact_plan
    n, size = 3, 100_000
    prog = netsor.Program()
    x, y = prog.input("x"), prog.input("y")
    scalars = [dot(x, x, scale="linear"), dot(x, y, scale="linear")]
    targets = scalars + ([x, y] if show_rows else [])
    plan = exact_plan.ExactPlan(prog, targets)
    assert any(plan.gram_only) != show_rows
    assert len(plan.row0_columns) == (plan.size if show_rows else 0)
    draws = netsor.simulate(prog, n, targets, size, seed=8, method="exact")
    rng = np.random.default_rng(9)
    X, Y = rng.standard_normal((size, n)), rng.standard_normal((size, n))
    direct = [np.einsum("sn,sn->s", X, X) / n, np.einsum("sn,sn->s", X, Y) / n]
    for j, d in enumerate(direct):
        assert stats.ks_2samp(draws[:, j], d).pvalue > 1e-4
    assert stats.kstest(draws[:, 0] * n, stats.chi2(n).cdf).pvalue > 1e-4
