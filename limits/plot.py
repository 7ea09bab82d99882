"""Figures: KL against width (or heads) with error bars and the fitted slope; finite-width densities against the
limit's; score distributions. Each function draws on `ax` (or a new figure) and, given `path`, writes PNG and PDF.
"""
from __future__ import annotations

import numbers
from pathlib import Path

import numpy as np
import pandas as pd

import netsor
from netsor import ProgramError
from netsor.random import check_size

from .attention import AttentionLayer
from .sweep import RateFit, _positive_ints, _prediction, _target, fit_rate, summarize


def save(fig, path) -> list[Path]:
    """Write `fig` as path.png and path.pdf (any suffix of `path` is replaced); returns the two paths."""
    if not isinstance(path, (str, Path)) or not str(path):
        raise ProgramError(f"path must be a file path, got {path!r}")
    base = Path(path)
    base = base.with_suffix("") if base.suffix.lower() in (".png", ".pdf") else base
    written = [base.with_name(base.name + ".png"), base.with_name(base.name + ".pdf")]
    try:
        base.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(written[0], dpi=150, bbox_inches="tight")
        fig.savefig(written[1], bbox_inches="tight")
    except OSError as exc:
        raise ProgramError(f"path {str(path)!r}: cannot write the figure ({exc.strerror or exc})") from None
    return written


def _bins(bins) -> int:
    if isinstance(bins, bool) or not isinstance(bins, numbers.Integral) or bins < 2:
        raise ProgramError(f"bins must be an integer of at least 2, got {bins!r}")
    return int(bins)


def _axes(ax):
    if ax is not None:
        return ax.figure, ax
    import matplotlib.pyplot as plt
    return plt.subplots(figsize=(5.2, 3.8))


def kl_vs_width(df, fit: RateFit | bool | None = True, against: str = "width", ax=None, path=None, label=None,
                predicted=None, title=None):
    """Log–log KL (mean over seeds, error bar 1 SE) against `against`; points under 3 SE drawn as upper bounds
    (open triangles at mean + 2 SE); `fit` True fits `fit_rate` (skipped if too few points), or pass a RateFit.
    `predicted`, a FiniteWidthCorrection or a pair (c, se), draws KL = c/n² with a band of ±2 se across the
    plotted widths. title: what the figure shows (e.g. the layer's `summary`); the estimator and the draws per
    point are added from the table (an axes that has a title keeps it)."""
    if not isinstance(df, pd.DataFrame):
        raise ProgramError(f"plot.kl_vs_width: df must be the DataFrame of a sweep, got {type(df).__name__}")
    if df.empty:
        raise ProgramError("plot.kl_vs_width: the table is empty")
    if not (fit is None or isinstance(fit, (bool, RateFit))):
        raise ProgramError(f"plot.kl_vs_width: fit must be True, False, None or a RateFit, got {fit!r}")
    if predicted is not None:
        if against != "width":
            raise ProgramError(f"plot.kl_vs_width: predicted is a line c/n² in the width, not in {against!r}")
        predicted = _prediction(predicted, "plot.kl_vs_width")
    fig, ax = _axes(ax)
    estimator = ", ".join(sorted(set(df["estimator"]))) if "estimator" in df else ""
    label = label or estimator or "KL"
    if fit is True:
        try:
            fit = fit_rate(df, against=against)
        except ProgramError:
            fit = None
    points = fit.points if isinstance(fit, RateFit) else summarize(df, against)
    unknown = points["se"] <= 0  # no standard error (kde with one seed): a value, neither resolved nor a bound
    good = points[points["used"] | unknown]
    bound = points[~points["used"] & ~unknown]
    line = ax.errorbar(good[against], good["kl"], yerr=good["se"], fmt="o-", capsize=3, label=label)
    if len(bound):
        ax.plot(bound[against], np.maximum(bound["kl"], 0) + 2 * bound["se"], "v", mfc="none",
                color=line[0].get_color(), label=f"{label}: upper bound (< 3 SE)")
    if isinstance(fit, RateFit):
        x = np.geomspace(points[against].min(), points[against].max(), 50)
        ax.plot(x, fit.predict(x), "--", color="0.4",
                label=f"slope −{fit.exponent:.2f} [{fit.ci[0]:.2f}, {fit.ci[1]:.2f}]")
    if predicted is not None:
        c, se = predicted
        widths = points[against][np.isfinite(points[against])]
        if widths.empty:
            raise ProgramError("plot.kl_vs_width: predicted needs finite widths to draw c/n² across")
        n = np.geomspace(widths.min(), widths.max(), 50)
        shade = line[0].get_color()
        ax.plot(n, c / n ** 2, "-.", lw=1.2, color=shade, label=f"predicted c/n², c = {c:.3g} ± {se:.2g}")
        # a band reaching zero has no lower edge on log axes: it stops at a thousandth of c
        ax.fill_between(n, max(c - 2 * se, 1e-3 * c) / n ** 2, (c + 2 * se) / n ** 2, color=shade, alpha=0.15, lw=0)
    ax.set_xscale("log", base=2 if against == "width" else 10)
    ax.set_yscale("log")
    ax.set_xlabel({"width": "width n", "heads": "heads H"}.get(against, against))
    ax.set_ylabel("KL(finite ‖ limit)")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    if not ax.get_title():
        ax.set_title(_sweep_title(df, title), fontsize=9)
    if path is not None:
        save(fig, path)
    return fig, ax


def _sweep_title(df: pd.DataFrame, title=None) -> str:
    """What a KL figure shows: the caller's subject (default: KL(finite ‖ limit)), the estimator, draws per point."""
    parts = [title or "KL(finite ‖ limit)"]
    if "estimator" in df:
        parts.append(", ".join(sorted(set(map(str, df["estimator"])))) + " estimator")
    if "n_samples" in df:
        sizes = sorted(set(int(v) for v in df["n_samples"]))
        seeds = df.groupby([c for c in ("width", "heads", "seq_len") if c in df]).size().max() if len(df) else 1
        parts.append(f"{'/'.join(f'{v:,}' for v in sizes)} draws × {seeds} seed{'s' if seeds > 1 else ''} per point")
    return "\n".join([parts[0], ", ".join(parts[1:])]) if len(parts) > 1 else parts[0]


def _subject(layer_or_program) -> str:
    """A layer's one-line summary, or the program's name."""
    summary = getattr(layer_or_program, "summary", None)
    if isinstance(summary, str):
        return summary
    program = getattr(layer_or_program, "program", layer_or_program)
    return f"program {getattr(program, 'name', '?')!r}"


def densities(layer_or_program, widths=(16, 64, 256, 1024), variables=None, size: int = 50_000, seed=0, ax=None,
              path=None, bins: int = 120):
    """Histograms (as step densities) of one finite-width variable at each width, with the limit density
    (exact mixture `Law.pdf`) on top; titled with the layer, the variable and the draws per width."""
    program, variables = _target(layer_or_program, variables, "plot.densities")
    if len(variables) != 1:
        raise ProgramError("plot.densities: pass one variable")
    widths, size, bins = _positive_ints(widths, "widths"), check_size(size), _bins(bins)
    fig, ax = _axes(ax)
    law = netsor.limit(program)
    draws = {w: netsor.simulate(program, w, variables, size, np.random.SeedSequence(seed, spawn_key=(1, w)))[:, 0]
             for w in widths}
    reference = law.sample(variables, size, np.random.SeedSequence(seed, spawn_key=(2,)))[:, 0]
    lo, hi = np.percentile(reference, [0.1, 99.9])
    edges = np.linspace(lo, hi, bins + 1)
    for w, y in draws.items():
        ax.hist(y, bins=edges, density=True, histtype="step", label=f"n = {w}")
    grid = np.linspace(lo, hi, 400)
    ax.plot(grid, law.pdf(grid, variables), "k-", lw=1.5, label="limit")
    ax.set_xlabel(variables[0].name)
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    if not ax.get_title():
        ax.set_title(f"{_subject(layer_or_program)}\n{variables[0].name}: exact finite width, {size:,} draws per "
                     "width, against the limit density", fontsize=9)
    if path is not None:
        save(fig, path)
    return fig, ax


def scores(layers: dict, widths=(16, 256), size: int = 50_000, seed=0, ax=None, path=None, bins: int = 100):
    """Distribution of the first score p_11 for each labelled layer ({label: AttentionLayer}, e.g. 1/sqrt(n) and
    1/n scaling): finite widths as step histograms, the limit's law as a line (a point mass drawn as a bar)."""
    if not isinstance(layers, dict) or not layers:
        raise ProgramError(f"plot.scores: layers must be a non-empty dict {{label: AttentionLayer}}, got {layers!r}")
    for label, layer in layers.items():
        if not isinstance(layer, AttentionLayer) or layer.infinite_heads:
            raise ProgramError(f"plot.scores: layers[{label!r}] must be a finite-head AttentionLayer, got {layer!r}")
    widths, size, bins = _positive_ints(widths, "widths"), check_size(size), _bins(bins)
    fig, ax = _axes(ax)
    for i, (label, layer) in enumerate(layers.items()):
        score = layer.scores[0][0][0]
        law = netsor.limit(layer.program)
        limit = law.sample_scalars([score], size, np.random.SeedSequence(seed, spawn_key=(2, i)))[:, 0]
        finite = {w: layer.simulate(w, size, np.random.SeedSequence(seed, spawn_key=(1, i, w)), [score])[:, 0]
                  for w in widths}
        values = np.concatenate([limit] + list(finite.values()))
        lo, hi = np.percentile(values, [0.2, 99.8])
        lo, hi = (lo - 0.5, hi + 0.5) if hi - lo < 1e-9 else (lo, hi)
        edges = np.linspace(lo, hi, bins + 1)
        for w, y in finite.items():
            ax.hist(y, bins=edges, density=True, histtype="step", label=f"{label}, n = {w}")
        if np.ptp(limit) < 1e-12:
            ax.axvline(limit[0], color="k", lw=1.5, ls=":" if i else "-", label=f"{label}, limit (point mass)")
        else:
            density, _ = np.histogram(limit, bins=edges, density=True)
            ax.plot((edges[:-1] + edges[1:]) / 2, density, "k", lw=1.5, ls=":" if i else "-",
                    label=f"{label}, limit")
    ax.set_xlabel("score p₁₁")
    ax.set_ylabel("density")
    ax.legend(fontsize=7)
    if not ax.get_title():
        ax.set_title(f"score p₁₁ of {', '.join(map(str, layers))}: {size:,} draws per width and for the limit",
                     fontsize=9)
    if path is not None:
        save(fig, path)
    return fig, ax
