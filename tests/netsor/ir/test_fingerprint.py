"""Content fingerprints: equal for programs that define the same law (rebuilt, pickled), different as soon as any
number, structure or function body differs — however the programs print."""
import pickle

import cloudpickle
import numpy as np
import pytest

import netsor
from tests.programs import attention_layer, transformer


@pytest.mark.parametrize("build", [lambda: attention_layer(seq_len=3, heads=2, inputs="paper").program,
                                   lambda: attention_layer(seq_len=3, heads=1, inputs="relu").program,
                                   lambda: transformer(depth=2, seq_len=3, heads=2).program])
def test_the_same_program_has_the_same_fingerprint(build):
    program = build()
    value = netsor.fingerprint(program)
    assert len(value) == 64 and value == netsor.fingerprint(build())
    for dumps in (pickle.dumps, cloudpickle.dumps):
        assert netsor.fingerprint(pickle.loads(dumps(program))) == value


def program_with(phi=netsor.relu, var=1.0, coeff=0.5, cov=((1.0, 0.3), (0.3, 1.0)), exponent="sqrt"):
    prog = netsor.Program("p")
    x1, x2 = prog.inputs(["x1", "x2"], cov=np.array(cov))
    W = prog.matrix("W", var=var)
    h = W @ netsor.nonlin(phi, x1)
    netsor.lincomb([coeff, 1.0], [h, W @ x2], name="z")
    netsor.dot(prog.matrix("V") @ x1, h, scale=exponent, name="p")
    return prog


def test_every_number_and_function_counts():
    base = netsor.fingerprint(program_with())
    variants = [program_with(var=1.0 + 1e-15), program_with(coeff=0.5 + 1e-15),
                program_with(cov=((1.0, 0.3 + 1e-15), (0.3 + 1e-15, 1.0))), program_with(exponent=0.5 + 1e-12),
                program_with(phi=netsor.leaky_relu(0.0)), program_with(phi=netsor.clip(3.0)),
                program_with(phi=lambda x: np.maximum(x, 0))]
    prints = {str(p) for p in variants[:3]} | {str(program_with())}
    assert len(prints) == 1  # they print alike ...
    values = [netsor.fingerprint(p) for p in variants]
    assert base not in values and len(set(values)) == len(values)  # ... and are told apart
    assert netsor.fingerprint(program_with(phi=netsor.clip(3.0))) == values[5]  # families by their parameter


def test_user_functions_by_body_closure_defaults_and_globals():
    def make(scale):
        return lambda x: scale * np.tanh(x)

    def with_default(x, c=1.5):
        return np.clip(x, -c, c)

    def with_other_default(x, c=2.5):
        return np.clip(x, -c, c)

    same = [netsor.fingerprint(program_with(phi=make(2.0))) for _ in range(2)]
    assert same[0] == same[1] != netsor.fingerprint(program_with(phi=make(3.0)))
    defaults = [netsor.fingerprint(program_with(phi=f)) for f in (with_default, with_other_default)]
    assert defaults[0] != defaults[1]
    global SCALE
    SCALE = 2.0

    def reads_a_global(x):
        return SCALE * x

    before = netsor.fingerprint(program_with(phi=reads_a_global))
    SCALE = 4.0
    assert netsor.fingerprint(program_with(phi=reads_a_global)) != before


def test_what_has_no_content_is_refused():
    class Opaque:
        __slots__ = ()
        __call__ = np.tanh

    with pytest.raises(netsor.ProgramError, match="cannot be fingerprinted"):
        netsor.fingerprint(program_with(phi=Opaque()))
    with pytest.raises(netsor.ProgramError, match="Program"):
        netsor.fingerprint("not a program")
