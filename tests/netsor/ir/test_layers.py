"""LayerNorm, residual sums, feed-forward branches and mean pooling: finite-width identities and their limits."""
import math

import numpy as np
import pytest

import netsor


def test_layernorm_has_unit_mean_square_at_every_width_and_in_the_limit():
    prog = netsor.Program()
    x = prog.input("x", var=3.0)
    u = netsor.layernorm(x, name="u")
    m = netsor.moment("square", u, name="m")
    for width in (3, 17, 64):
        values = netsor.simulate(prog, width, [m], 50, seed=1, method="dense")
        np.testing.assert_allclose(values, 1.0, rtol=1e-12)
    law = netsor.limit(prog)
    assert law.value(m) == pytest.approx(1.0, abs=1e-12)
    assert law.kernel([u])[0, 0] == pytest.approx(1.0, abs=1e-12)


def random_scale_program(phi):
    """x scaled by exp(p), p a random 1/sqrt(n) score: its mean square exp(2p)·Var is a random scalar."""
    prog = netsor.Program()
    a, b, x = prog.input("a"), prog.input("b"), prog.input("x", var=2.0)
    p = netsor.dot(a, b, name="p")
    y = netsor.lincomb([netsor.scalar_fn(np.exp, p, name="e")], [x], name="y")
    return prog, p, netsor.moment(phi, y, name="m")


def test_the_moment_of_a_square_is_the_conditional_kernel_in_closed_form_and_by_quadrature():
    prog, p, m = random_scale_program("square")
    draws = netsor.limit(prog).sample_scalars([p, m], 2000, seed=4)
    np.testing.assert_allclose(draws[:, 1], 2.0 * np.exp(2 * draws[:, 0]), rtol=1e-12)
    # the same moment through a user callable takes the quadrature path: it must agree to quadrature accuracy
    prog, p, m = random_scale_program(lambda t: t * t)
    draws = netsor.limit(prog).sample_scalars([p, m], 2000, seed=4)
    np.testing.assert_allclose(draws[:, 1], 2.0 * np.exp(2 * draws[:, 0]), rtol=1e-8)


def test_residual_feedforward_and_pooling_kernels():
    prog = netsor.Program()
    x1, x2 = prog.inputs(["x1", "x2"], cov=[[1.0, 0.5], [0.5, 2.0]])
    W_in, W_out = prog.matrix("Win"), prog.matrix("Wout", var=2.0)
    branch = netsor.feedforward(x1, W_in, W_out, "relu", name="z")
    r = netsor.residual(x1, branch, 0.5, name="r")
    pooled = netsor.mean_pool([x1, x2], name="pool")
    law = netsor.limit(prog)
    # E[z²] = 2·E[relu(g)²] = Var x1 = 1; z is independent of x1 (fresh W_out): E[r²] = 1 + 0.25
    np.testing.assert_allclose(law.kernel([branch, r, x1]), [[1.0, 0.5, 0.0], [0.5, 1.25, 1.0], [0.0, 1.0, 1.0]],
                               atol=1e-10)
    assert law.kernel([pooled])[0, 0] == pytest.approx((1.0 + 2.0 + 2 * 0.5) / 4, abs=1e-12)
    assert "relu" in branch.arg.definition()


def test_bad_arguments_name_the_constructor():
    prog = netsor.Program()
    x = prog.input("x")
    with pytest.raises(netsor.ProgramError, match="layernorm"):
        netsor.layernorm(prog.matrix("W"))
    with pytest.raises(netsor.ProgramError, match="mean_pool"):
        netsor.mean_pool([])
    with pytest.raises(netsor.ProgramError, match="coefficient"):
        netsor.residual(x, x, math.nan)
