"""Random streams. Every draw comes from a Generator keyed by (root seed, block, stream), so results do not depend
on how work is chunked or how many threads run it. And the one reflection of a χ² draw through its distribution
function (`reflect_chisquare`), by which antithetic twins are made."""
from __future__ import annotations

import numbers
import os

import numpy as np

from .errors import ProgramError

__all__ = ["seed_sequence", "stream", "check_size", "reflect_chisquare"]


def seed_sequence(seed) -> np.random.SeedSequence:
    """The root SeedSequence for an int, a SeedSequence, or None (fresh OS entropy)."""
    if isinstance(seed, np.random.SeedSequence):
        return seed
    if seed is None:
        return np.random.SeedSequence()
    if isinstance(seed, numbers.Integral) and not isinstance(seed, bool) and seed >= 0:
        return np.random.SeedSequence(int(seed))
    raise ProgramError(f"seed must be a non-negative int, a numpy SeedSequence or None, got {seed!r}")


def stream(root: np.random.SeedSequence, *key: int) -> np.random.Generator:
    """An independent Generator for the sub-stream `key` of `root` (e.g. key = (block, node))."""
    child = np.random.SeedSequence(root.entropy, spawn_key=tuple(root.spawn_key) + tuple(int(k) for k in key))
    return np.random.Generator(np.random.PCG64(child))


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):  # not every platform reports it
        return 1 << 36


# The largest result array a call may ask for: 64 GiB, or less on a machine with less memory (an allocation that
# cannot succeed is refused up front instead of failing in numpy).
RESULT_BYTES = min(1 << 36, _physical_memory())


def check_size(size, where: str = "size", floats_per_item: int = 1) -> int:
    """A positive integer count; with floats_per_item, also one whose result (size × floats_per_item doubles) stays
    under RESULT_BYTES, so an impossible request is refused up front rather than failing deep in numpy."""
    if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 1:
        raise ProgramError(f"{where} must be a positive integer, got {size!r}")
    size = int(size)
    if size * max(1, floats_per_item) * 8 > RESULT_BYTES:
        raise ProgramError(f"{where} = {size} asks for {size * max(1, floats_per_item) * 8 / 2**30:.3g} GiB of "
                           f"results (at most {RESULT_BYTES / 2**30:.3g} GiB, this machine's memory or 64 GiB): "
                           f"draw it in parts with other seeds")
    return size


def reflect_chisquare(values: np.ndarray, dof) -> np.ndarray:
    """x′ = F⁻¹(1 − F(x)) for χ²_dof draws x (F its distribution function; dof broadcast against values): again
    χ²_dof, with the draw's fluctuation negated at first order. The one reflection of the antithetic twins."""
    from scipy.special import gammainc, gammaincc, gammainccinv, gammaincinv  # at first use: start-up stays light

    x = np.asarray(values, dtype=float) / 2.0  # χ²_ν = 2·Gamma(ν/2)
    half = np.broadcast_to(np.asarray(dof, dtype=float) / 2.0, x.shape)
    lower = gammainc(half, x)
    twin = np.empty_like(x)
    # F(x′) = 1 − F(x), each side inverted from the tail that keeps its digits
    low = lower < 0.5
    twin[low] = gammainccinv(half[low], lower[low])
    high = ~low
    twin[high] = gammaincinv(half[high], gammaincc(half[high], x[high]))
    return 2.0 * twin
