"""BCP24's training sweeps as tidy DataFrames (one row per model × learning rate × seed) on the sweep runner of
`limits.sweep` (local or Dask, resumable with `out_dir`, progress bar), and the fits that summarise them.

One task = one model (N, H, L, α_A, α_L, parameterisation), all of its learning rates and seeds in one vectorised
call (`train`). Rows carry the training-loss curve (`curve`, a JSON list of CURVE_POINTS averages) and, where asked,
the final stream's token kernels (`kernel`, `kernel_init`, JSON nested lists).

    hyperparameter_transfer  final loss vs η₀ for each N (or H, or L), α_A ∈ {1, ½}, with SP as contrast;
                             `optimal_learning_rates` + `fit_drift` give η*(N) ∝ N^drift (BCP24 Fig. 2a)
    (the same rows)          attention variance over heads vs N: `fit_rate(..., value="attention_variance")`
                             (BCP24 Fig. 2b: ≈ N⁻² at α_A = 1, ≈ flat at α_A = ½)
    heads_convergence        loss curves and kernels vs H at fixed N, against the largest H (`kernel_errors`)
    depth_scaling            α_L ∈ {1, ½}: query/key movement vs L (BCP24 Fig. 5a: it vanishes ∝ L^(−1/2) at α_L = ½
                             and stays O(1) at α_L = 1), loss vs compute (`flops` = 6 · parameters · tokens seen)
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from netsor import ProgramError

from .. import sweep as runner
from .data import Dataset, TeacherTask
from .model import TrainableTransformer, trainable
from .parameterisation import Parameterisation, sgd, standard
from .runs import KERNEL_INPUTS, MEASUREMENTS, describe, train

CURVE_POINTS = 25
COLUMNS = ["lr", "seed", "steps", "final_loss", "test_loss", "diverged", *MEASUREMENTS, "test_accuracy", "flops",
           "curve", "seconds"]
LEARNING_RATES = tuple(np.logspace(-2.5, 1.0, 8))


@dataclass(frozen=True)
class TrainTask:
    """All runs of one model: every learning rate × seed, `steps` of `batch_size`."""

    model: TrainableTransformer
    data: Dataset | TeacherTask
    learning_rates: tuple
    seeds: tuple
    steps: int
    batch_size: int
    keep_kernels: bool = False
    label: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        m = self.model
        return (f"N{m.head_dim}-H{m.heads}-L{m.depth}-n{m.width}-aA{m.score_exponent:g}-aL{m.residual_exponent:g}-"
                f"b{m.beta0:g}-{m.parameterisation.name}-g{m.parameterisation.gamma0:g}")

    def run(self) -> list:
        result = train(self.model, self.data, self.learning_rates, list(self.seeds), self.steps, self.batch_size,
                       curve_points=min(CURVE_POINTS, self.steps))
        tokens = self.steps * self.batch_size * self.data.seq_len
        rows = []
        for r, row in enumerate(result.frame.to_dict("records")):
            curve = result.curves[(result.curves.lr == row["lr"]) & (result.curves.seed == row["seed"])]
            row = {k: _native(v) for k, v in row.items()}
            row.update(self.label, flops=6.0 * self.model.parameter_count * tokens,
                       curve=json.dumps(curve["loss"].tolist()), seconds=result.seconds / len(result.frame))
            row.setdefault("test_accuracy", None)
            if self.keep_kernels:
                row["kernel"] = json.dumps(result.kernels[r, 0].tolist())
                row["kernel_init"] = json.dumps(result.kernels[r, 1].tolist())
            rows.append(row)
        return rows

    def problem(self, rows) -> str | None:
        """Why stored rows cannot stand for this task (None: they can)."""
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            return "does not hold a list of rows"
        if not all(isinstance(r.get("lr"), float) and type(r.get("seed")) is int for r in rows):
            return "has a row without a learning rate or seed"
        expected = sorted((float(lr), int(s)) for lr in self.learning_rates for s in self.seeds)
        got = sorted((r.get("lr"), r.get("seed")) for r in rows)
        if got != expected:
            return "holds other learning rates or seeds"
        for r in rows:
            missing = [c for c in COLUMNS + list(describe(self.model)) if c not in r]
            if missing:
                return f"lacks {', '.join(missing)}"
            if r["steps"] != self.steps or any(r[k] != v for k, v in describe(self.model).items()):
                return "is for another model or number of steps"
            for c in ("final_loss", "test_loss"):
                if isinstance(r[c], bool) or not isinstance(r[c], (int, float)) or math.isnan(r[c]):
                    return f"has {c} = {r[c]!r}, not a loss"
            if not isinstance(r["diverged"], bool) or r["diverged"] != (not math.isfinite(r["final_loss"])):
                return f"has diverged = {r['diverged']!r} against final_loss = {r['final_loss']!r}"
            for c in MEASUREMENTS:
                if r["diverged"] != (r[c] is None) or (r[c] is not None and not math.isfinite(r[c])):
                    return f"has {c} = {r[c]!r}"
            if self.keep_kernels and not all(isinstance(r.get(c), str) for c in ("kernel", "kernel_init")):
                return "lacks its kernels"
        return None


def _data_fingerprint(data) -> str:
    if isinstance(data, TeacherTask):
        return repr(data)
    digest = hashlib.sha256()
    for array in (data.train_x, data.train_y, data.test_x, data.test_y):
        digest.update(np.ascontiguousarray(array).tobytes())
    return f"{data.name}-{digest.hexdigest()[:16]}"


def run_sweep(models, data, learning_rates=LEARNING_RATES, seeds=2, steps: int = 200, batch_size: int = 64,
              keep_kernels: bool = False, labels=None, backend: str = "local", client=None, out_dir=None,
              progress: bool | None = None, name: str = "training") -> pd.DataFrame:
    """Train every model in `models` (TrainableTransformers) on `data` → one row per model × η₀ × seed."""
    runner._execution(backend, client, out_dir, progress)
    models = list(models)
    if not models or not all(isinstance(m, TrainableTransformer) for m in models):
        raise ProgramError(f"{name}: models must be a non-empty list of TrainableTransformers")
    if not isinstance(data, (Dataset, TeacherTask)):
        raise ProgramError(f"{name}: data must be a Dataset or TeacherTask, got {type(data).__name__}")
    seeds = tuple(runner._seeds(seeds))
    lrs = tuple(float(v) for v in np.atleast_1d(learning_rates))
    labels = labels or [{} for _ in models]
    tasks = [TrainTask(m, data, lrs, seeds, steps, batch_size, keep_kernels, dict(label))
             for m, label in zip(models, labels)]
    if len({t.key for t in tasks}) != len(tasks):
        raise ProgramError(f"{name}: two models of the sweep are the same")
    config = {"sweep": name, "data": _data_fingerprint(data), "learning_rates": list(lrs), "seeds": list(seeds),
              "steps": steps, "batch_size": batch_size, "keep_kernels": keep_kernels}
    columns = COLUMNS + (["kernel", "kernel_init"] if keep_kernels else [])
    front = ["N", "H", "L", "width", "alpha_A", "alpha_L", "parameterisation", "params", "data"]
    df = runner._run(tasks, config, backend, client, out_dir, progress, f"{name}.csv", columns=front + columns,
                     order=front + ["lr", "seed"], desc="training tasks")
    for c in MEASUREMENTS + ("test_accuracy",):
        df[c] = pd.array(df[c].to_numpy(dtype=object), dtype="Float64")
    return df


def _model(data, parameterisation, **options) -> TrainableTransformer:
    return trainable(token_dim=data.token_dim, outputs=data.outputs, parameterisation=parameterisation, **options)


def hyperparameter_transfer(data, vary: str = "N", values=(8, 16, 32, 64), score_exponents=(1.0, 0.5),
                            parameterisations=None, head_dim: int = 8, heads: int = 4, depth: int = 2,
                            learning_rates=LEARNING_RATES, **sweep_options) -> pd.DataFrame:
    """Final loss vs η₀ as N (vary='N'), H ('H') or L ('L') grows, for each α_A and parameterisation (default:
    BCP24's SGD and the standard parameterisation)."""
    keys = {"N": "head_dim", "H": "heads", "L": "depth"}
    if vary not in keys:
        raise ProgramError(f"hyperparameter_transfer: vary must be one of {', '.join(keys)}, got {vary!r}")
    parameterisations = parameterisations or (sgd(), standard())
    base = dict(head_dim=head_dim, heads=heads, depth=depth)
    models = []
    for p in parameterisations:
        if not isinstance(p, Parameterisation):
            raise ProgramError("hyperparameter_transfer: parameterisations must be Parameterisation objects")
        for a in score_exponents:
            for v in values:
                models.append(_model(data, p, score_exponent=a, **dict(base, **{keys[vary]: v})))
    return run_sweep(models, data, learning_rates, name=f"transfer_{vary}", **sweep_options)


def heads_convergence(data, heads=(1, 2, 4, 8, 16), head_dim: int = 4, depth: int = 2, learning_rate: float = 0.3,
                      score_exponent: float = 1.0, parameterisation=None, **sweep_options) -> pd.DataFrame:
    """Loss curves and final token kernels at fixed N as H grows (kernels kept), at one η₀."""
    p = parameterisation or sgd()
    models = [_model(data, p, head_dim=head_dim, heads=h, depth=depth, score_exponent=score_exponent)
              for h in heads]
    return run_sweep(models, data, (learning_rate,), keep_kernels=True, name="heads", **sweep_options)


def depth_scaling(data, depths=(1, 2, 4, 8), residual_exponents=(1.0, 0.5), head_dim: int = 8, heads: int = 4,
                  learning_rates=LEARNING_RATES, parameterisation=None, **sweep_options) -> pd.DataFrame:
    """α_L ∈ {1, ½} as L grows: query/key movement, loss, compute."""
    p = parameterisation or sgd()
    models = [_model(data, p, head_dim=head_dim, heads=heads, depth=L, residual_exponent=a)
              for a in residual_exponents for L in depths]
    return run_sweep(models, data, learning_rates, name="depth", **sweep_options)


# ---- summaries
def optimal_learning_rates(df: pd.DataFrame, by=("N", "alpha_A", "parameterisation"), loss: str = "final_loss"
                           ) -> pd.DataFrame:
    """Per group: η* minimising the seed-mean loss (parabola in log η₀ through the grid minimum and its
    neighbours), `log_se` its uncertainty in log η₀ (the larger of the seeds' spread of their own η*/√S and the
    grid's resolution step/√12), `at_edge` when the minimum is at the end of the grid (a bound, not an optimum)."""
    by = list(by)
    needed = set(by) | {"lr", "seed", loss}
    if not isinstance(df, pd.DataFrame) or not needed.issubset(df.columns):
        raise ProgramError(f"optimal_learning_rates: expected a DataFrame with columns {sorted(needed)}")
    rows = []
    for key, group in df.groupby(by):
        table = group.pivot_table(index="seed", columns="lr", values=loss, aggfunc="mean")
        lrs = table.columns.to_numpy(float)
        if len(lrs) < 3:
            raise ProgramError("optimal_learning_rates: needs at least 3 learning rates per group")
        log_lr = np.log(lrs)
        step = float(np.mean(np.diff(log_lr)))
        best, edge, best_loss = _vertex(log_lr, table.to_numpy(float).mean(axis=0))
        per_seed = [_vertex(log_lr, values)[0] for values in table.to_numpy(float)]
        seeds = len(per_seed)
        spread = float(np.std(per_seed, ddof=1) / math.sqrt(seeds)) if seeds > 1 else 0.0
        log_se = max(spread, step / math.sqrt(12))
        rows.append(dict(zip(by, key if isinstance(key, tuple) else (key,)), lr_opt=math.exp(best),
                         lr_opt_se=math.exp(best) * log_se, log_se=log_se, at_edge=edge, best_loss=best_loss,
                         seeds=seeds))
    return pd.DataFrame(rows)


def _vertex(log_lr: np.ndarray, losses: np.ndarray) -> tuple[float, bool, float]:
    """(log η*, at the grid's edge, loss there) from a parabola through the grid minimum and its neighbours."""
    values = np.where(np.isfinite(losses), losses, np.inf)
    k = int(np.argmin(values))
    if k == 0 or k == len(values) - 1 or not np.all(np.isfinite(values[k - 1:k + 2])):
        return float(log_lr[k]), k in (0, len(values) - 1), float(values[k])
    x, y = log_lr[k - 1:k + 2], values[k - 1:k + 2]
    a, b, _ = np.polyfit(x, y, 2)
    vertex = -b / (2 * a) if a > 0 else x[1]
    return float(np.clip(vertex, x[0], x[2])), False, float(values[k])


def fit_drift(optima: pd.DataFrame, against: str = "N"):
    """η* ∝ against^drift by weighted least squares on log–log points (edge optima excluded) → a `RateFit` whose
    `exponent` is −drift (drift ≈ 0: the optimum transfers)."""
    used = optima[~optima["at_edge"]]
    if len(used) < 2:
        raise ProgramError("fit_drift: fewer than 2 optima inside the learning-rate grid; widen the grid")
    return runner.fit_rate(used, against=against, value="lr_opt", se="lr_opt_se", min_snr=1.0)


def fit_measurement(df: pd.DataFrame, value: str, against: str = "N"):
    """`value` ∝ against^(−exponent) over non-diverged rows, seeds averaged (their spread is the SE)."""
    rows = df[~df["diverged"].astype(bool)].copy()
    rows[value] = rows[value].astype(float)
    rows["_se"] = 0.0
    return runner.fit_rate(rows, against=against, value=value, se="_se", min_snr=1.0)


def kernel_errors(df: pd.DataFrame, which: str = "kernel") -> pd.DataFrame:
    """Per H below the largest: mse = mean over seeds of ‖K_H − K̄_ref‖²/entries − tr Var(K̄_ref)/entries, with K̄_ref
    the seed mean of the largest H's kernels (the H → ∞ stand-in) and its own noise tr Var(K̄_ref) subtracted (the
    seeds of different H are independent), so mse estimates E‖K_H − K_ref‖² without the reference's floor; its SE
    over seeds. loss_gap: the loss curve's mean |ℓ_H(t) − ℓ̄_ref(t)| likewise (no floor subtracted)."""
    if which not in ("kernel", "kernel_init") or which not in df:
        raise ProgramError(f"kernel_errors: the table has no {which!r} column (run heads_convergence)")
    rows_of = df[~df["diverged"].astype(bool)]
    kernels = {h: np.array([json.loads(k) for k in group[which]]) for h, group in rows_of.groupby("H")}
    curves = {h: np.array([json.loads(c) for c in group["curve"]]) for h, group in rows_of.groupby("H")}
    top = max(kernels)
    if len(kernels[top]) < 2:
        raise ProgramError("kernel_errors: the largest H needs at least 2 seeds (its own noise is subtracted)")
    ref, ref_curve = kernels[top].mean(axis=0), curves[top].mean(axis=0)
    floor = float(kernels[top].var(axis=0, ddof=1).mean() / len(kernels[top]))
    rows = []
    for h in sorted(kernels):
        if h == top:
            continue
        err = ((kernels[h] - ref) ** 2).mean(axis=(1, 2, 3)) - floor
        gap = np.abs(curves[h] - ref_curve).mean(axis=1)
        count = len(err)
        rows.append(dict(H=h, mse=err.mean(), se=err.std(ddof=1) / math.sqrt(count) if count > 1 else 0.0,
                         floor=floor, loss_gap=gap.mean(),
                         loss_gap_se=gap.std(ddof=1) / math.sqrt(count) if count > 1 else 0.0, seeds=count,
                         diverged=int((df["H"] == h).sum() - count)))
    return pd.DataFrame(rows)


def loss_curves(df: pd.DataFrame) -> pd.DataFrame:
    """The rows' training-loss curves as a long table: one row per run × curve point (step counted from 1)."""
    out = []
    for row in df.to_dict("records"):
        curve = json.loads(row["curve"])
        steps = np.linspace(0, row["steps"], len(curve) + 1).round().astype(int)[1:]
        keep = {k: v for k, v in row.items() if k not in ("curve", "kernel", "kernel_init")}
        out += [dict(keep, step=int(s), loss=v) for s, v in zip(steps, curve)]
    return pd.DataFrame(out)


def _native(value):
    """A row value as plain Python (JSON keeps bool, int and float apart; numpy scalars it would turn to floats)."""
    if value is pd.NA:
        return None
    return value.item() if isinstance(value, np.generic) else value


__all__ = ["TrainTask", "run_sweep", "hyperparameter_transfer", "heads_convergence", "depth_scaling",
           "optimal_learning_rates", "fit_drift", "fit_measurement", "kernel_errors", "loss_curves", "KERNEL_INPUTS"]
