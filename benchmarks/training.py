"""Training throughput (`limits.training`): run-steps per second of one compiled training program, vectorised
over RUNS runs (jax.vmap over learning rates × seeds) against the same runs one at a time, on the default JAX
device; where JAX sees a GPU, also the GPU against the CPU (both vectorised), timed in one process. Model: N = 32,
H = 4, L = 2 on digits (16 patches of 4 pixels), batch 64; compilation is excluded (warm-up), data on the device."""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from limits.training import digits, sgd, trainable
from limits.training import runs as training_runs

RUNS, STEPS, BATCH = 16, 100, 64
CPU_RUNS, CPU_STEPS = 8, 10  # a CPU does ~10 run-steps/s of this model: keep its timings to seconds


def _timed(model, data, count: int, steps: int, device) -> float:
    """Seconds per call of the compiled run function on `count` runs (best of 3 after a warm-up)."""
    with jax.default_device(device):
        fn = training_runs._compiled(model, data, steps, BATCH, 32)
        arrays = jax.device_put(training_runs._arrays(data), device)
        lrs = jnp.full((count,), model.learning_rate(0.1), jnp.float32)
        inits = [model.init(seed) for seed in range(count)]
        params = jax.device_put({k: np.stack([p[k] for p in inits]) for k in inits[0]}, device)
        batches = jax.device_put(np.stack([training_runs._batches(data, s, steps, BATCH) for s in range(count)]),
                                 device)
        jax.block_until_ready(fn(lrs, params, batches, arrays))
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            jax.block_until_ready(fn(lrs, params, batches, arrays))
            best = min(best, time.perf_counter() - start)
    return best


def run(quick: bool = False) -> list[dict]:
    data = digits()
    model = trainable(depth=2, heads=4, head_dim=32, token_dim=data.token_dim, outputs=data.outputs,
                      parameterisation=sgd())
    device = jax.devices()[0]
    on_cpu = device.platform == "cpu"
    runs, steps = (CPU_RUNS, CPU_STEPS) if on_cpu else (RUNS, STEPS)
    steps = min(steps, 5) if quick else steps
    name = f"{device.platform} ({getattr(device, 'device_kind', device.platform)})"
    vectorised = runs * steps / _timed(model, data, runs, steps, device)
    single = steps / _timed(model, data, 1, steps, device)
    rows = [dict(benchmark="training", case=f"digits, N=32 H=4 L=2, batch {BATCH}, {runs} runs vmapped, {name}",
                 value=vectorised, unit="run-steps/s", baseline=single, baseline_name="one run at a time",
                 ratio=vectorised / single)]
    if not on_cpu:
        cpu = CPU_RUNS * CPU_STEPS / _timed(model, data, CPU_RUNS, CPU_STEPS, jax.devices("cpu")[0])
        rows.append(dict(benchmark="training", case=f"GPU ({RUNS} runs vmapped) vs the host's CPU ({CPU_RUNS}), {name}",
                         value=vectorised,
                         unit="run-steps/s", baseline=cpu, baseline_name="the host's CPU", ratio=vectorised / cpu))
    rows[-1]["note"] = ("training: one jitted program per model (lax.scan over steps, vmap over runs); the ratio "
                        "is vectorised over one-at-a-time runs on the same device"
                        + ("" if not on_cpu else "; no GPU on this machine (the GPU rows are recorded "
                                                             "in the GPU section below)") + ".")
    return rows
