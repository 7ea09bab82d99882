"""limits.mlp builds the program it documents."""

import numpy as np
import pytest

import netsor
import limits
from limits import mlp


def test_mlp_structure_and_law():
    net = mlp(depth=3, nonlinearity="erf", inputs=[[1.0, 0.2], [0.2, 0.5]], weight_var=1.5)
    assert [v.name for v in net.inputs] == ["h1_1", "h1_2"]
    assert [[v.name for v in layer] for layer in net.layers] == [["h1_1", "h1_2"], ["h2_1", "h2_2"],
                                                                 ["h3_1", "h3_2"]]
    assert [v.name for v in net.outputs] == ["f_1", "f_2"]
    cov = net.law().cov(net.outputs)
    assert cov.shape == (2, 2) and np.all(np.linalg.eigvalsh(cov) > 0)
    assert net.simulate(16, 10, seed=0).shape == (10, 2)


def test_mlp_without_readout_and_independent_inputs():
    net = mlp(depth=2, inputs=3, readout=False)
    assert [v.name for v in net.outputs] == ["h2_1", "h2_2", "h2_3"]
    np.testing.assert_allclose(net.law().cov(net.inputs), np.eye(3))


@pytest.mark.parametrize("kwargs, message", [
    (dict(depth=0), "depth must be an integer from 1 to"),
    (dict(nonlinearity="swish"), "unknown nonlinearity 'swish'"),
    (dict(inputs=[[1.0, 2.0], [2.0, 1.0]]), "not positive semi-definite"),
    (dict(inputs=0), r"inputs \(a number of data points\) must be from 1 to"),
])
def test_mlp_bad_arguments(kwargs, message):
    with pytest.raises(netsor.ProgramError, match=message):
        mlp(**kwargs)


@pytest.mark.parametrize("build, message", [
    (lambda: limits.mlp(inputs="abc"), r"^mlp: inputs must be a number of data points"),
    (lambda: limits.mlp(readout="no"), r"^mlp: readout must be True or False"),
    (lambda: limits.mlp(weight_var="2"), r"^mlp: weight_var must be a finite non-negative number"),
    (lambda: limits.attention_layer(seq_len=2 ** 40), r"^attention_layer: heads = 2 over seq_len = 1099511627776"),
    (lambda: limits.attention_layer(heads=10 ** 9), r"would build .* nodes .*use heads=math.inf"),
    (lambda: limits.attention_layer(out_proj="no"), r"^attention_layer: out_proj must be True or False"),
    (lambda: limits.attention_layer(head_dim=2 ** 63), r"^attention_layer: head_dim = 9223372036854775808"),
    (lambda: limits.transformer(clip=-1), r"^transformer: clip must be a finite positive number"),
    (lambda: limits.attention_layer(heads=2).law(size=10), r"^law: size and seed apply to heads = inf only"),
])
def test_builders_refuse_bad_arguments_in_one_line(build, message):
    """Each of these was accepted silently, hung, or failed deep inside numpy before."""
    with pytest.raises(netsor.ProgramError, match=message) as info:
        build()
    assert "\n" not in str(info.value)
