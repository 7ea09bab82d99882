"""The attention variants of limits.attention_layer (limits.blocks, limits.score_maps, limits.positions): each one's
limit law (netsor.limit of the built program) against finite-width networks (the exact Gram sampler, or the lazy
O(n) interpreter for nonlinear values — derivations independent of the limit's), with a power case in which the law
of a neighbouring variant is rejected; hand-checkable describe() output; argument refusals.

The statistic: V, the output's variance given the random scalars (finite: given the Grams too), whose first two
moments fix E[y²] = E V and E[y⁴] = 3 E V². At width n the finite moments differ from the limit's by O(1/n)."""
from __future__ import annotations

import numpy as np
import pytest

import limits
import netsor
from limits import attention_layer
from limits.score_maps import LINEAR, RELU, SIGMOID, SOFTMAX, alibi, attention_weights

WIDTH, SIZE = 1024, 40_000
SPD = np.array([[1.0, 0.4, 0.2, 0.1], [0.4, 1.2, 0.3, 0.0], [0.2, 0.3, 0.9, 0.25], [0.1, 0.0, 0.25, 1.1]])


def variance_moments(V: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(E V, E V²) and their standard errors from draws of V."""
    values = np.stack([V, V ** 2])
    return values.mean(axis=1), values.std(axis=1) / np.sqrt(V.size)


def finite_moments(layer, output: int, width: int = WIDTH, size: int = SIZE, seed: int = 0):
    _, _, covs = netsor.simulate_with_moments(layer.program, width, [layer.outputs[output]], size, seed)
    return variance_moments(covs[:, 0, 0])


def limit_moments(layer, output: int, size: int = SIZE, seed: int = 1):
    _, covs = netsor.limit(layer.program).conditional_moments([layer.outputs[output]], size, seed)
    return variance_moments(covs[:, 0, 0])


def agree(a, b, width: int = WIDTH, slack: float = 4.0) -> bool:
    """Moments agree within `slack` combined SEs plus an O(1/n) allowance: 4/n relative for E V, 12/n for E V²
    (its relative bias is about twice E V's plus Var V_n / (E V)², itself O(1/n))."""
    (ma, sa), (mb, sb) = a, b
    return bool(np.all(np.abs(ma - mb) <= slack * np.hypot(sa, sb) + np.array([4.0, 12.0]) / width * np.abs(mb)))


def rejected(a, b, sigmas: float = 8.0) -> bool:
    (ma, sa), (mb, sb) = a, b
    return bool(np.any(np.abs(ma - mb) > sigmas * np.hypot(sa, sb)))


CASES = {  # name: (layer options, the output compared, the neighbouring variant whose law must be rejected, width)
    "causal mask": (dict(mask="causal"), 1, dict(mask=None)),
    "custom mask": (dict(mask=np.array([[1, 0, 1], [0, 1, 1], [1, 1, 0]], bool)), 2, dict(mask=None)),
    "linear map": (dict(score_map="linear"), 0, dict(score_map="relu")),
    "relu map": (dict(score_map="relu"), 0, dict(score_map="sigmoid")),
    "sigmoid map, causal": (dict(score_map="sigmoid", mask="causal"), 1, dict(score_map="softmax")),
    "temperature": (dict(temperature=0.5), 0, dict(temperature=1.0)),
    "ALiBi bias": (dict(score_bias=alibi(3, 1.0)), 0, dict(score_bias=None)),
    "tied, 1/n": (dict(tied_qk=True, scaling="linear"), 0, dict(tied_qk=False, scaling="linear"), 256),
    "tied, head_dim 4": (dict(tied_qk=True, head_dim=4), 0, dict(tied_qk=False, head_dim=4)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_variant_limit_matches_finite_width_and_rejects_its_neighbour(name):
    options, output, neighbour, *width = CASES[name]
    width = width[0] if width else WIDTH  # tied scores at 1/n go through the lazy interpreter, O(n) per network
    layer = attention_layer(seq_len=3, heads=1, inputs=SPD[:3, :3], **options)
    finite = finite_moments(layer, output, width, SIZE if width == WIDTH else 20_000)
    limit = limit_moments(layer, output)
    assert agree(finite, limit, width), (finite, limit)
    other = limit_moments(layer.rebuild(**neighbour), output, seed=2)  # power: a neighbouring law is not this one
    assert rejected(finite, other), (finite, other)


def test_cross_attention_limit_matches_finite_width():
    layer = attention_layer(seq_len=2, kv_len=2, heads=2, inputs=SPD)
    assert len(layer.outputs) == 2 and layer.kv_len == 2 and len(layer.scores[0][0]) == 2
    q, k = layer.scores[0][0][1].args  # query 1 against memory token 2 = input x4
    assert q.arg is layer.inputs[0] and k.arg is layer.inputs[3]
    finite, limit = finite_moments(layer, 0), limit_moments(layer, 0)
    assert agree(finite, limit), (finite, limit)
    # the scores' covariance is K_qq ⊗ K_kk over queries {1, 2} and memory {3, 4} (Isserlis, zero cross mean)
    cov = netsor.limit(layer.program).score_cov([p for row in layer.scores[0] for p in row])
    np.testing.assert_allclose(cov, np.kron(SPD[:2, :2], SPD[2:, 2:]), atol=1e-12)
    # power: self-attention of the first two tokens is another law
    self_attention = attention_layer(seq_len=2, heads=2, inputs=SPD[:2, :2])
    assert rejected(finite, limit_moments(self_attention, 0, seed=2))


def test_value_nonlinearity_limit_matches_finite_width_and_its_closed_form():
    layer = attention_layer(seq_len=3, heads=1, inputs="gaussian", value_nonlinearity="relu")
    width, size = 256, 20_000
    finite, limit = finite_moments(layer, 0, width, size), limit_moments(layer, 0, size)
    assert agree(finite, limit, width)
    # closed form given the scores: V = E[relu(Z)²] Σ_j A_j² + (E relu Z)² Σ_{j≠k} A_j A_k = ½|A|² + (1/2π)(1 − |A|²)
    p = netsor.limit(layer.program).sample_scalars(list(layer.scores[0][0]), size, seed=3)
    a2 = (SOFTMAX.weights(p) ** 2).sum(axis=1)
    closed = variance_moments(0.5 * a2 + (1 - a2) / (2 * np.pi))
    assert agree(closed, limit, width)
    assert rejected(finite, limit_moments(layer.rebuild(value_nonlinearity=None), 0, size, seed=2))


def test_tied_linear_scores_are_the_token_kernel_and_the_output_gaussian():
    layer = attention_layer(seq_len=3, heads=1, inputs=SPD[:3, :3], tied_qk=True, scaling="linear")
    law = netsor.limit(layer.program)
    scores = np.array([[law.value(p) for p in row] for row in layer.scores[0]])
    np.testing.assert_allclose(scores, SPD[:3, :3], atol=1e-12)  # q_i·q_j / n → K_ij
    A = attention_weights(SPD[:3, :3])
    np.testing.assert_allclose(law.cov(layer.outputs), A @ SPD[:3, :3] @ A.T, atol=1e-12)


def test_positional_kernel_is_the_gram_of_sinusoidal_encodings():
    s, n = 6, 1 << 16
    k = np.arange(n // 2)
    omega = 10_000.0 ** (-2 * k / n)
    phase = np.outer(np.arange(s), omega)
    encodings = np.sqrt(2) * np.concatenate([np.sin(phase), np.cos(phase)], axis=1)
    gram = encodings @ encodings.T / n
    np.testing.assert_allclose(limits.positional(s, tokens=np.zeros((s, s)) + 1e-300 * np.eye(s)), gram, atol=2e-4)
    # power: the unaveraged cos(Δ) (a single frequency) is not it
    assert np.abs(np.cos(np.subtract.outer(np.arange(s), np.arange(s))) - gram).max() > 0.1
    K = limits.positional(4, scale=0.5)
    np.testing.assert_allclose(np.diag(K), 1.25)
    np.testing.assert_allclose(limits.positional(4, "random", 2.0), 5.0 * np.eye(4))
    layer = attention_layer(seq_len=4, heads=1, inputs=K)
    np.testing.assert_allclose(layer.input_cov(), K, atol=1e-12)
    finite = finite_moments(layer, 3, size=20_000)
    assert agree(finite, limit_moments(layer, 3, size=20_000))
    # power: tokens without the encodings (the same diagonal 1.25, no correlation) are another law
    assert rejected(finite, limit_moments(layer.rebuild(inputs=1.25 * np.eye(4)), 3, size=20_000, seed=2))


def test_score_maps_follow_their_formulas():
    z = np.array([[-1.0, 0.5, 2.0]])
    np.testing.assert_allclose(SOFTMAX.weights(z), np.exp(z) / np.exp(z).sum())
    np.testing.assert_allclose(LINEAR.weights(z), z)
    np.testing.assert_allclose(RELU.weights(z), [[0.0, 0.5 / 3, 2.0 / 3]])
    np.testing.assert_allclose(SIGMOID.weights(z), 1 / (1 + np.exp(-z)) / 3)
    for m in (LINEAR, RELU, SIGMOID):  # the compiled rule is the numpy one
        assert all(abs(limits.score_maps.elementwise_weight(m.code, v, 3) - m.weights(z)[0, j]) < 1e-15
                   for j, v in enumerate(z[0]))
    assert limits.score_maps.elementwise_weight(SIGMOID.code, -800.0, 1) == 0.0  # no overflow
    p = np.arange(9.0).reshape(3, 3) / 4
    mask = np.tril(np.ones((3, 3), bool))
    A = attention_weights(p, mask, 2.0, alibi(3, 1.0), SOFTMAX)
    row = np.exp(p[1, :2] / 2 - [1, 0])
    np.testing.assert_allclose(A[1], np.r_[row / row.sum(), 0.0])


def test_describe_lists_the_ragged_scores_and_the_weights():
    layer = attention_layer(seq_len=3, heads=1, inputs="gaussian", mask="causal", score_map="relu",
                            temperature=2.0, score_bias=alibi(3, 0.5))
    text = layer.law().describe([layer.outputs[1]])
    assert "(p_2,1, p_2,2) ~ N(0, C)" in text  # the scores y2 reads: query 2 sees keys 1 and 2 only
    assert "z_2,1 = 0.5*p_2,1 - 0.5" in text and "A_2[0] = Max(0, z_2,1)/2" in text and "p_3" not in text
    every = layer.law().describe()  # all outputs: the ragged set of all six scores, by the Isserlis rule
    assert "(p_1,1, p_2,1, p_2,2, p_3,1, p_3,2, p_3,3) ~ N(0, C), Cov(a·b, c·d) = K_ac K_bd + K_ad K_bc" in every
    assert "K[y2,y2] = A_2[0]**2 + A_2[1]**2" in text  # Σ = I: the weights' squares
    printed = str(layer.program)
    assert "p_1,2" not in printed and "m_2    := A_2[0]·v_1 + A_2[1]·v_2" in printed
    assert layer.key_sets == ((0,), (0, 1), (0, 1, 2))


def test_variant_arguments_are_refused_with_their_names():
    cases = [
        (dict(mask="future"), "mask must be None, 'causal'"),
        (dict(mask=np.ones((3, 2), bool)), "mask must be a 3×3 boolean array"),
        (dict(mask=np.array([[0, 0, 0], [1, 1, 0], [1, 1, 1]], bool)), "mask row 1 allows no key"),
        (dict(kv_len=2, mask="causal"), "causal mask needs as many keys as queries"),
        (dict(score_map="tanh"), "score_map must be one of softmax, linear, relu, sigmoid"),
        (dict(temperature=0.0), "temperature must be a finite positive number"),
        (dict(score_bias=np.zeros((2, 3))), r"score_bias must be a finite 3×3 array"),
        (dict(score_bias=[[np.nan] * 3] * 3), r"score_bias must be a finite 3×3 array"),
        (dict(value_nonlinearity="nope"), "value_nonlinearity"),
        (dict(kv_len=0), "kv_len must be a positive integer"),
        (dict(kv_len=2, inputs=np.eye(3)), r"inputs \(over seq_len \+ kv_len = 5 tokens\)"),
    ]
    for options, message in cases:
        with pytest.raises(netsor.ProgramError, match=message):
            attention_layer(**{"seq_len": 3, "heads": 1, "inputs": "gaussian", **options})
    with pytest.raises(netsor.ProgramError, match="kv_len .* is not a transformer option"):
        limits.transformer(seq_len=3, kv_len=2)
    with pytest.raises(netsor.ProgramError, match="rebuild: unknown argument 'width'"):
        attention_layer(seq_len=2).rebuild(width=3)
    with pytest.raises(netsor.ProgramError, match="positional: kind must be one of sinusoidal, random"):
        limits.positional(3, "learned")


def test_relu_attention_atom_is_refused_not_estimated():
    """A row whose logits are all negative gets no weight: y = 0 with probability ≈ 2^-s, an atom with no density."""
    layer = attention_layer(seq_len=2, heads=1, inputs="gaussian", score_map="relu")
    _, covs = netsor.limit(layer.program).conditional_moments([layer.outputs[0]], 4000, seed=0)
    zero = np.mean(covs[:, 0, 0] == 0)
    assert abs(zero - 0.25) < 4 * np.sqrt(0.25 * 0.75 / 4000)  # both scores ≤ 0: 1/4 for iid tokens
    with pytest.raises(netsor.ProgramError, match="exactly 0.*atom there and no density"):
        limits.kl(covs[:, 0, 0], covs[:, 0, 0], method="mixture")
