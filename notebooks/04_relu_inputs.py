# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3
#     name: python3
# ---

# %% [markdown]
# # 04 — ReLU inputs: Σ_X and Σ_X ⊗ Σ_X derived by the engine (SKI25's ReLU experiment)
#
# **Claim.** With tokens x_i = relu(W^i h) (independent W^i, one shared h), the token kernel is
# Σ_X = ½ on the diagonal and 1/(2π) off it (E[relu(z)²] = ½; independent pre-activations give E[relu]² =
# 1/(2π)), the scores' limit covariance is exactly Σ_X ⊗ Σ_X, and the finite-width layer converges to the
# hierarchical Gaussian limit built from them — nobody writes these by hand: `law.describe()` prints them,
# derived from the program.

# %%
import math
import os
from pathlib import Path

import numpy as np

from limits import attention_layer, fit_rate, kl_vs_width, plot
from netsor.testing import cov_check

FIGURES = Path(os.environ.get("NETSOR_FIGURES", "figures"))  # the tests write elsewhere
layer = attention_layer(seq_len=3, heads=1, inputs="relu")
law = layer.law()
print(law.describe(layer.outputs[:1]))  # what y1 reads: query 1's scores, C = Σ_11 Σ_X

# %% [markdown]
# ## Σ_X and Σ_X ⊗ Σ_X, exactly, and checked against finite-width networks

# %%
sigma_x = layer.input_cov()
closed_form = np.full((3, 3), 1 / (2 * math.pi)) + (0.5 - 1 / (2 * math.pi)) * np.eye(3)
scores = [p for row in layer.scores[0] for p in row]
score_cov = law.score_cov(scores)
print("Σ_X =\n", np.round(sigma_x, 6))
finite_scores = {n: layer.simulate(n, 20_000, seed=n, variables=scores) for n in (8, 1024)}
checks = {n: cov_check(s, score_cov) for n, s in finite_scores.items()}
for n, (ok, err, tol) in checks.items():
    print(f"n = {n}: relative Frobenius error of the score covariance {err:.3f} (tolerance {tol:.3f}) -> "
          f"{'agrees' if ok else 'rejected'}")

# %% [markdown]
# ## The output at finite width against the limit, and KL against width

# %%
fig, ax = plot.densities(layer, widths=[8, 32, 256], size=50_000, seed=0)
ax.set_yscale("log")
plot.save(fig, FIGURES / "04_relu_densities")
table = kl_vs_width(layer, widths=[16, 64, 256, 1024], size=50_000, seeds=2, estimator="mixture", progress=False)
fit = fit_rate(table)
print(table.groupby("width")[["kl", "se"]].mean().to_string())
print(fit)
fig, ax = plot.kl_vs_width(table, fit=fit, label="mixture, ReLU inputs")
ax.set_title("attention s=3, H=1, ReLU inputs")
plot.save(fig, FIGURES / "04_relu_kl_vs_width")

# %% [markdown]
# ## Asserted
#
# * Σ_X has the closed form above (to 1e-10), and the scores' covariance is exactly its Kronecker square.
# * Finite-width score covariances agree with Σ_X ⊗ Σ_X at n = 1024 and are rejected at n = 8.
# * KL(finite n ‖ limit) decays faster than 1/n for ReLU inputs too.

# %%
np.testing.assert_allclose(sigma_x, closed_form, atol=1e-10)
np.testing.assert_allclose(score_cov, np.kron(sigma_x, sigma_x), atol=1e-12)
assert "1/(2*pi)" in law.describe(layer.outputs[:1]) and "Σ ⊗ Σ" in law.describe(layer.outputs)  # all 9 scores
assert checks[1024][0] and not checks[8][0], checks
assert fit.ci[0] > 1.0, fit
print("all claims hold")
