# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3
#     name: python3
# ---

# %% [markdown]
# # 07 — Training in BCP24's parameterisation: transfer in N, H and L, heads over N, convergence in H, depth
#
# **Claims** (BCP24: Bordelon, Chaudhry, Pehlevan, *Infinite Limits of Multi-head Transformer Dynamics*,
# arXiv:2405.15712), tested on scikit-learn's digits as 16 patches of 2×2 pixels and on a teacher-attention
# sequence task, with `limits.training` (the trainable model of `limits.transformer`, its law at initialisation
# checked against `netsor.simulate` in the tests):
# 1. In the mean-field parameterisation (μP: SGD η = η₀γ₀²n, Adam η = η₀γ₀/√n) the optimal η₀ does not drift as
#    the head dimension N grows, for α_A = 1 and α_A = ½ (Fig. 2a); in the standard parameterisation it drifts
#    like 1/n.
# 2. After training, the variance of the attention scores over heads decays with N at α_A = 1 and does not at
#    α_A = ½ (Fig. 2b; BCP24 report ≈ N⁻² and ≈ flat).
# 3. At fixed N, as H grows, the final residual-stream kernel and the loss curve converge (kernel error ∝ 1/H, as
#    at initialisation).
# 4. With α_L = ½ the key/query weights move less and less as L grows (∝ L^(−1/2), Fig. 5a); with α_L = 1 they
#    keep moving, and deeper models reach a lower loss at fixed η₀.
#
# The figures come from the committed GPU run (`results/training/`, an NVIDIA H200, `run.json` says how long each
# sweep took); regenerate it with `python -m limits.training.experiments --size full --out results/training`.
# The notebook also trains one small model live (the test suite runs it on the CPU), so a change in the code that
# breaks training fails here too.

# %%
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from limits.sweep import fit_rate
from limits.training import (digits, fit_drift, fit_measurement, hyperparameter_transfer, kernel_errors,
                             optimal_learning_rates, plots, sgd)
from limits.training.plots import best_runs

FIGURES = Path(os.environ.get("NETSOR_FIGURES", "figures"))  # the tests write elsewhere
RESULTS = Path("results/training")
run = json.loads((RESULTS / "run.json").read_text())
print(f"committed run: {run['device']} ({run['platform']}), JAX {run['jax']}, size {run['size']}; seconds per "
      f"sweep: { {k: round(v) for k, v in run['seconds'].items()} }")
tables = {name: pd.read_csv(RESULTS / f"{name}.csv") for name in ("transfer_N", "transfer_H", "heads", "depth")}

# %% [markdown]
# ## A live check on this machine: one μP model, three η₀, two seeds, 60 steps on the CPU

# %%
live = hyperparameter_transfer(digits(), values=(8,), score_exponents=(1.0,), parameterisations=(sgd(),), heads=4,
                               depth=2, learning_rates=(0.01, 0.1, 100.0), seeds=2, steps=60, progress=False)
print(live[["N", "lr", "seed", "final_loss", "test_accuracy", "diverged"]].to_string(index=False))
learned = live[live.lr == 0.1]
assert (learned.final_loss < live[live.lr == 0.01].final_loss.max()).all() and not learned.diverged.any()
assert live[live.lr == 100.0].diverged.all()  # an absurd η₀ is reported as diverged (loss inf), never NaN

# %% [markdown]
# ## 1. Hyperparameter transfer in N (and H)

# %%
transfer = tables["transfer_N"]
plots.transfer(transfer, "N", path=FIGURES / "07_transfer_N")
optima = optimal_learning_rates(transfer)
drifts = {}
for (p, a), group in optima.groupby(["parameterisation", "alpha_A"]):
    fit = fit_drift(group)
    drifts[p, a] = (-fit.exponent, fit.ci)
    print(f"{p:9s} α_A = {a:g}: η* ∝ N^{-fit.exponent:+.2f}, 95% CI of the drift "
          f"[{-fit.ci[1]:+.2f}, {-fit.ci[0]:+.2f}]")
for p in ("muP-sgd", "muP-adam"):
    for a in (1.0, 0.5):
        drift, ci = drifts[p, a]
        assert -ci[1] < 0 < -ci[0] and abs(drift) < 0.3, (p, a)  # no drift: 0 inside the interval
for a in (1.0, 0.5):
    drift, ci = drifts["SP-sgd", a]
    assert -ci[0] < 0 and drift < -0.5, a  # SP: the optimum moves down with N (≈ 1/n)

transfer_h = tables["transfer_H"]
plots.transfer(transfer_h, "H", path=FIGURES / "07_transfer_H")
for p, group in optimal_learning_rates(transfer_h, by=("H", "alpha_A", "parameterisation")).groupby(
        "parameterisation"):
    fit = fit_drift(group, against="H")
    print(f"{p:9s} (in H): η* ∝ H^{-fit.exponent:+.2f}, CI of the drift [{-fit.ci[1]:+.2f}, {-fit.ci[0]:+.2f}]")
    drifts[p, "H"] = (-fit.exponent, fit.ci)
assert abs(drifts["muP-sgd", "H"][0]) < 0.3 and drifts["SP-sgd", "H"][0] < -0.5

# %% [markdown]
# ## 2. Variance of the attention scores over heads after training, against N

# %%
LR = 0.1  # a stable η₀ for every N in both parameterisations of α_A (μP SGD; its optimum is ≈ 0.3)
sgd_runs = transfer[transfer.parameterisation == "muP-sgd"]
plots.attention_variance(sgd_runs, LR, path=FIGURES / "07_attention_variance")
slopes = {}
for a, group in sgd_runs[np.isclose(sgd_runs.lr, LR)].groupby("alpha_A"):
    for column in ("attention_variance", "attention_variance_init"):
        fit = fit_measurement(group, column)
        slopes[a, column] = (-fit.exponent, fit.se)
        print(f"α_A = {a:g}, {column:24s}: ∝ N^{-fit.exponent:+.2f} ± {fit.se:.2f}")
trained_mup, se_mup = slopes[1.0, "attention_variance"]
trained_half, se_half = slopes[0.5, "attention_variance"]
assert trained_mup + 3 * se_mup < 0  # decays at α_A = 1 ...
assert trained_half - 3 * se_half > trained_mup + 3 * se_mup  # ... and not (or less) at α_A = 1/2
assert abs(slopes[1.0, "attention_variance_init"][0] + 1) < 0.3  # at init: Var ∝ N^{1−2α_A} (notebook 05)
assert trained_mup + 3 * se_mup > -2  # BCP24's N^-2 is not what these runs show (see below)

# %% [markdown]
# On these runs the decay at α_A = 1 is much slower than BCP24's N⁻² (at the η₀ above, and at every stable η₀:
# the variance sits between the initial N⁻¹ at the smallest η₀ and ≈ flat at the optimum); at α_A = ½ it grows
# with N. Part of the gap: this is 600 steps on digits with 4 heads, not 2,500 steps of CIFAR-5M with 16 heads.

# %% [markdown]
# ## 3. Convergence in the number of heads at fixed N = 4

# %%
heads = tables["heads"]
plots.heads(heads, path=FIGURES / "07_heads")
rates = {}
for which in ("kernel", "kernel_init"):
    errors = kernel_errors(heads, which)
    fit = fit_rate(errors.assign(seed=0), against="H", value="mse", se="se")
    rates[which] = fit
    print(f"{which:11s}: E‖K_H − K_ref‖² ∝ H^-{fit.exponent:.2f}, 95% CI [{fit.ci[0]:.2f}, {fit.ci[1]:.2f}]")
errors = kernel_errors(heads)
print(errors[["H", "mse", "se", "loss_gap", "loss_gap_se", "diverged"]].to_string(index=False))
for fit in rates.values():
    assert fit.ci[0] < 1 < fit.ci[1]  # consistent with 1/H, after training as at initialisation
assert np.all(np.diff(errors.loss_gap) < 0)  # the loss curves approach the largest H's monotonically

# %% [markdown]
# ## 4. Depth: α_L = 1 against α_L = ½

# %%
depth = tables["depth"]
plots.depth(depth, path=FIGURES / "07_depth")
movement = {}
for a, group in depth.groupby("alpha_L"):
    stable = [lr for lr, g in group.groupby("lr") if not g.diverged.any()]
    fits = [fit_measurement(group[group.lr == lr], "qk_movement", against="L") for lr in stable]
    movement[a] = [-f.exponent for f in fits]
    print(f"α_L = {a:g}: ‖ΔW_QK‖ ∝ L^slope with slopes {np.round(movement[a], 2)} over the stable η₀ "
          f"{np.round(stable, 4)}")
    best = best_runs(group)
    print(best[["L", "lr", "final_loss", "qk_movement", "flops"]].to_string(index=False))
assert all(-0.8 < s < -0.4 for s in movement[0.5])  # ∝ L^(−1/2)-ish: the attention layers freeze as L grows
assert all(abs(s) < 0.1 for s in movement[1.0])  # they keep moving at α_L = 1
fixed = depth[np.isclose(depth.lr, LR)].groupby(["alpha_L", "L"]).final_loss.mean()
assert fixed[1.0].iloc[-1] < fixed[1.0].iloc[0] - 0.2  # deeper is better at α_L = 1 (same η₀) ...
assert fixed[1.0].iloc[-1] < fixed[0.5].iloc[-1]  # ... and better than α_L = 1/2 at the same depth

# %% [markdown]
# ## Which of BCP24's claims hold here
# - **Transfer in N and H (Fig. 2a):** holds — in μP the optimal η₀ does not drift (SGD and Adam, α_A = 1 and ½);
#   in SP it drifts like ≈ 1/n.
# - **Head collapse at α_A = 1 (Fig. 2b):** holds qualitatively — the variance over heads decays with N at α_A = 1
#   and not at α_A = ½ — but far slower than N⁻² on these runs.
# - **Convergence in H (Figs. 3–4):** kernels and loss curves converge as H grows, the kernel error consistent
#   with 1/H after training as at initialisation.
# - **Depth (Fig. 5a):** holds — at α_L = ½ the key/query weights move ∝ L^(−0.56 … −0.72) (BCP24: L^(−1/2)); at
#   α_L = 1 they move as much at every depth and deeper models train to lower loss.

# %%
print("all claims hold")
