# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3
#     name: python3
# ---

# %% [markdown]
# # 02 — Scores under 1/sqrt(n) versus 1/n scaling, and the output law as heads grow (SKI25 Fig. 2)
#
# **Claims.** (a) At 1/sqrt(n) scaling the attention scores p_ij = q_i·k_j/sqrt(n) stay random as n → ∞ —
# Gaussian with covariance Σ_X ⊗ Σ_X — while at 1/n scaling they concentrate on a point (here 0, since W_Q and
# W_K are independent), which is what makes 1/n attention a plain Gaussian process (GP4A, neural-tangents).
# (b) With H heads the output is a scale mixture of Gaussians whose excess kurtosis falls like 1/H; as H → ∞
# it becomes the Gaussian infinite-head limit, and KL(H heads ‖ infinite heads) decays with H.

# %%
import os
from pathlib import Path

import numpy as np
from scipy import stats

import netsor
from limits import attention_layer, fit_rate, kl_vs_heads, plot

FIGURES = Path(os.environ.get("NETSOR_FIGURES", "figures"))  # the tests write elsewhere
sqrt_layer = attention_layer(seq_len=4, heads=1, inputs="paper", scaling="sqrt")
linear_layer = attention_layer(seq_len=4, heads=1, inputs="paper", scaling="linear")

# %% [markdown]
# ## Fig. 2a — the score p₁₁ at finite width and in the limit

# %%
fig, ax = plot.scores({"1/sqrt(n)": sqrt_layer, "1/n": linear_layer}, widths=[16, 256], size=50_000, seed=0,
                      path=FIGURES / "02_scores")
ax.set_title("score p₁₁: random under 1/sqrt(n), a point mass under 1/n")
plot.save(fig, FIGURES / "02_scores")

# %%
score = sqrt_layer.scores[0][0][0]
limit_var = netsor.limit(sqrt_layer.program).score_cov([score])[0, 0]
sigma_x = sqrt_layer.input_cov()
print(f"limit Var(p11) = {limit_var:.4f}  (Σ_X ⊗ Σ_X entry: Σ11·Σ11 = {sigma_x[0, 0] ** 2:.4f})")
finite = {n: sqrt_layer.simulate(n, 50_000, seed=n, variables=[score])[:, 0] for n in (16, 1024)}
linear = {n: linear_layer.simulate(n, 50_000, seed=n, variables=[linear_layer.scores[0][0][0]])[:, 0]
          for n in (64, 1024)}
for n, p in finite.items():
    print(f"1/sqrt(n), n={n}: Var = {p.var():.4f}")
for n, p in linear.items():
    print(f"1/n,       n={n}: Var = {p.var():.2e}   n·Var = {n * p.var():.4f}")

# %% [markdown]
# ## Fig. 2b — the output y₁ as the number of heads grows

# %%
import matplotlib.pyplot as plt

heads = [1, 2, 4, 8, 16]
grid = np.linspace(-4, 4, 401)
fig, ax = plt.subplots(figsize=(5.6, 4))
kurtosis = {}
for h in heads:
    layer = attention_layer(seq_len=4, heads=h, inputs="paper")
    law = layer.law()
    ax.plot(grid, law.pdf(grid, layer.outputs[:1]), label=f"H = {h}")
    # a Gaussian scale mixture y | s² ~ N(0, s²) has excess kurtosis 3 Var(s²) / E[s²]², exactly
    s2 = law.conditional_cov(layer.outputs[:1], 400_000, seed=h)[:, 0, 0]
    kurtosis[h] = 3 * s2.var() / s2.mean() ** 2
gaussian = attention_layer(seq_len=4, heads=np.inf, inputs="paper").law()
ax.plot(grid, stats.norm.pdf(grid, scale=np.sqrt(gaussian.cov[0, 0])), "k--", label="H = ∞ (Gaussian)")
ax.set_yscale("log")
ax.set_ylim(1e-5, 1)
ax.set_xlabel("y₁")
ax.set_ylabel("limit density")
ax.legend(fontsize=8)
plot.save(fig, FIGURES / "02_heads_density")
print({h: round(k, 4) for h, k in kurtosis.items()})

# %%
by_heads = kl_vs_heads(heads=heads, inputs="paper", seq_len=4, size=100_000, seeds=2, progress=False)
heads_fit = fit_rate(by_heads, against="heads")
print(by_heads.groupby("heads")[["kl", "se"]].mean().to_string())
print(heads_fit)
fig, ax = plot.kl_vs_width(by_heads, fit=heads_fit, against="heads", label="KL(H heads ‖ H = ∞)")
plot.save(fig, FIGURES / "02_kl_vs_heads")

# %% [markdown]
# ## Asserted
#
# * 1/sqrt(n): the finite-width score variance matches the limit's Σ_X ⊗ Σ_X entry (n = 1024, within 4 SE).
# * 1/n: the variance vanishes like 1/n (n·Var stays at the sqrt-scaling variance), and the limit is a point.
# * The excess kurtosis of y₁ is positive and falls like 1/H (H·kurtosis roughly constant), and
#   KL(H ‖ ∞) decays with H with an exponent near 2 (KL quadratic in the 1/H excess kurtosis).

# %%
p = finite[1024]
se_var = np.sqrt(np.mean((p ** 2 - p.var()) ** 2) / len(p))
assert abs(p.var() - limit_var) < 4 * se_var, (p.var(), limit_var, se_var)
assert abs(finite[16].var() - limit_var) > 4 * np.sqrt(np.mean((finite[16] ** 2 - finite[16].var()) ** 2) / 50_000)
for n, q in linear.items():
    assert abs(n * q.var() - limit_var) < 0.1 * limit_var + 4 / n, (n, n * q.var())
limit_linear = netsor.limit(linear_layer.program).sample_scalars([linear_layer.scores[0][0][0]], 1000, seed=0)
assert np.ptp(limit_linear) == 0
scaled = np.array([h * kurtosis[h] for h in heads])
assert kurtosis[1] > 0.1 and np.all(np.diff([kurtosis[h] for h in heads]) < 0)
assert scaled.max() / scaled.min() < 1.25, scaled
assert by_heads.groupby("heads")["kl"].mean().is_monotonic_decreasing
assert 1.6 < heads_fit.exponent < 2.4, heads_fit
print("all claims hold")
