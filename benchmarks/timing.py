"""Timing helpers shared by the benchmark entries."""
from __future__ import annotations

import time


def rate(fn, items: int, repeats: int = 3, min_seconds: float = 0.2) -> float:
    """Items per second of `fn()` (which processes `items` items): the best of `repeats` timed runs, each
    repeated until it lasts `min_seconds`; the best run is the least disturbed on a shared machine."""
    fn()  # warm-up: caches, compilation
    best = float("inf")
    for _ in range(repeats):
        calls, start = 0, time.perf_counter()
        while True:
            fn()
            calls += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_seconds:
                break
        best = min(best, elapsed / calls)
    return items / best
