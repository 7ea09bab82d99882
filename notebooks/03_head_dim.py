# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3
#     name: python3
# ---

# %% [markdown]
# # 03 — A fixed head dimension: which limit? (SKI25 Fig. 3, with both limits)
#
# **Claim.** When each head has a fixed dimension N (here N = 64) while the width n grows, the scores are
# p = Qᵀ K / sqrt(N) with Q, K ∈ R^{N×s} — not Gaussian: variance-gamma marginals with excess kurtosis 6/N
# (README, *Attention regimes*). The correct n → ∞ limit keeps that exact finite-N score law (the
# *fixed-N limit*); the Gaussian-score limit of SKI25 is its N → ∞ approximation. So KL(finite n ‖ fixed-N limit)
# keeps falling with n, while KL(finite n ‖ Gaussian-score limit) levels off at KL(fixed-N limit ‖ Gaussian-score
# limit), a gap that shrinks as heads are added (H = 1, 4, 16).
#
# Set NETSOR_FULL=1 for the recorded run (widths 64, 256, 1024; the committed figure). The default, which the test
# suite runs, leaves out n = 256, which no assertion reads: every asserted number (n = 64 and 1024, 40,000 draws
# per side; the seeds depend on n and H only) is the recorded run's.

# %%
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

import netsor
from limits import attention_layer, kl, plot

FIGURES = Path(os.environ.get("NETSOR_FIGURES", "figures"))  # the tests write elsewhere
FULL = os.environ.get("NETSOR_FULL") == "1"
HEAD_DIM, WIDTHS, SIZE = 64, [64, 256, 1024] if FULL else [64, 1024], 40_000

# %% [markdown]
# ## The score law at N = 64: heavier tails than the Gaussian

# %%
fixed_layer = attention_layer(heads=1, head_dim=HEAD_DIM, inputs="paper")
scores = netsor.limit(fixed_layer.program).sample_scalars([fixed_layer.scores[0][0][0]], 400_000, seed=0)[:, 0]
excess = np.mean(scores ** 4) / np.mean(scores ** 2) ** 2 - 3
print(f"p11 at N = {HEAD_DIM}: variance {scores.var():.4f}, excess kurtosis {excess:.4f} (6/N = {6 / HEAD_DIM:.4f})")

# %% [markdown]
# ## KL against width, to both limits, for H = 1, 4, 16
#
# Both limits and the finite width are Gaussian mixtures (given scores, given Grams), so every KL here is the
# mixture estimator with its standard error. The finite-width networks are drawn exactly (fixed head dimensions
# as explicit N-row blocks, the rest from Gram matrices).

# %%
rows = []
for heads in (1, 4, 16):
    finite_layer = attention_layer(heads=heads, head_dim=HEAD_DIM, inputs="paper")
    gauss_layer = attention_layer(heads=heads, inputs="paper")
    y_fixed, y_gauss = finite_layer.outputs[:1], gauss_layer.outputs[:1]
    fixed = netsor.limit(finite_layer.program).conditional_moments(y_fixed, SIZE, seed=1)
    gauss = netsor.limit(gauss_layer.program).conditional_moments(y_gauss, SIZE, seed=2)
    gap = kl(fixed, gauss, "mixture")
    for n in WIDTHS:
        _, means, covs = netsor.simulate_with_moments(finite_layer.program, n, y_fixed, SIZE, seed=n + heads)
        for reference, limit in (("fixed-N limit", fixed), ("Gaussian-score limit", gauss)):
            est = kl((means, covs), limit, "mixture")
            rows.append(dict(heads=heads, width=n, reference=reference, kl=est.value, se=est.se,
                             gap=gap.value, gap_se=gap.se))
import pandas as pd

table = pd.DataFrame(rows)
print(table.to_string(index=False, float_format=lambda v: f"{v:.3g}"))

# %%
fig, axes = plt.subplots(1, 3, figsize=(12, 3.8), sharey=True)
for ax, (heads, group) in zip(axes, table.groupby("heads")):
    for reference, marker in (("fixed-N limit", "o-"), ("Gaussian-score limit", "s--")):
        g = group[group["reference"] == reference]
        ax.errorbar(g["width"], g["kl"].clip(lower=1e-8), yerr=g["se"], fmt=marker, capsize=3,
                    label=f"KL(n ‖ {reference})")
    ax.axhline(group["gap"].iloc[0], color="0.5", ls=":", label="KL(fixed-N ‖ Gaussian-score limit)")
    ax.set(xscale="log", yscale="log", xlabel="width n", title=f"N = {HEAD_DIM}, H = {heads}")
    ax.grid(True, which="both", alpha=0.3)
axes[0].set_ylabel("KL")
axes[0].legend(fontsize=7)
plot.save(fig, FIGURES / "03_head_dim")

# %% [markdown]
# ## Asserted
#
# * The N = 64 score has excess kurtosis 6/N (within Monte Carlo error).
# * Against the fixed-N limit, KL falls by more than 10× from n = 64 to n = 1024 for every H.
# * Against the Gaussian-score limit it levels off: at n = 1024 and H = 1 it is within a factor 3 of the gap
#   KL(fixed-N ‖ Gaussian-score), and clearly above the fixed-N curve.
# * The gap between the two limits shrinks as heads are added.

# %%
kurtosis_se = np.std((scores ** 2 / scores.var() - 1) ** 2) / np.sqrt(len(scores)) * 6
assert abs(excess - 6 / HEAD_DIM) < max(4 * kurtosis_se, 0.01), (excess, kurtosis_se)
for heads, group in table.groupby("heads"):
    fixed = group[group["reference"] == "fixed-N limit"].set_index("width")
    gauss = group[group["reference"] == "Gaussian-score limit"].set_index("width")
    assert fixed.loc[64, "kl"] > 10 * fixed.loc[1024, "kl"], (heads, fixed)
    assert gauss.loc[1024, "kl"] > fixed.loc[1024, "kl"], (heads, gauss, fixed)
one = table[(table["heads"] == 1) & (table["width"] == 1024)].set_index("reference")
gap = one["gap"].iloc[0]
assert gap / 3 < one.loc["Gaussian-score limit", "kl"] < 3 * gap, one
assert one.loc["Gaussian-score limit", "kl"] - one.loc["fixed-N limit", "kl"] > \
    4 * np.hypot(one.loc["Gaussian-score limit", "se"], one.loc["fixed-N limit", "se"])
gaps = table.groupby("heads")["gap"].first()
assert gaps.is_monotonic_decreasing and gaps[1] > 3 * table.groupby("heads")["gap_se"].first()[1], gaps
print("all claims hold")
