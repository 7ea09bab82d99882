"""BCP24's figures on this project's tasks, in two sizes: `quick` (CPU, the test suite) and `full` (a GPU run,
committed under notebooks/results/training/). One function per figure, each returning its tidy table; `run` does
them in order, writing each table as CSV as it finishes (a rerun with the same store resumes).

    python -m limits.training.experiments --size full --out notebooks/results/training [--store DIR]
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import jax
import numpy as np

from netsor import ProgramError

from .data import TeacherTask, digits
from .parameterisation import adam, sgd, standard
from .sweeps import depth_scaling, heads_convergence, hyperparameter_transfer

# η₀ grids: the mean-field grid is BCP24's 10^[-2.5, 1]; the standard parameterisation's optimum sits ~100× lower
MEAN_FIELD_LRS = tuple(np.logspace(-2.5, 1.0, 8))
STANDARD_LRS = tuple(np.logspace(-4.5, -1.0, 8))
ADAM_LRS = tuple(np.logspace(-2.5, 0.5, 7))

SIZES = {
    "quick": dict(steps=60, seeds=2, head_dims=(8, 32), heads=(1, 4, 16), depths=(1, 4), lrs=3, batch=32),
    "full": dict(steps=600, seeds=3, head_dims=(8, 16, 32, 64, 128), heads=(1, 2, 4, 8, 16, 32),
                 depths=(1, 2, 4, 8, 16), lrs=None, batch=64),
}
FIGURES = ("transfer_N", "transfer_H", "heads", "depth")


def _grid(grid, size):
    """The full grid, or every other point of it in the quick size (fewer runs, the same range)."""
    count = SIZES[size]["lrs"]
    if count is None:
        return grid
    return tuple(np.asarray(grid)[np.linspace(1, len(grid) - 2, count).round().astype(int)])


def transfer_N(size="quick", store=None, progress=None, data=None):
    """BCP24 Fig. 2: loss vs η₀ for N growing at H = 4, α_A ∈ {1, ½}; μP (SGD and Adam) and SP."""
    cfg, data = SIZES[size], data or digits()
    common = dict(values=cfg["head_dims"], heads=4, depth=2, seeds=cfg["seeds"], steps=cfg["steps"],
                  batch_size=cfg["batch"], out_dir=store, progress=progress)
    frames = [hyperparameter_transfer(data, parameterisations=(sgd(),), learning_rates=_grid(MEAN_FIELD_LRS, size),
                                      **common),
              hyperparameter_transfer(data, parameterisations=(standard(),),
                                      learning_rates=_grid(STANDARD_LRS, size), **common)]
    if size == "full":
        frames.append(hyperparameter_transfer(data, parameterisations=(adam(),), learning_rates=ADAM_LRS, **common))
    import pandas as pd
    return pd.concat(frames, ignore_index=True)


def transfer_H(size="quick", store=None, progress=None, data=None):
    """Loss vs η₀ as H grows at N = 8 (α_A = 1), μP and SP."""
    cfg, data = SIZES[size], data or digits()
    heads = tuple(h for h in cfg["heads"] if h >= 2)
    common = dict(vary="H", values=heads, head_dim=8, depth=2, score_exponents=(1.0,), seeds=cfg["seeds"],
                  steps=cfg["steps"], batch_size=cfg["batch"], out_dir=store, progress=progress)
    import pandas as pd
    return pd.concat([hyperparameter_transfer(data, parameterisations=(sgd(),),
                                              learning_rates=_grid(MEAN_FIELD_LRS, size), **common),
                      hyperparameter_transfer(data, parameterisations=(standard(),),
                                              learning_rates=_grid(STANDARD_LRS, size), **common)],
                     ignore_index=True)


def heads(size="quick", store=None, progress=None, data=None):
    """BCP24 Fig. 3/4: at N = 4, loss curves and the final stream kernel as H grows (one η₀, more seeds)."""
    cfg = SIZES[size]
    data = data or TeacherTask(seq_len=8, token_dim=8)
    return heads_convergence(data, heads=cfg["heads"], head_dim=4, depth=2, learning_rate=0.02,
                             seeds=2 * cfg["seeds"], steps=cfg["steps"], batch_size=cfg["batch"], out_dir=store,
                             progress=progress)


def depth(size="quick", store=None, progress=None, data=None):
    """BCP24 Fig. 5: α_L ∈ {1, ½} as L grows — query/key movement, loss vs η₀ and vs compute."""
    cfg, data = SIZES[size], data or digits()
    return depth_scaling(data, depths=cfg["depths"], head_dim=8, heads=4, learning_rates=_grid(MEAN_FIELD_LRS, size),
                         seeds=cfg["seeds"], steps=cfg["steps"], batch_size=cfg["batch"], out_dir=store,
                         progress=progress)


def device() -> dict:
    d = jax.devices()[0]
    return {"platform": d.platform, "device": getattr(d, "device_kind", str(d)), "jax": jax.__version__,
            "python": platform.python_version(), "host": platform.node()}


def run(size="quick", out=None, store=None, figures=FIGURES, progress=None, deadline=None) -> dict:
    """Each figure's table (CSV under `out` as it finishes), skipping those not started before `deadline` (a
    time.time() value; they resume from `store` on the next run)."""
    if size not in SIZES:
        raise ProgramError(f"experiments: size must be one of {', '.join(SIZES)}, got {size!r}")
    unknown = [f for f in figures if f not in FIGURES]
    if unknown:
        raise ProgramError(f"experiments: unknown figures {unknown}; choose from {', '.join(FIGURES)}")
    out = Path(out) if out is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    tables, timings = {}, {}
    for name in figures:
        if deadline is not None and time.time() > deadline:
            print(f"{name}: skipped (deadline)", flush=True)
            continue
        start = time.perf_counter()
        tables[name] = globals()[name](size, store, progress)
        timings[name] = time.perf_counter() - start
        print(f"{name}: {len(tables[name])} rows in {timings[name]:.0f} s", flush=True)
        if out is not None:
            tables[name].to_csv(out / f"{name}.csv", index=False)
    if out is not None:
        meta = dict(device(), size=size, seconds=timings)
        previous = out / "run.json"
        if previous.exists():
            try:
                old = json.loads(previous.read_text())
                meta["seconds"] = dict(old.get("seconds", {}), **timings)
            except ValueError:
                pass
        previous.write_text(json.dumps(meta, indent=1))
    return tables


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="quick")
    parser.add_argument("--out", required=True, help="folder for the CSV tables and run.json")
    parser.add_argument("--store", default=None, help="resumable task store (default: none)")
    parser.add_argument("--figures", nargs="*", default=list(FIGURES), choices=FIGURES)
    parser.add_argument("--minutes", type=float, default=None, help="start no figure after this many minutes")
    args = parser.parse_args(argv)
    deadline = None if args.minutes is None else time.time() + 60 * args.minutes
    try:
        run(args.size, args.out, args.store, args.figures, progress=False, deadline=deadline)
    except ProgramError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
