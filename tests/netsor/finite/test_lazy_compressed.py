"""The compressed vectors of the lazy interpreter and its kernels: which vectors the plan compresses, the basis rows
(Bartlett or full) against the Wishart law, the tape and the unstacked batch kernel against the numpy path they
replace, the fused hidden layer against the unfused steps (same numbers) and its compiled nonlinearities against
the builtins, compressed against coordinate sampling and dense networks, and the power to see a wrong basis."""
import numpy as np
import pytest

import limits
import netsor
from netsor.compiled import lazy as kernels
from netsor.compiled.lazy import OP_ATOMS, OP_DOT, OP_LINCOMB, OP_RSQRT, OP_SOFTMAX, OP_SQUARE
from netsor.finite import lazy
from netsor.ir.semantics import stable_softmax
from tests.netsor.finite.test_lazy import SIZE, agree, attention, two_block_transformer

N = 20_000  # networks per statistical check


def test_the_transformer_keeps_only_its_mlp_hidden_layer_in_coordinates():
    """Depth 4, s = 4, H = 2: Q, K, V, O and W_2 outputs, the residual stream and the inputs are compressed; the
    residual component holds the s input atoms and 3 s atoms (two heads' W_O, W_2) per block."""
    net = limits.transformer(depth=4, seq_len=4, heads=2)  # the benchmark's
    plan = lazy.LazyPlan(net.program, net.outputs)
    coordinate = sorted(b.matrix.name for bs in plan.batches.values() for b in bs
                        if (b.matrix.index, b.number) not in plan.atoms)
    assert coordinate == sorted([f"W1^{layer}" for layer in range(1, 5)] + ["Wout"])
    assert all(x.index in plan.compressed for x in net.inputs + net.residual + (net.pooled,))
    assert max(m for _, m in plan.components) == 4 + 12 * 4
    assert {m for _, m in plan.components} == {52, 8, 4}  # residual, Q-K of a head, V of a head


def test_a_requested_vector_and_its_coordinate_uses_stay_coordinates():
    program, variables = two_block_transformer()  # requests the residual stream's first token
    plan = lazy.LazyPlan(program, variables)
    residual = variables[-1]
    assert residual.index not in plan.compressed
    assert all(a.index not in plan.compressed for a in residual.args)


def _wishart_moments(rows):
    """Per network the Gram of the basis rows, (S, m, m)."""
    return np.einsum("sad,sbd->sab", rows, rows)


def _wishart_z(gram, dof):
    """The largest |z| of the Grams' mean against dof·I and of their entries' variances against 2·dof (diagonal)
    and dof (off the diagonal), Wishart(dof, I)'s."""
    m = gram.shape[1]
    mean = gram.mean(axis=0)
    se = gram.std(axis=0) / np.sqrt(len(gram))
    z_mean = (mean - dof * np.eye(m)) / se
    variance = gram.var(axis=0)
    expected = dof * (1 + np.eye(m))
    centred = (gram - mean) ** 2
    z_var = (variance - expected) / (centred.std(axis=0) / np.sqrt(len(gram)))
    return np.abs(z_mean).max(), np.abs(z_var).max()


@pytest.mark.parametrize("dofs, sizes", [([9, 9], [3, 5]), ([4, 9], [6, 2]), ([5], [5])])
def test_basis_rows_have_wishart_inner_products(dofs, sizes):
    """Bartlett rows (atoms ≤ dof, down to χ²₁ at atoms = dof) and plain coordinates (atoms > dof): row Grams ~
    Wishart(dof, I) per component; rows are zero beyond the component's length; one degree of freedom too many is
    rejected."""
    dofs, sizes = np.array(dofs, dtype=np.int64), np.array(sizes, dtype=np.int64)
    D = int(np.minimum(dofs, sizes).max())
    basis = kernels.fill_basis(np.random.default_rng(1), dofs, sizes, np.zeros((N, int(sizes.sum()), D)))
    wrong = kernels.fill_basis(np.random.default_rng(2), dofs + 1, sizes,
                               np.zeros((N, int(sizes.sum()), int(np.minimum(dofs + 1, sizes).max()))))
    start = 0
    for dof, m in zip(dofs, sizes):
        rows = basis[:, start:start + m]
        assert np.all(rows[:, :, min(dof, m):] == 0)
        if m <= dof:
            assert np.all(np.triu(rows[:, :, :m], 1) == 0)  # a lower-triangular Bartlett factor
        z_mean, z_var = _wishart_z(_wishart_moments(rows), dof)
        assert z_mean < 5 and z_var < 5, (z_mean, z_var)
        assert _wishart_z(_wishart_moments(wrong[:, start:start + m]), dof)[0] > 10  # mean (dof + 1)·I
        start += m


def test_unstacked_batch_kernel_draws_the_stacked_kernels_numbers():
    rng = np.random.default_rng(3)
    args = tuple(rng.standard_normal((5, 40)) for _ in range(3))
    args = args[:2] + (args[0] + 2 * args[1],)  # rank-deficient: the zero column of L is kept zero
    ours = kernels.gaussian_rows(np.random.default_rng(4), args, 0.5, np.empty((3, 5, 300)))
    stacked = kernels.add_gaussian_rows(np.random.default_rng(4), np.stack(args, axis=1), 0.5, np.zeros((5, 3, 300)))
    np.testing.assert_allclose(ours, stacked.transpose(1, 0, 2), rtol=1e-12, atol=1e-12)
    factors = kernels.gram_factors(args, 0.5)
    np.testing.assert_allclose(factors @ factors.transpose(0, 2, 1),
                               0.5 * np.einsum("isa,jsa->sij", np.array(args), np.array(args)), atol=1e-10)


def test_tape_matches_numpy():
    """Each opcode on random slots against the numpy rule it replaces (derived_value's, stable_softmax)."""
    rng = np.random.default_rng(5)
    S, D = 7, 6
    cv = rng.standard_normal((8, S, D))
    sv = rng.standard_normal((12, S))
    sv[3] = np.abs(sv[3]) + 0.1
    basis = rng.standard_normal((S, 10, D))
    consts = np.array([0.5, 2.0, 3.0, 0.25])
    code = [OP_LINCOMB, 4, 2, 0, -1, 0, 1, 2, 1,  # cv4 = 0.5 cv0 + sv2 · cv1
            OP_DOT, 5, 0, 1, 1,  # sv5 = cv0·cv1 / 2
            OP_SQUARE, 6, 2, 2,  # sv6 = |cv2|² / 3
            OP_SOFTMAX, 3, 0, 1, 2, 7, -1, 8,  # sv7, sv8 = softmax(sv0, sv1, sv2)[0, 2]
            OP_RSQRT, 9, 3,  # sv9 = 1/sqrt(sv3)
            OP_ATOMS, 2, 0, 1, 3, 4, 2, 1, 5, 0, 6]  # cv5, cv6 = rows 1, 0 of L · basis[4:6], L Lᵀ = Gram/4
    before_cv, before_sv = cv.copy(), sv.copy()
    kernels.run_tape(np.array(code, dtype=np.int64), consts, cv, sv, basis)
    np.testing.assert_allclose(cv[4], 0.5 * before_cv[0] + before_sv[2][:, None] * before_cv[1], atol=1e-12)
    np.testing.assert_allclose(sv[5], np.einsum("sd,sd->s", before_cv[0], before_cv[1]) / 2, atol=1e-12)
    np.testing.assert_allclose(sv[6], np.einsum("sd,sd->s", before_cv[2], before_cv[2]) / 3, atol=1e-12)
    weights = stable_softmax([before_sv[0], before_sv[1], before_sv[2]])
    np.testing.assert_allclose(sv[7], weights[0], atol=1e-14)
    np.testing.assert_allclose(sv[8], weights[2], atol=1e-14)
    np.testing.assert_array_equal(sv[[10, 11]], before_sv[[10, 11]])  # untouched
    np.testing.assert_allclose(sv[9], 1 / np.sqrt(before_sv[3]), atol=1e-12)
    X = np.stack([before_cv[0], before_cv[1]], axis=1)
    L = np.linalg.cholesky(0.25 * X @ X.transpose(0, 2, 1))
    combined = L @ basis[:, 4:6]
    np.testing.assert_allclose(cv[5], combined[:, 1], atol=1e-10)
    np.testing.assert_allclose(cv[6], combined[:, 0], atol=1e-10)


def coordinates_only(monkeypatch):
    monkeypatch.setattr(lazy.LazyPlan, "_compress", lambda self: ({}, [], {}))


@pytest.mark.parametrize("width", [4, 8])
def test_compressed_matches_coordinate_sampling(monkeypatch, width):
    """Width 4: components larger than the width take plain coordinates; width 8: Bartlett rows (the residual
    component of 2 blocks, 3 tokens has 3 + 2·9 = 21 atoms, more than 8: coordinates; Q-K has 6)."""
    program, variables = two_block_transformer()
    variables = variables[:2]  # the readout and a score: the residual stream compressed
    compressed = netsor.simulate(program, width, variables, SIZE, seed=17, method="lazy")
    coordinates_only(monkeypatch)
    plain = netsor.simulate(program, width, variables, SIZE, seed=18, method="lazy")
    ok, ks, moments = agree(compressed, plain)
    assert ok, (ks, moments)


@pytest.mark.parametrize("width", [16, 64])
def test_compressed_transformer_matches_dense(width):
    """Bartlett rows for every component (the residual one has 21 atoms ≤ 64; at 16 it is coordinates)."""
    program, variables = two_block_transformer()
    variables = variables[:2]
    drawn = netsor.simulate(program, width, variables, SIZE, seed=19, method="lazy")
    dense = netsor.simulate(program, width, variables, SIZE, seed=20, method="dense")
    ok, ks, moments = agree(drawn, dense)
    assert ok, (ks, moments)


def test_the_comparison_rejects_a_basis_with_the_wrong_wishart(monkeypatch):
    """Basis rows whose Gram has the right mean but the fluctuations of Wishart(4·dof)/4 (too little randomness
    in the scores) are rejected against dense networks."""
    program, variables = attention()
    fill = kernels.fill_basis

    def narrow(rng, dofs, sizes, out):
        return fill(rng, 4 * dofs, sizes, out) / 2.0

    dense = netsor.simulate(program, 8, variables, SIZE, seed=21, method="dense")
    monkeypatch.setattr(lazy, "fill_basis", narrow)
    wrong = netsor.simulate(program, 8, variables, SIZE, seed=22, method="lazy")
    ok, ks, moments = agree(wrong, dense)
    assert not ok, (ks, moments)


@pytest.mark.parametrize("phi", ["identity", "relu", "erf", "tanh", "gelu", netsor.Clip(1.5), netsor.LeakyRelu(0.1)],
                         ids=str)
def test_compiled_nonlinearities_match_the_builtins(phi):
    phi = netsor.nonlin(phi, netsor.Program().input("x")).phi
    assert phi.code in kernels.FUSED_CODES
    x = np.linspace(-4, 4, 101)
    ours = np.array([kernels.apply_code(phi.code, phi.parameter, v) for v in x])
    np.testing.assert_allclose(ours, phi(x), rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("phi", ["relu", "tanh", netsor.Clip(0.5)], ids=str)
def test_fused_hidden_layer_draws_the_unfused_numbers(monkeypatch, phi):
    """W_2 φ(W_1 LN(x)) in one kernel, the hidden layer never stored: the same normals as drawing W_1 x, applying φ
    and factoring the Gram of φ(h) step by step, so the same networks up to rounding."""
    net = limits.transformer(depth=2, seq_len=3, heads=2, mlp=phi if isinstance(phi, str) else phi.name)
    plan = lazy.LazyPlan(net.program, net.outputs)
    assert len(plan._fused_hidden_layers()) == 2
    fused = netsor.simulate(net.program, 32, net.outputs, 300, seed=23, method="lazy")
    monkeypatch.setattr(lazy.LazyPlan, "_fused_hidden_layers", lambda self: {})
    np.testing.assert_allclose(netsor.simulate(net.program, 32, net.outputs, 300, seed=23, method="lazy"), fused,
                               rtol=1e-9, atol=1e-12)


def test_a_hidden_layer_read_elsewhere_is_not_fused():
    """A moment of the hidden activations needs their coordinates: W_1 is then an ordinary batch."""
    net = limits.transformer(depth=1, seq_len=2, heads=1)
    hidden = next(n for n in net.program.nodes if isinstance(n, netsor.ir.program.Nonlin))
    spy = netsor.moment("square", hidden, name="spy")
    plan = lazy.LazyPlan(net.program, list(net.outputs) + [spy])
    assert plan._fused_hidden_layers() == {}
    drawn = netsor.simulate(net.program, 8, list(net.outputs) + [spy], SIZE, seed=24, method="lazy")
    dense = netsor.simulate(net.program, 8, list(net.outputs) + [spy], SIZE, seed=25, method="dense")
    ok, ks, moments = agree(drawn, dense)
    assert ok, (ks, moments)
