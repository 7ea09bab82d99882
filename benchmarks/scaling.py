"""Thread scaling of the three samplers — the limit (`Law.sample`), exact finite width (`netsor.simulate`) and lazy
(`method="lazy"`) — in samples/s on 1, 2, 4, 8, 16 threads (as many as the machine has), each against its own
one-thread rate measured in the same run, and a check that every thread count gives the same numbers. Target
(issue 16): ≥ 12× on 16 threads. Run it where the cores are: `python -m benchmarks --only scaling`."""
from __future__ import annotations

import os

import numpy as np

import netsor
from limits import attention_layer, transformer

from .timing import rate

THREADS = (1, 2, 4, 8, 16)
TARGET = 12.0  # on 16 threads


def _cases(quick: bool):
    layer = attention_layer(seq_len=4, heads=2)  # SKI25's layer, paper tokens
    gaussian = attention_layer(seq_len=4, heads=2, inputs="gaussian")
    law = layer.law()
    stack = transformer(depth=4, seq_len=4, heads=2)
    scale = 1 if quick else 8
    return [
        ("limit sampler, attention s=4, H=2", 1 << (16 + (3 if not quick else 0)),
         lambda size, t: law.sample(layer.outputs, size, seed=0, threads=t)),
        ("exact simulate, gaussian inputs, n=1024", 1 << (17 + (3 if not quick else 0)),
         lambda size, t: netsor.simulate(gaussian.program, 1024, gaussian.outputs, size, seed=0, threads=t)),
        ("exact simulate, paper inputs, n=1024", 1 << (17 + (3 if not quick else 0)),
         lambda size, t: netsor.simulate(layer.program, 1024, layer.outputs, size, seed=0, threads=t)),
        ("lazy simulate, transformer depth 4, n=1024", 512 * scale,
         lambda size, t: netsor.simulate(stack.program, 1024, stack.outputs, size, seed=0, method="lazy",
                                         threads=t)),
    ]


def run(quick: bool = False) -> list[dict]:
    cores = os.cpu_count() or 1
    threads = [t for t in THREADS if t <= cores] if not quick else [1, min(2, cores)]
    rows = []
    for name, size, draw in _cases(quick):
        reference = draw(min(size, 4096 * 4), 1)
        base = None
        for t in threads:
            same = np.array_equal(draw(min(size, 4096 * 4), t), reference)
            value = rate(lambda: draw(size, t), size, repeats=2)
            base = value if base is None else base
            row = dict(benchmark="thread scaling", case=f"{name}, {t} threads", value=value, unit="samples/s",
                       baseline=base, baseline_name="the same on 1 thread", ratio=value / base)
            if not same:
                row["note"] = f"thread scaling: {name} on {t} threads gave other numbers than on 1 thread"
            rows.append(row)
        if 16 in threads:
            verdict = "met" if rows[-1]["ratio"] >= TARGET else "MISSED on this run"
            rows[-1]["note"] = (rows[-1].get("note", "") + f" thread scaling, {name}: {rows[-1]['ratio']:.3g}× on "
                                f"16 threads, target ≥ {TARGET:g}× — {verdict}; same numbers on every thread "
                                f"count: {all('other numbers' not in r.get('note', '') for r in rows[-len(threads):])}"
                                ).strip()
    return rows
