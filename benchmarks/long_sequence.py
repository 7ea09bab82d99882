"""The one-query sampler of long sequences (`limits.long_sequence.one_query_draws`): draws/s at s = 16 … 1024
tokens (n = 4096, H = 1, one thread), the cost per s² (the target, issue 17: near-linear in s² per draw), and
against the program-based exact sampler (`netsor.simulate` of `attention_layer(seq_len=s, heads=1,
inputs="gaussian")`, output y_1) timed in the same run where that one is affordable (s ≤ 32)."""
from __future__ import annotations

import numpy as np

import netsor
from limits import attention_layer
from limits.long_sequence import one_query_draws

from .timing import rate

WIDTH = 4096


def run(quick: bool = False) -> list[dict]:
    rows, per_s2 = [], {}
    for s in (16, 32, 64, 256) if quick else (16, 32, 64, 256, 1024):
        count = max(256, (1 << 21) // s ** 2)
        value = rate(lambda: one_query_draws(s, WIDTH, count, seed=0, antithetic=False, threads=1), count,
                     repeats=2)
        per_s2[s] = 1e9 / value / s ** 2
        row = dict(benchmark="long sequences", case=f"one-query sampler, s={s}, n={WIDTH}, 1 thread", value=value,
                   unit="draws/s")
        if s <= 32:
            layer = attention_layer(seq_len=s, heads=1, inputs="gaussian")
            size = 2048
            base = rate(lambda: netsor.simulate(layer.program, WIDTH, [layer.outputs[0]], size, seed=0, threads=1),
                        size, repeats=2)
            row.update(baseline=base, baseline_name="netsor.simulate of the layer's program (exact), y_1",
                       ratio=value / base)
        rows.append(row)
    ss = sorted(per_s2)
    growth = [np.log(per_s2[b] * b ** 2 / (per_s2[a] * a ** 2)) / np.log(b / a) for a, b in zip(ss, ss[1:])]
    rows[-1]["note"] = ("long sequences: ns per draw per s² " + ", ".join(f"s={s}: {per_s2[s]:.2g}" for s in ss)
                        + "; local exponent of the cost in s " + ", ".join(f"{g:.2f}" for g in growth)
                        + " (2 = linear in s²; target: near-linear in s² per draw — "
                        + ("met" if max(growth) <= 2.3 else "MISSED on this run") + ")")
    return rows
