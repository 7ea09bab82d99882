"""Dense finite-width simulation (netsor.simulate, method="dense") versus a plain per-network numpy loop of the
same network, the style of the published experiment scripts. Network: 2-hidden-layer ReLU MLP on s = 4 inputs
(Σ = I), coordinate 0 of every output requested."""
from __future__ import annotations

import numpy as np

import netsor
from limits import mlp

from .timing import rate

WIDTHS = (16, 64, 256, 1024)
SEQ = 4


def plain_numpy_networks(width: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """The baseline: one network at a time, full dense matrices, no pruning, no batching."""
    out = np.empty((count, SEQ))
    for i in range(count):
        h1 = rng.standard_normal((width, SEQ))
        W2 = rng.standard_normal((width, width)) * np.sqrt(2.0 / width)
        W3 = rng.standard_normal((width, width)) * np.sqrt(2.0 / width)
        h2 = W2 @ np.maximum(h1, 0)
        out[i] = (W3 @ np.maximum(h2, 0))[0]
    return out


def run(quick: bool = False) -> list[dict]:
    net = mlp(depth=2, nonlinearity="relu", inputs=SEQ)
    rows = []
    for width in WIDTHS[:2] if quick else WIDTHS:
        count = max(4, min(4096, (1 << 24) // (width * width)))
        ours = rate(lambda: netsor.simulate(net.program, width, net.outputs, count, seed=0, method="dense"), count)
        rng = np.random.default_rng(0)
        base_count = max(2, count // 8)
        baseline = rate(lambda: plain_numpy_networks(width, base_count, rng), base_count)
        rows.append(dict(benchmark="dense simulate", case=f"relu MLP depth 2, s=4, n={width}",
                         value=ours, unit="networks/s", baseline=baseline,
                         baseline_name="per-network numpy loop", ratio=ours / baseline))
    rows[-1]["note"] = ("dense simulate: the gain over the plain loop comes from batching networks at small n, "
                        "drawing only the readout row that coordinate 0 needs, and running blocks on all cores; "
                        "both sides draw every other matrix entry.")
    return rows
