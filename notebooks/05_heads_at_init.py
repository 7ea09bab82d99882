# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3
#     name: python3
# ---

# %% [markdown]
# # 05 — Attention variables across heads at initialisation (BCP24 Fig. 3b–c, Fig. 2b at init)
#
# **Claim.** In BCP24's parameterisation each head has N key/query dimensions and scores
# A_h = N^{−a} q_hᵀ k_h. As the width (and the number of heads H) grows at fixed N, the distribution of A_h over
# heads is the exact finite-N score law: variance-gamma, with excess kurtosis 6/N — at N = 1 the product of two
# Gaussians, density K₀(|A|/σ²)/(πσ²) — approaching a Gaussian as N grows, with variance ∝ N^{1−2a}: constant
# for a = 1/2, decaying like 1/N for a = 1 (μP).

# %%
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from scipy import special, stats

import netsor
from limits import attention_layer, plot

FIGURES = Path(os.environ.get("NETSOR_FIGURES", "figures"))  # the tests write elsewhere
HEAD_DIMS = [1, 4, 16, 64]
SIZE = 200_000


def score_draws(head_dim, scaling, size=SIZE, seed=0):
    """A_h = p^h_12 over (infinitely many) heads: the limit law of one head's score at fixed N."""
    layer = attention_layer(seq_len=2, heads=1, head_dim=head_dim, scaling=scaling, inputs="gaussian")
    score = layer.scores[0][0][1]
    return layer, score, netsor.limit(layer.program).sample_scalars([score], size, seed=seed)[:, 0]


draws = {(N, a): score_draws(N, scaling)[2] for N in HEAD_DIMS for a, scaling in ((0.5, "sqrt"), (1, "linear"))}

# %% [markdown]
# ## The law of A_h across heads: N = 1, 4, 16 against the variance-gamma law

# %%
fig, ax = plt.subplots(figsize=(5.6, 4))
grid = np.linspace(-5, 5, 801)
for N in (1, 4, 16):
    a = draws[(N, 0.5)]
    ax.hist(a, bins=np.linspace(-5, 5, 161), density=True, histtype="step", label=f"N = {N}")
ax.plot(grid[grid != 0], special.k0(np.abs(grid[grid != 0])) / np.pi, "k:", lw=1.2, label="K₀(|A|)/π (N = 1)")
ax.plot(grid, stats.norm.pdf(grid), "k--", lw=1, label="N(0, 1) (N → ∞)")
ax.set_yscale("log")
ax.set_ylim(1e-4, 2)
ax.set_xlabel("A_h (a = 1/2)")
ax.set_ylabel("density over heads")
ax.legend(fontsize=8)
plot.save(fig, FIGURES / "05_heads_density")

excess = {N: stats.kurtosis(draws[(N, 0.5)]) for N in HEAD_DIMS}
print({N: round(k, 3) for N, k in excess.items()}, "vs 6/N:", {N: round(6 / N, 3) for N in HEAD_DIMS})

# %% [markdown]
# ## Var_h(A_h) against N for a = 1/2 and a = 1

# %%
variances = {key: d.var() for key, d in draws.items()}
slopes = {}
fig, ax = plt.subplots(figsize=(5, 3.8))
for a in (0.5, 1):
    v = np.array([variances[(N, a)] for N in HEAD_DIMS])
    slopes[a] = np.polyfit(np.log(HEAD_DIMS), np.log(v), 1)[0]
    ax.loglog(HEAD_DIMS, v, "o-", label=f"a = {a}: slope {slopes[a]:.2f} (theory {1 - 2 * a:.0f})")
ax.set_xlabel("head dimension N")
ax.set_ylabel("Var over heads of A_h")
ax.legend()
plot.save(fig, FIGURES / "05_variance_vs_N")
print(slopes)

# %% [markdown]
# ## The fixed-N law is what finite-width networks show
#
# At width n = 512 with N = 4, head scores from real (exactly sampled) networks against the fixed-N limit, by a
# two-sample Kolmogorov–Smirnov test.

# %%
layer, score, limit_scores = score_draws(4, "sqrt", size=20_000, seed=1)
finite_scores = layer.simulate(512, 20_000, seed=2, variables=[score])[:, 0]
ks_finite = stats.ks_2samp(finite_scores, limit_scores)
print(f"n = 512 vs fixed-N limit: KS p = {ks_finite.pvalue:.3f}")

# %% [markdown]
# ## Asserted
#
# * Excess kurtosis 6/N for N = 1, 4, 16, 64, within 4 standard errors of the sample kurtosis.
# * N = 1: the K₀ law (KS p > 0.001), which rejects a Gaussian of the same variance (KS p < 1e-10).
# * log–log slope of Var_h(A_h) in N: 0 for a = 1/2 and −1 for a = 1 (within 0.05).
# * Finite-width scores at n = 512 agree with the fixed-N limit (KS p > 0.001), and reject the Gaussian score
#   law of the same variance (KS p < 0.001).

# %%
for N, k in excess.items():
    se = np.sqrt(24 / SIZE) * np.sqrt(1 + 6 / N) ** 3  # heavier tails widen the sample kurtosis' spread
    assert abs(k - 6 / N) < 4 * se, (N, k, se)


def k0_cdf(v):
    """CDF of the density K₀(|t|)/π: ∫₀^x K₀(t) dt = (πx/2)[K₀(x) L₋₁(x) + K₁(x) L₀(x)] (L: modified Struve)."""
    x = np.abs(v)
    half = x / 2 * (special.k0(x) * special.modstruve(-1, x) + special.k1(x) * special.modstruve(0, x))
    return 0.5 + np.sign(v) * half


assert abs(k0_cdf(np.array([30.0]))[0] - 1) < 1e-8  # total mass one
one = draws[(1, 0.5)]
assert stats.kstest(one[:50_000], k0_cdf).pvalue > 1e-3
assert stats.kstest(one[:50_000], stats.norm(scale=one.std()).cdf).pvalue < 1e-10
assert abs(slopes[0.5]) < 0.05 and abs(slopes[1] + 1) < 0.05, slopes
assert ks_finite.pvalue > 1e-3
# power: the Gaussian-score law (N → ∞) with the same variance is rejected for the same finite-width scores
assert stats.kstest(finite_scores, stats.norm(scale=finite_scores.std()).cdf).pvalue < 1e-3
print("all claims hold")
