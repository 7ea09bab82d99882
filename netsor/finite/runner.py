"""Argument checks and the block runner every finite-width interpreter uses: blocks of networks, each with
its own random streams, run on a thread pool and written in order."""
from __future__ import annotations

import numbers

import numpy as np

from ..errors import ProgramError
from ..ir.program import HeadSum, Program
from ..parallel import map_blocks
from ..random import RESULT_BYTES, check_size, seed_sequence


def checked_arguments(where: str, program: Program, width, variables, size, seed, threads=None,
                      floats_per_network=len):
    """The checks every finite-width entry point makes: (width, target nodes, size, root SeedSequence, threads).
    floats_per_network(targets): how many result numbers one network takes (bounds the result's memory)."""
    if not isinstance(program, Program):
        raise ProgramError(f"{where}: expected a netsor Program, got {type(program).__name__}")
    width = check_width(width, where)
    head_sum = next((n for n in program.nodes if isinstance(n, HeadSum)), None)
    if head_sum is not None:
        raise ProgramError(f"{where}: {head_sum.name} := {head_sum.definition()} sums over infinitely many heads; "
                           f"the program has no finite-width network")
    targets = program.resolve(variables, where)
    size = check_size(size, floats_per_item=floats_per_network(targets))
    root = seed_sequence(seed)
    if threads is not None:
        threads = check_size(threads, "threads")
    return width, targets, size, root, threads


MAX_WIDTH = 1 << 62  # χ² degrees of freedom and row counts are int64 in the compiled kernels


def check_width(width, where: str = "simulate") -> int:
    if isinstance(width, bool) or not isinstance(width, numbers.Integral) or width < 1:
        raise ProgramError(f"{where}: width must be a positive integer, got {width!r}")
    if width > MAX_WIDTH:
        raise ProgramError(f"{where}: width must be at most 2^62 (int64 kernels), got {width!r}")
    return int(width)


NETWORK_BYTES = RESULT_BYTES  # the most one network may hold while it is drawn, like the result bound


def check_network_memory(where: str, width: int, floats: int, method: str) -> None:
    """Refuse, before any work, a width at which one network alone would hold more than NETWORK_BYTES (blocks
    shrink to one network at large widths, so this, not the block size, bounds the memory)."""
    if floats * 8 > NETWORK_BYTES:
        raise ProgramError(f"{where}: width = {width} needs {floats * 8 / 2**30:.3g} GiB per network with "
                           f"method={method!r} (at most {NETWORK_BYTES / 2**30:.3g} GiB); use a smaller width")


def with_moments(targets) -> int:
    """Result numbers per network of draws with their conditional means and covariances: k + k + k²."""
    return len(targets) * (len(targets) + 2)


def run_blocks_in_parts(work, size: int, block: int, shapes, threads) -> list[np.ndarray]:
    """`_run_blocks` for work returning a tuple of arrays (count, *shapes[i]): one array (size, *shapes[i]) each."""
    widths = [int(np.prod(shape)) for shape in shapes]

    def flat(b):
        return np.concatenate([part.reshape(b[2], -1) for part in work(b)], axis=1)

    out = _run_blocks(flat, size, block, sum(widths), None, threads)
    parts = np.split(out, np.cumsum(widths)[:-1], axis=1)
    return [part.reshape((size,) + tuple(shape)) for part, shape in zip(parts, shapes)]


def _blocks(size: int, block: int):
    """(block index, start, count) of every block of networks, generated lazily: a list would hold
    size / block tuples before any work starts."""
    for b, start in enumerate(range(0, size, block)):
        yield b, start, min(block, size - start)


def _run_blocks(work, size: int, block: int, columns: int, chunk_size, threads) -> np.ndarray:
    """work((block index, start, count)) → (count, columns) for every block of networks, in parallel, written in
    order into one array; chunk_size bounds how many networks are in flight at once."""
    out = np.empty((size, columns))
    # chunk_size only bounds memory: how many networks' results are in flight at once
    in_flight = None if chunk_size is None else max(1, chunk_size // block)
    # the runner's results first: zip then exhausts it, and its pool is shut down before this returns
    for res, (_, start, count) in zip(map_blocks(work, _blocks(size, block), threads, in_flight), _blocks(size, block)):
        out[start:start + count] = res
    return out
