"""The compiled nested transformer sampler (limits.transformer_limit) with the attention variants — masks, score maps,
temperature and score biases, nonlinear values, tied W_K = W_Q — against a numpy recursion on the documented random
stream, against the law netsor derives from the transformer program (each match with a power case: the sampler
without the variant is rejected by the same test), against closed forms of the H → ∞ recursion, and its refusals.
Tolerances come from the sample sizes (z = 4; KS p-values > 1e-3 to agree, < 1e-8 to reject)."""
import math

import numpy as np
import pytest
from scipy import stats

import netsor
from limits import score_maps as sm
from limits import transformer
from limits import transformer_limit as tl
from netsor import ProgramError
from netsor.random import stream

K0 = np.array([[1.0, 0.6, 0.3, 0.1],
               [0.6, 1.2, 0.5, 0.2],
               [0.3, 0.5, 0.9, 0.4],
               [0.1, 0.2, 0.4, 1.1]])
CUSTOM4 = np.array([[True, False, True, False],
                    [True, True, False, False],
                    [False, True, True, True],
                    [True, False, False, True]])
CUSTOM3 = np.array([[True, False, True],
                    [True, True, False],
                    [False, True, True]])
SIZE = 4000  # draws per law in the program comparisons
UPPER3 = np.triu_indices(3)


def layer_norm(kernel):
    sd = np.sqrt(np.diagonal(kernel, axis1=-2, axis2=-1))
    return kernel / sd[..., :, None] / sd[..., None, :]


# ------------------------------------------------------------------------------------------ numpy on the stream
def numpy_kernel(normals, depth, heads, c2, head_dim=None, exponent=0.5, tied=False, mask=None, score_map=sm.SOFTMAX,
                 temperature=1.0, bias=None, values=None, mlp=netsor.relu):
    """One network's K^L by numpy from its normals (block, head, then Ξ or Ξ_Q, [Ξ_K,] Ξ_V), A by the numpy
    reference `limits.score_maps.attention_weights`, Φ by `tl.mlp_kernel`, φ(V) by the netsor nonlinearity."""
    s = K0.shape[0]
    mask = np.tril(np.ones((s, s), bool)) if isinstance(mask, str) else mask
    deterministic = head_dim is None and (tied or exponent > 0.5)
    if head_dim is None:
        per_head = 0 if deterministic else s * s
    else:
        per_head = (2 if tied else 3) * s * head_dim
    kernel = K0.copy()
    for layer in range(depth):
        correlation = layer_norm(kernel)
        chol = np.linalg.cholesky(correlation)
        update = np.zeros((s, s))
        for h in range(heads):
            xi = normals[(layer * heads + h) * per_head:(layer * heads + h + 1) * per_head]
            if head_dim is None:
                if deterministic:
                    scores = correlation if tied and exponent == 1.0 else np.zeros((s, s))
                else:
                    scores = chol @ xi.reshape(s, s) @ chol.T
                gram = correlation if values is None else tl.mlp_kernel(correlation, values)
            else:
                parts = [chol @ part.reshape(s, head_dim) for part in np.split(xi, 2 if tied else 3)]
                q, k, v = (parts[0], parts[0], parts[1]) if tied else parts
                scores = q @ k.T / head_dim ** exponent
                phi_v = v if values is None else values.fn(v)
                gram = phi_v @ phi_v.T / head_dim
            attention = sm.attention_weights(scores, mask, temperature, bias, score_map)
            update += attention @ gram @ attention.T / heads
        kernel = kernel + c2 * update
        if mlp is not None:
            kernel = kernel + c2 * tl.mlp_weight(mlp) * tl.mlp_kernel(layer_norm(kernel), mlp)
    return kernel


STREAM_CASES = {
    "causal relu map, temperature, ALiBi": dict(mask="causal", score_map=sm.RELU, temperature=0.7,
                                               bias=sm.alibi(4, 0.5)),
    "custom mask sigmoid, tanh values": dict(mask=CUSTOM4, score_map=sm.SIGMOID, values=netsor.tanh),
    "linear map, relu values": dict(score_map=sm.LINEAR, values=netsor.relu),
    "head_dim 3, tied, erf values, causal": dict(head_dim=3, exponent=0.5, tied=True, values=netsor.erf,
                                                 mask="causal"),
    "head_dim 2, clip values, sigmoid, bias": dict(head_dim=2, exponent=0.7, values=netsor.clip(0.8),
                                                   score_map=sm.SIGMOID, bias=sm.alibi(4, 1.0)),
    "head_dim 3, gelu values": dict(head_dim=3, values=netsor.gelu),
    "uniform, bias, custom mask": dict(exponent=1.0, bias=sm.alibi(4, 0.8), mask=CUSTOM4),
    "uniform, linear map, bias": dict(exponent=1.0, score_map=sm.LINEAR, bias=sm.alibi(4, 0.3)),
    "tied a = 1, relu map, relu values": dict(exponent=1.0, tied=True, score_map=sm.RELU, values=netsor.relu),
    "tied a = 2, softmax, causal": dict(exponent=2.0, tied=True, mask="causal"),
}


@pytest.mark.parametrize("name", list(STREAM_CASES))
def test_first_samples_equal_a_numpy_recursion_on_the_documented_stream(name):
    """The compiled kernels apply each variant exactly as the numpy reference does, to the normals of the block's
    Generator in the documented layout (tied finite heads draw Ξ_Q, Ξ_V; deterministic scores draw nothing)."""
    case = STREAM_CASES[name]
    depth, heads, beta0, count, seed = 2, 2, 1.3, 5, 9
    c2 = beta0 ** 2 / depth
    ours = tl.sample_kernels(K0, depth, heads, head_dim=case.get("head_dim"), score_exponent=case.get("exponent", 0.5),
                             beta0=beta0, mlp="relu", size=count, seed=seed, tied_qk=case.get("tied", False),
                             mask=case.get("mask"), score_map=case.get("score_map", sm.SOFTMAX),
                             temperature=case.get("temperature", 1.0), score_bias=case.get("bias"),
                             value_nonlinearity=case.get("values"))
    head_dim, tied = case.get("head_dim"), case.get("tied", False)
    deterministic = head_dim is None and (tied or case.get("exponent", 0.5) > 0.5)
    per_head = 0 if deterministic else 16 if head_dim is None else (2 if tied else 3) * 4 * head_dim
    normals = stream(np.random.SeedSequence(seed), 0).standard_normal((count, depth * heads * per_head))
    for n in range(count):
        expected = numpy_kernel(normals[n], depth, heads, c2, **case)
        np.testing.assert_allclose(ours[n], expected, rtol=1e-11, atol=1e-12)
    assert np.all(np.isfinite(ours))
    if deterministic:
        np.testing.assert_array_equal(ours, np.broadcast_to(ours[0], ours.shape))


# ------------------------------------------------------------------------------------------ against the program's law
LAW_CASES = {  # the variant, and the same sampler without it (or with another), which must be rejected
    "causal mask": (dict(mask="causal"), dict(mask=None)),
    "custom mask": (dict(mask=CUSTOM3), dict(mask=None)),
    "linear map": (dict(score_map="linear"), dict(score_map="softmax")),
    "relu map": (dict(score_map="relu"), dict(score_map="sigmoid")),
    "sigmoid map": (dict(score_map=sm.SIGMOID), dict(score_map=sm.RELU)),
    "temperature + ALiBi": (dict(temperature=0.5, score_bias=sm.alibi(3, 1.0)), dict(score_bias=None)),
    "relu values": (dict(value_nonlinearity="relu"), dict(value_nonlinearity=None)),
    "tanh values, head_dim 3": (dict(value_nonlinearity="tanh", head_dim=3), dict(value_nonlinearity=None)),
    "tied, head_dim 4": (dict(tied_qk=True, head_dim=4), dict(tied_qk=False)),
    "causal sigmoid, relu values, head_dim 3": (dict(mask="causal", score_map="sigmoid", value_nonlinearity="relu",
                                                     head_dim=3), dict(mask=None)),
}


def _law_and_samplers(variant, alternative, seed):
    model = transformer(depth=2, seq_len=3, heads=2, **variant)
    law = model.law()
    nested = model.nested_kernels(SIZE, seed=seed)
    wrong = tl.sample_kernels(model.input_kernel(), heads=2, size=SIZE, seed=seed,
                              **(model._limit_options() | alternative))
    return model, law, nested, wrong


@pytest.mark.parametrize("name", list(LAW_CASES))
def test_nested_kernels_have_the_law_of_the_program(name):
    """K^L from netsor.limit(program) and from the compiled nested sampler: each random entry's law (KS), every
    entry's mean, and the readout's conditional variance against pooled_variance; the sampler without the variant
    fails the same tests."""
    model, law, nested, wrong = _law_and_samplers(*LAW_CASES[name], seed=2)
    program = law.sample_scalars(list(model.final_kernel()), SIZE, seed=1)
    ours, theirs = nested[:, UPPER3[0], UPPER3[1]], wrong[:, UPPER3[0], UPPER3[1]]
    random = program.std(axis=0) > 1e-8  # causal: K_11 is deterministic (token 1 sees itself only)
    assert random.sum() >= 3
    for k in np.flatnonzero(random):
        assert stats.ks_2samp(program[:, k], ours[:, k]).pvalue > 1e-3, k
    for k in np.flatnonzero(~random):
        np.testing.assert_allclose(ours[:, k], program[:, k], rtol=1e-10)
    se = np.sqrt(program.var(axis=0) / SIZE + ours.var(axis=0) / SIZE) + 1e-12
    assert np.all(np.abs(program.mean(axis=0) - ours.mean(axis=0)) < 4 * se)
    assert min(stats.ks_2samp(program[:, k], theirs[:, k]).pvalue for k in range(6)) < 1e-8
    readout_variance = law.conditional_moments([model.outputs[0]], SIZE, seed=4)[1][:, 0, 0]
    assert stats.ks_2samp(readout_variance, tl.pooled_variance(nested)).pvalue > 1e-3
    assert stats.ks_2samp(readout_variance, tl.pooled_variance(wrong)).pvalue < 1e-8


DETERMINISTIC_CASES = {  # scores that do not fluctuate: the whole limit is one kernel
    "tied, scores / n": (dict(tied_qk=True, score_exponent=1.0), dict(tied_qk=False)),  # untied: p = 0, uniform
    "tied, scores / n^1.5": (dict(tied_qk=True, score_exponent=1.5, score_map="sigmoid"), dict(score_map="relu")),
    "uniform, linear map": (dict(score_exponent=1.0, score_map="linear", score_bias=sm.alibi(3, 0.4)),
                            dict(score_bias=None)),  # linear map of b = 0: A = 0, no attention at all
    "uniform, causal, erf values": (dict(score_exponent=1.0, mask="causal", value_nonlinearity="erf",
                                         score_bias=0.3 * np.ones((3, 3))), dict(mask=None)),
}


@pytest.mark.parametrize("name", list(DETERMINISTIC_CASES))
def test_deterministic_scores_give_the_programs_deterministic_kernel(name):
    variant, alternative = DETERMINISTIC_CASES[name]
    model, law, nested, wrong = _law_and_samplers(variant, alternative, seed=5)
    program = law.sample_scalars(list(model.final_kernel()), 200, seed=1)
    assert np.all(program.std(axis=0) < 1e-10)
    np.testing.assert_allclose(nested[:, UPPER3[0], UPPER3[1]], np.broadcast_to(program[0], (SIZE, 6)), rtol=1e-10)
    assert np.abs(wrong[0, UPPER3[0], UPPER3[1]] - program[0]).max() > 1e-3
    recursion = model.kernel_recursion(samples=1000)
    np.testing.assert_allclose(recursion.kernels[-1], nested[0], rtol=1e-12)
    assert np.all(recursion.se == 0)


# ------------------------------------------------------------------------------------------ infinitely many heads
def linear_head_mean(correlation, mask, temperature, bias, moments):
    """E[A K̃ Aᵀ] for the linear map A_ij = (p_ij/τ + b_ij) 1[j ∈ S_i] with E p = 0 and E[p_ij p_kl] = moments[i, j,
    k, l]: Σ_{j∈S_i, l∈S_k} (moments_ijkl/τ² + b_ij b_kl) K̃_jl."""
    keep = mask.astype(float)
    second = moments / temperature ** 2 + np.einsum("ij,kl->ijkl", bias, bias)
    return np.einsum("ijkl,ij,kl,jl->ik", second, keep, keep, correlation)


@pytest.mark.parametrize("head_dim, tied", [(None, False), (3, True)])
def test_linear_map_recursion_matches_its_closed_form(head_dim, tied):
    """With the linear map the head expectation is a polynomial in K̃: Gaussian scores E[p_ij p_kl] = K̃_ik K̃_jl;
    tied finite heads E[p_ij p_kl] = N^{-2a}(N² K̃_ij K̃_kl + N (K̃_ik K̃_jl + K̃_il K̃_jk))."""
    mask, temperature, bias, exponent, beta0 = CUSTOM4, 0.8, sm.alibi(4, 0.4), 0.5, 1.2
    correlation = layer_norm(K0)
    k = correlation
    if head_dim is None:
        moments = np.einsum("ik,jl->ijkl", k, k)
        mean_scores = np.zeros((4, 4))
    else:
        n = head_dim
        moments = n ** (-2 * exponent) * (n * n * np.einsum("ij,kl->ijkl", k, k)
                                          + n * (np.einsum("ik,jl->ijkl", k, k) + np.einsum("il,jk->ijkl", k, k)))
        mean_scores = n ** (1 - exponent) * k  # E p_ij ≠ 0 when tied: subtract its square, add it to the bias
        moments = moments - np.einsum("ij,kl->ijkl", mean_scores, mean_scores)
    expected = K0 + beta0 ** 2 * linear_head_mean(correlation, mask, temperature, bias + mean_scores / temperature,
                                                  moments)
    recursion = tl.kernel_recursion(K0, 1, head_dim=head_dim, score_exponent=exponent, beta0=beta0, mlp=None,
                                    samples=1 << 16, seed=3, tied_qk=tied, mask=mask, score_map="linear",
                                    temperature=temperature, score_bias=bias)
    assert np.all(recursion.se[1] > 0)
    assert np.all(np.abs(recursion.kernels[1] - expected) < 4 * recursion.se[1]), \
        np.abs(recursion.kernels[1] - expected) / recursion.se[1]
    unmasked = K0 + beta0 ** 2 * linear_head_mean(correlation, np.ones((4, 4), bool), temperature,
                                                  bias + mean_scores / temperature, moments)
    assert np.any(np.abs(recursion.kernels[1] - unmasked) > 8 * recursion.se[1])


def test_kernel_recursion_with_variants_is_the_many_head_mean():
    """The H → ∞ recursion (causal relu map, temperature, tanh values) is the mean of the nested sampler at H = 64
    within the two Monte Carlo errors; the recursion without the mask is not; heads = inf is that recursion."""
    options = dict(mask="causal", score_map="relu", temperature=0.7, value_nonlinearity="tanh", mlp="relu")
    recursion = tl.kernel_recursion(K0, 2, samples=1 << 15, seed=1, **options)
    draws = tl.sample_kernels(K0, 2, 64, size=2000, seed=2, **options)
    se = np.sqrt(draws.var(axis=0) / len(draws) + recursion.se[-1] ** 2)
    assert np.all(np.abs(draws.mean(axis=0) - recursion.kernels[-1]) < 4 * se)
    unmasked = tl.kernel_recursion(K0, 2, samples=1 << 15, seed=1, **(options | dict(mask=None)))
    assert np.any(np.abs(draws.mean(axis=0) - unmasked.kernels[-1]) > 8 * se)
    infinite = tl.sample_kernels(K0, 2, math.inf, size=2, seed=1, **options)
    assert infinite.shape == (2, 4, 4) and np.all(np.isfinite(infinite))


def test_fixed_head_recursion_integrates_the_nonlinear_values_out():
    """At depth 1 the recursion is E[A G Aᵀ] exactly, so it is the mean of one-head samples; with a fixed head
    dimension its G = Φ(K̃) = E[φ(V) φ(V)ᵀ / N] (values integrated out), not V Vᵀ / N's mean K̃."""
    options = dict(head_dim=3, tied_qk=True, mask=CUSTOM4, score_map="sigmoid", value_nonlinearity="relu", mlp=None,
                   beta0=1.5)
    recursion = tl.kernel_recursion(K0, 1, samples=1 << 15, seed=5, **options)
    draws = tl.sample_kernels(K0, 1, 1, size=20_000, seed=6, **options)
    se = np.sqrt(draws.var(axis=0) / len(draws) + recursion.se[-1] ** 2)
    assert np.all(np.abs(draws.mean(axis=0) - recursion.kernels[-1]) < 4 * se)
    linear = tl.kernel_recursion(K0, 1, samples=1 << 15, seed=5, **(options | dict(value_nonlinearity=None)))
    assert np.any(np.abs(draws.mean(axis=0) - linear.kernels[-1]) > 8 * se)


# ------------------------------------------------------------------------------------------ scores, streams, refusals
def test_tied_scores():
    """Tied finite heads: p_ij = q_i·q_j / N^a, so E p_ij = N^{1−a} K̃_ij and p_ii > 0; tied with head dimension n at
    a = 1: p = K̃ exactly; at a > 1: 0."""
    correlation = layer_norm(K0)
    scores = tl.sample_scores(K0, head_dim=3, score_exponent=0.5, size=40_000, seed=3, tied_qk=True)
    se = scores.std(axis=0) / math.sqrt(len(scores))
    assert np.all(np.abs(scores.mean(axis=0) - math.sqrt(3) * correlation) < 4 * se)
    assert np.all(np.diagonal(scores, axis1=1, axis2=2) > 0)
    np.testing.assert_allclose(scores, scores.transpose(0, 2, 1), rtol=1e-13, atol=1e-13)
    untied = tl.sample_scores(K0, head_dim=3, score_exponent=0.5, size=40_000, seed=3)
    assert np.abs(untied.mean(axis=0) - math.sqrt(3) * correlation).max() > 8 * se.max()
    np.testing.assert_allclose(tl.sample_scores(K0, score_exponent=1.0, size=3, tied_qk=True),
                               np.broadcast_to(correlation, (3, 4, 4)), rtol=1e-15)
    assert np.all(tl.sample_scores(K0, score_exponent=1.3, size=3, tied_qk=True) == 0)


def test_variant_draws_do_not_depend_on_size_and_identity_values_are_linear_values():
    options = dict(mask=CUSTOM4, score_map="sigmoid", head_dim=2, tied_qk=True, value_nonlinearity="gelu")
    small = tl.sample_kernels(K0, 2, 2, size=300, seed=7, **options)
    np.testing.assert_array_equal(small, tl.sample_kernels(K0, 2, 2, size=600, seed=7, **options)[:300])
    np.testing.assert_array_equal(tl.sample_kernels(K0, 2, 2, size=50, seed=1, value_nonlinearity=netsor.identity),
                                  tl.sample_kernels(K0, 2, 2, size=50, seed=1))
    # an all-true mask, τ = 1 and a zero bias are no variants at all: the original draws
    np.testing.assert_array_equal(tl.sample_kernels(K0, 2, 2, size=50, seed=1, mask=np.ones((4, 4), bool),
                                                    score_bias=np.zeros((4, 4)), score_map=sm.SOFTMAX),
                                  tl.sample_kernels(K0, 2, 2, size=50, seed=1))


def test_extreme_logits_stay_finite():
    huge = 1e4 * np.array([[1.0, -1, 1, -1], [-1, 1, -1, 1], [1, 1, -1, -1], [-1, -1, 1, 1]])
    for score_map in sm.SCORE_MAPS.values():
        draws = tl.sample_kernels(K0, 2, 2, size=40, seed=0, temperature=1e-3, score_bias=huge, mask="causal",
                                  score_map=score_map, head_dim=2)
        assert np.all(np.isfinite(draws)), score_map


@pytest.mark.parametrize("arguments, message", [
    (dict(value_nonlinearity="leaky_relu(0.1)"), "value_nonlinearity leaky_relu"),
    (dict(value_nonlinearity=netsor.square), "value_nonlinearity square has no compiled kernel"),
    (dict(value_nonlinearity=lambda x: x), "value_nonlinearity must be a nonlinearity name"),
    (dict(value_nonlinearity="swish"), "value_nonlinearity 'swish'"),
    (dict(tied_qk=True), "tied_qk .* needs score_exponent ≥ 1"),
    (dict(tied_qk=True, score_exponent=0.75), "tied_qk .* needs score_exponent ≥ 1"),
    (dict(tied_qk="yes"), "tied_qk must be True or False"),
    (dict(mask="anticausal"), "mask must be None, 'causal'"),
    (dict(mask=np.ones((3, 3), bool)), "mask must be a 4×4 boolean array"),
    (dict(mask=np.ones((4, 4))), "mask must be a 4×4 boolean array"),
    (dict(mask=np.tri(4, k=-1, dtype=bool)), "mask row 1 allows no key"),
    (dict(score_map="exp"), "score_map must be one of"),
    (dict(score_map=3), "score_map must be one of"),
    (dict(temperature=0.0), "temperature must be a finite positive number"),
    (dict(temperature=math.inf), "temperature"),
    (dict(score_bias=np.full((4, 4), np.nan)), "score_bias must be a finite 4×4 array"),
    (dict(score_bias=np.zeros((4, 3))), "score_bias must be a finite 4×4 array"),
])
def test_variant_refusals_name_the_argument(arguments, message):
    for call in (lambda: tl.sample_kernels(K0, 2, 2, size=5, seed=0, **arguments),
                 lambda: tl.kernel_recursion(K0, 2, samples=64, **arguments)):
        with pytest.raises(ProgramError, match=message) as info:
            call()
        assert "\n" not in str(info.value)
    if set(arguments) == {"tied_qk"} or "score_exponent" in arguments:
        with pytest.raises(ProgramError, match="tied_qk"):
            tl.sample_scores(K0, size=5, **arguments)


def test_transformer_nested_kernels_refuse_values_without_a_compiled_kernel():
    """The builder takes any nonlinearity for the values; the compiled limit refuses those it has no kernel for."""
    for phi in ("leaky_relu(0.2)", lambda x: np.tanh(x)):
        model = transformer(depth=2, seq_len=3, value_nonlinearity=phi)
        for call in (lambda: model.nested_kernels(10, seed=0), lambda: model.kernel_recursion(samples=64)):
            with pytest.raises(ProgramError, match="value_nonlinearity .* has no compiled kernel here"):
                call()


def test_overflowing_logits_are_refused_not_returned_as_nan():
    for arguments in (dict(temperature=1e-310), dict(score_map="linear", score_exponent=1.0,
                                                     score_bias=np.full((4, 4), 1e200))):
        for call in (lambda: tl.sample_kernels(K0, 2, 2, size=5, seed=0, **arguments),
                     lambda: tl.kernel_recursion(K0, 2, samples=64, **arguments)):
            with pytest.raises(ProgramError, match="overflowed to inf or NaN: the logits p/τ"):
                call()
