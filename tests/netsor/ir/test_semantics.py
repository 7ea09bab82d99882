"""The one softmax rule: its array form (interpreters) and its compiled twin (kernels) agree to rounding, and
neither overflows whatever the size of the scores."""
import numpy as np
import pytest

from netsor.compiled import softmax_columns
from netsor.ir.semantics import stable_softmax


@pytest.mark.parametrize("scale", [1.0, 30.0, 800.0, 1e6])
def test_array_and_compiled_softmax_agree(scale):
    scores = scale * np.random.default_rng(3).standard_normal((5, 2000))
    array_form = stable_softmax(list(scores))
    compiled = softmax_columns(np.ascontiguousarray(scores))
    assert np.all(np.isfinite(array_form)) and np.all(np.isfinite(compiled))
    np.testing.assert_allclose(array_form.sum(axis=0), 1.0, rtol=1e-14)
    np.testing.assert_allclose(compiled, array_form, rtol=1e-13, atol=1e-300)
    # power: a softmax of slightly different scores is told apart by the same tolerance
    if scale <= 30.0:
        assert not np.allclose(softmax_columns(np.ascontiguousarray(scores * 1.001)), array_form, rtol=1e-13)
