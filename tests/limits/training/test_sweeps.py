"""Training sweeps on the sweep runner (resumable, validated stores) and the summaries that fit them, each checked
on tables whose answer is known, with a power case; the plots draw the committed GPU tables."""
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import limits.sweep as runner
from netsor import ProgramError
from limits.training import (TeacherTask, fit_drift, hyperparameter_transfer, kernel_errors, optimal_learning_rates,
                             plots, sgd)
from limits.training.sweeps import loss_curves

RESULTS = Path(__file__).resolve().parents[3] / "notebooks" / "results" / "training"
DATA = TeacherTask(seq_len=4, token_dim=4)


def _sweep(out_dir):
    return hyperparameter_transfer(DATA, values=(4,), score_exponents=(1.0,), parameterisations=(sgd(),), heads=2,
                                   depth=1, learning_rates=(0.01, 0.03, 30.0), seeds=2, steps=20, out_dir=out_dir,
                                   progress=False)


def test_a_sweep_is_tidy_resumable_and_validated(tmp_path, monkeypatch):
    calls = []
    original = runner.run_task
    monkeypatch.setattr(runner, "run_task", lambda task: calls.append(task.key) or original(task))
    first = _sweep(tmp_path)
    assert len(first) == 6 and len(calls) == 1  # one task: 3 η₀ × 2 seeds vectorised
    assert first[["lr", "seed"]].drop_duplicates().shape[0] == 6
    assert first[first.lr == 30.0].diverged.all() and not first[first.lr < 1].diverged.any()
    assert (tmp_path / "transfer_N.csv").exists()
    again = _sweep(tmp_path)
    assert len(calls) == 1  # loaded, not retrained
    pd.testing.assert_frame_equal(first, again)
    # a damaged store file is noticed, named and recomputed
    stored = next(tmp_path.glob("tasks-*/N4-*.json"))
    rows = json.loads(stored.read_text())
    rows[0]["diverged"] = not rows[0]["diverged"]
    stored.write_text(json.dumps(rows))
    with pytest.warns(RuntimeWarning, match="diverged"):
        _sweep(tmp_path)
    assert len(calls) == 2
    curves = loss_curves(first)
    assert len(curves) == 6 * 20 and curves.step.max() == 20


def test_tasks_pickle_for_dask():
    import pickle
    from limits.training.sweeps import TrainTask
    from limits.training import trainable
    task = TrainTask(trainable(token_dim=4), DATA, (0.1,), (0,), 5, 8)
    again = pickle.loads(pickle.dumps(task))
    assert again.key == task.key and again.model == task.model and again.data == task.data
    for stored in ({}, [], [{"lr": None, "seed": 0}], [{"lr": 0.1, "seed": "0"}], [{"seed": 0}]):
        assert task.problem(stored)  # damaged stores are named problems, never a crash


def _table(optimum_of_n, noise=0.0, seeds=3, lrs=np.logspace(-3, 1, 9)):
    """Losses (log η₀ − log η*(N))² + 1 on a grid, plus seeded noise."""
    rng = np.random.default_rng(0)
    rows = []
    for N, best in optimum_of_n.items():
        for seed in range(seeds):
            for lr in lrs:
                rows.append(dict(N=N, alpha_A=1.0, parameterisation="p", seed=seed, lr=lr,
                                 final_loss=(math.log(lr) - math.log(best)) ** 2 + 1 + noise * rng.standard_normal()))
    return pd.DataFrame(rows)


def test_optimal_learning_rates_find_a_known_optimum():
    optima = optimal_learning_rates(_table({8: 0.05, 16: 0.05}, noise=0.01))
    for row in optima.itertuples():
        assert abs(math.log(row.lr_opt / 0.05)) < 3 * row.log_se and not row.at_edge
    at_edge = optimal_learning_rates(_table({8: 100.0}))
    assert at_edge.at_edge.all()  # beyond the grid: a bound, not an optimum


def test_fit_drift_recovers_a_drift_and_rejects_none():
    flat = fit_drift(optimal_learning_rates(_table({N: 0.05 for N in (8, 16, 32, 64)}, noise=0.01)))
    assert flat.ci[0] < 0 < flat.ci[1]
    drifting = fit_drift(optimal_learning_rates(_table({N: 4.0 / N for N in (8, 16, 32, 64)}, noise=0.01)))
    assert drifting.ci[0] < 1 < drifting.ci[1] and drifting.ci[0] > 0  # power: η* ∝ 1/N is told from no drift
    with pytest.raises(ProgramError, match="inside the learning-rate grid"):
        fit_drift(optimal_learning_rates(_table({8: 100.0, 16: 100.0})))


def _heads_table(scale=1.0, seeds=8, heads=(1, 2, 4, 8, 64)):
    """Kernels K_H = K + noise · H^(−1/2) (so E‖K_H − K‖² ∝ 1/H), curves likewise."""
    rng = np.random.default_rng(1)
    base = rng.standard_normal((4, 3, 3))
    rows = []
    for h in heads:
        for seed in range(seeds):
            kernel = base + scale * rng.standard_normal(base.shape) / math.sqrt(h)
            curve = 1.0 + rng.standard_normal(5) / math.sqrt(h)
            rows.append(dict(H=h, seed=seed, diverged=False, kernel=json.dumps(kernel.tolist()),
                             kernel_init=json.dumps(kernel.tolist()), curve=json.dumps(curve.tolist())))
    return pd.DataFrame(rows)


def test_kernel_errors_fall_like_one_over_h():
    errors = kernel_errors(_heads_table())
    fit = runner.fit_rate(errors.assign(seed=0), against="H", value="mse", se="se")
    assert fit.ci[0] < 1 < fit.ci[1]
    # the reference's own noise is subtracted: at H = 1 the error is the per-entry variance 1, not 1 + 1/(64·8)
    assert abs(errors.mse.iloc[0] - 1) < 4 * errors.se.iloc[0]
    with pytest.raises(ProgramError, match="no 'kernel' column"):
        kernel_errors(pd.DataFrame({"H": [1]}))


def test_bad_sweeps_are_refused(tmp_path):
    with pytest.raises(ProgramError, match="vary"):
        hyperparameter_transfer(DATA, vary="width")
    with pytest.raises(ProgramError, match="Parameterisation"):
        hyperparameter_transfer(DATA, parameterisations=("sgd",))
    with pytest.raises(ProgramError, match="same"):
        hyperparameter_transfer(DATA, values=(4, 4), score_exponents=(1.0,), parameterisations=(sgd(),))
    with pytest.raises(ProgramError, match="backend"):
        hyperparameter_transfer(DATA, backend="spark")


@pytest.fixture(scope="module")
def committed():
    return {name: pd.read_csv(RESULTS / f"{name}.csv") for name in ("transfer_N", "heads", "depth")}


def test_the_plots_draw_the_committed_tables(committed, tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig = plots.transfer(committed["transfer_N"], "N")
    assert len([ax for ax in fig.axes if ax.get_visible()]) == 6  # 3 parameterisations × 2 α_A
    fig = plots.attention_variance(committed["transfer_N"][committed["transfer_N"].parameterisation == "muP-sgd"],
                                   0.1)
    assert "η₀ = 0.1" in fig.axes[0].get_title()
    plots.heads(committed["heads"])
    plots.depth(committed["depth"], path=tmp_path / "depth")  # one figure written (PNG and PDF) is enough
    assert [p.name for p in tmp_path.glob("*.png")] == ["depth.png"]
    plt.close("all")
    with pytest.raises(ProgramError, match="no runs"):
        plots.attention_variance(committed["transfer_N"], 123.0)
    with pytest.raises(ProgramError, match="columns"):
        plots.depth(pd.DataFrame({"x": [1]}))


def test_committed_tables_are_complete(committed):
    """The committed GPU run holds every run it claims: no NaN losses, diverged runs marked, seeds complete."""
    for name, df in committed.items():
        assert not df.final_loss.isna().any(), name
        assert (df.diverged == ~np.isfinite(df.final_loss)).all(), name
        counts = df.groupby([c for c in ("N", "H", "L", "alpha_A", "alpha_L", "parameterisation", "lr")]).size()
        assert counts.nunique() == 1, name  # every (model, η₀) has all its seeds
