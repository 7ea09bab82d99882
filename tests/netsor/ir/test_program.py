"""The IR: construction, printing, immutability, and every ProgramError case named at the boundary."""
import dataclasses
import math

import numpy as np
import pytest

import netsor
from netsor import ProgramError


def small_program():
    prog = netsor.Program("p")
    x, y = prog.inputs(["x", "y"], cov=[[1.0, 0.3], [0.3, 2.0]])
    W = prog.matrix("W", var=2.0)
    h = W @ x
    a = netsor.nonlin("relu", h, name="a")
    m = netsor.moment(np.square, a, name="m")
    z = netsor.lincomb([2.0, m], [a, y], name="z")
    return prog, dict(x=x, y=y, W=W, h=h, a=a, m=m, z=z)


def test_program_prints_like_the_papers():
    prog, v = small_program()
    text = str(prog)
    assert "x, y : input in R^n" in text
    assert "W  : matrix n×n, entries iid N(0, 2/n)" in text
    assert "Wx := W x" in text
    assert "a  := relu(Wx)" in text
    assert "m  := (1/n) Σ_α square(a)_α" in text
    assert "z  := 2·a + m·y" in text
    assert repr(v["h"]) == "<MatMul Wx := W x>"


def test_nodes_are_immutable_and_looked_up_by_name():
    prog, v = small_program()
    with pytest.raises(dataclasses.FrozenInstanceError):
        v["h"].name = "other"
    assert prog["a"] is v["a"] and "z" in prog and v["z"] in prog
    assert prog.ancestors([v["a"]]) == [v["x"], v["W"], v["h"], v["a"]]


def test_operator_sugar_builds_lincombs():
    prog, v = small_program()
    x, y, m = v["x"], v["y"], v["m"]
    assert (x + y).coeffs == (1.0, 1.0)
    assert (x - y).coeffs == (1.0, -1.0)
    assert (3 * x).coeffs == (3.0,) and (x / 4).coeffs == (0.25,) and (-x).coeffs == (-1.0,)
    assert (m * x).coeffs == (m,)


def test_program_error_is_a_value_error():
    assert issubclass(ProgramError, ValueError)


def test_shape_mismatch_names_both_operands():
    prog = netsor.Program()
    x = prog.input("x")
    W = prog.matrix("WQ", shape=(4, "n"))
    q = W @ x
    with pytest.raises(ProgramError, match=r"WQ @ WQx: shape mismatch, WQ is 4×n but WQx ∈ R\^4"):
        W @ q
    with pytest.raises(ProgramError, match="different dimensions"):
        netsor.nonlin(np.multiply, x, q)
    with pytest.raises(ProgramError, match="dimension is 'n'"):
        prog.matrix("V", shape=("n", 0))


def test_variables_from_another_program():
    p1, p2 = netsor.Program("one"), netsor.Program("two")
    x1, x2 = p1.input("x"), p2.input("x")
    W2 = p2.matrix("W")
    with pytest.raises(ProgramError, match="different programs"):
        W2 @ x1
    with pytest.raises(ProgramError, match="different programs"):
        x1 + x2
    with pytest.raises(ProgramError, match="belongs to another program"):
        netsor.limit(p1).cov([x2])
    with pytest.raises(ProgramError, match="belongs to another program"):
        netsor.simulate(p1, 8, [x2], 4)


@pytest.mark.parametrize("cov, message", [
    ([[1.0, 0.5], [0.4, 1.0]], "not symmetric"),
    ([[1.0, 2.0], [2.0, 1.0]], "not positive semi-definite"),
    ([[1.0, np.nan], [np.nan, 1.0]], "NaN or inf"),
    ([[np.inf, 0.0], [0.0, 1.0]], "NaN or inf"),
    ([[1.0, 0.0, 0.0]], "must be 2×2"),
    ("abc", "numeric"),
])
def test_bad_covariances(cov, message):
    with pytest.raises(ProgramError, match=message):
        netsor.Program().inputs(["a", "b"], cov=cov)


@pytest.mark.parametrize("build, message", [
    (lambda p, x: p.matrix("W", var=math.inf), "finite real"),
    (lambda p, x: p.matrix("W", var=-1.0), "non-negative"),
    (lambda p, x: p.input("z", var=math.nan), "finite real"),
    (lambda p, x: netsor.lincomb([math.nan], [x]), "finite real"),
    (lambda p, x: netsor.lincomb([1.0, 2.0], [x]), "2 coefficients for 1 vectors"),
    (lambda p, x: netsor.nonlin(netsor.clip(math.inf), x), "finite positive"),
    (lambda p, x: x / 0, "division by zero"),
])
def test_non_finite_constants(build, message):
    prog = netsor.Program()
    x = prog.input("x")
    with pytest.raises(ProgramError, match=message):
        build(prog, x)


def test_nonlinearity_errors():
    prog = netsor.Program()
    x = prog.input("x")
    with pytest.raises(ProgramError, match="unknown nonlinearity 'softplus'.*built-ins are erf, gelu"):
        netsor.nonlin("softplus", x)
    with pytest.raises(ProgramError, match="must be vectorised"):
        netsor.nonlin(lambda u: math.sin(u), x)
    with pytest.raises(ProgramError, match="act coordinatewise"):
        netsor.nonlin(lambda u: u.sum(), x)
    with pytest.raises(ProgramError, match="takes 1 argument"):
        netsor.nonlin("relu", x, x)
    with pytest.raises(ProgramError, match="must be a name or a callable"):
        netsor.nonlin(3, x)


def test_names_must_be_unique_and_resolvable():
    prog = netsor.Program()
    prog.input("x")
    with pytest.raises(ProgramError, match="already used"):
        prog.input("x")
    with pytest.raises(ProgramError, match="no variable named 'nope'"):
        prog["nope"]
    W = prog.matrix("W")
    with pytest.raises(ProgramError, match="is a matrix"):
        netsor.limit(prog).cov([W])
    with pytest.raises(ProgramError, match="no variables given"):
        netsor.limit(prog).cov([])


def test_auto_names_are_unique():
    prog = netsor.Program()
    x = prog.input("x")
    a, b = netsor.nonlin("relu", x), netsor.nonlin("relu", x)
    assert a.name == "relu(x)" and b.name == "relu(x)_2"


def test_user_nonlinearity_from_sympy():
    import sympy
    u = sympy.Symbol("u")
    softplus = netsor.from_sympy(sympy.log(1 + sympy.exp(u)), u, name="softplus")
    prog = netsor.Program()
    y = netsor.nonlin(softplus, prog.input("x"))
    np.testing.assert_allclose(y.phi(np.array([0.0, 1.0])), np.log1p(np.exp([0.0, 1.0])))
    assert str(softplus.expr(u)) == "log(exp(u) + 1)"


def test_infinite_head_sum_is_checked_where_it_is_built():
    """y = lim H^{-1/2} Σ_h v^h is Gaussian only when heads are uncorrelated (v a combination of MatMuls by per-head
    matrices) and share no random scalar; otherwise a clean refusal naming the node."""
    prog = netsor.Program()
    x1, x2 = prog.inputs(["x1", "x2"])
    WQ, WK, WV, WS = (prog.matrix(n) for n in ("WQ", "WK", "WV", "WS"))
    p = netsor.dot(WQ @ x1, WK @ x2, name="p")
    v = netsor.lincomb([p], [WV @ x1], name="v")
    with pytest.raises(netsor.ProgramError, match=r"not a combination of MatMuls by per-head matrices \(t :="):
        netsor.infinite_head_sum([netsor.nonlin("tanh", v, name="t")], [WQ, WK, WV])
    with pytest.raises(netsor.ProgramError, match="share the random p"):
        netsor.infinite_head_sum([v], [WV])  # p depends on no per-head matrix
    with pytest.raises(netsor.ProgramError, match="names must be a sequence of 1"):
        netsor.infinite_head_sum([v], [WQ, WK, WV], names="y")
    (y,) = netsor.infinite_head_sum([v], [WQ, WK, WV], names=["y"])
    with pytest.raises(netsor.ProgramError, match="overlap those of the head sum y"):
        netsor.infinite_head_sum([WV @ x2], [WV])
    with pytest.raises(netsor.ProgramError, match="nested head sums"):
        netsor.infinite_head_sum([WS @ y], [WS])
    other = netsor.Program()
    u = other.input("u")
    W = other.matrix("W")
    (s,) = netsor.infinite_head_sum([W @ u], [W])
    netsor.nonlin("relu", s, name="after")
    with pytest.raises(netsor.ProgramError, match="after := relu.*uses the infinite head sum"):
        netsor.limit(other)


def test_infinite_head_sum_law_is_the_clt_limit_of_one_head():
    """Σ_h over heads of p·W_V x / sqrt(H): N(0, E[p²] E[(W_V x)²]) = N(0, 1), independent of the head's own p."""
    prog, p, v, y = _one_head_summed(("WQ", "WK", "WV"))
    law = netsor.limit(prog)
    draws = law.sample([y, p, v], 400_000, seed=1)
    se = 1 / np.sqrt(len(draws))
    assert abs(draws[:, 0].var() - 1) < 5 * np.sqrt(2) * se
    assert abs(np.mean(draws[:, 0] ** 4) - 3) < 5 * np.sqrt(96) * se  # Gaussian fourth moment, E[v⁴] = 9 instead
    assert abs(np.mean(draws[:, 0] * draws[:, 2])) < 5 * 3 * se  # independent of the head's own v
    assert abs(np.mean(draws[:, 2] ** 4) - 3) > 5  # power: one head's v (product normal, E[v⁴] = 9) is not Gaussian
    cov, err = law.cov([y, p], error=True, size=50_000, seed=2)
    np.testing.assert_allclose(cov, np.eye(2), atol=5 * err.max() + 1e-12)
    assert netsor.fingerprint(prog) != netsor.fingerprint(_one_head_summed(("WK", "WV"))[0])  # per-head set counts
    assert "Infinite head sums" in law.describe([y])


def _one_head_summed(per_head):
    """v = p · W_V x1 with p = W_Q x1 · W_K x2 / sqrt(n), and y its infinite head sum over the matrices named."""
    prog = netsor.Program()
    x1, x2 = prog.inputs(["x1", "x2"])
    WQ, WK, WV = (prog.matrix(n) for n in ("WQ", "WK", "WV"))
    p = netsor.dot(WQ @ x1, WK @ x2, name="p")
    v = netsor.lincomb([p], [WV @ x1], name="v")
    (y,) = netsor.infinite_head_sum([v], [prog[name] for name in per_head], names=["y"])
    return prog, p, v, y
