"""Start-up: `import netsor` and the first 1,000 limit samples of attention_layer(seq_len=4, heads=2), each in a fresh
Python process, with numba's cache warm (the process has run once before) and cold (an empty NUMBA_CACHE_DIR: a
fresh install, every kernel compiled), against `python -c "import numpy, scipy"` timed in the same run.
Targets (issue 16, item 6): ≤ 2 s warm, ≤ 30 s cold."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIRST_SAMPLES = ("import netsor\n"
                 "from limits import attention_layer\n"
                 "layer = attention_layer(seq_len=4, heads=2)\n"
                 "netsor.limit(layer.program).sample(layer.outputs, 1000, seed=0)\n")
BASELINE = "import numpy, scipy\n"
TARGETS = {"warm": 2.0, "cold": 30.0}


def wall_seconds(code: str, cache_dir: str | None = None) -> float:
    """Wall time of `python -c code` in a fresh process run from the repository root (cache_dir: numba's)."""
    env = dict(os.environ)
    if cache_dir is not None:
        env["NUMBA_CACHE_DIR"] = cache_dir
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def run(quick: bool = False) -> list[dict]:
    repeats = 1 if quick else 3
    baseline = min(wall_seconds(BASELINE) for _ in range(repeats))
    wall_seconds(FIRST_SAMPLES)  # has run once before: numba's cache holds every kernel it needs
    times = {"warm": min(wall_seconds(FIRST_SAMPLES) for _ in range(repeats))}
    cold = []
    for _ in range(1 if quick else 2):
        with tempfile.TemporaryDirectory(prefix="netsor-numba-cache-") as empty:
            cold.append(wall_seconds(FIRST_SAMPLES, cache_dir=empty))
    times["cold"] = min(cold)
    rows = []
    for kind, label in (("warm", "numba cache warm (run once before)"), ("cold", "numba cache empty (fresh install)")):
        value = times[kind]
        met = value <= TARGETS[kind]
        rows.append(dict(benchmark="start-up", case=f"import netsor + first 1000 limit samples, attention s=4, H=2, "
                                                    f"{label}",
                         value=value, unit="s", baseline=baseline, baseline_name="python -c 'import numpy, scipy'",
                         ratio=value / baseline,
                         note=f"start-up: target ≤ {TARGETS[kind]:g} s — "
                              + ("met." if met else "MISSED on this run.")))
    return rows
