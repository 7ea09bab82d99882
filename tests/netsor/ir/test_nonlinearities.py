"""Nonlinearities own their mathematics: closed forms are found through the objects, never through a name; user
callables are never taken for built-ins; built-ins and parameterised families survive pickling as themselves."""
import math
import pickle

import cloudpickle
import numpy as np
import pytest
from scipy import integrate, stats

import netsor
from netsor.finite.exact.plan import ExactPlan
from netsor.ir import nonlinearities
from netsor.testing import cov_check

C = np.array([[1.3, 0.7], [0.7, 0.8]])


def reference_2d(f, g, cov):
    """E[f(u) g(v)], (u, v) ~ N(0, cov), by adaptive scipy quadrature."""
    density = stats.multivariate_normal(np.zeros(2), cov).pdf
    lim = 12 * np.sqrt(np.diag(cov))
    return integrate.dblquad(lambda v, u: f(u) * g(v) * density([u, v]), -lim[0], lim[0], -lim[1], lim[1],
                             epsabs=1e-12, epsrel=1e-12)[0]


def one_input(phi, var=1.0):
    prog = netsor.Program("one")
    z = prog.input("z", var=var)
    return prog, z, netsor.nonlin(phi, z, name="y")


# ------------------------------------------------------------------------------------ user callables stay theirs
def test_a_user_function_called_relu_has_its_own_law():
    """def relu(x): return 2·max(x, 0): E[y²] = 4 · 1/2 = 2 (the built-in's closed form would say 0.5)."""
    def relu(x):
        return 2 * np.maximum(x, 0)

    prog, z, y = one_input(relu)
    assert y.phi is not netsor.relu and y.phi.closed_form_product(y.phi) is None
    law = netsor.limit(prog)
    kernel, bound = law.kernel([y], error=True)
    assert kernel[0, 0] == pytest.approx(2.0, abs=bound[0, 0] + 1e-12)
    # the Law agrees with itself: its samples have the same second moment (4 SE)
    draws = law.sample([y], 200_000, seed=0)[:, 0]
    assert abs(np.mean(draws ** 2) - 2.0) < 4 * np.std(draws ** 2) / math.sqrt(len(draws))
    # power: the built-in relu's kernel, 0.5, is rejected by the same check
    assert abs(np.mean(draws ** 2) - 0.5) > 4 * np.std(draws ** 2) / math.sqrt(len(draws))


def test_a_user_function_called_identity_is_not_the_identity():
    """def identity(x): return tanh(x) before a MatMul: Var(W identity(x)) = E[tanh(Z)²] ≈ 0.394, in the limit and
    at finite width (method='auto'), not 1."""
    def identity(x):
        return np.tanh(x)

    prog = netsor.Program("tanh-as-identity")
    x = prog.input("x")
    h = prog.matrix("W") @ netsor.nonlin(identity, x)
    expected = integrate.quad(lambda u: np.tanh(u) ** 2 * stats.norm.pdf(u), -12, 12, epsabs=1e-13)[0]
    assert expected == pytest.approx(0.394, abs=1e-3)
    assert netsor.limit(prog).kernel([h])[0, 0] == pytest.approx(expected, abs=1e-9)
    draws = netsor.simulate(prog, 64, [h], 40_000, seed=1, method="auto")
    ok, err, tol = cov_check(draws, np.array([[expected]]))
    assert ok, (err, tol)
    wrong_ok, _, _ = cov_check(draws, np.array([[1.0]]))  # power: the identity's variance is rejected
    assert not wrong_ok


def test_names_are_only_for_printing():
    user = netsor.Nonlinearity("relu", lambda x: 3 * np.maximum(x, 0))
    assert user.closed_form_mean() is None and user.closed_form_product(netsor.relu) is None
    assert user.code == nonlinearities.CODE_NONE and not user.linear
    assert netsor.relu.closed_form_product(netsor.relu) is nonlinearities.relu_relu


# ------------------------------------------------------------------------------------ closed forms by object
@pytest.mark.parametrize("pair", [("relu", "relu"), ("erf", "erf"), ("identity", "relu"), ("identity", "erf"),
                                  ("relu", "identity"), ("identity", "identity")])
def test_registered_products_match_adaptive_quadrature(pair):
    phi, psi = (nonlinearities.BUILTINS[name] for name in pair)
    closed = float(phi.closed_form_product(psi)(C[0, 0], C[1, 1], C[0, 1]))
    assert closed == pytest.approx(reference_2d(phi.fn, psi.fn, C), abs=1e-9)


@pytest.mark.parametrize("name", ["identity", "relu", "erf", "tanh", "square"])
def test_registered_means_match_adaptive_quadrature(name):
    phi = nonlinearities.BUILTINS[name]
    reference = integrate.quad(lambda u: phi.fn(np.array([u]))[0] * stats.norm.pdf(u, scale=math.sqrt(1.7)),
                               -20, 20, epsabs=1e-13, limit=200)[0]
    assert float(phi.closed_form_mean()(1.7)) == pytest.approx(reference, abs=1e-10)


@pytest.mark.parametrize("a, b", [(0.1, 0.1), (0.2, 0.0), (0.0, 0.5)])
def test_leaky_relu_closed_forms_follow_from_its_parts(a, b):
    """leaky_relu(a) = a·identity + (1 − a)·relu: products with each other and with relu/identity in closed form."""
    phi, psi = netsor.leaky_relu(a), netsor.leaky_relu(b)
    for other in (psi, netsor.relu, netsor.identity):
        closed = float(phi.closed_form_product(other)(C[0, 0], C[1, 1], C[0, 1]))
        assert closed == pytest.approx(reference_2d(phi.fn, other.fn, C), abs=1e-9)
    mean = integrate.quad(lambda u: phi.fn(np.array([u]))[0] * stats.norm.pdf(u), -20, 20, epsabs=1e-13)[0]
    assert float(phi.closed_form_mean()(1.0)) == pytest.approx(mean, abs=1e-10)
    # power: the closed form of a different slope is off
    wrong = float(netsor.leaky_relu(a + 0.05).closed_form_product(psi)(C[0, 0], C[1, 1], C[0, 1]))
    assert abs(wrong - reference_2d(phi.fn, psi.fn, C)) > 1e-5  # far outside the 1e-9 tolerance above


def test_the_limit_uses_a_leaky_relu_closed_form_that_matches_simulation():
    prog = netsor.Program("leaky")
    x1, x2 = prog.inputs(["x1", "x2"], cov=C)
    W = prog.matrix("W", var=2.0)
    h1, h2 = W @ netsor.nonlin(netsor.leaky_relu(0.1), x1), W @ netsor.nonlin(netsor.leaky_relu(0.1), x2)
    law = netsor.limit(prog)
    kernel, bound = law.kernel([h1, h2], error=True)
    assert np.all(bound <= 1e-13 * np.abs(kernel) + 1e-14)  # closed form: nothing left to quadrature
    def leaky(u):
        return np.maximum(u, 0.1 * u)

    square = [integrate.quad(lambda u: leaky(u) ** 2 * stats.norm.pdf(u, scale=math.sqrt(C[i, i])), -20, 20,
                             epsabs=1e-13)[0] for i in range(2)]
    cross = reference_2d(leaky, leaky, C)
    expected = 2.0 * np.array([[square[0], cross], [cross, square[1]]])
    np.testing.assert_allclose(kernel, expected, atol=1e-8)
    ok, err, tol = cov_check(netsor.simulate(prog, 32, [h1, h2], 30_000, seed=3), kernel)
    assert ok, (err, tol)


@pytest.mark.parametrize("text, expected", [("relu", netsor.relu), ("clip(1.5)", netsor.clip(1.5)),
                                            ("leaky_relu(0.2)", netsor.leaky_relu(0.2))])
def test_names_typed_by_users_resolve_to_the_objects(text, expected):
    assert nonlinearities.parse(text, "test") == expected


@pytest.mark.parametrize("bad", ["clip(0)", "clip(x)", "leaky_relu(1)", "softplus", "clip"])
def test_bad_names_are_clean_program_errors(bad):
    with pytest.raises(netsor.ProgramError):
        one_input(bad)


# ------------------------------------------------------------------------------------ pickling
@pytest.mark.parametrize("dumps", [pickle.dumps, cloudpickle.dumps], ids=["pickle", "cloudpickle"])
def test_builtins_unpickle_as_the_same_objects(dumps):
    for phi in nonlinearities.BUILTINS.values():
        assert pickle.loads(dumps(phi)) is phi
    for phi in (netsor.clip(1.5), netsor.leaky_relu(0.25)):
        back = pickle.loads(dumps(phi))
        assert back == phi and hash(back) == hash(phi) and back.code == phi.code
        assert back.parameter == phi.parameter and back.kinks == phi.kinks
        np.testing.assert_array_equal(back(np.linspace(-3, 3, 11)), phi(np.linspace(-3, 3, 11)))
    assert netsor.clip(1.5) != netsor.clip(2.0)


def paper_layer(seq_len=3, clip=1.5):
    """SKI25's tokens x_i = clip(W^i h) and one attention head over them, written with netsor alone."""
    prog = netsor.Program("paper")
    h = prog.input("h")
    xs = [netsor.nonlin(netsor.clip(clip), prog.matrix(f"W{i}") @ h, name=f"x{i}") for i in range(seq_len)]
    WQ, WK, WV, WO = (prog.matrix(name) for name in ("WQ", "WK", "WV", "WO"))
    q, k, v = ([W @ x for x in xs] for W in (WQ, WK, WV))
    rows = [netsor.softmax([netsor.dot(q[i], k[j]) for j in range(seq_len)]) for i in range(seq_len)]
    return prog, [WO @ netsor.lincomb(rows[i], v) for i in range(seq_len)]


@pytest.mark.parametrize("dumps", [pickle.dumps, cloudpickle.dumps], ids=["pickle", "cloudpickle"])
def test_a_pickled_program_takes_the_same_exact_path_and_gives_the_same_numbers(dumps):
    prog, outputs = paper_layer()
    names = [o.name for o in outputs]
    back = pickle.loads(dumps(prog))
    plan, plan_back = ExactPlan(prog, outputs), ExactPlan(back, [back[n] for n in names])
    assert plan.layer is not None and plan_back.layer is not None  # the streamed one-layer front, both times
    np.testing.assert_array_equal(plan.layer.col_phi, plan_back.layer.col_phi)
    np.testing.assert_array_equal(plan.layer.col_bound, plan_back.layer.col_bound)
    for width in (16, 1024):
        np.testing.assert_array_equal(netsor.simulate(prog, width, outputs, 2000, seed=5),
                                      netsor.simulate(back, width, names, 2000, seed=5))
