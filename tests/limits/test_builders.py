"""limits.mlp builds the program it documents."""

import numpy as np
import pytest

import netsor
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
    (dict(depth=0), "depth must be a positive integer"),
    (dict(nonlinearity="swish"), "unknown nonlinearity 'swish'"),
    (dict(inputs=[[1.0, 2.0], [2.0, 1.0]]), "not positive semi-definite"),
    (dict(inputs=0), "count must be at least 1"),
])
def test_mlp_bad_arguments(kwargs, message):
    with pytest.raises(netsor.ProgramError, match=message):
        mlp(**kwargs)
