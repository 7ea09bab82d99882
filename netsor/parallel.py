"""The one block runner of netsor (and limits): independent blocks of work on a thread pool, results in order.

Every block draws from its own random streams (keyed by seed and block number, `netsor.random`), so results do not
depend on the thread count; the compiled kernels release the GIL, so threads give real parallelism. While our
threads run, BLAS is held to one thread: its threads would only contend for the same cores.
"""
from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from itertools import chain, islice
from typing import Callable, Iterable, Iterator

from threadpoolctl import threadpool_limits

from .random import check_size

__all__ = ["map_blocks"]

AHEAD = 4  # blocks submitted per thread by default: enough to keep every thread busy while results are consumed


def map_blocks(work: Callable, items: Iterable, threads: int | None = None,
               in_flight: int | None = None) -> Iterator:
    """Yield work(item) for each item, in the items' order, computed on `threads` threads (default: all cores).

    items may be any iterable, a generator included: it is read lazily, as blocks are submitted, so the runner
    holds at most `in_flight` items, futures and unconsumed results at any time (default AHEAD per thread, never
    fewer than the thread count), whatever the number of blocks."""
    threads = (os.cpu_count() or 1) if threads is None else check_size(threads, "threads")
    if in_flight is not None:
        in_flight = check_size(in_flight, "in_flight")
    items = iter(items)
    head = list(islice(items, 2))
    if threads == 1 or len(head) <= 1:
        yield from map(work, chain(head, items))
        return
    ahead = max(threads, in_flight or AHEAD * threads)
    pending: deque = deque()
    pool = ThreadPoolExecutor(max_workers=threads)  # threads start as work is submitted: no more than blocks
    try:
        with threadpool_limits(1, "blas"):
            for item in chain(head, items):
                pending.append(pool.submit(work, item))
                if len(pending) >= ahead:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
    finally:  # on an error or an abandoned generator, blocks not started yet are dropped, not run
        pool.shutdown(wait=True, cancel_futures=True)
