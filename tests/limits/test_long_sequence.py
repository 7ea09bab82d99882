"""limits.long_sequence: the one-query sampler against the program-based exact samplers, its twins and streams, and
kl_vs_width along sequence paths. Statistical tests use fixed seeds; each has a power case rejecting a wrong law."""
import math
import warnings

import numpy as np
import pytest
from scipy import stats

import limits
import netsor
from limits.long_sequence import BLOCK, one_query_draws
from limits.score_maps import alibi
from limits.sweep import SequencePath

SIZE = 20_000
ALPHA = 1e-3  # a KS test of equal laws passes above this; a power case must fall far below it


def _program_vars(layer, width, seed):
    """V_n of y_1's coordinate 0 from the program-based exact sampler, and V_∞ from the limit's conditional
    moments."""
    finite = netsor.simulate_with_moments(layer.program, width, [layer.outputs[0]], SIZE, seed)[2][:, 0, 0]
    limit = netsor.limit(layer.program).conditional_moments([layer.outputs[0]], SIZE, seed + 1)[1][:, 0, 0]
    return finite, limit


@pytest.mark.parametrize("width", [16, 64])
def test_laws_match_the_program_based_samplers(width):
    layer = limits.attention_layer(seq_len=5, heads=2, inputs="gaussian")
    finite, limit = _program_vars(layer, width, 10 + width)
    draws = one_query_draws(5, width, SIZE, seed=width, heads=2)
    assert stats.ks_2samp(finite, draws.finite_var).pvalue > ALPHA
    assert stats.ks_2samp(finite, draws.twin_var).pvalue > ALPHA  # the twin is the finite law again
    assert stats.ks_2samp(limit, draws.limit_var).pvalue > ALPHA
    # power: the limit's law is not the finite one (at n = 64 the gap is small, but 2·10⁴ draws see it)
    assert stats.ks_2samp(finite, draws.limit_var).pvalue < 1e-8
    # the mean E V_n within its SE
    se = math.hypot(finite.std(), draws.finite_var.std()) / math.sqrt(SIZE)
    assert abs(finite.mean() - draws.finite_var.mean()) < 4 * se


@pytest.mark.parametrize("case", ["ar1-relu", "bias-sigmoid"])
def test_covariance_and_other_score_maps_match(case):
    s = 5
    ar1 = 0.5 ** np.abs(np.subtract.outer(np.arange(s), np.arange(s)))
    if case == "ar1-relu":
        built, sampled = dict(inputs=ar1, score_map="relu"), dict(input_cov=ar1, score_map="relu")
    else:
        bias = alibi(s, 0.7)
        built = dict(inputs="gaussian", score_map="sigmoid", temperature=0.5, score_bias=bias)
        sampled = dict(score_map="sigmoid", temperature=0.5, score_bias=bias[0])
    layer = limits.attention_layer(seq_len=s, heads=2, **built)
    finite, limit = _program_vars(layer, 16, 3)
    draws = one_query_draws(s, 16, SIZE, seed=4, heads=2, **sampled)
    assert stats.ks_2samp(finite, draws.finite_var).pvalue > ALPHA
    assert stats.ks_2samp(finite, draws.twin_var).pvalue > ALPHA
    assert stats.ks_2samp(limit, draws.limit_var).pvalue > ALPHA
    assert stats.ks_2samp(finite, draws.limit_var).pvalue < 1e-8
    # power: the same draws with the wrong covariance (or without the bias) are another law
    wrong = dict(sampled, input_cov=None) if case == "ar1-relu" else dict(sampled, score_bias=None)
    assert stats.ks_2samp(finite, one_query_draws(s, 16, SIZE, seed=4, heads=2, **wrong).finite_var).pvalue < 1e-8


def test_row_statistics():
    s, n = 32, 64
    draws = one_query_draws(s, n, SIZE, seed=7)
    lim, fin = draws.limit_stats, draws.finite_stats
    # limit (Σ = I): p_1· = ξ, so |p|²/s ~ χ²_s/s and p_11 ~ N(0, 1); the finite law is rejected as χ²_s/s
    assert stats.kstest(lim.score_norm * s, stats.chi2(s).cdf).pvalue > ALPHA
    assert stats.kstest(lim.score, "norm").pvalue > ALPHA
    assert stats.kstest(fin.score_norm * s, stats.chi2(s).cdf).pvalue < 1e-6
    # finite mean: E|p|² = E[χ²_n/n] E[G_11 tr G] = s + 2/n exactly
    se = fin.score_norm.std() / math.sqrt(SIZE)
    assert abs(fin.score_norm.mean() - (1 + 2 / (n * s))) < 4 * se
    for row in (fin, lim):
        assert np.all((row.max_weight >= 1 / s - 1e-12) & (row.max_weight <= 1))
        assert np.all((row.entropy >= 0) & (row.entropy <= math.log(s) + 1e-12))
    assert draws.finite_stats["entropy"] is fin.entropy
    with pytest.raises(netsor.ProgramError, match="no statistic 'mean'"):
        fin["mean"]


def test_streams_do_not_depend_on_size_or_threads():
    full = one_query_draws(6, 32, 2 * BLOCK + 50, seed=3, heads=2, threads=2)
    part = one_query_draws(6, 32, BLOCK + 7, seed=3, heads=2, threads=1)
    for name in ("finite_var", "limit_var", "twin_var"):
        assert np.array_equal(getattr(full, name)[:BLOCK + 7], getattr(part, name))
    assert np.array_equal(full.finite_stats.entropy[:BLOCK + 7], part.finite_stats.entropy)
    alone = one_query_draws(6, 32, BLOCK + 7, seed=3, heads=2, antithetic=False)
    assert alone.twin_var is None and not alone.antithetic
    assert np.array_equal(alone.finite_var, part.finite_var)  # the twin draws nothing of its own
    assert not np.array_equal(full.finite_var, full.twin_var)
    # the twins' first-order gaps cancel: their average is much closer to the limit draw than one twin
    gap = np.log(full.finite_var) - np.log(full.limit_var)
    mean_gap = np.log((full.finite_var + full.twin_var) / 2) - np.log(full.limit_var)
    assert mean_gap.std() < 0.5 * gap.std()


def test_kl_takes_the_draws_with_their_twins():
    draws = one_query_draws(8, 64, 10_000, seed=1, heads=2)
    estimate = limits.kl(draws, method="coupled")
    assert estimate.n_finite == 2 * 10_000 and estimate.value > 3 * estimate.se
    pairs = limits.kl(draws.finite_var, draws.limit_var, method="coupled")  # the same pairs without twins
    assert pairs.n_finite == 10_000 and abs(pairs.value - estimate.value) < 4 * math.hypot(pairs.se, estimate.se)


def test_sequence_paths():
    assert [SequencePath.named(p)(2 ** 16) for p in ("n^1/4", "n^1/2", "n", "n/16")] == [16, 256, 2 ** 16, 4096]
    assert SequencePath.named("n^1/2")(128) == 12 and SequencePath.named("n/16")(40) == 2
    assert SequencePath.named("n/16")(8) == 1 and SequencePath(0, 4)(10 ** 6) == 4
    assert SequencePath.named("n/16").name == "n/16" and SequencePath(0, 4).name == "4"
    with pytest.raises(netsor.ProgramError, match="exponent must be in"):
        SequencePath(1.5)


def test_kl_along_a_path(tmp_path):
    layer = limits.attention_layer(seq_len=4, heads=2, inputs="gaussian")
    df = limits.kl_vs_width(layer, widths=(256, 64), size=4000, seeds=2, estimator="coupled", seq_len="n^1/2",
                            out_dir=tmp_path, progress=False)
    assert list(df.columns) == ["width", "seq_len", "seed", "estimator", "kl", "se", "upper_bound", "n_samples",
                                "n_used", "note", "seconds"]
    assert df["width"].tolist() == [64, 64, 256, 256] and df["seq_len"].tolist() == [8, 8, 16, 16]
    assert np.all(np.isfinite(df["kl"])) and np.all(df["se"] > 0) and np.all(df["kl"] > 3 * df["se"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every stored row is valid and reused
        again = limits.kl_vs_width(layer, widths=(64, 256), size=4000, seeds=2, estimator="coupled",
                                   seq_len=lambda n: math.isqrt(n), out_dir=tmp_path, progress=False)
    assert again[["kl", "seconds"]].equals(df[["kl", "seconds"]])  # loaded, not recomputed
    mixture = limits.kl_vs_width(layer, widths=(64,), size=4000, estimator="mixture", seq_len=SequencePath(0, 4),
                                 progress=False)
    assert mixture["seq_len"].tolist() == [4] and mixture["kl"][0] > 3 * mixture["se"][0]


def test_refusals():
    error = netsor.ProgramError
    with pytest.raises(error, match="width must be at least seq_len"):
        one_query_draws(8, 7, 10)
    with pytest.raises(error, match="seq_len must be a positive integer"):
        one_query_draws(0, 7, 10)
    with pytest.raises(error, match="heads must be a positive integer"):
        one_query_draws(4, 7, 10, heads=1.5)
    with pytest.raises(error, match="input_cov: the covariance must be 4×4"):
        one_query_draws(4, 7, 10, input_cov=np.eye(3))
    with pytest.raises(error, match="input_cov must be positive definite"):
        one_query_draws(2, 7, 10, input_cov=np.ones((2, 2)))
    with pytest.raises(error, match="score_bias must be 4 finite numbers"):
        one_query_draws(4, 7, 10, score_bias=np.zeros((4, 4)))
    with pytest.raises(error, match="score_map must be one of"):
        one_query_draws(4, 7, 10, score_map="tanh")
    with pytest.raises(error, match="temperature must be"):
        one_query_draws(4, 7, 10, temperature=0)
    layer = limits.attention_layer(seq_len=4, heads=2, inputs="gaussian")
    sweep = lambda target=layer, **kw: limits.kl_vs_width(target, widths=(16,), size=100, progress=False,  # noqa
                                                          **{"estimator": "coupled", "seq_len": "n^1/2", **kw})
    with pytest.raises(error, match=r"seq_len \(a path\) needs a layer with inputs='gaussian'"):
        sweep(limits.attention_layer(seq_len=4, heads=2))
    with pytest.raises(error, match=r"seq_len \(a path\) needs a layer with mask=None"):
        sweep(limits.attention_layer(seq_len=4, heads=2, inputs="gaussian", mask="causal"))
    with pytest.raises(error, match=r"seq_len \(a path\) needs an AttentionLayer"):
        sweep(layer.program)
    with pytest.raises(error, match=r"seq_len \(a path\) needs estimator 'coupled' or 'mixture'"):
        sweep(estimator="kde")
    with pytest.raises(error, match=r"seq_len \(a path\) compares y_1's coordinate 0 only"):
        sweep(variables=layer.outputs[:1])
    with pytest.raises(error, match="seq_len must be a callable n → s or one of"):
        sweep(seq_len="n^2")
    with pytest.raises(error, match="gives s = 32 at width 16"):
        sweep(seq_len=lambda n: 2 * n)
