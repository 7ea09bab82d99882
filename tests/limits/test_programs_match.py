"""The limits builders against tests/programs.py, written independently with netsor alone: node by node the same
program (kinds, parents, matrix variances and shapes, dot exponents, constant coefficients, nonlinearities), so
seeded draws, keyed by node position, are the same from either."""
import numbers

import numpy as np
import pytest

import limits
import netsor
from tests import programs

SPD = np.array([[1.0, 0.3, 0.1, 0.0], [0.3, 1.2, 0.2, 0.1], [0.1, 0.2, 0.8, 0.3], [0.0, 0.1, 0.3, 1.1]])


def structure(node):
    """What a node's draws depend on, apart from its name."""
    parents = tuple(p.index for p in node.parents())
    fields = [type(node), parents]
    if isinstance(node, netsor.Matrix):
        fields += [node.var, node.shape]
    if isinstance(node, netsor.Vector):
        fields.append(node.dim)
    if isinstance(node, netsor.Input):
        fields += [node.position, node.group.cov.tolist()]
    if isinstance(node, netsor.Dot):
        fields.append(node.exponent)
    if isinstance(node, netsor.LinComb):
        fields.append(tuple(c if isinstance(c, numbers.Real) else ("scalar", c.index) for c in node.coeffs))
    if isinstance(node, netsor.SoftmaxEntry):
        fields += [node.position, tuple(p.index for p in node.group.scores)]
    return fields


def same_phi(a, b):
    if isinstance(a, netsor.Clip):
        return isinstance(b, netsor.Clip) and a == b
    return a is b


def assert_same_program(ours, theirs):
    a, b = ours.nodes, theirs.nodes
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.index == y.index
        assert structure(x) == structure(y), (x, y)
        if isinstance(x, (netsor.Nonlin, netsor.Moment)):
            assert same_phi(x.phi, y.phi), (x, y)
        if isinstance(x, netsor.ScalarFn):
            assert x.fn is y.fn, (x, y)


def index(nodes):
    """Nested tuples of nodes as nested tuples of their positions."""
    if isinstance(nodes, netsor.Node):
        return nodes.index
    return tuple(index(n) for n in nodes)


ATTENTION = [
    dict(seq_len=3, heads=1, inputs="gaussian"),
    dict(seq_len=4, heads=2, inputs="gaussian"),
    dict(seq_len=3, heads=2, inputs="paper"),
    dict(seq_len=4, heads=1, inputs="paper", clip=1.0),
    dict(seq_len=3, heads=2, inputs="relu"),
    dict(seq_len=4, heads=2, inputs=SPD),
    dict(seq_len=3, heads=2, inputs=SPD[:3, :3], scaling="linear"),
    dict(seq_len=3, heads=2, head_dim=3, inputs="gaussian"),
    dict(seq_len=3, heads=1, head_dim=2, inputs="paper", clip=1.0),
    dict(seq_len=4, heads=2, inputs=SPD, tied_qk=True, head_dim=3),
    dict(seq_len=3, heads=1, inputs="gaussian", scaling="linear", tied_qk=True),
    dict(seq_len=4, heads=2, inputs="gaussian", out_proj=False, scaling="linear"),
]


def _id(kwargs):
    return ",".join(f"{key}={'SPD' if isinstance(v, np.ndarray) else v}" for key, v in kwargs.items())


@pytest.mark.parametrize("kwargs", ATTENTION, ids=_id)
def test_attention_layer(kwargs):
    ours, theirs = programs.attention_layer(**kwargs), limits.attention_layer(**kwargs)
    assert_same_program(ours.program, theirs.program)
    for field in ("inputs", "scores", "attention", "outputs"):
        assert index(getattr(ours, field)) == index(getattr(theirs, field)), field


@pytest.mark.parametrize("depth", [1, 2])
@pytest.mark.parametrize("nonlinearity", ["relu", "tanh", "erf"])
@pytest.mark.parametrize("inputs, weight_var", [(1, 2.0), ([[1.0, 0.6], [0.6, 1.5]], 2.0),
                                                ([[1.0, 0.5], [0.5, 1.0]], 1.5)])
def test_mlp(depth, nonlinearity, inputs, weight_var):
    ours = programs.mlp(depth=depth, nonlinearity=nonlinearity, inputs=inputs, weight_var=weight_var)
    theirs = limits.mlp(depth=depth, nonlinearity=nonlinearity, inputs=inputs, weight_var=weight_var)
    assert_same_program(ours.program, theirs.program)
    for field in ("inputs", "outputs", "layers"):
        assert index(getattr(ours, field)) == index(getattr(theirs, field)), field
    assert [n.name for n in ours.program.nodes] == [n.name for n in theirs.program.nodes]  # tests look up x2_1


@pytest.mark.parametrize("depth, seq_len, heads", [(2, 3, 2), (1, 2, 1), (3, 2, 2)])
def test_transformer(depth, seq_len, heads):
    ours = programs.transformer(depth=depth, seq_len=seq_len, heads=heads)
    theirs = limits.transformer(depth=depth, seq_len=seq_len, heads=heads)
    assert_same_program(ours.program, theirs.program)
    assert index(ours.inputs) == index(theirs.inputs) and index(ours.outputs) == index(theirs.outputs)
    assert index(ours.residual) == index(theirs.residual)
    for a, b in zip(ours.blocks, theirs.blocks, strict=True):
        for field in ("scores", "attention", "head_outputs", "after_attention", "output"):
            assert index(getattr(a, field)) == index(getattr(b, field)), field


def test_mlp_weight_var():
    assert programs.mlp_weight_var("relu") == 2.0 == limits.stack.mlp_weight_var("relu")
    assert programs.mlp_weight_var("tanh") == limits.stack.mlp_weight_var("tanh")


@pytest.mark.parametrize("build", [
    lambda m: m.attention_layer(seq_len=3, heads=2, inputs="paper", clip=1.0),
    lambda m: m.mlp(depth=2, nonlinearity="tanh", inputs=[[1.0, 0.5], [0.5, 1.0]]),
    lambda m: m.transformer(depth=2, seq_len=3, heads=2),
], ids=["attention", "mlp", "transformer"])
def test_seeded_draws_are_the_same(build):
    """The point of the match: a test's numbers do not depend on which builder made its program."""
    ours, theirs = build(programs), build(limits)
    for method in ("dense", "lazy", "auto"):
        a = netsor.simulate(ours.program, 8, ours.outputs, 200, seed=3, method=method)
        b = netsor.simulate(theirs.program, 8, theirs.outputs, 200, seed=3, method=method)
        np.testing.assert_array_equal(a, b)
