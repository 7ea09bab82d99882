"""Sweeps: KL(finite ‖ limit) against width or number of heads, as a tidy DataFrame (one row per point × seed).

Each (point, seed) is one task — a pure function of its description, so local and Dask runs give the same rows
for the same seeds. Random streams: the finite side of seed s at width n uses SeedSequence(s, spawn_key=(1, n)),
the limit side SeedSequence(s, spawn_key=(2,)) (shared by all widths of that seed), coupled draws
SeedSequence(s, spawn_key=(3,)) (common random numbers across widths too).
With `out_dir`, every finished task is written at once (one JSON file, atomically); a rerun loads them and
computes only what is missing, so an interrupted sweep loses nothing that had finished.
"""
from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

import netsor
from netsor import GaussianLaw, ProgramError

from .attention import AttentionLayer, attention_layer
from .builders import Network
from .divergence import METHODS, kl
from .stack import Transformer, transformer

COLUMNS = ["width", "seed", "estimator", "kl", "se", "upper_bound", "n_samples", "seconds"]
BACKENDS = ("local", "dask")


@dataclass(frozen=True)
class KLTask:
    """One point of a sweep: KL(finite ‖ reference) for `seed`.

    finite side: the program at `width` (None: the program's own limit law). reference: None for the program's
    limit law, or a GaussianLaw (e.g. the infinite-head limit) over the same variables.
    """

    program: netsor.Program
    variables: tuple
    width: int | None
    seed: int
    size: int
    estimator: str
    options: tuple = ()
    reference: GaussianLaw | None = None
    label: dict | None = None  # extra columns for the row (e.g. heads)

    @property
    def key(self) -> str:
        extra = "".join(f"-{k}{v}" for k, v in sorted((self.label or {}).items()))
        return f"{self.estimator}{extra}-w{self.width or 'inf'}-s{self.seed}"


_LAWS: dict = {}  # per process: compiling a program's limit is paid once per sweep, not once per task


def _law(program: netsor.Program) -> netsor.Law:
    law = _LAWS.get(id(program))
    if law is None or law.program is not program:
        _LAWS.clear()
        law = _LAWS[id(program)] = netsor.limit(program)
    return law


def run_task(task: KLTask) -> dict:
    """Draw what `task.estimator` needs and estimate; returns one row of the tidy table."""
    start = time.perf_counter()
    ss = lambda *key: np.random.SeedSequence(task.seed, spawn_key=key)  # noqa: E731
    law = _law(task.program)
    variables = task.variables
    options = dict(task.options)
    finite_seed = ss(1, task.width or 0)
    if task.estimator == "coupled":
        if task.width is None or task.reference is not None:
            raise ProgramError("coupled draws pair a finite-width network with its own limit; "
                               "use estimator 'mixture' here")
        draws = netsor.simulate_coupled(task.program, task.width, variables, task.size, ss(3))
        estimate = kl(draws, method="coupled", **options)
    elif task.estimator == "mixture":
        if task.width is None:
            finite = law.conditional_moments(variables, task.size, finite_seed)
        else:
            # exact Gram draws where the program reduces to them, else the lazy O(n) interpreter (deep stacks)
            finite = netsor.simulate_with_moments(task.program, task.width, variables, task.size, finite_seed,
                                                  method="auto")[1:]
        reference = task.reference or law.conditional_moments(variables, task.size, ss(2))
        estimate = kl(finite, reference, method="mixture", **options)
    else:
        if task.width is None:
            finite = law.sample(variables, task.size, finite_seed)
        else:
            finite = netsor.simulate(task.program, task.width, variables, task.size, finite_seed)
        reference = (task.reference.sample(task.size, ss(2)) if task.reference is not None
                     else law.sample(variables, task.size, ss(2)))
        estimate = kl(finite, reference, method=task.estimator, **options)
    row = dict(task.label or {})
    row.update(width=task.width if task.width is not None else math.inf, seed=task.seed,
               estimator=task.estimator, kl=estimate.value, se=estimate.se, upper_bound=estimate.upper_bound,
               n_samples=task.size, seconds=time.perf_counter() - start)
    return row


# ---- public sweeps
def kl_vs_width(layer_or_program, variables=None, widths=(16, 64, 256, 1024), size: int = 50_000, seeds=1,
                estimator: str = "mixture", backend: str = "local", client=None, out_dir=None,
                progress: bool | None = None, reference: GaussianLaw | None = None,
                **estimator_options) -> pd.DataFrame:
    """KL(finite width n ‖ limit) for each width and seed → DataFrame (width, seed, estimator, kl, se,
    upper_bound, n_samples, seconds), sorted by width then seed.

    layer_or_program: an AttentionLayer, a Network, a Transformer, or a Program (then `variables` is required; for
    the others the default is their first output). seeds: a count (0..count−1) or a list of non-negative ints.
    backend "dask" sends tasks to `client` (a dask.distributed Client, a scheduler address, or None for a 2-worker
    LocalCluster).
    reference: a GaussianLaw over the same variables to compare with instead of the program's limit (e.g. an
    infinite-head limit, to show a wrong limit is rejected).
    """
    program, variables = _target(layer_or_program, variables, "kl_vs_width")
    widths = _positive_ints(widths, "widths")
    if reference is not None and not isinstance(reference, GaussianLaw):
        raise ProgramError(f"kl_vs_width: reference must be a netsor GaussianLaw, got {type(reference).__name__}")
    tasks = [KLTask(program, variables, w, s, _size(size), _estimator(estimator), _options(estimator_options),
                    reference) for w in widths for s in _seeds(seeds)]
    # the store keys tasks by the program's content, never by how it prints (two programs can print alike)
    config = {"sweep": "kl_vs_width", "program": None if out_dir is None else netsor.fingerprint(program),
              "variables": [v.name for v in variables],
              "size": size, "estimator": estimator, "options": repr(sorted(estimator_options.items())),
              "reference": None if reference is None else repr((reference.mean.tolist(), reference.cov.tolist()))}
    return _run(tasks, config, backend, client, out_dir, progress, "kl_vs_width.csv")


def kl_vs_heads(heads=(1, 2, 4, 8, 16), width: int | None = None, outputs=(0,), size: int = 50_000, seeds=1,
                estimator: str = "mixture", backend: str = "local", client=None, out_dir=None,
                progress: bool | None = None, estimator_options: dict | None = None,
                **layer_options) -> pd.DataFrame:
    """For attention layers with H heads (`layer_options` go to `attention_layer`): with width None,
    KL(H-head limit ‖ infinite-head Gaussian limit); with a width n, KL(finite n with H heads ‖ its H-head limit).
    → DataFrame with a `heads` column first, then the columns of `kl_vs_width`."""
    if "heads" in layer_options:
        raise ProgramError("kl_vs_heads: pass the head counts as `heads`")
    heads = _positive_ints(heads, "heads")
    estimator = _estimator(estimator)
    options = _options(estimator_options or {})
    if width is not None:
        width = _positive_ints([width], "width")[0]
    reference = None
    if width is None:
        if estimator == "coupled":
            raise ProgramError("kl_vs_heads: 'coupled' pairs a finite width with its limit; give a width or "
                               "use 'mixture'")
        infinite = attention_layer(heads=math.inf, **layer_options)
        positions = _positions(outputs, len(infinite.outputs))
        gaussian = infinite.law()
        reference = GaussianLaw([infinite.outputs[i] for i in positions], gaussian.mean[positions],
                                gaussian.cov[np.ix_(positions, positions)], description=gaussian.description)
    tasks = []
    for h in heads:
        layer = attention_layer(heads=h, **layer_options)
        positions = _positions(outputs, len(layer.outputs))
        variables = tuple(layer.outputs[i] for i in positions)
        tasks += [KLTask(layer.program, variables, width, s, _size(size), estimator, options, reference,
                         {"heads": h}) for s in _seeds(seeds)]
    # the store keys the sweep by the content of one representative layer (a repr would truncate arrays)
    layer_key = None if out_dir is None else netsor.fingerprint(attention_layer(heads=1, **layer_options).program)
    config = {"sweep": "kl_vs_heads", "layer": layer_key,
              "outputs": list(outputs),
              "width": width, "size": size, "estimator": estimator, "options": repr(options)}
    return _run(tasks, config, backend, client, out_dir, progress, "kl_vs_heads.csv")


def kernel_vs_heads(heads=(1, 2, 4, 8, 16, 32, 64), depth: int = 4, size: int = 20_000, seeds=1,
                    recursion_samples: int = 1 << 21, **transformer_options) -> pd.DataFrame:
    """BCP24 at initialisation: the residual-stream kernel K_H (s×s, after the last block) of the H-head
    infinite-width limit against the H → ∞ kernel recursion K_∞, for each head count and seed.

    Columns: heads, seed, depth, mse = E‖K_H − K_∞‖²_F / s², mse_se, variance = E‖K_H − E K_H‖²_F / s², bias =
    ‖E K_H − K_∞‖_F / s, bias_se, seconds. Both mse and bias should fall like 1/H; fit with
    `fit_rate(df, against="heads", value="mse", se="mse_se")`. `transformer_options` go to `limits.transformer`.
    """
    heads = _positive_ints(heads, "heads")
    size = _size(size)
    if "heads" in transformer_options:
        raise ProgramError("kernel_vs_heads: pass the head counts as `heads`")
    model = transformer(depth=depth, heads=1, **transformer_options)
    rows = []
    for seed in _seeds(seeds):
        recursion = model.kernel_recursion(samples=recursion_samples, seed=np.random.SeedSequence(seed,
                                                                                                   spawn_key=(4,)))
        target, target_se = recursion.kernels[-1], recursion.se[-1]
        s = model.seq_len
        for h in heads:
            start = time.perf_counter()
            draws = model.nested_kernels(size, np.random.SeedSequence(seed, spawn_key=(5, h)), heads=h)
            squared = ((draws - target) ** 2).sum(axis=(1, 2)) / s ** 2
            mean = draws.mean(axis=0)
            noise = draws.var(axis=0, ddof=1) / size + target_se ** 2  # per entry: Var of mean − K_∞
            rows.append(dict(heads=h, seed=seed, depth=model.depth, mse=squared.mean(),
                             mse_se=squared.std(ddof=1) / math.sqrt(size),
                             variance=draws.var(axis=0, ddof=1).sum() / s ** 2,
                             bias=float(np.linalg.norm(mean - target) / s), bias_se=float(np.sqrt(noise.sum()) / s),
                             seconds=time.perf_counter() - start))
    return pd.DataFrame(rows)


# ---- the decay exponent
@dataclass(frozen=True)
class RateFit:
    """KL (or `value`) ≈ C · x^(−exponent), fitted by weighted least squares on log–log points above 3 SE."""

    exponent: float
    se: float
    ci: tuple[float, float]
    intercept: float  # log C
    points: pd.DataFrame  # per x: the mean of `value`, its se, used
    against: str
    value: str = "kl"

    def predict(self, x) -> np.ndarray:
        return np.exp(self.intercept) * np.asarray(x, dtype=float) ** (-self.exponent)

    def __str__(self) -> str:
        used = int(self.points["used"].sum())
        label = "KL" if self.value == "kl" else self.value
        return (f"{label} ∝ {self.against}^(−{self.exponent:.3f}), 95% CI [{self.ci[0]:.3f}, {self.ci[1]:.3f}] "
                f"({used} of {len(self.points)} points above 3 SE)")


def summarize(df: pd.DataFrame, against: str = "width", min_snr: float = 3.0, value: str = "kl",
              se: str = "se") -> pd.DataFrame:
    """Per value of `against`: the mean of `value` over seeds, its SE (the larger of the spread over seeds and the
    estimators' own SE, column `se`), and `used` = mean above `min_snr` SE (otherwise the point is a bound)."""
    needed = {against, value, se}
    if not isinstance(df, pd.DataFrame) or not needed.issubset(df.columns):
        raise ProgramError(f"expected a DataFrame with columns {sorted(needed)}")
    if isinstance(min_snr, bool) or not isinstance(min_snr, numbers.Real) or not 0 < min_snr < math.inf:
        raise ProgramError(f"min_snr must be a positive number, got {min_snr!r}")
    if len(df) == 0:
        raise ProgramError("the table has no rows")
    try:
        xs, values, ses = (df[c].to_numpy(float) for c in (against, value, se))
    except (TypeError, ValueError):
        raise ProgramError(f"columns {against}, {value} and {se} must be numeric") from None
    where = lambda bad: ", ".join(f"{against} = {x:g}" for x in xs[bad][:5])  # noqa: E731
    if np.any(~(xs > 0)):
        raise ProgramError(f"{against} must be positive (log–log fit), got rows at {where(~(xs > 0))}")
    if np.any(~np.isfinite(values)):
        raise ProgramError(f"{value} is not a finite number at {where(~np.isfinite(values))}: not a measurement")
    if np.any(ses < 0):
        raise ProgramError(f"{se} is negative at {where(ses < 0)}")
    points = []
    for x, group in df.groupby(against):
        count = len(group)
        own = np.nan_to_num(group[se].to_numpy(float), nan=0.0)
        spread = group[value].std(ddof=1) / math.sqrt(count) if count > 1 else 0.0
        point_se = max(spread, math.sqrt(np.mean(own ** 2) / count))
        mean = group[value].mean()
        # used: enters the fit (above min_snr SE, at a finite x; the limit row x = inf is a value, not a rate point)
        points.append({against: float(x), value: mean, "se": point_se,
                       "used": bool(point_se > 0 and mean > min_snr * point_se and math.isfinite(x))})
    return pd.DataFrame(points)


def fit_rate(df: pd.DataFrame, against: str = "width", min_snr: float = 3.0, level: float = 0.95,
             value: str = "kl", se: str = "se") -> RateFit:
    """Decay exponent of KL (or of another positive column `value` with standard errors `se`) in `against` (width
    or heads) with a `level` confidence interval.

    Seeds are averaged per point; a point's SE is the larger of the spread over seeds and the estimators' own SE;
    only points whose mean exceeds `min_snr` SE enter the fit (the others are bounds, not values); `points.used`
    says which did. The interval is t-based on the weighted residuals when there are more than two points, normal
    on the known SEs otherwise. A non-finite value, a non-positive `against` or a level outside (0, 1) is a
    ProgramError, never a NaN exponent.
    """
    if isinstance(level, bool) or not isinstance(level, numbers.Real) or not 0 < level < 1:
        raise ProgramError(f"fit_rate: level must be a number in (0, 1), got {level!r}")
    try:
        points = summarize(df, against, min_snr, value, se)
    except ProgramError as exc:
        raise ProgramError(f"fit_rate: {exc}") from None
    used = points[points["used"]]
    if len(used) < 2:
        raise ProgramError(f"fit_rate: only {len(used)} point(s) have {value} above {min_snr} SE; nothing to fit "
                           "(more samples per point, or the mixture/coupled estimator)")
    x = np.log(used[against].to_numpy())
    y = np.log(used[value].to_numpy())
    w = (used[value].to_numpy() / used["se"].to_numpy()) ** 2  # 1 / Var(log KL) by the delta method
    xm = np.sum(w * x) / np.sum(w)
    slope = np.sum(w * (x - xm) * (y - np.sum(w * y) / np.sum(w))) / np.sum(w * (x - xm) ** 2)
    intercept = np.sum(w * (y - slope * x)) / np.sum(w)
    var = 1.0 / np.sum(w * (x - xm) ** 2)
    dof = len(used) - 2
    if dof > 0:
        chi2 = np.sum(w * (y - intercept - slope * x) ** 2) / dof
        var *= max(chi2, 1.0)  # widen, never narrow, for scatter beyond the SEs
        q = stats.t.ppf(0.5 + level / 2, dof)
    else:
        q = stats.norm.ppf(0.5 + level / 2)
    slope_se = math.sqrt(var)
    return RateFit(-slope, slope_se, (-slope - q * slope_se, -slope + q * slope_se), intercept, points, against, value)


# ---- execution
def _run(tasks, config, backend, client, out_dir, progress, csv_name) -> pd.DataFrame:
    if backend not in BACKENDS:
        raise ProgramError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    store = _Store(out_dir, config) if out_dir is not None else None
    rows = {t.key: store.load(t) for t in tasks} if store else {}
    todo = [t for t in tasks if rows.get(t.key) is None]
    bar = _progress_bar(len(tasks), len(tasks) - len(todo), progress)

    def finished(task, row):
        rows[task.key] = row
        if store:
            store.save(task.key, row)
        if bar is not None:
            bar.update(1)

    try:
        if backend == "dask":
            _run_dask(todo, client, finished)
        else:
            for task in todo:
                finished(task, run_task(task))
    finally:
        if bar is not None:
            bar.close()
    df = pd.DataFrame([rows[t.key] for t in tasks])
    front = [c for c in df.columns if c not in COLUMNS]
    df = df[front + COLUMNS].sort_values(front + ["width", "seed"], kind="stable").reset_index(drop=True)
    if store:
        df.to_csv(store.path / csv_name, index=False)
    return df


def _run_dask(tasks, client, finished) -> None:
    try:
        from dask.distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise ProgramError("backend 'dask' needs dask.distributed: pip install 'netsor[dask]'") from None
    own = []
    if client is None:
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
        own += [cluster]
        client = Client(cluster)
        own.insert(0, client)
    elif isinstance(client, str):
        client = Client(client)
        own.append(client)
    elif not isinstance(client, Client):
        raise ProgramError(f"client must be a dask.distributed Client, an address or None, got {client!r}")
    try:
        futures = {client.submit(run_task, t, pure=False): t for t in tasks}
        for future in as_completed(futures):
            finished(futures[future], future.result())
    finally:
        for resource in own:
            resource.close()


class _Store:
    """out_dir/tasks-<fingerprint>/: sweep.json (what the sweep is) and one <key>.json per finished task.
    The fingerprint covers everything but the widths/heads and seeds, so a sweep can be extended, and sweeps of
    different configurations share an out_dir without mixing."""

    def __init__(self, out_dir, config: dict):
        self.path = Path(out_dir)
        fingerprint = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]
        self.tasks = self.path / f"tasks-{fingerprint}"
        try:
            self.tasks.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ProgramError(f"out_dir {self.path}: cannot create it ({e.strerror})") from None
        meta = self.tasks / "sweep.json"
        if not meta.exists():
            _write_atomic(meta, json.dumps(config, indent=1))

    def load(self, task: KLTask) -> dict | None:
        """The stored row of a finished task, checked against the task; None (recompute, with a warning naming
        the file) for a missing, unreadable or mismatched file."""
        file = self.tasks / f"{task.key}.json"
        if not file.exists():
            return None
        try:
            row = json.loads(file.read_text())
            problem = _row_problem(row, task)
        except (OSError, UnicodeDecodeError, ValueError) as e:
            problem = f"unreadable ({type(e).__name__}: {e})"
        if problem is None:
            return row
        warnings.warn(f"out_dir: {file} {problem}; recomputing that task", RuntimeWarning, stacklevel=3)
        return None

    def save(self, key: str, row: dict) -> None:
        _write_atomic(self.tasks / f"{key}.json", json.dumps(row, default=float))


def _row_problem(row, task: KLTask) -> str | None:
    """What is wrong with a stored row for `task`, or None: every column present with the task's own width, seed,
    estimator, size and labels, and finite numbers where a measurement must be."""
    if not isinstance(row, dict):
        return f"holds a {type(row).__name__}, not a row"
    missing = [c for c in COLUMNS + sorted(task.label or {}) if c not in row]
    if missing:
        return f"lacks {', '.join(missing)}"
    expected = dict(task.label or {}, width=task.width if task.width is not None else math.inf, seed=task.seed,
                    estimator=task.estimator, n_samples=task.size)
    for column, value in expected.items():
        if row[column] != value or type(row[column]) is bool:
            return f"is for {column} = {row[column]!r}, not {value!r}"
    for column in ("kl", "se", "seconds"):
        value = row[column]
        # se is NaN for the estimators that define none (kde, fftkde); every other number must be finite
        allowed_nan = column == "se" and isinstance(value, float) and math.isnan(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) or allowed_nan):
            return f"has {column} = {value!r}, not a finite number"
    if row["se"] < 0 or row["seconds"] < 0:
        return "has a negative se or seconds"
    if not isinstance(row["upper_bound"], bool):
        return f"has upper_bound = {row['upper_bound']!r}, not true or false"
    return None


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)  # a killed run leaves either the old file or the new one, never half of one


def _progress_bar(total: int, done: int, progress):
    if progress is False or (progress is None and total - done < 2):
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=done, desc="KL tasks", unit="task")


# ---- argument checks
def _target(layer_or_program, variables, where: str):
    if isinstance(layer_or_program, AttentionLayer):
        if layer_or_program.infinite_heads:
            raise ProgramError(f"{where}: a layer with infinitely many heads has no finite width; use kl_vs_heads")
        program, default = layer_or_program.program, layer_or_program.outputs[:1]
    elif isinstance(layer_or_program, (Network, Transformer)):
        program, default = layer_or_program.program, layer_or_program.outputs[:1]
    elif isinstance(layer_or_program, netsor.Program):
        program, default = layer_or_program, None
    else:
        raise ProgramError(f"{where}: expected an AttentionLayer, a Network, a Transformer or a netsor Program, "
                           f"got {type(layer_or_program).__name__}")
    if variables is None:
        if default is None:
            raise ProgramError(f"{where}: name the variables to compare (a Program has no default output)")
        variables = default
    return program, tuple(program.resolve(variables, where))


def _positive_ints(values, name: str) -> list[int]:
    values = [values] if isinstance(values, numbers.Integral) else list(values)
    if not values or any(isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1 for v in values):
        raise ProgramError(f"{name} must be positive integers, got {values!r}")
    return [int(v) for v in values]


def _seeds(seeds) -> list[int]:
    if isinstance(seeds, numbers.Integral) and not isinstance(seeds, bool):
        if seeds < 1:
            raise ProgramError(f"seeds must be a positive count or a list of seeds, got {seeds!r}")
        return list(range(int(seeds)))
    seeds = list(seeds)
    if not seeds or any(isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 0 for s in seeds):
        raise ProgramError(f"seeds must be a positive count or a list of non-negative ints, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ProgramError(f"seeds repeat: {seeds!r}")
    return [int(s) for s in seeds]


def _size(size) -> int:
    if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 2:
        raise ProgramError(f"size must be an integer ≥ 2, got {size!r}")
    return int(size)


def _estimator(estimator) -> str:
    if estimator not in METHODS:
        raise ProgramError(f"unknown estimator {estimator!r}; choose from {', '.join(METHODS)}")
    return estimator


def _options(options: dict) -> tuple:
    return tuple(sorted(options.items()))


def _positions(outputs, count: int) -> list[int]:
    outputs = [outputs] if isinstance(outputs, numbers.Integral) else list(outputs)
    if not outputs or any(isinstance(o, bool) or not isinstance(o, numbers.Integral) or not 0 <= o < count
                          for o in outputs):
        raise ProgramError(f"outputs must be positions 0..{count - 1}, got {outputs!r}")
    return [int(o) for o in outputs]


__all__ = ["kl_vs_width", "kl_vs_heads", "kernel_vs_heads", "fit_rate", "summarize", "RateFit", "KLTask", "run_task"]
