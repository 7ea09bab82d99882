"""The fused exact kernel (netsor.finite.exact.linear): its stream usage is pinned, it is the step-by-step path at
the small widths where the Wishart is explicit or a χ² has df ≤ 2, and its per-program cache changes nothing."""
import numpy as np
import pytest

import netsor
from limits import attention_layer
from netsor.finite.exact import linear
from netsor.finite.exact import plan as exact_plan
from tests.netsor.finite.test_exact import fused_and_step_by_step


def layer_and_targets():
    layer = attention_layer(seq_len=4, heads=2, inputs="gaussian")
    return layer, list(layer.outputs) + [layer.scores[0][0][1], layer.attention[1][2][0]]


# simulate(..., 5000, seed=3) row 0 before the kernel was fused into preallocated registers (the same numbers from
# the same streams: the coupled limit draws read them too)
PINNED = {3: [-0.03550826970328819, -0.6113348772599317, -0.020363323266925033, -0.863139525100366,
              0.5555898121704274, 0.12176266540224082],
          16: [-0.036798370190618546, -0.8746065066919875, -0.6278162846398916, -0.37894841866883916,
               0.3309421531554888, 0.05159849091846823]}


@pytest.mark.parametrize("width", sorted(PINNED))
def test_fused_draws_are_pinned(width):
    layer, targets = layer_and_targets()
    out = netsor.simulate(layer.program, width, targets, 5000, seed=3, method="exact")
    np.testing.assert_allclose(out[0], PINNED[width], rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("width", [2, 3, 5])
def test_fused_kernel_is_the_step_by_step_path_at_small_widths(width):
    """n − 1 < M (ZᵀZ), df ≤ 2 in Bartlett's diagonal, and the bipartite block with dof < |A|. The Grams are
    singular there: pivots near the rank floor amplify the rounding of two summation orders (as before fusing)."""
    layer, targets = layer_and_targets()
    for a, b in zip(*fused_and_step_by_step(layer.program, targets, width)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_compiled_programs_are_shared_by_plans_of_one_program():
    layer, targets = layer_and_targets()
    first = linear._linear_program(exact_plan.ExactPlan(layer.program, targets), 64, targets)
    assert linear._linear_program(exact_plan.ExactPlan(layer.program, targets), 64, targets) is first
    other, _ = layer_and_targets()  # an equal program of its own: its own compiled program, the same numbers
    a = netsor.simulate(layer.program, 64, targets, 2000, seed=1, method="exact")
    b = netsor.simulate(other.program, 64, list(other.outputs) + [other.scores[0][0][1], other.attention[1][2][0]],
                        2000, seed=1, method="exact")
    assert np.array_equal(a, b)


def test_fused_draws_do_not_depend_on_threads_or_chunks():
    layer, targets = layer_and_targets()
    a = netsor.simulate(layer.program, 1024, targets, 20_000, seed=4, method="exact", threads=1)
    b = netsor.simulate(layer.program, 1024, targets, 20_000, seed=4, method="exact", threads=2, chunk_size=5000)
    c = netsor.simulate(layer.program, 1024, targets, 9000, seed=4, method="exact")
    assert np.array_equal(a, b) and np.array_equal(a[:9000], c)
