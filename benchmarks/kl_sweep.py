"""End to end: SKI25's KL-vs-width experiment (attention s=4, H=2, paper inputs; widths 16..1024; 10 seeds ×
50,000 networks per width; KDE estimator) with `limits.kl_vs_width`, against the cost of the published method —
one dense numpy network at a time — timed on a few networks per width in the same run and scaled to the grid.
Target (issue 5): under 60 s on 2 cores. The same grid with the mixture estimator is reported beside it."""
from __future__ import annotations

import time

import numpy as np

from limits import attention_layer, kl_vs_width

WIDTHS = (16, 64, 256, 1024)


def published_style_network(width: int, rng: np.random.Generator, seq_len: int = 4, heads: int = 2,
                            clip: float = 100.0) -> np.ndarray:
    """One network the way the published scripts draw it: dense n×n Gaussian matrices, numpy, output y_1[0]."""
    h = rng.standard_normal(width)
    x = np.stack([np.clip(rng.standard_normal((width, width)) @ h / np.sqrt(width), -clip, clip)
                  for _ in range(seq_len)])
    out = np.zeros(width)
    for _ in range(heads):
        wq, wk, wv, wo = (rng.standard_normal((width, width)) / np.sqrt(width) for _ in range(4))
        q, k, v = x @ wq.T, x @ wk.T, x @ wv.T
        scores = q @ k.T / np.sqrt(width)
        a = np.exp(scores - scores.max(axis=1, keepdims=True))
        a /= a.sum(axis=1, keepdims=True)
        out += wo @ (a @ v)[0]
    return out[:1] / np.sqrt(heads)


def published_cost(widths, networks_per_width: int, quick: bool) -> float:
    """Seconds the published method would take for the grid, from per-network times measured now."""
    rng = np.random.default_rng(0)
    total = 0.0
    for w in widths:
        count = max(2, min(200, int(2e7 // w ** 2)) // (8 if quick else 1))
        published_style_network(w, rng)  # warm-up
        start = time.perf_counter()
        for _ in range(count):
            published_style_network(w, rng)
        total += (time.perf_counter() - start) / count * networks_per_width
    return total


def run(quick: bool = False) -> list[dict]:
    layer = attention_layer(seq_len=4, heads=2, inputs="paper")
    size, seeds = (5_000, 2) if quick else (50_000, 10)
    baseline = published_cost(WIDTHS, size * seeds, quick)
    kl_vs_width(layer, widths=[16], size=2000, seeds=1, progress=False)  # compile / load numba caches once
    rows = []
    for estimator in ("kde", "mixture"):
        start = time.perf_counter()
        df = kl_vs_width(layer, widths=WIDTHS, size=size, seeds=seeds, estimator=estimator, progress=False)
        seconds = time.perf_counter() - start
        means = df.groupby("width")["kl"].mean()
        rows.append(dict(benchmark="KL vs width, end to end",
                         case=f"SKI25 grid n=16..1024, {seeds} seeds × {size} networks, {estimator}",
                         value=seconds, unit="s", baseline=baseline,
                         baseline_name="published dense numpy loop, same grid (timed per width, scaled)",
                         ratio=baseline / seconds,
                         note=(f"KL vs width ({estimator}): {estimator} run took {seconds:.1f} s "
                               f"({'target < 60 s met' if seconds < 60 else 'target < 60 s MISSED'}"
                               f"{', quick grid' if quick else ''}); mean KL per width "
                               + ", ".join(f"n={w}: {v:.2e}" for w, v in means.items()))))
    rows.append(main_job(quick))
    return rows


MAIN_WIDTHS = tuple(4 ** k for k in range(2, 11))  # 16 … 2^20, the CLI's defaults


def main_job(quick: bool = False) -> dict:
    """The CLI's main job on its defaults (`netsor-limits kl`: coupled twins, widths 16…2^20, 2 seeds × 20,000),
    against the mixture estimator on the same grid and sizes in the same run: seconds, and how many of the 18
    points each resolves (issue 16: every one, in < 30 s on 2 cores)."""
    layer = attention_layer(seq_len=4, heads=2, inputs="paper")
    widths = MAIN_WIDTHS[:4] if quick else MAIN_WIDTHS
    timings, resolved = {}, {}
    for estimator in ("coupled", "mixture"):
        start = time.perf_counter()
        df = kl_vs_width(layer, widths=widths, size=20_000, seeds=2, estimator=estimator, progress=False)
        timings[estimator] = time.perf_counter() - start
        resolved[estimator] = int((~df["upper_bound"]).sum())
    points = 2 * len(widths)
    met = timings["coupled"] < 30 and resolved["coupled"] == points
    return dict(benchmark="KL vs width, end to end", case=f"main job: coupled, n=16..{widths[-1]}, 2 seeds × 20000",
                value=timings["coupled"], unit="s", baseline=timings["mixture"],
                baseline_name="mixture estimator, same grid and sizes", ratio=timings["mixture"] / timings["coupled"],
                note=(f"main job: {timings['coupled']:.1f} s, {resolved['coupled']} of {points} points resolved "
                      f"(mixture: {timings['mixture']:.1f} s, {resolved['mixture']} resolved); target < 30 s with "
                      f"every point resolved — {'met' if met else 'MISSED on this run'}"
                      f"{' (quick grid)' if quick else ''}"))
