"""Training runs, vectorised over learning rates and seeds (one compiled program per model, `jax.vmap` over runs).

A run is (η₀, seed): seed s gives the initial weights and the batches (jax keys from SeedSequence(s)), shared by
every η₀ of that seed (common random numbers, so curves over η₀ differ only by η₀). Each run records its training
loss at every step and, after training, on a fixed probe batch of the test set:
    attention_variance  Var_h p^h_ij, the variance of the scores over heads, averaged over inputs, i, j, layers
                        (BCP24 Fig. 2b), after training and at initialisation (`..._init`)
    qk_movement         ‖W(t) − W(0)‖_F / ‖W(0)‖_F for the query and key weights, averaged over layers and heads
                        (BCP24 Fig. 5a)
    stream_change       RMS over coordinates of x^L(t) − x^L(0), the residual stream's update (coordinate check)
    output_change       RMS of the trained output f_c
    kernel              the final stream's token kernel x_i·x_j/n on the first KERNEL_INPUTS probe inputs (and at
                        initialisation), for the convergence in H
A run whose loss stops being finite is `diverged`: its losses are +inf and its measurements missing (<NA>), never
NaN. The same code runs on CPU and GPU, in float32. On a GPU, JAX's default matmul precision is TF32 (~1e-3 relative
per product), so GPU runs agree with CPU runs to that rounding as amplified by training (set JAX's
`jax_default_matmul_precision` to "highest" for full float32 there, at a cost in speed); the committed GPU run used
the default.
"""
from __future__ import annotations

import math
import numbers
import time
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd

from netsor import ProgramError

from ..sweep import _positive_ints, _seeds
from .data import Dataset, TeacherTask
from .model import TrainableTransformer

KERNEL_INPUTS = 4  # probe inputs whose token kernels a run keeps
MEASUREMENTS = ("attention_variance", "attention_variance_init", "qk_movement", "stream_change", "output_change")
MAX_RUNS = 1 << 16


@dataclass(frozen=True)
class Training:
    """The runs of one model: `frame` one row per (lr, seed); `curves` one row per (lr, seed, step) with the
    training loss averaged over the steps since the previous point; `kernels[r]` (2, KERNEL_INPUTS, s, s) for row r
    (after training, at initialisation)."""

    frame: pd.DataFrame
    curves: pd.DataFrame
    kernels: np.ndarray
    seconds: float


def jax_key(seed) -> jax.Array:
    """A jax PRNG key from a seed or SeedSequence (the project's one source of random streams)."""
    sequence = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    state = sequence.generate_state(2, dtype=np.uint32)
    return jax.random.wrap_key_data(jnp.asarray(state, dtype=jnp.uint32))


def _stack(values):
    if isinstance(values[0], np.ndarray):
        return np.stack(values)
    return jnp.stack(values)


def _loss_fn(task: str):
    if task == "classification":
        return lambda out, y: optax.softmax_cross_entropy_with_integer_labels(out, y).mean()
    return lambda out, y: 0.5 * jnp.mean(jnp.sum((out - y) ** 2, axis=-1))


def _optimizer(model: TrainableTransformer, lr):
    p = model.parameterisation
    if p.optimizer == "adam":
        return optax.adam(lr, eps=1e-20)  # a tiny eps as BCP24: mean-field gradients are O(1/n), eps must not mask them
    return optax.sgd(lr, momentum=p.momentum or None)


BATCH_STREAM = 8  # spawn key of the batches' stream


def _batches(data, seed: int, steps: int, batch_size: int):
    """What a run's step t reads: the (steps, batch) example indices of a Dataset (uniform with replacement, by
    numpy from SeedSequence(seed)), or the jax key whose fold_in(t) draws a teacher's fresh samples."""
    if isinstance(data, TeacherTask):
        return jax_key(np.random.SeedSequence(seed, spawn_key=(BATCH_STREAM,)))
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(BATCH_STREAM,)))
    return rng.integers(0, len(data.train_x), (steps, batch_size), dtype=np.int32)


def _batcher(teacher: TeacherTask | None, batch_size: int):
    """(batches, step, arrays) ↦ (x, y)."""
    if teacher is not None:
        return lambda key, step, arrays: teacher.sample(jax.random.fold_in(key, step), batch_size)
    return lambda index, step, arrays: (arrays["train_x"][index[step]], arrays["train_y"][index[step]])


TEST_SIZE = 1024  # held-out examples for the test loss (all of a smaller test set)


def _arrays(data) -> dict:
    """The data a run reads, passed to the compiled function as arguments (not baked into it as constants)."""
    if isinstance(data, TeacherTask):
        x, y = data.test_set(TEST_SIZE)
        return {"test_x": jnp.asarray(x), "test_y": jnp.asarray(y)}
    return {"train_x": jnp.asarray(data.train_x), "train_y": jnp.asarray(data.train_y),
            "test_x": jnp.asarray(data.test_x[:TEST_SIZE]), "test_y": jnp.asarray(data.test_y[:TEST_SIZE])}


def _run_function(model: TrainableTransformer, task: str, teacher, steps: int, batch_size: int, probe_size: int):
    """(η, θ₀, batches, arrays) ↦ (losses (steps,), measurements) for one run; vmapped by `train`."""
    loss = _loss_fn(task)
    batch = _batcher(teacher, batch_size)
    output = model.parameterisation.output

    def run(lr, params0, batches, arrays):
        test_x, test_y = arrays["test_x"], arrays["test_y"]
        probe = test_x[:probe_size]
        tx = _optimizer(model, lr)

        def objective(params, x, y):
            return loss(output(model.apply(params, x), model.apply(params0, x)), y)

        def step(carry, t):
            params, state = carry
            x, y = batch(batches, t, arrays)
            value, grads = jax.value_and_grad(objective)(params, x, y)
            updates, state = tx.update(grads, state, params)
            return (optax.apply_updates(params, updates), state), value

        (params, _), losses = jax.lax.scan(step, (params0, tx.init(params0)), jnp.arange(steps))
        # the initial and the trained weights through one graph (stacked): half the code for XLA to compile
        both = jax.tree_util.tree_map(lambda a, b: jnp.stack([a, b]), params0, params)
        (f0, f), inside_both = jax.vmap(lambda p: model.apply(p, probe, internals=True))(both)
        inside0 = jax.tree_util.tree_map(lambda a: a[0], inside_both)
        inside = jax.tree_util.tree_map(lambda a: a[1], inside_both)
        test_f0, test_f = jax.vmap(lambda p: model.apply(p, test_x))(both)
        out_test = output(test_f, test_f0)
        measured = {"test_loss": loss(out_test, test_y),
                    "attention_variance": jnp.var(inside["scores"], axis=2, ddof=1).mean(),
                    "attention_variance_init": jnp.var(inside0["scores"], axis=2, ddof=1).mean(),
                    "qk_movement": 0.5 * sum(_relative_change(params[g], params0[g]) for g in ("query", "key")),
                    "stream_change": jnp.sqrt(jnp.mean((inside["stream"] - inside0["stream"]) ** 2)),
                    "output_change": jnp.sqrt(jnp.mean(output(f, f0) ** 2)),
                    "kernel": jnp.stack([_kernel(inside["stream"][:KERNEL_INPUTS], model.width),
                                         _kernel(inside0["stream"][:KERNEL_INPUTS], model.width)])}
        if task == "classification":
            measured["test_accuracy"] = jnp.mean(jnp.argmax(out_test, axis=-1) == test_y)
        return losses, measured

    return run


def _relative_change(theta, theta0):
    """‖θ − θ₀‖_F / ‖θ₀‖_F per (layer, head), averaged (the multiplier cancels: it is W's relative change too)."""
    axes = tuple(range(2, theta.ndim))
    return jnp.mean(jnp.sqrt(jnp.sum((theta - theta0) ** 2, axis=axes) / jnp.sum(theta0 ** 2, axis=axes)))


def _kernel(stream, width: int):
    return jnp.einsum("bin,bjn->bij", stream, stream) / width


_COMPILED: dict = {}


def _compiled(model, data, steps, batch_size, probe_size):
    """One jitted, vmapped run function per (model, task kind, teacher, steps, batch, probe) in a process; the
    data arrays are its arguments, so datasets of one shape share it."""
    teacher = data if isinstance(data, TeacherTask) else None
    key = (model, data.task, teacher, steps, batch_size, probe_size)
    fn = _COMPILED.get(key)
    if fn is None:
        if len(_COMPILED) > 32:
            _COMPILED.clear()
        run = _run_function(model, data.task, teacher, steps, batch_size, probe_size)
        fn = _COMPILED[key] = jax.jit(jax.vmap(run, in_axes=(0, 0, 0, None)))
    return fn


def train(model: TrainableTransformer, data, learning_rates, seeds=1, steps: int = 200, batch_size: int = 64,
          probe_size: int = 32, curve_points: int = 50, chunk: int | None = None, label: dict | None = None
          ) -> Training:
    """Train `model` on `data` (a Dataset or TeacherTask) for every η₀ in `learning_rates` (scaled by the model's
    parameterisation) and seed, `steps` steps of `batch_size`; all runs of one chunk (default: all) in one
    vectorised call. `label`: extra columns for every row (e.g. the sweep's coordinates)."""
    if not isinstance(model, TrainableTransformer):
        raise ProgramError(f"train: model must be a TrainableTransformer, got {type(model).__name__}")
    if not isinstance(data, (Dataset, TeacherTask)):
        raise ProgramError(f"train: data must be a limits.training Dataset or TeacherTask, got {type(data).__name__}")
    if data.token_dim != model.token_dim or data.outputs != model.outputs:
        raise ProgramError(f"train: the data has tokens of dimension {data.token_dim} and {data.outputs} outputs, "
                           f"the model {model.token_dim} and {model.outputs}")
    lrs = _positive_numbers(learning_rates, "learning_rates")
    seeds = _seeds(seeds)
    steps, batch_size = _positive_int(steps, "steps"), _positive_int(batch_size, "batch_size")
    probe_size, curve_points = _positive_int(probe_size, "probe_size"), _positive_int(curve_points, "curve_points")
    if probe_size < KERNEL_INPUTS:
        raise ProgramError(f"train: probe_size must be at least {KERNEL_INPUTS}, got {probe_size}")
    if curve_points > steps:
        raise ProgramError(f"train: curve_points ({curve_points}) cannot exceed steps ({steps})")
    runs = [(lr, seed) for seed in seeds for lr in lrs]
    if len(runs) > MAX_RUNS:
        raise ProgramError(f"train: {len(runs)} runs (at most {MAX_RUNS})")
    chunk = len(runs) if chunk is None else _positive_int(chunk, "chunk")
    fn = _compiled(model, data, steps, batch_size, probe_size)
    arrays = _arrays(data)
    if probe_size > arrays["test_x"].shape[0]:
        raise ProgramError(f"train: probe_size {probe_size} exceeds the {arrays['test_x'].shape[0]} test examples")
    start = time.perf_counter()
    losses, measured = [], []
    for begin in range(0, len(runs), chunk):
        part = runs[begin:begin + chunk]
        inits = {seed: model.init(seed) for seed in sorted({seed for _, seed in part})}
        params0 = {name: np.stack([inits[seed][name] for _, seed in part]) for name in model.shapes()}
        batches = _stack([_batches(data, seed, steps, batch_size) for _, seed in part])
        out_losses, out_measured = fn(jnp.asarray([model.learning_rate(lr) for lr, _ in part], jnp.float32),
                                      params0, batches, arrays)
        losses.append(np.asarray(out_losses, dtype=float))
        measured.append(jax.tree_util.tree_map(lambda a: np.asarray(a, dtype=float), out_measured))
    seconds = time.perf_counter() - start
    losses = np.concatenate(losses)
    measured = {k: np.concatenate([m[k] for m in measured]) for k in measured[0]}
    return _tables(model, data, runs, losses, measured, steps, curve_points, label or {}, seconds)


def _tables(model, data, runs, losses, measured, steps, curve_points, label, seconds) -> Training:
    edges = np.linspace(0, steps, curve_points + 1).round().astype(int)
    tail = max(1, steps // 10)
    rows, curves = [], []
    kernels = measured.pop("kernel")
    for r, (lr, seed) in enumerate(runs):
        finite = bool(np.all(np.isfinite(losses[r]))) and all(np.isfinite(v[r]) for v in measured.values())
        row = dict(label, **describe(model), data=data.name, lr=lr, seed=seed, steps=steps,
                   final_loss=float(losses[r, -tail:].mean()) if finite else math.inf,
                   test_loss=float(measured["test_loss"][r]) if finite else math.inf, diverged=not finite)
        for name in MEASUREMENTS + (("test_accuracy",) if "test_accuracy" in measured else ()):
            row[name] = float(measured[name][r]) if finite else None
        rows.append(row)
        for lo, hi in zip(edges[:-1], edges[1:]):
            value = float(losses[r, lo:hi].mean())
            curves.append(dict(label, lr=lr, seed=seed, step=int(hi), loss=value if math.isfinite(value) else math.inf))
    frame = pd.DataFrame(rows)
    for name in MEASUREMENTS + ("test_accuracy",):
        if name in frame:
            frame[name] = frame[name].astype("Float64")  # missing (diverged) is <NA>, not NaN
    return Training(frame, pd.DataFrame(curves), kernels, seconds)


def describe(model: TrainableTransformer) -> dict:
    """The model's coordinates as row columns."""
    return dict(N=model.head_dim, H=model.heads, L=model.depth, width=model.width,
                alpha_A=model.score_exponent, alpha_L=model.residual_exponent,
                parameterisation=model.parameterisation.name, params=model.parameter_count)


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ProgramError(f"train: {name} must be a positive integer, got {value!r}")
    return int(value)


def _positive_numbers(values, name: str) -> list[float]:
    values = np.atleast_1d(np.asarray(values, dtype=object))
    out = []
    for v in values.ravel():
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or v <= 0:
            raise ProgramError(f"train: {name} must be finite positive numbers, got {v!r}")
        out.append(float(v))
    if not out or len(set(out)) != len(out):
        raise ProgramError(f"train: {name} must be distinct and non-empty, got {list(values.ravel())!r}")
    return out


def coord_check(parameterisation, head_dims=(16, 32, 64, 128), heads: int = 2, depth: int = 2, data=None,
                learning_rate: float = 0.1, steps: int = 3, batch_size: int = 32, seeds=2,
                **model_options) -> pd.DataFrame:
    """A coordinate check in the style of `mup`: for each head dimension N (width n = N·H) and seed, the RMS size
    of the final residual stream x^L, of its change x^L(t) − x^L(0) and of the trained output after each of `steps`
    steps at one η₀ (a seed's batches are the same at every width) → one row per N × seed × step. In a
    parameterisation with a width limit the columns stay O(1) as N grows; in the standard one the changes grow."""
    from .data import digits
    from .model import trainable
    data = digits() if data is None else data
    if not isinstance(data, (Dataset, TeacherTask)):
        raise ProgramError(f"coord_check: data must be a Dataset or TeacherTask, got {type(data).__name__}")
    steps, batch_size = _positive_int(steps, "steps"), _positive_int(batch_size, "batch_size")
    lr = _positive_numbers([learning_rate], "learning_rate")[0]
    seeds = _seeds(seeds)
    loss = _loss_fn(data.task)
    arrays = _arrays(data)
    probe = arrays["test_x"][:batch_size]
    batch = _batcher(data if isinstance(data, TeacherTask) else None, batch_size)
    rows = []
    for N in _positive_ints(head_dims, "head_dims"):
        model = trainable(depth=depth, heads=heads, head_dim=N, token_dim=data.token_dim, outputs=data.outputs,
                          parameterisation=parameterisation, **model_options)
        output = model.parameterisation.output
        tx = _optimizer(model, model.learning_rate(lr))

        @jax.jit
        def step(params, state, params0, batches, t):
            x, y = batch(batches, t, arrays)
            grads = jax.grad(lambda p: loss(output(model.apply(p, x), model.apply(params0, x)), y))(params)
            updates, state = tx.update(grads, state, params)
            params = optax.apply_updates(params, updates)
            return params, state, model.apply(params, probe, internals=True)

        for seed in seeds:
            batches = _batches(data, seed, steps, batch_size)
            params0 = jax.tree_util.tree_map(jnp.asarray, model.init(seed))
            f0, inside0 = model.apply(params0, probe, internals=True)
            params, state = params0, tx.init(params0)
            for t in range(steps):
                params, state, (f, inside) = step(params, state, params0, batches, t)
                stream = inside["stream"]
                rows.append(dict(N=N, width=model.width, parameterisation=model.parameterisation.name, seed=seed,
                                 step=t + 1, stream=float(jnp.sqrt(jnp.mean(stream ** 2))),
                                 stream_change=float(jnp.sqrt(jnp.mean((stream - inside0["stream"]) ** 2))),
                                 output_change=float(jnp.sqrt(jnp.mean(output(f, f0) ** 2)))))
    return pd.DataFrame(rows)
