"""Gauss–Hermite kernels against high-precision scipy quadrature, and closed forms against the quadrature."""
import numpy as np
import pytest
from scipy import integrate, stats

import netsor
from netsor.ir import nonlinearities
from netsor.limit import quadrature

C = np.array([[1.3, 0.7], [0.7, 0.8]])


def reference_2d(f, g, cov):
    """E[f(u) g(v)], (u, v) ~ N(0, cov), by adaptive scipy quadrature to ~1e-13."""
    density = stats.multivariate_normal(np.zeros(2), cov).pdf
    lim = 12 * np.sqrt(np.diag(cov))
    value, _ = integrate.dblquad(lambda v, u: f(u) * g(v) * density([u, v]), -lim[0], lim[0], -lim[1], lim[1],
                                 epsabs=1e-13, epsrel=1e-13)
    return value


def reference_1d(f, var):
    lim = 12 * np.sqrt(var)
    return integrate.quad(lambda u: f(u) * stats.norm.pdf(u, scale=np.sqrt(var)), -lim, lim,
                          epsabs=1e-14, epsrel=1e-14, limit=200)[0]


def two_point_program(phi, cov=C):
    prog = netsor.Program()
    u, v = prog.inputs(["u", "v"], cov=cov)
    return prog, netsor.nonlin(phi, u), netsor.nonlin(phi, v)


@pytest.mark.parametrize("name", ["tanh", "gelu"])
def test_gauss_hermite_matches_scipy_quad_within_stated_bound(name):
    phi = nonlinearities.BUILTINS[name].fn
    prog, a, b = two_point_program(name)
    law = netsor.limit(prog)
    kernel, bound = law.kernel([a, b], error=True)
    mean, mean_bound = law.mean([a, b], error=True)
    reference = np.array([[reference_1d(lambda u: phi(u) ** 2, C[0, 0]), reference_2d(phi, phi, C)],
                          [0.0, reference_1d(lambda u: phi(u) ** 2, C[1, 1])]])
    reference[1, 0] = reference[0, 1]
    tolerance = bound + 1e-11  # the reference's own accuracy
    assert np.all(np.abs(kernel - reference) <= tolerance)
    assert np.all(bound < 1e-8)  # the bound is informative, not vacuous
    ref_mean = np.array([reference_1d(phi, C[0, 0]), reference_1d(phi, C[1, 1])])
    assert np.all(np.abs(mean - ref_mean) <= mean_bound + 1e-11)
    # power: the same check rejects the kernel of a slightly different covariance
    prog2, a2, b2 = two_point_program(name, cov=C * 1.0001)
    wrong = netsor.limit(prog2).kernel([a2, b2])
    assert np.any(np.abs(wrong - reference) > tolerance)


def test_nested_quadrature_propagates_its_error_bound():
    """tanh MLP of two layers: the second kernel depends on a quadrature covariance; compare with nested quad."""
    prog, a, b = two_point_program("tanh")
    W = prog.matrix("W", var=1.5)
    ha, hb = W @ a, W @ b
    ta, tb = netsor.nonlin("tanh", ha), netsor.nonlin("tanh", hb)
    kernel, bound = netsor.limit(prog).kernel([ta, tb], error=True)
    t = np.tanh
    K1 = 1.5 * np.array([[reference_1d(lambda u: t(u) ** 2, C[0, 0]), reference_2d(t, t, C)],
                         [0.0, reference_1d(lambda u: t(u) ** 2, C[1, 1])]])
    K1[1, 0] = K1[0, 1]
    assert abs(kernel[0, 1] - reference_2d(t, t, K1)) <= bound[0, 1] + 1e-10
    assert abs(kernel[0, 0] - reference_1d(lambda u: t(u) ** 2, K1[0, 0])) <= bound[0, 0] + 1e-10


@pytest.mark.parametrize("pair", [("relu", "relu"), ("erf", "erf"), ("identity", "relu"), ("identity", "erf")])
def test_closed_forms_agree_with_quadrature(pair):
    fns = {"relu": lambda x: np.maximum(x, 0), "erf": netsor.erf.fn, "identity": lambda x: x}
    f, g = fns[pair[0]], fns[pair[1]]
    phi, psi = (nonlinearities.BUILTINS[name] for name in pair)
    closed = phi.closed_form_product(psi)(C[0, 0], C[1, 1], C[0, 1])
    integrand = lambda p: f(p[:, 0]) * g(p[:, 1])  # noqa: E731
    quad = quadrature.gaussian_expectation(integrand, C)
    bound = 2 * abs(quad - quadrature.gaussian_expectation(integrand, C, coarse=True))
    assert abs(closed - quad) <= bound + 1e-12  # the relu kink slows Gauss–Hermite; the stated bound covers it
    assert closed == pytest.approx(reference_2d(f, g, C), abs=1e-9)


def test_relu_mean_and_degenerate_variance():
    assert netsor.relu.closed_form_mean()(2.0) == pytest.approx(np.sqrt(2.0 / (2 * np.pi)))
    assert nonlinearities.relu_relu(0.0, 1.0, 0.0) == 0.0
    assert nonlinearities.relu_relu(1.0, 1.0, 1.0) == pytest.approx(0.5)  # E[relu(u)²] = s/2


def test_singular_covariance_reduces_the_rule():
    cov = np.array([[1.0, 2.0], [2.0, 4.0]])  # v = 2u
    value = quadrature.gaussian_expectation(lambda p: np.tanh(p[:, 0]) * np.tanh(p[:, 1]), cov)
    assert value == pytest.approx(reference_1d(lambda u: np.tanh(u) * np.tanh(2 * u), 1.0), abs=1e-10)
    assert quadrature.gaussian_factor(cov).shape == (2, 1)
