"""The trainable model at initialisation has the law of its Netsor program (netsor.simulate), and its
parameterisations scale as BCP24's Table 1 says."""
import math
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import limits
import netsor
from netsor import ProgramError
from netsor.ir.nonlinearities import as_nonlinearity
from limits.training.model import from_transformer, trainable
from limits.training.parameterisation import adam, sgd, standard

WIDTH, NETWORKS = 32, 3000
ALPHA = 1e-3  # per-variable KS level; three variables, Bonferroni 3e-3 for the whole law


def _model_draws(model, tokens, size, seed=0, chunk=500):
    """f (standardised), K^L_12 and the first block's score p^{1,1}_{1,2} over `size` independent initialisations."""
    def one(params):
        f, inside = model.apply(params, jnp.asarray(tokens[None], jnp.float32), internals=True)
        x = inside["stream"][0]
        return model.standardised_output(f)[0, 0], x[0] @ x[1] / model.width, inside["scores"][0, 0, 0, 0, 1]
    batched = jax.jit(jax.vmap(one))
    out = []
    for begin in range(0, size, chunk):
        inits = [model.init(seed * 1_000_003 + i) for i in range(begin, min(size, begin + chunk))]
        params = {k: np.stack([p[k] for p in inits]) for k in inits[0]}
        out.append(np.stack([np.asarray(v, dtype=float) for v in batched(params)], axis=1))
    return np.concatenate(out)


def _program_draws(program, size, seed):
    variables = [program.outputs[0], program.kernels[-1][0][1], program.blocks[0].scores[0][0][1]]
    return program.simulate(WIDTH, size, seed=seed, variables=variables)


@pytest.fixture(scope="module")
def setting():
    tokens = np.random.default_rng(3).standard_normal((3, 6))
    model = trainable(depth=2, heads=2, head_dim=4, token_dim=6, width=WIDTH, score_exponent=0.5)
    return model, tokens, _model_draws(model, tokens, NETWORKS)


def test_initial_law_is_the_programs(setting):
    model, tokens, draws = setting
    reference = _program_draws(model.program(tokens), NETWORKS, seed=11)
    for j in range(3):
        assert stats.ks_2samp(draws[:, j], reference[:, j]).pvalue > ALPHA, j


def test_a_wrong_program_is_rejected(setting):
    # power case: the program at the other score scale (N^-1 instead of N^-1/2) — a plausible slip
    model, tokens, draws = setting
    wrong = trainable(depth=2, heads=2, head_dim=4, token_dim=6, width=WIDTH, score_exponent=1.0).program(tokens)
    reference = _program_draws(wrong, NETWORKS, seed=11)
    assert min(stats.ks_2samp(draws[:, j], reference[:, j]).pvalue for j in range(3)) < 1e-6


@pytest.mark.parametrize("p", [sgd(), adam(), standard()], ids=lambda p: p.name)
def test_initial_weights_have_the_programs_variances(p):
    """W = mθ has variance var/fan_in in every group (the program's), whatever the parameterisation; the readout
    is mean-field size 1/n² (variance) or the standard 1/n."""
    model = trainable(depth=3, heads=2, head_dim=16, token_dim=5, outputs=3, score_exponent=0.5,
                      residual_exponent=1.0, parameterisation=p)
    W = model.effective(model.init(4))
    n, N = model.width, model.head_dim
    expected = {"read_in": 1 / 5, "query": 1 / n, "key": 1 / n, "value": 1 / n, "out": 1 / N, "mlp_in": 1 / n,
                "mlp_out": 2.0 / n, "readout": 1 / n if p.standard else 1 / n ** 2}
    for name, var in expected.items():
        values = np.asarray(W[name], dtype=float).ravel()
        # the sample variance of m iid normals has relative SE sqrt(2/m); allow 5 SE
        assert abs(values.var() / var - 1) < 5 * math.sqrt(2 / values.size), name


def test_learning_rate_scalings_follow_table_1():
    for a_L in (0.5, 1.0):
        one = trainable(depth=1, heads=2, head_dim=8, residual_exponent=a_L, parameterisation=sgd(gamma0=0.5))
        big = trainable(depth=4, heads=8, head_dim=8, residual_exponent=a_L, parameterisation=sgd(gamma0=0.5))
        # SGD: η₀ γ₀² n L^(2α_L − 1)
        assert big.learning_rate(1.0) / one.learning_rate(1.0) == pytest.approx(4 * 4 ** (2 * a_L - 1))
        assert one.learning_rate(1.0) == pytest.approx(0.25 * 16)
        adam_one = trainable(depth=1, heads=2, head_dim=8, residual_exponent=a_L, parameterisation=adam(0.5))
        adam_big = trainable(depth=4, heads=8, head_dim=8, residual_exponent=a_L, parameterisation=adam(0.5))
        # Adam: η₀ γ₀ n^(−1/2) L^(α_L − 1)
        assert adam_big.learning_rate(1.0) / adam_one.learning_rate(1.0) == pytest.approx(0.5 * 4 ** (a_L - 1))
    sp = trainable(heads=64, head_dim=64, parameterisation=standard())
    assert sp.learning_rate(0.01) == 0.01


def test_query_key_scaling_depends_on_the_score_exponent():
    """c = 3/2 − α_A: θ ~ N(0, N^(2c−1)), m = N^(1/2−c)/√n, so SGD moves W_Q by η m² ∝ N^(1−2c)."""
    for a_A in (1.0, 0.5):
        s = trainable(heads=2, head_dim=16, score_exponent=a_A).scalings()["query"]
        c = 1.5 - a_A
        assert s.std == pytest.approx(16 ** (c - 0.5))
        assert s.multiplier ** 2 * 32 == pytest.approx(16 ** (1 - 2 * c))


def test_jax_twins_of_the_nonlinearities():
    x = np.linspace(-4, 4, 41)
    for name in ("relu", "gelu", "erf", "tanh", "identity", "clip(1.5)", "leaky_relu(0.2)"):
        phi = as_nonlinearity(name, 1)
        assert np.allclose(np.asarray(phi.jax_function()(jnp.asarray(x, jnp.float32))), phi(x), atol=1e-6), name
    with pytest.raises(ProgramError, match="no sympy form"):
        as_nonlinearity(lambda u: u * 2, 1).jax_function()


def test_from_transformer_keeps_the_architecture():
    t = limits.transformer(depth=3, seq_len=2, heads=2, head_dim=4, score_exponent=1.0, residual_exponent=1.0,
                           beta0=2.0, mlp="tanh")
    model = from_transformer(t, token_dim=4)
    assert (model.depth, model.heads, model.head_dim, model.width, model.mlp, model.beta0) == (3, 2, 4, 8, "tanh", 2.0)
    assert model.branch_scale == pytest.approx(t.branch_scale)
    with pytest.raises(ProgramError, match="fixed head_dim"):
        from_transformer(limits.transformer(depth=1, seq_len=2), token_dim=4)


def test_models_pickle_and_hash():
    model = trainable(parameterisation=adam())
    again = pickle.loads(pickle.dumps(model))
    assert again == model and hash(again) == hash(model)
    np.testing.assert_array_equal(model.init(1)["query"], again.init(1)["query"])
    assert not np.array_equal(model.init(1)["query"], model.init(2)["query"])


@pytest.mark.parametrize("kwargs, match", [
    (dict(heads=0), "heads"), (dict(head_dim=2.5), "head_dim"), (dict(score_exponent=-1), "score_exponent"),
    (dict(mlp=3), "mlp"), (dict(mlp="softsign"), "unknown nonlinearity"), (dict(parameterisation="sgd"),
                                                                              "parameterisation"),
    (dict(width=True), "width"), (dict(heads=1 << 12, head_dim=1 << 12, depth=64), "parameters")])
def test_bad_models_are_refused(kwargs, match):
    with pytest.raises(ProgramError, match=match):
        trainable(**kwargs)


def test_bad_parameterisations_are_refused():
    from limits.training.parameterisation import Parameterisation
    for kwargs in (dict(optimizer="rmsprop"), dict(gamma0=0), dict(gamma0=math.nan), dict(momentum=1.0),
                   dict(standard="yes")):
        with pytest.raises(ProgramError):
            Parameterisation(**kwargs)


def test_program_tokens_are_checked():
    model = trainable(token_dim=6)
    with pytest.raises(ProgramError, match="tokens"):
        model.program(np.ones((3, 5)))
    with pytest.raises(ProgramError, match="positive definite"):
        model.program(np.ones((3, 6)))  # rank one: no SPD token covariance


def test_simulate_matches_for_an_adam_model_too():
    """The parameterisation changes θ and m, never the law of W = mθ (checked on the stream kernel)."""
    tokens = np.random.default_rng(5).standard_normal((2, 4))
    model = trainable(depth=1, heads=2, head_dim=4, token_dim=4, width=WIDTH, parameterisation=adam(),
                      mlp=None)
    draws = _model_draws(model, tokens, 1500, seed=2)
    program = model.program(tokens)
    reference = netsor.simulate(program.program, WIDTH, [program.kernels[-1][0][1]], 1500, seed=5)[:, 0]
    assert stats.ks_2samp(draws[:, 1], reference).pvalue > ALPHA
