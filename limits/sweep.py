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
import inspect
import json
import math
import multiprocessing
import numbers
import os
import signal
import sys
import threading
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
from .long_sequence import MAX_SEQ_LEN, one_query_draws
from .stack import Transformer, transformer

# n_samples: the draws asked for; n_used: the draws or components the estimate used; note: the estimator's caveat
COLUMNS = ["width", "seed", "estimator", "kl", "se", "upper_bound", "n_samples", "n_used", "note", "seconds"]
PATH_COLUMNS = ["width", "seq_len"] + COLUMNS[1:]  # kl_vs_width along a sequence path
PATH_ESTIMATORS = ("coupled", "mixture")
BACKENDS = ("local", "dask")
MAX_WIDTH = netsor.MAX_WIDTH  # the engine's bound on widths (int64 kernels), checked before any task runs
MAX_SEEDS = 1 << 20  # a count of seeds per point; more is a typo (and a million task files), not a sweep
CONNECT_TIMEOUT = 5  # seconds to reach a scheduler: a wrong address fails fast instead of after dask's 30 s


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

    def problem(self, row) -> str | None:
        """What is wrong with a stored row for this task (None: it can be used)."""
        return _row_problem(row, self)


@dataclass(frozen=True)
class SequencePath:
    """A sequence length growing with the width: s(n) = factor · n^exponent, rounded up ("ceil") or down ("floor"),
    and at least 1. Named ones (`SequencePath.named`): "n^1/4", "n^1/2", "n" (ceil), "n/16" (floor); a fixed
    length s is SequencePath(exponent=0, factor=s)."""

    exponent: float
    factor: float = 1.0
    rounding: str = "ceil"

    NAMED = {"n^1/4": (0.25, 1.0, "ceil"), "n^1/2": (0.5, 1.0, "ceil"), "n": (1.0, 1.0, "ceil"),
             "n/16": (1.0, 1.0 / 16, "floor")}

    def __post_init__(self):
        for name, value in (("exponent", self.exponent), ("factor", self.factor)):
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise ProgramError(f"SequencePath: {name} must be a finite number, got {value!r}")
        if not 0 <= self.exponent <= 1:
            raise ProgramError(f"SequencePath: exponent must be in [0, 1] (s ≤ n), got {self.exponent!r}")
        if not self.factor > 0:
            raise ProgramError(f"SequencePath: factor must be positive, got {self.factor!r}")
        if self.rounding not in ("ceil", "floor"):
            raise ProgramError(f"SequencePath: rounding must be 'ceil' or 'floor', got {self.rounding!r}")

    @classmethod
    def named(cls, name: str) -> "SequencePath":
        if name not in cls.NAMED:
            raise ProgramError(f"seq_len must be a callable n → s or one of {', '.join(cls.NAMED)}, got {name!r}")
        return cls(*cls.NAMED[name])

    def __call__(self, width) -> int:
        value = self.factor * float(width) ** self.exponent
        nearest = round(value)
        if abs(value - nearest) <= 1e-9 * max(1.0, value):  # n^1/4 of 2^16 is 16.000000000000004: 16, not 17
            return max(1, int(nearest))
        return max(1, int(math.ceil(value) if self.rounding == "ceil" else math.floor(value)))

    @property
    def name(self) -> str:
        for name, spec in self.NAMED.items():
            if spec == (self.exponent, self.factor, self.rounding):
                return name
        if self.exponent == 0:
            return f"{self.factor:g}"
        power = "n" if self.exponent == 1 else f"n^{self.exponent:g}"
        scale = "" if self.factor == 1 else f"{self.factor:g}·"
        return f"{self.rounding}({scale}{power})"

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class OneQueryTask:
    """One point of `kl_vs_width` along a sequence path: KL(finite n ‖ limit) of y_1 (coordinate 0) of a single
    gaussian-token attention layer at s = seq_len tokens, drawn by `limits.long_sequence.one_query_draws`."""

    width: int
    seq_len: int
    seed: int
    size: int
    estimator: str
    heads: int
    score_map: str
    temperature: float
    options: tuple = ()

    @property
    def label(self) -> dict:
        return {"seq_len": self.seq_len}

    @property
    def key(self) -> str:
        return f"{self.estimator}-w{self.width}-L{self.seq_len}-s{self.seed}"

    def problem(self, row) -> str | None:
        return _row_problem(row, self)

    def run(self) -> dict:
        """Coupled: the triples of one seed (common random numbers across widths, SeedSequence(seed, (3,)));
        mixture: the finite side and the limit side from independent draws (spawn keys (1, n) and (2, s))."""
        start = time.perf_counter()
        ss = lambda *key: np.random.SeedSequence(self.seed, spawn_key=key)  # noqa: E731
        layer = dict(heads=self.heads, score_map=self.score_map, temperature=self.temperature)
        if self.estimator == "coupled":
            draws = one_query_draws(self.seq_len, self.width, self.size, ss(3), **layer)
            estimate = kl(draws, method="coupled", **dict(self.options))
        else:
            finite = one_query_draws(self.seq_len, self.width, self.size, ss(1, self.width), antithetic=False,
                                     **layer).finite_var
            limit = one_query_draws(self.seq_len, self.width, self.size, ss(2, self.seq_len), antithetic=False,
                                    **layer).limit_var
            estimate = kl(finite, limit, method="mixture", **dict(self.options))
        return dict(width=self.width, seq_len=self.seq_len, seed=self.seed, estimator=self.estimator,
                    kl=estimate.value, se=estimate.se, upper_bound=estimate.upper_bound, n_samples=self.size,
                    n_used=estimate.n_finite, note=estimate.note, seconds=time.perf_counter() - start)


_LAWS: dict = {}  # per process: compiling a program's limit is paid once per sweep, not once per task


def _law(program: netsor.Program) -> netsor.Law:
    law = _LAWS.get(id(program))
    if law is None or law.program is not program:
        _LAWS.clear()
        law = _LAWS[id(program)] = netsor.limit(program)
    return law


def run_task(task) -> dict | list:
    """Run one task: a KLTask draws what its estimator needs and estimates (one row of the tidy table); any other
    task of the runner (e.g. `limits.training`'s) runs itself and returns its rows."""
    if not isinstance(task, KLTask):
        return task.run()
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
        draws = netsor.simulate_coupled(task.program, task.width, variables, task.size, ss(3), antithetic=True)
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
        reference = (task.reference.sample(None, task.size, ss(2)) if task.reference is not None
                     else law.sample(variables, task.size, ss(2)))
        estimate = kl(finite, reference, method=task.estimator, **options)
    row = dict(task.label or {})
    row.update(width=task.width if task.width is not None else math.inf, seed=task.seed,
               estimator=task.estimator, kl=estimate.value, se=estimate.se, upper_bound=estimate.upper_bound,
               n_samples=task.size, n_used=estimate.n_finite, note=estimate.note,
               seconds=time.perf_counter() - start)
    return row


# ---- public sweeps
def kl_vs_width(layer_or_program, variables=None, widths=(16, 64, 256, 1024), size: int = 50_000, seeds=1,
                estimator: str = "mixture", backend: str = "local", client=None, out_dir=None,
                progress: bool | None = None, reference: GaussianLaw | None = None, seq_len=None,
                **estimator_options) -> pd.DataFrame:
    """KL(finite width n ‖ limit) for each width and seed → DataFrame (width, seed, estimator, kl, se,
    upper_bound, n_samples, seconds), sorted by width then seed.

    seq_len: None (the layer's own tokens), or a path s = s(n) — a `SequencePath`, one of its names ("n^1/4",
    "n^1/2", "n", "n/16") or a callable n → positive int ≤ n: then y_1 of the layer rebuilt at s(n) tokens is
    compared at every width by `limits.long_sequence` (exact, O(H s²) per draw), with a seq_len column. It needs an
    AttentionLayer with gaussian tokens, finitely many heads, head dimension n at "sqrt" scaling, no mask, kv_len,
    score_bias or value nonlinearity, untied W_Q, W_K and the output projection; estimator "coupled" or "mixture".

    layer_or_program: an AttentionLayer, a Network, a Transformer, or a Program (then `variables` is required; for
    the others the default is their first output). widths: distinct positive ints (numpy integers too). seeds: a
    count (0..count−1) or a list of distinct non-negative ints.
    backend "dask" sends tasks to `client` (a dask.distributed Client, a scheduler address, reached within
    CONNECT_TIMEOUT seconds, or None for a 2-worker LocalCluster; a script must then call this under
    `if __name__ == "__main__":`, as the workers are spawned processes).
    reference: a GaussianLaw over the same variables to compare with instead of the program's limit (e.g. an
    infinite-head limit, to show a wrong limit is rejected).
    """
    _execution(backend, client, out_dir, progress)
    if seq_len is not None:
        return _kl_along_path(layer_or_program, variables, widths, size, seeds, estimator, backend, client, out_dir,
                              progress, reference, seq_len, estimator_options)
    program, variables = _target(layer_or_program, variables, "kl_vs_width")
    widths = _positive_ints(widths, "widths", MAX_WIDTH)
    size, estimator, seeds = _size(size), _estimator(estimator), _seeds(seeds)
    if reference is not None and not isinstance(reference, GaussianLaw):
        raise ProgramError(f"kl_vs_width: reference must be a netsor GaussianLaw, got {type(reference).__name__}")
    if reference is not None and len(reference.variables) != len(variables):
        raise ProgramError(f"kl_vs_width: reference is over {len(reference.variables)} variables "
                           f"({', '.join(v.name for v in reference.variables)}), the comparison over "
                           f"{len(variables)} ({', '.join(v.name for v in variables)})")
    tasks = [KLTask(program, variables, w, s, size, estimator, _options(estimator_options), reference)
             for w in widths for s in seeds]
    # the store keys tasks by the program's content, never by how it prints (two programs can print alike)
    config = {"sweep": "kl_vs_width", "program": None if out_dir is None else netsor.fingerprint(program),
              "variables": [v.name for v in variables],
              "size": size, "estimator": estimator, "options": repr(sorted(estimator_options.items())),
              "reference": None if reference is None else repr((reference.mean.tolist(), reference.cov.tolist()))}
    return _run(tasks, config, backend, client, out_dir, progress, "kl_vs_width.csv")


# the builder's options a path sweep accepts, with the value each must have (the one-query sampler's layer)
_PATH_FIXED = {"inputs": "gaussian", "head_dim": None, "scaling": "sqrt", "mask": None, "kv_len": None,
               "score_bias": None, "value_nonlinearity": None, "tied_qk": False, "out_proj": True}


def _kl_along_path(layer, variables, widths, size, seeds, estimator, backend, client, out_dir, progress,
                   reference, path, estimator_options) -> pd.DataFrame:
    """kl_vs_width with seq_len = a path: one OneQueryTask per (width, seed) at s = path(width)."""
    where = "kl_vs_width"
    path = _sequence_path(path)
    if not isinstance(layer, AttentionLayer):
        raise ProgramError(f"{where}: seq_len (a path) needs an AttentionLayer, got {type(layer).__name__}")
    options = getattr(layer, "options", None)
    if not isinstance(options, dict):
        raise ProgramError(f"{where}: seq_len (a path) needs an AttentionLayer that records its options")
    for name, value in _PATH_FIXED.items():
        given = options.get(name, value)
        if not (given is value or (isinstance(value, str) and isinstance(given, str) and given == value)):
            raise ProgramError(f"{where}: seq_len (a path) needs a layer with {name}={value!r} (the one-query "
                               f"sampler's layer), got {name}={given!r}")
    if layer.infinite_heads:
        raise ProgramError(f"{where}: seq_len (a path) needs finitely many heads, got heads=inf")
    if variables is not None:
        raise ProgramError(f"{where}: seq_len (a path) compares y_1's coordinate 0 only; pass no variables")
    if reference is not None:
        raise ProgramError(f"{where}: seq_len (a path) compares with the layer's own limit; pass no reference")
    if estimator not in PATH_ESTIMATORS:
        raise ProgramError(f"{where}: seq_len (a path) needs estimator 'coupled' or 'mixture', got {estimator!r}")
    widths = _positive_ints(widths, "widths", MAX_WIDTH)
    size, seeds = _size(size), _seeds(seeds)
    lengths = {}
    for w in widths:
        s = path(w)
        if isinstance(s, (bool, np.bool_)) or not isinstance(s, numbers.Integral) or not 1 <= s <= min(w,
                                                                                                        MAX_SEQ_LEN):
            raise ProgramError(f"{where}: seq_len {_path_name(path)} gives s = {s!r} at width {w}; it must be an "
                               f"integer in 1..min(n, {MAX_SEQ_LEN})")
        lengths[w] = int(s)
    score_map = options.get("score_map")
    heads, temperature = int(layer.heads), float(options.get("temperature", 1.0))
    map_name = getattr(score_map, "name", "softmax" if score_map is None else score_map)
    tasks = [OneQueryTask(w, lengths[w], s, size, estimator, heads, map_name, temperature,
                          _options(estimator_options)) for w in widths for s in seeds]
    # what a task's row depends on besides (width, seq_len, seed): the path itself is in every task's key, as s
    config = {"sweep": "kl_vs_width/one-query", "heads": heads, "score_map": map_name, "temperature": temperature,
              "size": size, "estimator": estimator, "options": repr(sorted(estimator_options.items()))}
    return _run(tasks, config, backend, client, out_dir, progress, "kl_vs_width.csv", columns=PATH_COLUMNS)


def _sequence_path(path):
    if isinstance(path, str):
        return SequencePath.named(path)
    if not callable(path):
        raise ProgramError(f"kl_vs_width: seq_len must be None, a SequencePath, one of "
                           f"{', '.join(SequencePath.NAMED)} or a callable n → s, got {path!r}")
    return path


def _path_name(path) -> str:
    return getattr(path, "name", None) or getattr(path, "__name__", None) or repr(path)


def kl_vs_heads(heads=(1, 2, 4, 8, 16), width: int | None = None, outputs=(0,), size: int = 50_000, seeds=1,
                estimator: str = "mixture", backend: str = "local", client=None, out_dir=None,
                progress: bool | None = None, estimator_options: dict | None = None,
                **layer_options) -> pd.DataFrame:
    """For attention layers with H heads (`layer_options` go to `attention_layer`): with width None,
    KL(H-head limit ‖ infinite-head Gaussian limit); with a width n, KL(finite n with H heads ‖ its H-head limit).
    → DataFrame with a `heads` column first, then the columns of `kl_vs_width`."""
    if "heads" in layer_options:
        raise ProgramError("kl_vs_heads: pass the head counts as `heads`")
    _builder_options(attention_layer, layer_options, "kl_vs_heads")
    _execution(backend, client, out_dir, progress)
    heads = _positive_ints(heads, "heads")
    size, estimator, seeds = _size(size), _estimator(estimator), _seeds(seeds)
    outputs = _ints(outputs, "outputs")
    options = _options(estimator_options or {})
    if width is not None:
        if isinstance(width, bool) or not isinstance(width, numbers.Integral):
            raise ProgramError(f"width must be a positive integer or None, got {width!r}")
        width = _positive_ints(width, "width", MAX_WIDTH)[0]
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
        tasks += [KLTask(layer.program, variables, width, s, size, estimator, options, reference, {"heads": h})
                  for s in seeds]
    # the store keys the sweep by the content of one representative layer (a repr would truncate arrays)
    layer_key = None if out_dir is None else netsor.fingerprint(attention_layer(heads=1, **layer_options).program)
    config = {"sweep": "kl_vs_heads", "layer": layer_key,
              "outputs": outputs,
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
    _builder_options(transformer, dict(transformer_options, depth=depth), "kernel_vs_heads")
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
        try:
            x = np.asarray(x, dtype=float)
        except (TypeError, ValueError):
            raise ProgramError(f"predict: x must be positive numbers, got {x!r}") from None
        if not np.all(x > 0):
            raise ProgramError(f"predict: x must be positive numbers (a log–log fit), got {x!r}")
        return np.exp(self.intercept) * x ** (-self.exponent)

    def __str__(self) -> str:
        used = int(self.points["used"].sum())
        label = "KL" if self.value == "kl" else self.value
        return (f"{label} ∝ {self.against}^(−{self.exponent:.3f}), 95% CI [{self.ci[0]:.3f}, {self.ci[1]:.3f}] "
                f"({used} of {len(self.points)} points above 3 SE)")

    def _repr_html_(self) -> str:
        """Jupyter: the fit and the points it used."""
        from netsor.display import html_block
        return html_block(str(self), self.points.to_string(index=False))

    def _repr_latex_(self) -> str:
        label = r"\mathrm{KL}" if self.value == "kl" else rf"\mathrm{{{self.value}}}"
        return (rf"${label} \propto \mathrm{{{self.against}}}^{{-{self.exponent:.3f}}}$, 95% CI "
                rf"[{self.ci[0]:.3f}, {self.ci[1]:.3f}]")


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
    if np.any(ses < 0) or np.any(np.isinf(ses)):  # NaN is allowed: kde defines no SE (the seeds' spread serves)
        bad = (ses < 0) | np.isinf(ses)
        raise ProgramError(f"{se} is negative or infinite at {where(bad)}")
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
    _level(level, "fit_rate")
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


def local_slopes(df: pd.DataFrame, against: str = "width", min_snr: float = 3.0, value: str = "kl",
                 se: str = "se") -> pd.DataFrame:
    """The local decay exponent between neighbouring resolved points, −Δlog KL / Δlog x, with its SE by the delta
    method treating the points as independent (an overstatement where they share random numbers, e.g. coupled
    draws across widths): one row per pair of neighbours (columns `from`, `to`, slope, se)."""
    try:
        points = summarize(df, against, min_snr, value, se)
    except ProgramError as exc:
        raise ProgramError(f"local_slopes: {exc}") from None
    used = points[points["used"]].sort_values(against)
    x, y, s = (used[c].to_numpy(float) for c in (against, value, "se"))
    step = np.diff(np.log(x))
    return pd.DataFrame({"from": x[:-1], "to": x[1:], "slope": -np.diff(np.log(y)) / step,
                         "se": np.hypot(s[:-1] / y[:-1], s[1:] / y[1:]) / step})


# ---- the constant of KL = c/n²
@dataclass(frozen=True)
class ConstantFit:
    """The measured constant c of KL(finite n ‖ limit) = c/n² + o(n⁻²): n²·KL per width, pooled over the largest
    resolved widths; with a prediction (c, se), measured/predicted and z = (measured − predicted)/SE."""

    constant: float
    se: float
    ci: tuple[float, float]
    widths: tuple  # the widths pooled
    points: pd.DataFrame  # per width: kl, se, used (as `summarize`), n2kl = n²·kl and its n2kl_se
    level: float = 0.95
    predicted: tuple | None = None  # (c, se)
    ratio: float | None = None  # measured / predicted
    ratio_ci: tuple | None = None
    z: float | None = None

    def __str__(self) -> str:
        pct = f"{100 * self.level:g}%"
        used = int(self.points["used"].sum())
        text = (f"n²·KL → c = {self.constant:.4g} ± {self.se:.2g}, {pct} CI [{self.ci[0]:.4g}, {self.ci[1]:.4g}] "
                f"(pooled over n = {', '.join(f'{w:g}' for w in self.widths)}; {used} of {len(self.points)} widths "
                f"resolved)")
        if self.predicted is None:
            return text
        return (f"{text}\npredicted c = {self.predicted[0]:.4g} ± {self.predicted[1]:.2g}: measured/predicted = "
                f"{self.ratio:.3g}, {pct} CI [{self.ratio_ci[0]:.3g}, {self.ratio_ci[1]:.3g}], z = {self.z:+.2f}")

    def _repr_html_(self) -> str:
        """Jupyter: the measured constant (and the prediction) over the points per width."""
        from netsor.display import html_block
        return html_block(str(self).replace("\n", "; "), self.points.to_string(index=False))


def fit_constant(df: pd.DataFrame, prediction=None, pool: int = 2, min_snr: float = 3.0,
                 level: float = 0.95) -> ConstantFit:
    """The measured constant c = lim n²·KL(finite n ‖ limit) from a `kl_vs_width` table, with a `level` interval.

    Per width, n² times the mean KL over seeds and its SE (as `summarize`: the larger of the spread over seeds and
    the estimators' own SE); only widths whose mean exceeds `min_snr` SE enter (the others are upper bounds). The
    estimate pools the `pool` largest of them (all, if fewer), inverse-variance weighted, where the o(n⁻²) term
    matters least (n²·KL = c + d/n + …: with d/c ≈ −7, as for SKI25's tokens, n = 256 is still 3% under c).
    Its SE is Σ wᵢ SEᵢ, exact for perfectly correlated points (one seed's coupled draws, and the limit side of
    the mixture estimator, are shared across widths) and conservative otherwise, widened when the points scatter
    more than their SEs allow; the interval is normal. `prediction`, a FiniteWidthCorrection (its
    `kl_constant()`) or a pair (c, se), adds measured/predicted with its interval (log-normal) and
    z = (measured − predicted) / sqrt(SE² + se²).
    """
    _level(level, "fit_constant")
    if isinstance(pool, bool) or not isinstance(pool, numbers.Integral) or pool < 1:
        raise ProgramError(f"fit_constant: pool must be a positive integer, got {pool!r}")
    predicted = None if prediction is None else _prediction(prediction, "fit_constant")
    try:
        points = summarize(df, "width", min_snr)
    except ProgramError as exc:
        raise ProgramError(f"fit_constant: {exc}") from None
    points = points[np.isfinite(points["width"])].reset_index(drop=True)  # a limit row (width inf) has no n²
    points = points.assign(n2kl=points["kl"] * points["width"] ** 2, n2kl_se=points["se"] * points["width"] ** 2)
    used = points[points["used"]].sort_values("width").tail(int(pool))
    if used.empty:
        raise ProgramError(f"fit_constant: no width has kl above {min_snr:g} SE; nothing to measure (more samples "
                           f"per point, or the mixture/coupled estimator)")
    x, s = used["n2kl"].to_numpy(), used["n2kl_se"].to_numpy()
    w = s ** -2.0 / np.sum(s ** -2.0)
    constant = float(np.sum(w * x))
    se = float(np.sum(w * s))
    if len(used) > 1:
        se *= math.sqrt(max(np.sum(((x - constant) / s) ** 2) / (len(used) - 1), 1.0))  # widen, never narrow
    q = float(stats.norm.ppf(0.5 + level / 2))
    fit = dict(constant=constant, se=se, ci=(constant - q * se, constant + q * se),
               widths=tuple(int(v) for v in used["width"]), points=points, level=float(level))
    if predicted is not None:
        c, c_se = predicted
        ratio = constant / c
        spread = math.hypot(se / constant, c_se / c)
        fit.update(predicted=predicted, ratio=ratio, ratio_ci=(ratio * math.exp(-q * spread),
                                                               ratio * math.exp(q * spread)),
                   z=(constant - c) / math.hypot(se, c_se))  # se > 0: every used point has a positive SE
    return ConstantFit(**fit)


def _level(level, where: str) -> None:
    if isinstance(level, bool) or not isinstance(level, numbers.Real) or not 0 < level < 1:
        raise ProgramError(f"{where}: level must be a number in (0, 1), got {level!r}")


def _prediction(prediction, where: str) -> tuple[float, float]:
    """(c, se) of a predicted KL constant: a FiniteWidthCorrection's `kl_constant()`, or a pair of numbers."""
    if isinstance(prediction, netsor.FiniteWidthCorrection):
        try:
            c, se = prediction.kl_constant()
        except ProgramError as exc:
            raise ProgramError(f"{where}: prediction: {exc}") from None
    else:
        bad = ProgramError(f"{where}: prediction must be a FiniteWidthCorrection or a pair (c, se), got "
                           f"{prediction!r}")
        if isinstance(prediction, (str, bytes, dict)):
            raise bad
        try:
            c, se = prediction
        except (TypeError, ValueError):
            raise bad from None
        if any(isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real) for v in (c, se)):
            raise bad
    c, se = float(c), float(se)
    if not (math.isfinite(c) and c > 0 and math.isfinite(se) and se >= 0):
        raise ProgramError(f"{where}: prediction must be a positive c with a finite se ≥ 0, got ({c:g}, {se:g})")
    return c, se


# ---- execution
def _run(tasks, config, backend, client, out_dir, progress, csv_name, columns=COLUMNS, order=("width", "seed"),
         desc: str = "KL tasks") -> pd.DataFrame:
    """Run the tasks not already in out_dir's store (locally or on dask), saving each as it finishes → the table of
    their rows (a task gives one row or a list of rows), columns = the tasks' labels then `columns`, sorted by the
    labels then `order`. A task has a `key` (unique in the sweep) and `problem(row)` (why a stored row is unusable)."""
    store = _Store(out_dir, config) if out_dir is not None else None
    rows = {t.key: store.load(t) for t in tasks} if store else {}
    todo = [t for t in tasks if rows.get(t.key) is None]
    bar = _progress_bar(len(tasks), len(tasks) - len(todo), progress, desc)

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
    flat = [row for t in tasks for row in (rows[t.key] if isinstance(rows[t.key], list) else [rows[t.key]])]
    df = pd.DataFrame(flat)
    front = [c for c in df.columns if c not in columns]
    df = df[front + list(columns)].sort_values(front + list(order), kind="stable").reset_index(drop=True)
    if store:
        try:
            df.to_csv(store.path / csv_name, index=False)
        except OSError as e:
            raise ProgramError(f"out_dir {store.path}: cannot write {csv_name} ({_reason(e)})") from None
    return df


def _execution(backend, client, out_dir, progress) -> None:
    """Check how a sweep runs before any work (building layers, fingerprints) is done."""
    if backend not in BACKENDS:
        raise ProgramError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if client is not None and backend != "dask":
        raise ProgramError(f"client is for backend 'dask' (it would be ignored with backend {backend!r})")
    if out_dir is not None and (not isinstance(out_dir, (str, os.PathLike)) or not str(out_dir).strip()):
        raise ProgramError(f"out_dir must be a folder path or None, got {out_dir!r}")
    if progress is not None and not isinstance(progress, bool):
        raise ProgramError(f"progress must be True, False or None, got {progress!r}")


def _reason(error: BaseException) -> str:
    """One line for an error from a file system call or a library (their messages can span lines)."""
    text = getattr(error, "strerror", None) or str(error) or type(error).__name__
    return text.strip().splitlines()[0] if text.strip() else type(error).__name__


def _connect(address, where: str = "client"):
    """A dask Client for a scheduler address, or a one-line ProgramError naming `where` (after CONNECT_TIMEOUT s)."""
    try:
        from dask.distributed import Client
    except ImportError:
        raise ProgramError("backend 'dask' needs dask.distributed: pip install 'netsor[dask]'") from None
    if not isinstance(address, str) or not address.strip():
        raise ProgramError(f"{where} must be a scheduler address such as tcp://host:8786, got {address!r}")
    try:
        return Client(address, timeout=CONNECT_TIMEOUT)
    except (OSError, ValueError, TypeError) as e:
        raise ProgramError(f"{where} {address}: cannot connect ({_reason(e)})") from None


_MAIN_GUARD = ('its worker processes are spawned and re-run the main script, so a script must make the call under '
               '`if __name__ == "__main__":`')


def _local_cluster():
    """A 2-worker LocalCluster and its Client; a one-line ProgramError (with the main-guard hint) if it fails."""
    from dask.distributed import Client, LocalCluster
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        # we are a spawned process re-running the user's script at import: starting a cluster here cannot work
        raise ProgramError(f"backend 'dask' was called while a worker process was starting: {_MAIN_GUARD}")
    cluster = None
    # the workers start with SIGINT ignored (an ignored signal survives exec): a Ctrl-C reaches the whole foreground
    # process group, and the workers would print tracebacks; this process closes them when it is interrupted
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if main_thread else None
    quiet = previous is not None  # None: a handler set outside Python, which could not be put back
    if quiet:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
        return cluster, Client(cluster)
    except Exception as e:
        if cluster is not None:
            cluster.close()
        # a script without the guard is the usual cause (its workers die at start-up: "Nanny failed to start")
        script = getattr(sys.modules.get("__main__"), "__file__", None)
        hint = f"; if it was called from a script's top level: {_MAIN_GUARD}" if script else ""
        raise ProgramError(f"backend 'dask': the local cluster did not start ({type(e).__name__}: "
                           f"{_reason(e)}){hint}") from None
    finally:
        if quiet:
            signal.signal(signal.SIGINT, previous)


def _run_dask(tasks, client, finished) -> None:
    try:
        from dask.distributed import Client, as_completed
    except ImportError:
        raise ProgramError("backend 'dask' needs dask.distributed: pip install 'netsor[dask]'") from None
    own = []
    if client is None:
        cluster, client = _local_cluster()
        own += [client, cluster]
    elif isinstance(client, str):
        client = _connect(client)
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
            raise ProgramError(f"out_dir {self.path}: cannot create it ({_reason(e)})") from None
        meta = self.tasks / "sweep.json"
        if not meta.exists():
            self._write(meta, json.dumps(config, indent=1))

    def load(self, task) -> dict | list | None:
        """The stored row of a finished task, checked against the task; None (recompute, with a warning naming
        the file) for a missing, unreadable or mismatched file."""
        file = self.tasks / f"{task.key}.json"
        if not file.exists():
            return None
        try:
            row = json.loads(file.read_text())
            problem = task.problem(row)
        except (OSError, UnicodeDecodeError, ValueError) as e:
            problem = f"unreadable ({type(e).__name__}: {e})"
        if problem is None:
            return row
        warnings.warn(f"out_dir: {file} {problem}; recomputing that task", RuntimeWarning, stacklevel=3)
        return None

    def save(self, key: str, row: dict | list) -> None:
        self._write(self.tasks / f"{key}.json", json.dumps(row, default=float))

    def _write(self, path: Path, text: str) -> None:
        try:
            _write_atomic(path, text)
        except OSError as e:
            raise ProgramError(f"out_dir {self.path}: cannot write {path.name} ({_reason(e)})") from None


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
    used = row["n_used"]
    most = task.size * (2 if task.estimator == "coupled" else 1)  # coupled triples hold two finite draws (twins)
    if isinstance(used, bool) or not isinstance(used, int) or not 1 <= used <= most:
        return f"has n_used = {used!r}, not a count of at most {most}"
    if not isinstance(row["note"], str):
        return f"has note = {row['note']!r}, not a string"
    return None


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)  # a killed run leaves either the old file or the new one, never half of one
    except BaseException:
        tmp.unlink(missing_ok=True)  # a failed write (disk full, a folder in the way) leaves no half file either
        raise


def _progress_bar(total: int, done: int, progress, desc: str = "KL tasks"):
    if progress is False or (progress is None and total - done < 2):
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=done, desc=desc, unit="task")


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


def _builder_options(builder, options: dict, where: str) -> None:
    """Options passed through to a builder must be its parameters (a misspelt one is refused, not a TypeError)."""
    unknown = sorted(set(options) - set(inspect.signature(builder).parameters))
    if unknown:
        raise ProgramError(f"{where}: {builder.__name__} takes no option {', '.join(unknown)}")


def _ints(values, name: str) -> list[int]:
    """An integer or a sequence of them (numpy integers and arrays too) → Python ints; bools, floats, strings
    and other objects are a ProgramError naming `name`."""
    if isinstance(values, np.ndarray) and values.ndim == 0:
        values = values.item()  # np.array(16) is one integer
    if isinstance(values, numbers.Integral) and not isinstance(values, bool):
        return [int(values)]
    bad = ProgramError(f"{name} must be an integer or a sequence of integers, got {values!r}")
    if isinstance(values, (str, bytes, dict)) or (isinstance(values, np.ndarray) and values.ndim != 1):
        raise bad
    try:
        values = list(values)
    except TypeError:
        raise bad from None
    if any(isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral) for v in values):
        raise ProgramError(f"{name} must be integers, got {values!r}")
    return [int(v) for v in values]  # numpy integers → int: the store writes them as JSON


def _positive_ints(values, name: str, maximum: int | None = None) -> list[int]:
    """Distinct positive integers (at most `maximum`): a repeated width or head count would be a repeated row."""
    values = _ints(values, name)
    if not values or min(values) < 1:
        raise ProgramError(f"{name} must be positive integers, got {values!r}")
    if maximum is not None and max(values) > maximum:
        raise ProgramError(f"{name} must be at most 2^{maximum.bit_length() - 1}, got {max(values)}")
    if len(set(values)) != len(values):
        raise ProgramError(f"{name} repeat: {values!r}")
    return values


def _seeds(seeds) -> list[int]:
    if isinstance(seeds, numbers.Integral) and not isinstance(seeds, bool):
        if not 1 <= seeds <= MAX_SEEDS:
            raise ProgramError(f"seeds must be a count in 1..2^20 or a list of seeds, got {seeds!r}")
        return list(range(int(seeds)))
    try:
        seeds = _ints(seeds, "seeds")
    except ProgramError:
        raise ProgramError(f"seeds must be a positive count or a list of non-negative ints, got {seeds!r}") from None
    if not seeds or min(seeds) < 0:
        raise ProgramError(f"seeds must be a positive count or a list of non-negative ints, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ProgramError(f"seeds repeat: {seeds!r}")
    return seeds


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
    outputs = _ints(outputs, "outputs")
    if not outputs or any(not 0 <= o < count for o in outputs):
        raise ProgramError(f"outputs must be positions 0..{count - 1}, got {outputs!r}")
    if len(set(outputs)) != len(outputs):
        raise ProgramError(f"outputs repeat: {outputs!r}")
    return outputs


__all__ = ["kl_vs_width", "kl_vs_heads", "kernel_vs_heads", "fit_rate", "summarize", "RateFit", "fit_constant",
           "ConstantFit", "KLTask", "run_task", "SequencePath", "OneQueryTask"]
