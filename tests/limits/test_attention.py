"""The attention layer's limit, derived from its program, against closed forms, independent Monte Carlo of the
published formula, and dense finite-width networks."""
import math
import warnings

import numpy as np
import pytest
from scipy import integrate, stats

import netsor
import limits
from limits import attention_layer
from netsor.testing import cov_check

RELU_SIGMA = np.full((4, 4), 1 / (2 * np.pi)) + np.eye(4) * (0.5 - 1 / (2 * np.pi))
SPD = np.array([[1.0, 0.3, 0.1, 0.0], [0.3, 1.2, 0.2, 0.1], [0.1, 0.2, 0.8, 0.3], [0.0, 0.1, 0.3, 1.1]])


def clip_second_moment(c):
    return integrate.quad(lambda u: np.clip(u, -c, c) ** 2 * stats.norm.pdf(u), -40, 40, points=[-c, c],
                          epsabs=1e-14, limit=200)[0]


@pytest.mark.parametrize("inputs, sigma", [
    ("paper", np.eye(4)),
    ("relu", RELU_SIGMA),  # E[relu(g)²] = 1/2, E[relu(g)] E[relu(g′)] = 1/(2π) for independent g, g′
    ("gaussian", np.eye(4)),
    (SPD, SPD),
])
def test_scores_have_the_kronecker_covariance(inputs, sigma):
    layer = attention_layer(seq_len=4, heads=2, inputs=inputs)
    law = layer.law()
    np.testing.assert_allclose(layer.input_cov(), sigma, atol=1e-12)
    head1 = [p for row in layer.scores[0] for p in row]
    head2 = [p for row in layer.scores[1] for p in row]
    cov = law.score_cov(head1 + head2)
    np.testing.assert_allclose(cov[:16, :16], np.kron(sigma, sigma), atol=1e-12)
    np.testing.assert_allclose(cov[:16, 16:], 0.0, atol=1e-15)  # heads are independent
    assert law.is_random(head1[0]) and law.is_random(layer.outputs[0])
    draws = law.sample_scalars(head1, 100_000, seed=3)
    assert cov_check(draws, cov[:16, :16])[0]


def test_paper_inputs_use_the_clipped_second_moment():
    layer = attention_layer(seq_len=2, heads=1, inputs="paper", clip=0.7)
    sigma = layer.input_cov()
    assert sigma[0, 0] == pytest.approx(clip_second_moment(0.7), abs=1e-12)
    assert sigma[0, 1] == pytest.approx(0.0, abs=1e-15)


def reference_output_law(sigma, heads, size, seed):
    """SKI25's formula, sampled independently of netsor: p^h ~ N(0, Σ⊗Σ), A_h = softmax(p^h) row-wise,
    y | p ~ N(0, H⁻¹ Σ_h A_h Σ A_hᵀ). Returns the conditional covariances (size, s, s)."""
    rng = np.random.default_rng(seed)
    s = len(sigma)
    factor = np.linalg.cholesky(np.kron(sigma, sigma))
    cond = np.zeros((size, s, s))
    for _ in range(heads):
        p = (rng.standard_normal((size, s * s)) @ factor.T).reshape(size, s, s)
        a = np.exp(p - p.max(axis=2, keepdims=True))
        a /= a.sum(axis=2, keepdims=True)
        cond += a @ sigma @ a.transpose(0, 2, 1)
    return cond / heads


@pytest.mark.parametrize("inputs, sigma, non_gaussian", [("gaussian", np.eye(4), True), (SPD, SPD, True),
                                                         ("relu", RELU_SIGMA, False)])
def test_output_cov_and_kurtosis_match_the_formula(inputs, sigma, non_gaussian):
    layer = attention_layer(seq_len=4, heads=2, inputs=inputs)
    law = layer.law()
    cond = reference_output_law(sigma, 2, 400_000, seed=1)
    expected_cov = cond.mean(axis=0)
    # the law's own Monte Carlo covariance, with its SE
    cov, se = law.cov(layer.outputs, error=True, size=200_000, seed=2)
    ref_se = cond.std(axis=0) / np.sqrt(len(cond))
    assert np.all(np.abs(cov - expected_cov) < 5 * np.hypot(se, ref_se))
    # samples: covariance, and the excess kurtosis 3 E[C_ii²] / E[C_ii]² − 3 of a Gaussian scale mixture
    y = law.sample(layer.outputs, 400_000, seed=3)
    assert cov_check(y, expected_cov)[0]
    diag = cond[:, 0, 0]
    kurt_expected = 3 * np.mean(diag ** 2) / np.mean(diag) ** 2 - 3
    kurt = stats.kurtosis(y[:, 0])
    batches = stats.kurtosis(y[:, 0].reshape(40, -1), axis=1)
    assert abs(kurt - kurt_expected) < 5 * batches.std() / np.sqrt(40)
    if non_gaussian:  # relu tokens share a large mean, so A Σ Aᵀ barely moves and the law is nearly Gaussian
        assert kurt_expected > 0.05
        assert abs(kurt) > 5 * batches.std() / np.sqrt(40)  # the check rejects a Gaussian (zero kurtosis)


def test_conditional_cov_is_the_formula_per_draw():
    layer = attention_layer(seq_len=3, heads=1, inputs=SPD[:3, :3])
    law = layer.law()
    scores = [p for row in layer.scores[0] for p in row]
    p = law.sample_scalars(scores, 1000, seed=5).reshape(1000, 3, 3)
    cond = law.conditional_cov(layer.outputs, 1000, seed=5)
    a = np.exp(p - p.max(axis=2, keepdims=True))
    a /= a.sum(axis=2, keepdims=True)
    np.testing.assert_allclose(cond, a @ SPD[:3, :3] @ a.transpose(0, 2, 1), rtol=1e-10, atol=1e-12)


def features(layer):
    """Outputs plus two quadratic features, so the check sees fourth moments as well as covariances."""
    y1, y2 = layer.outputs[:2]
    return list(layer.outputs) + [netsor.nonlin(np.square, y1, name="y1_sq"),
                                  netsor.nonlin(np.multiply, y1, y2, name="y1_y2")]


def limit_feature_cov(layer, variables, size=1_000_000):
    draws = layer.law().sample(variables[:len(layer.outputs)], size, seed=99)
    y1, y2 = draws[:, 0], draws[:, 1]
    return np.cov(np.column_stack([draws, y1 ** 2, y1 * y2]), rowvar=False)


def test_limit_agrees_with_dense_at_width_1024_and_rejects_at_width_8():
    layer = attention_layer(seq_len=4, heads=1, inputs="gaussian")
    variables = features(layer)
    reference = limit_feature_cov(layer, variables)
    wide = netsor.simulate(layer.program, 1024, variables, 300, seed=7, method="dense")
    ok, err, tol = cov_check(wide, reference)
    assert ok, (err, tol)
    narrow = netsor.simulate(layer.program, 8, variables, 20_000, seed=8, method="dense")
    ok, err, tol = cov_check(narrow, reference)
    assert not ok, (err, tol)


@pytest.mark.parametrize("inputs", ["paper", "relu"])
def test_limit_agrees_with_dense_at_moderate_width_with_two_heads(inputs):
    layer = attention_layer(seq_len=4, heads=2, inputs=inputs)
    variables = features(layer)
    draws = netsor.simulate(layer.program, 128, variables, 4000, seed=9, method="dense")
    ok, err, tol = cov_check(draws, limit_feature_cov(layer, variables))
    assert ok, (err, tol)


def test_linear_scaling_gives_uniform_attention_and_a_gaussian():
    layer = attention_layer(seq_len=4, heads=2, scaling="linear", inputs=SPD)
    law = layer.law()
    assert not law.is_random(layer.outputs[0])
    np.testing.assert_allclose(law.sample_scalars(list(layer.attention[0][0]), 3, seed=0), 0.25, atol=1e-15)
    uniform = np.full((4, 4), 0.25)
    np.testing.assert_allclose(law.cov(layer.outputs), uniform @ SPD @ uniform.T, atol=1e-12)


def test_tied_linear_scaling_gives_softmax_of_the_input_kernel():
    layer = attention_layer(seq_len=4, heads=1, scaling="linear", tied_qk=True, inputs=SPD)
    a = np.exp(SPD) / np.exp(SPD).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(layer.law().cov(layer.outputs), a @ SPD @ a.T, atol=1e-12)


def test_tied_sqrt_scaling_is_refused_when_built():
    with pytest.raises(netsor.ProgramError, match=r"attention_layer: tied_qk .* needs scores / n .* diverge"):
        attention_layer(seq_len=2, heads=1, tied_qk=True, inputs="gaussian")
    with pytest.raises(netsor.ProgramError, match=r"transformer: tied_qk .* at 1/n\^0.7"):
        limits.transformer(seq_len=2, heads=1, tied_qk=True, score_exponent=0.7)
    # the law itself still refuses the diverging program, written by hand
    prog = netsor.Program("tied")
    x1, x2 = prog.inputs(2)
    W = prog.matrix("W")
    score = netsor.dot(W @ x1, W @ x1 + W @ x2)
    with pytest.raises(netsor.ProgramError, match=r"diverges like sqrt\(n\).*scale='linear'"):
        netsor.limit(prog).sample_scalars([score], 10, seed=0)
    assert attention_layer(seq_len=2, heads=1, tied_qk=True, head_dim=4, inputs="gaussian").law()  # fixed N: fine


def test_infinite_heads_is_gaussian_with_the_averaged_covariance():
    layer = attention_layer(seq_len=4, heads=math.inf, inputs=SPD)
    gaussian = layer.law(size=400_000, seed=4)
    cond = reference_output_law(SPD, 1, 400_000, seed=6)
    ref_se = cond.std(axis=0) / np.sqrt(len(cond))
    assert np.all(np.abs(gaussian.cov - cond.mean(axis=0)) < 5 * np.hypot(gaussian.cov_se, ref_se))
    draws = gaussian.sample(layer.outputs, 200_000, seed=1)  # one signature for every law object
    assert abs(stats.kurtosis(draws[:, 0])) < 0.05  # Gaussian, unlike any finite H
    with pytest.raises(netsor.ProgramError, match="infinitely many heads"):
        layer.simulate(16, 4)
    # the infinite head sum is part of the program: netsor.limit gives the same Gaussian, not one head's mixture
    law = netsor.limit(layer.program)
    cov, se = law.cov(layer.outputs, error=True, size=200_000, seed=5)
    assert np.all(np.abs(cov - gaussian.cov) < 5 * np.hypot(se, gaussian.cov_se))
    draws = law.sample(layer.outputs, 200_000, seed=2)
    assert abs(stats.kurtosis(draws[:, 0])) < 0.05
    one_head = netsor.limit(attention_layer(seq_len=4, heads=1, inputs=SPD).program)
    single = one_head.sample(one_head.program["y1"], 200_000, seed=2)[:, 0]
    assert stats.kurtosis(single) > 0.15  # power: one head's law is a heavier-tailed mixture (kurtosis ≈ 0.26)
    with pytest.raises(netsor.ProgramError, match="infinitely many heads|infinite head sum"):
        netsor.simulate(layer.program, 16, layer.outputs, 4, seed=0)
    with pytest.raises(netsor.ProgramError, match="signature is sample"):
        gaussian.sample(1000, 0)  # the old (size, seed) order


@pytest.mark.parametrize("head_dim, kurtosis", [(1, 6.0), (16, 0.375)])
def test_fixed_head_dim_scores_are_variance_gamma(head_dim, kurtosis):
    layer = attention_layer(seq_len=2, heads=1, head_dim=head_dim, inputs="gaussian")
    law = layer.law()
    p = law.sample_scalars([layer.scores[0][0][1]], 2_000_000, seed=11)[:, 0]
    assert p.var() == pytest.approx(1.0, rel=0.02)  # N^{-1/2} Σ_{r<N} q_r k_r has variance 1
    batches = stats.kurtosis(p.reshape(50, -1), axis=1)
    se = batches.std() / np.sqrt(50)
    assert abs(batches.mean() - kurtosis) < 5 * se
    assert abs(batches.mean() - (6.0 if head_dim == 16 else 0.375)) > 5 * se  # the other N is rejected


def test_fixed_head_dim_matches_dense_simulation():
    layer = attention_layer(seq_len=3, heads=2, head_dim=4, inputs="gaussian")
    variables = features(layer)
    draws = netsor.simulate(layer.program, 256, variables, 4000, seed=12, method="dense")
    ok, err, tol = cov_check(draws, limit_feature_cov(layer, variables, size=400_000))
    assert ok, (err, tol)


def test_huge_inputs_give_no_nan_and_no_warning():
    layer = attention_layer(seq_len=4, heads=2, inputs=SPD * 1e8)  # inputs scaled by 1e4, scores ~ 1e8
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = layer.law().sample(layer.outputs, 20_000, seed=0)
        f = layer.simulate(32, 200, seed=0)
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(f))


@pytest.mark.parametrize("heads", [1, 2])
@pytest.mark.parametrize("seq_len", [11, 64])
def test_long_sequences_build_with_distinct_names_and_the_right_scores(seq_len, heads):
    """Two-digit token indices used to collide (p_111 was both (1, 11) and (11, 1)); every score p^h_ij must be
    its own node q^h_i·k^h_j."""
    layer = attention_layer(seq_len=seq_len, heads=heads)
    prog = layer.program
    names = [node.name for node in prog.nodes]
    assert len(set(names)) == len(names)
    dots = [node for node in prog.nodes if isinstance(node, netsor.Dot)]
    assert len(dots) == heads * seq_len ** 2
    assert {id(p) for head in layer.scores for row in head for p in row} == {id(d) for d in dots}
    assert len(layer.scores) == heads and len(layer.attention) == heads and len(layer.outputs) == seq_len
    for h, head in enumerate(layer.scores, 1):
        tag = f"^{h}" if heads > 1 else ""
        queries = [row[0].args[0] for row in head]
        keys = [p.args[1] for p in head[0]]
        for q, k, x in zip(queries, keys, layer.inputs):
            assert isinstance(q, netsor.MatMul) and q.matrix is prog[f"WQ{tag}"] and q.arg is x
            assert isinstance(k, netsor.MatMul) and k.matrix is prog[f"WK{tag}"] and k.arg is x
        for i in range(seq_len):
            assert len(head[i]) == seq_len and len(layer.attention[h - 1][i]) == seq_len
            for j in range(seq_len):
                assert head[i][j].args == (queries[i], keys[j])
        assert prog[f"p{tag}_1,11"] is head[0][10] and prog[f"p{tag}_11,1"] is head[10][0]
    assert [y.name for y in layer.outputs] == [f"y{i}" for i in range(1, seq_len + 1)]
    assert [x.name for x in layer.inputs] == [f"x{i}" for i in range(1, seq_len + 1)]


def test_tied_scores_are_dots_of_queries():
    layer = attention_layer(seq_len=11, heads=1, tied_qk=True, scaling="linear")
    q = [row[0].args[0] for row in layer.scores[0]]
    assert all(layer.scores[0][i][j].args == (q[i], q[j]) for i in range(11) for j in range(11))
    assert "WK" not in layer.program


@pytest.mark.parametrize("kwargs, message", [
    (dict(seq_len=0), "seq_len must be a positive integer"),
    (dict(heads=0), "heads must be a positive integer or math.inf"),
    (dict(heads=2.5), "heads must be"),
    (dict(inputs=np.array([[1.0, 2.0], [2.0, 1.0]]), seq_len=2), "not positive semi-definite"),
    (dict(inputs="uniform"), "inputs must be one of paper, relu, gaussian"),
    (dict(scaling="cubic"), "scaling must be 'sqrt' or 'linear'"),
    (dict(head_dim=0), "head_dim must be a positive integer"),
    (dict(head_dim=4, out_proj=False), "without the output projection the head dimension must be n"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(netsor.ProgramError, match=message):
        attention_layer(**kwargs)
