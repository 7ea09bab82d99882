"""The fused kernels of the limit sampler against the unfused numpy/numba path (bit for bit) and against references
written here (to tolerance, with a deliberately wrong kernel failing); the chunked, threaded sampler against itself."""
import numpy as np
import pytest

import netsor
from netsor.limit import law as law_module
from netsor.compiled.limit import quadratic_form_into, sample_gaussian_into
from netsor.compiled.linalg import quadratic_forms, sample_gaussian, semidefinite_cholesky
from netsor.limit.law import _dot_blocks, _isserlis, independent_blocks

RNG = np.random.default_rng(20261202)


def _stack(shape, samples, zeros=0.3):
    """A sample-last stack with exact zeros (shared zeros are skipped by the kernels, per-sample ones are not)."""
    a = RNG.standard_normal(shape + (samples,))
    if samples == 1:
        a[RNG.random(shape) < zeros] = 0.0
    return a


def _reference_form(left, middle, right):
    """Σ_ab L_ia M_ab R_jb per sample, by einsum over broadcast stacks."""
    S = max(left.shape[2], middle.shape[2], right.shape[2])
    b = lambda a: np.broadcast_to(a, a.shape[:2] + (S,))  # noqa: E731
    return np.einsum("ias,abs,jbs->ijs", b(left), b(middle), b(right))


@pytest.mark.parametrize("nl, nm, nr", [(1, 1, 1), (1, 600, 1), (600, 1, 600), (600, 600, 600), (1, 600, 600),
                                        (600, 1, 1), (600, 600, 1)])
@pytest.mark.parametrize("ku, m, mv, kv", [(3, 4, 5, 2), (1, 1, 1, 1), (6, 6, 6, 6)])
def test_quadratic_form_is_the_unfused_path_bit_for_bit(nl, nm, nr, ku, m, mv, kv):
    left, middle, right = _stack((ku, m), nl), _stack((m, mv), nm), _stack((kv, mv), nr)
    S = max(nl, nm, nr)
    total = RNG.standard_normal((ku, kv, S))
    expected = total + quadratic_forms(left, middle, right, False)
    quadratic_form_into(total, left, middle, right, False)
    assert np.array_equal(total, expected)
    np.testing.assert_allclose(total - (expected - quadratic_forms(left, middle, right, False)),
                               _reference_form(left, middle, right), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("nl, nm", [(1, 1), (700, 1), (1, 700), (700, 700)])
def test_symmetric_quadratic_form_is_the_unfused_path_bit_for_bit(nl, nm):
    left = _stack((4, 5), nl)
    middle = _stack((5, 5), nm)
    middle = middle + middle.transpose(1, 0, 2)
    first = quadratic_forms(left, middle, left, True)
    out = np.zeros((4, 4, max(nl, nm)))
    quadratic_form_into(out, left, middle, left, True)
    quadratic_form_into(out, left, middle, left, True)  # accumulates: first + first
    assert np.array_equal(out, first + first)
    np.testing.assert_allclose(out, 2 * _reference_form(left, middle, left), rtol=1e-12, atol=1e-12)


def test_a_wrong_quadratic_form_is_caught_by_the_reference():
    """Power: the reference separates L M Rᵀ from the transposed form a wrong kernel might compute."""
    left, middle, right = _stack((3, 4), 50), _stack((4, 4), 50), _stack((3, 4), 50)
    out = np.zeros((3, 3, 50))
    quadratic_form_into(out, left, middle.transpose(1, 0, 2).copy(), right, False)  # L Mᵀ Rᵀ
    assert not np.allclose(out, _reference_form(left, middle, right), rtol=1e-6)


def _covariances(d, S, rank=None):
    rank = d if rank is None else rank
    X = RNG.standard_normal((d, rank, S))
    return np.ascontiguousarray(np.einsum("iks,jks->ijs", X, X))


@pytest.mark.parametrize("d, S, rank", [(1, 5, None), (4, 1000, None), (7, 513, 3), (16, 300, None), (5, 1, 2)])
def test_per_sample_gaussian_is_the_unfused_path_bit_for_bit(d, S, rank):
    cov = _covariances(d, S, rank)
    cov[:, :, 0] = 0.0  # an all-zero covariance: every column is dropped
    z = RNG.standard_normal((max(S, 40), d))
    if S == 1:
        out = np.empty((d, len(z)))
        sample_gaussian_into(cov, z, out)
        assert np.array_equal(out, sample_gaussian(cov, z))
        return
    out = np.empty((d, S))
    sample_gaussian_into(cov, z[:S], out)
    assert np.array_equal(out, sample_gaussian(cov, z[:S]))
    # power: the unit normals e_k read out column k of the factor, whose L Lᵀ must be the covariance
    factors = np.empty((d, d, S))
    for k in range(d):
        unit = np.zeros((S, d))
        unit[:, k] = 1.0
        sample_gaussian_into(cov, unit, out)
        factors[:, k] = out
    np.testing.assert_allclose(np.einsum("iks,jks->ijs", factors, factors), cov, atol=1e-9)
    assert np.array_equal(factors, semidefinite_cholesky(cov))


def test_per_sample_gaussian_propagates_nan_as_the_unfused_path():
    cov = _covariances(3, 20)
    cov[1, 1, 4] = np.nan
    z = RNG.standard_normal((20, 3))
    out = np.empty((3, 20))
    sample_gaussian_into(cov, z, out)
    reference = sample_gaussian(cov, z)
    assert np.array_equal(np.isnan(out), np.isnan(reference)) and np.isnan(out[:, 4]).any()
    assert np.array_equal(np.nan_to_num(out), np.nan_to_num(reference))


def _reference_blocks(cov):
    """The connected components of cov's pattern by a plain search (the former implementation)."""
    D = cov.shape[0]
    unseen, blocks = set(range(D)), []
    while unseen:
        stack, block = [min(unseen)], []
        unseen.discard(stack[0])
        while stack:
            i = stack.pop()
            block.append(i)
            linked = [j for j in unseen if cov[i, j] != 0.0 or cov[j, i] != 0.0]
            unseen.difference_update(linked)
            stack.extend(linked)
        blocks.append(sorted(block))
    return blocks


@pytest.mark.parametrize("D, density", [(1, 0.5), (30, 0.02), (60, 0.05), (40, 0.5)])
def test_independent_blocks_are_the_connected_components(D, density):
    pattern = RNG.random((D, D)) < density
    cov = np.where(pattern, 1.0, 0.0)
    np.fill_diagonal(cov, 1.0)
    assert independent_blocks(cov) == _reference_blocks(cov)


def _swapped_dots():
    """Dots x·y and y′·x′ of inputs correlated within a group, independent across: Cov = Σ_ad Σ_bc ≠ 0, the
    second Isserlis term, plus a third independent group."""
    prog = netsor.Program("swapped")
    xs = prog.inputs(2, cov=[[1.0, 0.5], [0.5, 2.0]])
    ys = prog.inputs(2, cov=[[1.5, -0.4], [-0.4, 1.0]])
    zs = prog.inputs(2, cov=[[1.0, 0.2], [0.2, 1.0]])
    dots = [netsor.dot(xs[0], ys[0]), netsor.dot(ys[1], xs[1]), netsor.dot(zs[0], xs[0]), netsor.dot(zs[1], ys[1]),
            netsor.dot(xs[1], zs[0])]
    return prog, dots


@pytest.mark.parametrize("case", ["heads", "gaussian", "swapped"])
def test_dot_blocks_are_the_blocks_of_the_whole_isserlis_covariance(case):
    from limits import attention_layer

    if case == "swapped":
        program, dots = _swapped_dots()
    else:
        layer = attention_layer(**(dict(seq_len=3, heads=3) if case == "heads" else
                                   dict(seq_len=2, heads=2, inputs="gaussian")))
        program, dots = layer.program, [d for head in layer.scores for row in head for d in row]
    law = netsor.limit(program)
    cov = _isserlis(law._fine, dots)[0][:, :, 0]
    expected = {tuple(b): cov[np.ix_(b, b)] for b in independent_blocks(cov)}
    found = {tuple(b): c for b, c in _dot_blocks(law._fine, dots)}
    assert expected.keys() == found.keys()
    assert all(np.array_equal(expected[b], found[b]) for b in expected)
    if case == "swapped":
        assert len(expected) < len(dots) and cov[0, 1] != 0.0  # power: the swapped pair is one block


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(law_module, "MIN_CHUNK", 1000)
    monkeypatch.setattr(law_module, "CHUNK_FLOATS", 1)


@pytest.mark.parametrize("options", [dict(seq_len=4, heads=2), dict(seq_len=3, heads=2, head_dim=4)])
def test_attention_draws_do_not_depend_on_chunks_threads_or_size(options, monkeypatch):
    from limits import attention_layer

    layer = attention_layer(**options)
    size = law_module.SAMPLE_BLOCK + 2500  # two blocks, the second partial
    variables = list(layer.outputs) + [layer.scores[0][0][1]]
    whole = netsor.limit(layer.program).sample(variables, size, seed=7, threads=1)
    threaded = netsor.limit(layer.program).sample(variables, size, seed=7, threads=2)
    monkeypatch.setattr(law_module, "MIN_CHUNK", 1000)  # chunks of 1000 samples: 33 per block, the last partial
    monkeypatch.setattr(law_module, "CHUNK_FLOATS", 1)
    chunked = netsor.limit(layer.program).sample(variables, size, seed=7, threads=2)
    prefix = netsor.limit(layer.program).sample(variables, 1500, seed=7)
    assert np.array_equal(whole, threaded) and np.array_equal(whole, chunked) and np.array_equal(whole[:1500], prefix)


def test_chunked_conditional_moments_are_the_unchunked_ones(small_chunks):
    from limits import attention_layer

    layer = attention_layer(seq_len=3, heads=2)
    chunked = netsor.limit(layer.program).conditional_moments(layer.outputs, 2600, seed=3)
    law_module.CHUNK_FLOATS = 1 << 40
    law_module.MIN_CHUNK = law_module.SAMPLE_BLOCK
    whole = netsor.limit(layer.program).conditional_moments(layer.outputs, 2600, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(chunked, whole))


def test_the_fast_sampler_still_draws_the_attention_law():
    """The conditional covariance of y given the scores is H⁻¹ Σ_h A_h Σ_X A_hᵀ, formed here from sampled scores."""
    from limits import attention_layer

    layer = attention_layer(seq_len=3, heads=2)
    law = netsor.limit(layer.program)
    scores = [d for head in layer.scores for row in head for d in row]
    sigma = law.kernel(layer.inputs)
    draws = law.sample(scores, 200, seed=11)
    means, covs = law.conditional_moments(layer.outputs, 200, seed=11)
    p = draws.reshape(200, 2, 3, 3)
    A = np.exp(p - p.max(axis=3, keepdims=True))
    A /= A.sum(axis=3, keepdims=True)
    expected = np.einsum("shij,jk,shlk->sil", A, sigma, A) / 2
    np.testing.assert_allclose(covs, expected, rtol=1e-10, atol=1e-12)
    assert not np.allclose(covs, np.einsum("shij,jk,shlk->sil", A, sigma, A), rtol=1e-3)  # power: 1/H matters
