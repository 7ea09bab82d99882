"""Memory and argument bounds of the finite-width samplers: nothing a block allocates outlives it, the block runner
reads its blocks lazily, and requests that would overflow memory or int64 are refused by name before any work."""
import gc
import itertools
import tracemalloc

import numpy as np
import pytest

import netsor
from netsor.finite import runner
from netsor.finite.exact.front import EXPLICIT_ROWS
from netsor.finite.exact.plan import ExactPlan
from netsor.parallel import map_blocks
from tests.programs import attention_layer, mlp

PAPER = attention_layer(seq_len=3, heads=1, inputs="paper", clip=1.0)  # a streamed one-layer front (FrontLayer)
MLP = mlp(depth=2, nonlinearity="relu", inputs=1)  # an explicit front: (S, n) vectors per block
GAUSSIAN = attention_layer(seq_len=3, heads=1, inputs="gaussian")  # no front: the fused linear kernel


class _GcOff:
    """The cycle collector off, so that nothing a reference cycle holds is freed behind the test's back."""

    def __enter__(self):
        gc.collect()
        gc.disable()

    def __exit__(self, *exc):
        gc.enable()


def _cycles_holding_arrays(run) -> list:
    """The unreachable objects (reference cycles) left by run() that hold a numpy array."""
    run()  # compile and fill the caches first: numba's own one-off garbage is not the sampler's
    with _GcOff():
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            run()
            gc.collect()
            return [type(o).__name__ for o in gc.garbage
                    if any(isinstance(r, np.ndarray) for r in gc.get_referents(o))]
        finally:
            gc.set_debug(0)
            gc.garbage.clear()


@pytest.mark.parametrize("built, width", [(PAPER, 16), (MLP, 8), (GAUSSIAN, 16)], ids=["paper", "mlp", "gaussian"])
def test_blocks_leave_no_reference_cycles_holding_arrays(built, width):
    """The step-by-step block and the explicit front were nested recursive closures: cycles that kept every
    block's arrays alive until the cycle collector ran (+379 MB at 10⁶ networks)."""
    program, variables = built.program, list(built.outputs)
    for sampler in (lambda: netsor.simulate(program, width, variables, 9000, seed=0, method="exact", threads=1),
                    lambda: netsor.simulate_with_moments(program, width, variables, 5000, seed=0, threads=1)):
        assert _cycles_holding_arrays(sampler) == []


def _traced(run):
    """(peak, retained) bytes traced by tracemalloc while run() runs with the cycle collector off, less its result."""
    with _GcOff():
        tracemalloc.start()
        try:
            out = run()
            retained, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    return peak - out.nbytes, retained - out.nbytes


def test_peak_memory_of_an_explicit_front_does_not_grow_with_size():
    """8 blocks of an MLP front (each ~8 MB of n-vectors) peak at about what one block does, and leave nothing."""
    program, variables = MLP.program, list(MLP.outputs)
    plan = ExactPlan(program, program.resolve(variables, "test"))
    block = plan.block_size(64)

    def run(blocks):
        return lambda: netsor.simulate(program, 64, variables, blocks * block, seed=1, method="exact", threads=1)

    run(1)()
    one, _ = _traced(run(1))
    eight, retained = _traced(run(8))
    assert one > 4 * 2**20, one  # a block's front vectors: large next to anything else the call allocates
    assert eight < 2 * one, (one, eight)
    assert retained < 2**20, retained  # nothing of the blocks survives the call


def test_map_blocks_reads_its_items_lazily_and_in_order():
    for threads, in_flight in [(1, None), (2, None), (3, 1), (2, 5)]:
        pulled = []

        def items():
            for i in range(10**6):
                pulled.append(i)
                yield i

        results = map_blocks(lambda i: i * i, items(), threads=threads, in_flight=in_flight)
        assert list(itertools.islice(results, 7)) == [i * i for i in range(7)]
        assert len(pulled) <= 7 + max(threads, in_flight or 4 * threads) + 2, (threads, len(pulled))
        results.close()  # an abandoned runner drops the blocks it has not started
    assert list(map_blocks(lambda i: -i, iter(range(50)), threads=3)) == [-i for i in range(50)]
    assert list(map_blocks(lambda i: i, [], threads=2)) == []


def test_block_runner_hands_the_runner_an_iterator_not_a_list(monkeypatch):
    """A list of blocks is size/block tuples built before any work (size = 2^33 networks: millions of them)."""
    seen = []

    def spy(work, items, threads=None, in_flight=None):
        seen.append(items)
        return map_blocks(work, items, threads, in_flight)

    monkeypatch.setattr(runner, "map_blocks", spy)
    out = netsor.simulate(GAUSSIAN.program, 16, GAUSSIAN.outputs, 9000, seed=2, method="exact")
    assert out.shape == (9000, 3) and not isinstance(seen[0], (list, tuple)) and iter(seen[0]) is seen[0]


def test_map_blocks_refuses_bad_thread_counts():
    for threads in (0, -1, 1.5, True):
        with pytest.raises(netsor.ProgramError, match="threads must be a positive integer"):
            list(map_blocks(abs, range(3), threads=threads))


def _entry_points():
    p, v = PAPER.program, list(PAPER.outputs)
    g, gv = GAUSSIAN.program, list(GAUSSIAN.outputs)
    return {"simulate": lambda **kw: netsor.simulate(p, kw.pop("width", 16), v, kw.pop("size", 10), seed=3, **kw),
            "simulate_with_moments": lambda **kw: netsor.simulate_with_moments(p, kw.pop("width", 16), v,
                                                                               kw.pop("size", 10), seed=3, **kw),
            "simulate_coupled": lambda **kw: netsor.simulate_coupled(g, kw.pop("width", 16), gv, kw.pop("size", 10),
                                                                     seed=3, **kw)}


@pytest.mark.parametrize("where", ["simulate", "simulate_with_moments", "simulate_coupled"])
def test_bad_sizes_and_widths_are_refused_by_name(where):
    call = _entry_points()[where]
    with pytest.raises(netsor.ProgramError, match=r"^size = 1099511627776 asks for .* GiB of results"):
        call(size=2**40)
    for size in (True, 10.0, 0, -5, np.float64(10), np.bool_(True)):
        with pytest.raises(netsor.ProgramError, match="^size must be a positive integer"):
            call(size=size)
    for width in (0, -1, 1.5, True, np.float64(16)):
        with pytest.raises(netsor.ProgramError, match=f"^{where}: width must be a positive integer"):
            call(width=width)
    for width in (2**63, np.uint64(2**63)):
        with pytest.raises(netsor.ProgramError, match=f"^{where}: width must be at most 2\\^62"):
            call(width=width)
    if where != "simulate_coupled":
        for threads in (0, -1, 1.5, True):
            with pytest.raises(netsor.ProgramError, match="^threads must be a positive integer"):
                call(threads=threads)


def test_numpy_integers_are_sizes_widths_and_thread_counts():
    p, v = PAPER.program, list(PAPER.outputs)
    plain = netsor.simulate(p, 16, v, 50, seed=4, threads=2)
    numpy = netsor.simulate(p, np.int64(16), v, np.int64(50), seed=np.int64(4), threads=np.int32(2))
    assert np.array_equal(plain, numpy)
    moments = netsor.simulate_with_moments(p, np.int16(16), v, np.uint8(50), seed=4, threads=np.int64(1))
    assert np.array_equal(moments[0], plain)


@pytest.mark.parametrize("method", ["exact", "lazy", "dense"])
def test_widths_whose_one_network_overflows_memory_are_refused_by_name(method):
    """Blocks shrink to one network at large widths; beyond that a network's O(n) (dense: O(n²)) vectors would
    fail deep in numpy (MemoryError, 'array is too big')."""
    for where, call in [("simulate", lambda w: netsor.simulate(MLP.program, w, MLP.outputs, 2, seed=5, method=method)),
                        ("simulate_with_moments", lambda w: netsor.simulate_with_moments(
                            MLP.program, w, MLP.outputs, 2, seed=5, method=method))]:
        if where == "simulate_with_moments" and method == "dense":
            continue
        for width in (2**40, 2**62):
            with pytest.raises(netsor.ProgramError, match=f"^{where}: width = {width} needs .* GiB per network "
                                                          f"with method='{method}'"):
                call(width)


def test_streamed_front_never_draws_more_explicit_rows_than_its_bound():
    """A clip no column reaches is drawn from its Gram, with explicit rows (n × draws) only for the rare network
    where it could act; at widths where those rows would be huge, the layer is streamed instead."""
    layer = attention_layer(seq_len=3, heads=1, inputs="paper", clip=1e9)
    plan = ExactPlan(layer.program, layer.outputs)
    assert not plan.layer.streams(1024)
    wide = EXPLICIT_ROWS // plan.layer.draws + 2
    assert plan.layer.streams(wide) and plan.network_floats(wide) == 0
