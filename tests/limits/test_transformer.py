"""The transformer builder: its program's shape, the BCP24 parameterisation, argument checks, and its limit
against the compiled nested sampler (an independent derivation) and against exact finite-width networks."""
import math
import types

import numpy as np
import pytest
from scipy import integrate, stats

import netsor
from limits import transformer
from limits.stack import mlp_weight_var


def test_program_shape_and_parameterisation():
    t = transformer(depth=3, seq_len=3, heads=2, residual_exponent=1.0, beta0=2.0)
    assert len(t.blocks) == 3 and len(t.kernels) == 4
    assert t.branch_scale == pytest.approx(2.0 / 3)
    block = t.blocks[1]
    assert len(block.scores) == 2 and len(block.scores[0]) == 3 and len(block.scores[0][0]) == 3
    assert block.scores[0][0][1].exponent == 0.5 and block.scores[0][0][1].args[0].dim == "n"
    assert t.kernels[2][0][1] is t.kernels[2][1][0]  # one node per pair
    assert t.kernels[-1][0][0].args == (t.residual[0], t.residual[0])
    after = block.after_attention[0]
    # x + c·H^{-1/2}(o^1 + o^2)
    np.testing.assert_allclose(after.coeffs, [1.0, 2.0 / 3 / math.sqrt(2), 2.0 / 3 / math.sqrt(2)])
    assert t.program["W2^2"].var == pytest.approx(2.0)  # relu: 1/E[relu(Z)²]
    assert t.outputs[0].matrix.name == "Wout" and t.outputs[0].arg is t.pooled
    fixed = transformer(depth=1, seq_len=2, heads=1, head_dim=8, score_exponent=1.0, mlp=None)
    q = fixed.blocks[0].scores[0][0][0].args[0]
    assert q.dim == 8 and fixed.blocks[0].scores[0][0][0].exponent == 1.0
    assert fixed.program["WO^1,1"].shape == ("n", 8)


def test_long_sequences_build_with_distinct_names():
    """Kernel entries K^ℓ_ij and scores p^ℓ,h_ij used to collide from seq_len 11 on (K^0_111 for (1, 11) and
    (11, 1)); each score is still its block's q_i·k_j and each kernel entry x_i·x_j / n."""
    t = transformer(depth=2, seq_len=11)
    prog = t.program
    names = [node.name for node in prog.nodes]
    assert len(set(names)) == len(names)
    scores = [p for block in t.blocks for head in block.scores for row in head for p in row]
    kernels = {id(k) for layer in t.kernels for row in layer for k in row}
    assert len(scores) == 2 * 2 * 11 ** 2 and len(kernels) == 3 * 11 * 12 // 2
    assert sum(isinstance(n, netsor.Dot) for n in prog.nodes) == len(scores) + len(kernels)
    for layer, block in enumerate(t.blocks, 1):
        for h, head in enumerate(block.scores, 1):
            queries = [row[0].args[0] for row in head]
            keys = [p.args[1] for p in head[0]]
            assert all(isinstance(q, netsor.MatMul) and q.matrix is prog[f"WQ^{layer},{h}"] for q in queries)
            assert all(isinstance(k, netsor.MatMul) and k.matrix is prog[f"WK^{layer},{h}"] for k in keys)
            assert [q.arg for q in queries] == [k.arg for k in keys]  # both from the block's LayerNorm(x_i)
            assert all(head[i][j].args == (queries[i], keys[j]) for i in range(11) for j in range(11))
            assert prog[f"p^{layer},{h}_1,11"] is head[0][10] and prog[f"p^{layer},{h}_11,1"] is head[10][0]
    assert prog["K^0_1,11"] is t.kernels[0][0][10] and prog["K^0_11,11"] is t.kernels[0][10][10]
    assert t.kernels[2][0][10].args == (t.residual[0], t.residual[10])


def test_the_builder_function_and_the_module_have_different_names():
    import limits
    import limits.stack
    assert isinstance(limits.stack, types.ModuleType) and callable(limits.transformer)
    assert limits.transformer is limits.stack.transformer is transformer
    assert limits.Transformer is limits.stack.Transformer


@pytest.mark.parametrize("phi, second_moment", [
    ("relu", 0.5),
    ("identity", 1.0),
    ("erf", 2 / math.pi * math.asin(2 / 3)),
    ("tanh", integrate.quad(lambda z: np.tanh(z) ** 2 * stats.norm.pdf(z), -30, 30, epsabs=1e-13)[0]),
])
def test_mlp_weight_variance_normalises_the_branch(phi, second_moment):
    assert mlp_weight_var(phi) == pytest.approx(1 / second_moment, rel=1e-8)


@pytest.mark.parametrize("options, message", [
    (dict(depth=0), "depth"),
    (dict(heads=1.5), "heads"),
    (dict(score_exponent=0.25), "score_exponent"),
    (dict(residual_exponent=-1), "residual_exponent"),
    (dict(beta0=math.nan), "beta0"),
    (dict(mlp=3), "mlp"),
    (dict(mlp="softplus"), "softplus"),
    (dict(inputs="uniform"), "inputs"),
    (dict(inputs=np.eye(3)), "covariance"),
])
def test_bad_arguments_are_program_errors(options, message):
    with pytest.raises(netsor.ProgramError, match=message):
        transformer(**options)


def test_the_program_limit_is_the_compiled_nested_sampler():
    """Two derivations of the nested limit: netsor.limit on the program, and the kernel-level recursion with
    random scores. Their laws of the final kernel and of the output variance agree; one head instead of two
    (a law with the same mean and twice the spread) is rejected by the same test."""
    model = transformer(depth=2, seq_len=3, heads=2)
    law = model.law()
    entries = [model.kernels[-1][0][0], model.kernels[-1][0][1]]
    from_program = law.sample_scalars(entries, 8000, seed=1)
    compiled = model.nested_kernels(8000, seed=2)
    one_head = model.nested_kernels(8000, seed=3, heads=1)
    for j, (a, b) in enumerate([(0, 0), (0, 1)]):
        assert stats.ks_2samp(from_program[:, j], compiled[:, a, b]).pvalue > 1e-3
        assert stats.ks_2samp(from_program[:, j], one_head[:, a, b]).pvalue < 1e-8
    output_variance = law.conditional_cov(model.outputs, 8000, seed=4)[:, 0, 0]
    assert stats.ks_2samp(output_variance, compiled.mean(axis=(1, 2))).pvalue > 1e-3


def test_residual_kernel_error_falls_like_one_over_heads():
    from limits import fit_rate, kernel_vs_heads
    table = kernel_vs_heads([1, 4, 16], depth=4, size=4000, recursion_samples=1 << 17, seq_len=3)
    fit = fit_rate(table, against="heads", value="mse", se="mse_se")
    assert abs(fit.exponent - 1.0) < 0.15, fit
    # mean squared error = (biased) variance + bias², entry by entry
    np.testing.assert_allclose(table["mse"], table["variance"] * (4000 - 1) / 4000 + table["bias"] ** 2, rtol=1e-9)
