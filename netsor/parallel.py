"""The one block runner of netsor (and limits): independent blocks of work on a thread pool, results in order.

Every block draws from its own random streams (keyed by seed and block number, `netsor.random`), so results do not
depend on the thread count; the compiled kernels release the GIL, so threads give real parallelism. While our
threads run, BLAS is held to one thread: its threads would only contend for the same cores.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator

from threadpoolctl import threadpool_limits

__all__ = ["map_blocks"]


def map_blocks(work: Callable, items: Iterable, threads: int | None = None,
               in_flight: int | None = None) -> Iterator:
    """Yield work(item) for each item, in the items' order, computed on `threads` threads (default: all cores).

    in_flight bounds how many items are submitted at once (never fewer than the thread count), which bounds the
    memory held by finished results that have not been consumed yet."""
    items = list(items)
    threads = threads or os.cpu_count() or 1
    if threads == 1 or len(items) <= 1:
        yield from map(work, items)
        return
    step = max(threads, in_flight or len(items))
    with ThreadPoolExecutor(max_workers=min(threads, len(items))) as pool, threadpool_limits(1, "blas"):
        for start in range(0, len(items), step):
            yield from pool.map(work, items[start:start + step])
