# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3
#     name: python3
# ---

# %% [markdown]
# # 08 — The KL curve, predicted
#
# SKI25's Fig. 1b measures KL(finite n ‖ limit) against the width n for one attention layer (s = 4 tokens, H = 2
# heads) and reports only that it decreases. Notebook 01 resolves the decay: an exponent ≈ 1.75 over 16…2048,
# steepening towards 2. Here the curve is *predicted* from the limit alone. At width n the law of an output is
# f_n = f_∞ + f₁/n + o(1/n), so KL(f_n ‖ f_∞) = c/n² + o(n⁻²) with c = ½∫f₁²/f_∞, and
# `netsor.finite_width_correction` computes f₁, hence c, without simulating any finite network (README, *The first
# finite-width correction*).
#
# **Claims.**
# (a) Gaussian tokens and SKI25's tokens x_i = clip(W^i h), coupled draws with antithetic twins at n = 2^4…2^20
#     (README, *Coupled draws*): every width is resolved, and the measured constant, n²·KL pooled over the widths
#     n ≥ 1024 (where the next-order term is under 1% of c), agrees with the predicted c within its 95% interval,
#     an interval tighter than ±15%: the curve lies on c/n².
# (b) The curve approaches the predicted c/n² from below.
# (c) What the next-order term does at small n: n²·KL = c + d/n fits the measured points with d/c ≈ −4 (Gaussian
#     tokens) and ≈ −7 (SKI25's tokens). Then the log–log slope is d log KL / d log n = −2 − (d/n)/(c + d/n),
#     shallower than −2 at small n because d < 0; over 16…2048 it averages about −1.75 for SKI25's tokens — the
#     exponent notebook 01 fits is the next-order term, not a different rate.
#
# Set NETSOR_FULL=1 for the recorded run (10^5 triples × 2 seeds at every n = 2^4, 2^5, …, 2^20; corrections
# from 2^17 draws): it writes its tables to `results/kl_predicted/` and the committed figure. The default, which
# the test suite runs, is a quick version of every measurement (2·10^4 triples at n = 2^4, 2^6, 2^8, 2^12, 2^16,
# 2^20, one seed; corrections from 2^15 draws); it then also checks the claims on the recorded tables.

# %%
import os
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

import netsor
from limits import attention_layer, fit_constant, fit_rate, kl_vs_width, plot

FIGURES = Path(os.environ.get("NETSOR_FIGURES", "figures"))  # the tests write elsewhere
FULL = os.environ.get("NETSOR_FULL") == "1"
RESULTS = Path("results/kl_predicted")  # the recorded full run
OUT = Path(os.environ.get("NETSOR_SWEEPS", FIGURES / "sweeps"))  # resumable sweeps of the full run
COUPLED = dict(widths=[2 ** k for k in range(4, 21)], size=100_000, seeds=2) if FULL else \
    dict(widths=[2 ** k for k in (4, 6, 8, 12, 16, 20)], size=20_000, seeds=1)
CORRECTION_SIZE = 1 << 17 if FULL else 1 << 15
TOKENS = {"gaussian": "Gaussian tokens, coupled", "paper": "SKI25 tokens clip(W^i h), coupled"}
SHORT = {"gaussian": "Gaussian", "paper": "SKI25 tokens"}
layers = {tokens: attention_layer(seq_len=4, heads=2, inputs=tokens) for tokens in TOKENS}

# %% [markdown]
# ## The prediction: c from the limit alone
#
# The correction expands the exact finite-width representation (Bartlett factors of the Grams, the Gram CLT of the
# clip front) to first order in 1/n, draw by draw over the limit's randomness (its scores); its SE is a jackknife
# over blocks of draws.

# %%
rows = []
for tokens, layer in layers.items():
    start = time.perf_counter()
    correction = netsor.finite_width_correction(layer.program, layer.outputs[:1], size=CORRECTION_SIZE, seed=0)
    c, se = correction.kl_constant()
    rows.append(dict(tokens=tokens, c=c, se=se, size=correction.size, exact=correction.exact,
                     seconds=time.perf_counter() - start))
    print(f"{TOKENS[tokens]}: {correction.describe()}  [{rows[-1]['seconds']:.1f} s]")
predictions = pd.DataFrame(rows)

# %% [markdown]
# ## The measurement: SKI25 Fig. 1b
#
# Coupled draws (finite and limit networks from common random numbers, each finite network with an antithetic
# twin, so that the pair's first-order gap cancels): the relative SE stays ≈ 2% from 2·10^4 triples at every width,
# KL ≈ 1e-11 at n = 2^20 included. Through SKI25's clip front the limit row 0 is φ(L_∞ z₀) from the finite draw's
# own z₀; the mixture estimator, unpaired, resolved only n ≲ 4096 from 10^6 networks.

# %%
tables = {}
for tokens in TOKENS:
    out_dir = OUT / f"08-{tokens}-twins" if FULL else None
    tables[tokens] = kl_vs_width(layers[tokens], estimator="coupled", out_dir=out_dir, progress=False, **COUPLED)
    print(TOKENS[tokens])
    print(tables[tokens][["width", "seed", "kl", "se", "upper_bound", "seconds"]].to_string(index=False))
if FULL:
    RESULTS.mkdir(parents=True, exist_ok=True)
    for tokens in TOKENS:
        tables[tokens].to_csv(RESULTS / f"{tokens}_coupled.csv", index=False)
    predictions.to_csv(RESULTS / "predicted.csv", index=False)


# %% [markdown]
# ## Measured against predicted, and the next-order term
#
# `fit_constant` averages seeds per width, keeps the widths resolved above 3 SE and pools n²·KL over the two
# largest by default, or over all widths n ≥ 1024 as here for claim (a) (its SE assumes nothing about the
# correlation between widths: one seed's coupled draws are shared by all of them). The next order: a weighted
# least-squares fit of n²·KL = c + d/n on every resolved width, whose local slope −2 − (d/n)/(c + d/n) is set
# against the measured one, and whose implied exponent over the same widths (the same weighted log–log fit
# applied to (c + d/n)/n²) against `fit_rate`'s. That fit describes the curve over 16…2048; it is not an
# extrapolation (for SKI25's tokens its c is low: the terms after d/n still matter at n = 16).

# %%
LARGE = 1024  # claim (a): |d|/n < 1% of c from here on (d/c ≈ −4)


def next_order(points):
    """(c, d) of the weighted least-squares fit n²·KL = c + d/n on the resolved widths."""
    used = points[points["used"]]
    d, c = np.polyfit(1 / used["width"], used["n2kl"], 1, w=1 / used["n2kl_se"])
    return c, d


def analyse(tables, predictions):
    """Per token kind: the measured constant against the prediction, the c + d/n fit, measured and model slopes."""
    out = {}
    for tokens, df in tables.items():
        row = predictions.set_index("tokens").loc[tokens]
        predicted = (float(row["c"]), float(row["se"]))
        fit = fit_constant(df, prediction=predicted)
        large = fit_constant(df[df["width"] >= LARGE], prediction=predicted, pool=len(df))  # every width ≥ 1024
        c, d = next_order(fit.points)
        used = fit.points[fit.points["used"]]
        n = used["width"].to_numpy()
        short = df[df["width"] <= 2048]  # notebook 01's range, 16…2048
        measured = fit_rate(short)
        in_range = used[used["width"] <= 2048]
        model = (c + d / in_range["width"]) / in_range["width"] ** 2
        implied = fit_rate(pd.DataFrame({"width": in_range["width"], "kl": model,
                                         "se": model * in_range["se"] / in_range["kl"]}))
        out[tokens] = dict(fit=fit, large=large, predicted=predicted, c=c, d=d, measured=measured, implied=implied,
                           widths=n, local=-np.diff(np.log(used["kl"])) / np.diff(np.log(n)),
                           local_model=2 + np.diff(np.log(c + d / n)) / -np.diff(np.log(n)))
        print(f"{TOKENS[tokens]}:")
        print("  " + str(fit).replace("\n", "\n  "))
        print("  " + str(large).replace("\n", "\n  "))
        print(f"  next order: n²·KL = c + d/n with c = {c:.3g}, d = {d:.3g} (d/c = {d / c:.2g}); exponent over "
              f"{in_range['width'].min():g}…{in_range['width'].max():g}: measured {measured.exponent:.3f} "
              f"[{measured.ci[0]:.3f}, {measured.ci[1]:.3f}], from c + d/n {implied.exponent:.3f}")
        print("  local slopes −d log KL/d log n between successive widths, measured:",
              np.round(out[tokens]["local"], 2))
        print("                                                         c + d/n:",
              np.round(out[tokens]["local_model"], 2))
    return out


results = analyse(tables, predictions)

# %%
fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.4))
for tokens, df in tables.items():
    plot.kl_vs_width(df, fit=False, ax=left, label=TOKENS[tokens], predicted=results[tokens]["predicted"])
left.set_title("SKI25 Fig. 1b, predicted: KL(finite n ‖ limit), s = 4, H = 2")
left.legend(fontsize=7)
for i, (tokens, r) in enumerate(results.items()):  # n²·KL in units of the predicted c: both curves → 1
    points, color = r["fit"].points, f"C{i}"
    good = points[points["used"]]
    c, se = r["predicted"]
    right.errorbar(good["width"], good["n2kl"] / c, yerr=good["n2kl_se"] / c, fmt="o", color=color, capsize=3,
                   label=f"{SHORT[tokens]}: predicted c = {c:.3g} ± {se:.2g}")
    right.axhspan(1 - 2 * se / c, 1 + 2 * se / c, color=color, alpha=0.2, lw=0)
    n = np.geomspace(good["width"].min(), good["width"].max(), 200)
    right.plot(n, (r["c"] + r["d"] / n) / c, "--", color=color, lw=1,
               label=f"{SHORT[tokens]}: fit c + d/n, d/c = {r['d'] / r['c']:.2g}")
right.axhline(1, color="0.3", lw=0.8)
right.set_xscale("log", base=2)
right.set_xlabel("width n")
right.set_ylabel("n² · KL(finite ‖ limit) / predicted c (band: ±2 SE of c)")
right.set_title("n²·KL approaches c from below (d < 0)")
right.legend(fontsize=7, loc="lower right")
right.grid(True, which="both", alpha=0.3)
plot.save(fig, FIGURES / "08_kl_predicted")


# %% [markdown]
# ## What the numbers say (asserted, so the test suite fails if they stop being true)
#
# * Both token kinds: every width is resolved (no upper bound); the predicted c lies inside the 95% interval of the
#   constant measured over n ≥ 1024, an interval tighter than ±15%; measured/predicted has a 95% interval
#   containing 1; n²·KL rises towards c and stays under 1.15 c.
# * The next order: d/c ≤ −3 for both (sizable: the d/n term is over 10% of c below n = 30); for SKI25's tokens the
#   fitted exponent over 16…2048 is 1.75 ± 0.1, and the c + d/n model implies the same exponent over the same
#   widths to 0.05 (the local slope −2 − (d/n)/(c + d/n), integrated); so do Gaussian tokens, at ≈ 1.9.

# %%
def check(results, tables, where: str) -> None:
    p = results["paper"]
    for tokens, r in results.items():
        assert not tables[tokens]["upper_bound"].any(), (where, tokens, "a width not resolved")
        fit = r["large"]
        c, _ = r["predicted"]
        assert len(fit.widths) >= 2 and min(fit.widths) >= LARGE and fit.ci[0] < c < fit.ci[1], (where, tokens, fit)
        assert fit.ci[1] - fit.ci[0] < 0.3 * fit.constant and fit.ratio_ci[0] < 1 < fit.ratio_ci[1], (where, fit)
        points = r["fit"].points[r["fit"].points["used"]]
        assert points["n2kl"].iloc[0] < points["n2kl"].iloc[-1] < 1.15 * c, (where, tokens, points)
    for tokens, r in results.items():
        assert r["d"] / r["c"] <= -3, (where, tokens, r["c"], r["d"])
        assert abs(r["implied"].exponent - r["measured"].exponent) < 0.05, (where, tokens, r["implied"],
                                                                             r["measured"])
    assert abs(p["measured"].exponent - 1.75) < 0.1, (where, p["measured"])
    print(f"{where}: the claims hold")


check(results, tables, "this run" + (" (full)" if FULL else " (quick)"))

# %% [markdown]
# ## The recorded full run
#
# The quick run above is what the test suite can afford; the tables of the full run are in `results/kl_predicted/`
# (run with NETSOR_FULL=1 to regenerate them: about 3 minutes on 2 shared cores), and the same claims are checked
# on them. What it printed (all 17 widths 2^4…2^20 resolved for both token kinds, 2 seeds × 10^5 triples):
#
# * Gaussian tokens: predicted c = 1.992 ± 0.023; measured over n = 2^10…2^20, 2.02 ± 0.022 (measured/predicted
#   1.01, 95% CI [0.983, 1.05], z = +0.88); at n = 2^19, 2^20 alone 2.028 ± 0.023.
# * SKI25's tokens: predicted c = 11.15 ± 0.11; measured over n = 2^10…2^20, 11.04 ± 0.22 (measured/predicted
#   0.99, 95% CI [0.948, 1.03], z = −0.47); at n = 2^19, 2^20 alone 11.08 ± 0.23. KL itself falls from 2.1·10⁻² at
#   n = 16 to 1.1·10⁻¹¹ at n = 2^20, and the local slope reaches 2.00 from n ≈ 2^14 on.
# * Exponent over 16…2048: 1.829 [1.766, 1.892] measured for SKI25's tokens, 1.836 from c + d/n (d/c = −7.5);
#   1.931 and 1.932 for Gaussian tokens (d/c = −5.2). (With the unpaired mixture estimator, which resolved only
#   n ≤ 4096, the earlier record read 1.776 and 1.893; the curve itself is the same within those SEs.)

# %%
if not FULL and (RESULTS / "predicted.csv").exists():
    recorded = {tokens: pd.read_csv(RESULTS / f"{tokens}_coupled.csv") for tokens in TOKENS}
    check(analyse(recorded, pd.read_csv(RESULTS / "predicted.csv")), recorded, "the recorded full run")
print("all claims hold")
