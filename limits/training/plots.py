"""One figure per training sweep (tables from `limits.training.sweeps`); each returns its figure and, given `path`,
writes PNG and PDF through `limits.plot.save`. Titles say what was trained on what, with how many steps and seeds."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd

from netsor import ProgramError

from ..plot import save
from .sweeps import fit_measurement, kernel_errors, optimal_learning_rates


def _title(df: pd.DataFrame, what: str) -> str:
    return (f"{what} — {df['data'].iloc[0]}, {int(df['steps'].iloc[0])} steps, "
            f"{df['seed'].nunique()} seeds")


def _check(df, columns, where):
    if not isinstance(df, pd.DataFrame) or not set(columns).issubset(df.columns) or df.empty:
        raise ProgramError(f"{where}: expected a non-empty table with columns {sorted(columns)}")


def transfer(df: pd.DataFrame, vary: str = "N", path=None):
    """Final training loss (seed mean) vs η₀, one line per `vary` value, one panel per parameterisation × α_A;
    the fitted optimum η* marked."""
    import matplotlib.pyplot as plt
    _check(df, {vary, "lr", "final_loss", "parameterisation", "alpha_A", "data", "steps", "seed"}, "plots.transfer")
    panels = sorted(df.groupby(["parameterisation", "alpha_A"]).groups)
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    optima = optimal_learning_rates(df, by=(vary, "alpha_A", "parameterisation"))
    for ax, (p, a) in zip(axes.flat, panels):
        part = df[(df.parameterisation == p) & (df.alpha_A == a)]
        colours = plt.cm.viridis(np.linspace(0, 0.9, part[vary].nunique()))
        for colour, (v, group) in zip(colours, part.groupby(vary)):
            mean = group.groupby("lr")["final_loss"].mean()
            finite = mean[np.isfinite(mean)]
            ax.plot(finite.index, finite.values, "o-", color=colour, ms=3, label=f"{vary} = {v}")
            best = optima[(optima[vary] == v) & (optima.alpha_A == a) & (optima.parameterisation == p)]
            if len(best) and not best.at_edge.iloc[0]:
                ax.axvline(best.lr_opt.iloc[0], color=colour, lw=0.6, ls=":")
        ax.set_xscale("log")
        ax.set_xlabel("η₀")
        ax.set_title(f"{p}, α_A = {a:g}", fontsize=9)
    for row in axes:
        row[0].set_ylabel("final training loss")
    axes.flat[len(panels) - 1].legend(fontsize=7)
    fig.suptitle(_title(df, f"hyperparameter transfer in {vary}"), fontsize=10)
    fig.tight_layout()
    if path is not None:
        save(fig, path)
    return fig


def attention_variance(df: pd.DataFrame, lr: float, path=None):
    """Var over heads of the trained scores (and at initialisation, dashed) vs N at one η₀, per α_A, with the
    fitted slopes in the legend."""
    import matplotlib.pyplot as plt
    _check(df, {"N", "lr", "attention_variance", "alpha_A", "parameterisation"}, "plots.attention_variance")
    rows = df[np.isclose(df.lr, lr)]
    if rows.empty:
        raise ProgramError(f"plots.attention_variance: no runs at η₀ = {lr:g}")
    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    for a, group in rows.groupby("alpha_A"):
        for column, style in (("attention_variance", "o-"), ("attention_variance_init", "s--")):
            kept = group[~group.diverged.astype(bool)]
            mean = kept.groupby("N")[column].mean().astype(float)
            try:
                fit = fit_measurement(kept, column, against="N")
                label = f"α_A = {a:g}{' (init)' if column.endswith('init') else ''}: ∝ N^{-fit.exponent:.2f}"
            except ProgramError:
                label = f"α_A = {a:g}{' (init)' if column.endswith('init') else ''}"
            ax.plot(mean.index, mean.values, style, ms=4, label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("head dimension N")
    ax.set_ylabel("Var over heads of p^h_ij")
    ax.legend(fontsize=7)
    ax.set_title(_title(rows, f"attention variance over heads, η₀ = {lr:.3g}"), fontsize=9)
    if path is not None:
        save(fig, path)
    return fig


def heads(df: pd.DataFrame, path=None):
    """Left: loss curves vs step for each H. Right: kernel MSE against the largest H (after training and at
    initialisation) and the loss-curve gap, vs H."""
    import matplotlib.pyplot as plt
    _check(df, {"H", "curve", "kernel", "kernel_init", "steps"}, "plots.heads")
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.5, 3.8))
    colours = plt.cm.plasma(np.linspace(0, 0.85, df.H.nunique()))
    for colour, (h, group) in zip(colours, df.groupby("H")):
        curves = np.array([json.loads(c) for c in group.curve])
        steps = np.linspace(0, group.steps.iloc[0], curves.shape[1] + 1)[1:]
        left.plot(steps, curves.mean(axis=0), color=colour, label=f"H = {h}")
    left.set_xlabel("step")
    left.set_ylabel("training loss")
    left.legend(fontsize=7)
    for which, style in (("kernel", "o-"), ("kernel_init", "s--")):
        errors = kernel_errors(df, which)
        right.errorbar(errors.H, errors.mse, errors.se, fmt=style, ms=4, capsize=2,
                       label=f"kernel MSE vs largest H ({'init' if which.endswith('init') else 'trained'})")
    errors = kernel_errors(df)
    right.errorbar(errors.H, errors.loss_gap, errors.loss_gap_se, fmt="^:", ms=4, capsize=2, label="loss-curve gap")
    right.set_xscale("log", base=2)
    right.set_yscale("log")
    right.set_xlabel("heads H")
    right.legend(fontsize=7)
    fig.suptitle(_title(df, f"convergence in H at N = {int(df.N.iloc[0])}"), fontsize=10)
    fig.tight_layout()
    if path is not None:
        save(fig, path)
    return fig


def depth(df: pd.DataFrame, path=None):
    """Left: query/key movement vs L at each L's best η₀, per α_L. Right: best loss vs compute (FLOPs)."""
    import matplotlib.pyplot as plt
    _check(df, {"L", "alpha_L", "qk_movement", "final_loss", "flops", "lr"}, "plots.depth")
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.5, 3.8))
    for a, group in df.groupby("alpha_L"):
        best = best_runs(group)
        left.plot(best.L, best.qk_movement, "o-", ms=4, label=f"α_L = {a:g}")
        right.plot(best.flops, best.final_loss, "o-", ms=4, label=f"α_L = {a:g}")
    left.set_xscale("log", base=2)
    left.set_yscale("log")
    left.set_xlabel("depth L")
    left.set_ylabel("‖ΔW_Q,K‖/‖W_Q,K(0)‖ at the best η₀")
    right.set_xscale("log")
    right.set_xlabel("training FLOPs (6 · parameters · tokens)")
    right.set_ylabel("final loss at the best η₀")
    for ax in (left, right):
        ax.legend(fontsize=7)
    fig.suptitle(_title(df, "depth"), fontsize=10)
    fig.tight_layout()
    if path is not None:
        save(fig, path)
    return fig


def best_runs(df: pd.DataFrame, by: str = "L") -> pd.DataFrame:
    """Per value of `by`: the seed means of the runs at the η₀ with the lowest seed-mean final loss."""
    rows = []
    for v, group in df.groupby(by):
        means = group.groupby("lr")["final_loss"].mean()
        lr = means.idxmin()
        chosen = group[group.lr == lr]
        numeric = chosen.select_dtypes("number").astype(float).mean()
        rows.append(dict(numeric, **{by: v, "lr": lr}))
    return pd.DataFrame(rows)
