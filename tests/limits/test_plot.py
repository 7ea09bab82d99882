"""limits.plot draws and writes PNG and PDF."""
import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

import netsor  # noqa: E402
from limits import attention_layer, plot  # noqa: E402


def test_kl_vs_width_with_fit_and_bounds(tmp_path):
    widths = [16, 64, 256, 1024]
    df = pd.DataFrame({"width": widths, "seed": 0, "estimator": "mixture",
                       "kl": [2e-2, 1.25e-3, 7.8125e-5, 1e-6], "se": [1e-4, 1e-5, 1e-6, 1e-6]})
    fig, ax = plot.kl_vs_width(df, path=tmp_path / "kl.png")
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(label.startswith("slope −2.0") for label in labels) and any("upper bound" in t for t in labels)
    assert (tmp_path / "kl.png").stat().st_size > 1000 and (tmp_path / "kl.pdf").stat().st_size > 1000


def test_densities_and_scores(tmp_path):
    layer = attention_layer(seq_len=3, heads=1, inputs="gaussian")
    fig, ax = plot.densities(layer, widths=[8, 64], size=2000, path=tmp_path / "densities")
    assert len(ax.patches) == 2 and len(ax.lines) == 1
    line = ax.lines[0]
    assert np.all(line.get_ydata() > 0)
    layers = {"1/sqrt(n)": layer, "1/n": attention_layer(seq_len=3, heads=1, inputs="gaussian", scaling="linear")}
    fig, ax = plot.scores(layers, widths=[16], size=2000, path=tmp_path / "scores")
    assert (tmp_path / "densities.png").exists() and (tmp_path / "scores.pdf").exists()
    assert any("point mass" in t.get_text() for t in ax.get_legend().get_texts())


def test_points_without_standard_error_are_values_not_bounds():
    df = pd.DataFrame({"width": [16, 64], "seed": 0, "estimator": "kde", "kl": [1e-2, 1e-3], "se": np.nan})
    fig, ax = plot.kl_vs_width(df)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["kde"]


def test_kl_vs_width_draws_the_predicted_line_and_its_band():
    widths = [16, 64, 256, 1024]
    df = pd.DataFrame({"width": widths, "seed": 0, "estimator": "coupled",
                       "kl": [2.0 / w ** 2 for w in widths], "se": [0.02 / w ** 2 for w in widths]})
    fig, ax = plot.kl_vs_width(df, fit=False, predicted=(3.0, 0.25))
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "predicted c/n², c = 3 ± 0.25" in labels
    line = next(l for l in ax.lines if l.get_label().startswith("predicted"))
    n, kl = line.get_xdata(), line.get_ydata()
    assert n.min() == 16 and n.max() == 1024 and np.allclose(kl * n ** 2, 3.0)  # c/n² across the plotted widths
    (band,) = ax.collections[-1:]
    edges = band.get_paths()[0].vertices
    inside = (edges[:, 0] > 16) & (edges[:, 0] < 1024)
    assert np.allclose(sorted({round(v, 6) for v in edges[inside, 1] * edges[inside, 0] ** 2}), [2.5, 3.5])  # ±2 SE
    # a correction is accepted as it is: a deep linear chain, c = 3 exactly
    prog = netsor.Program("chain")
    y = prog.matrix("W2") @ (prog.matrix("W1") @ prog.input("x"))
    fig, ax = plot.kl_vs_width(df, fit=False, predicted=netsor.finite_width_correction(prog, [y]))
    assert any(t.get_text().startswith("predicted c/n², c = 3 ± ") for t in ax.get_legend().get_texts())
    with pytest.raises(netsor.ProgramError, match=r"^plot.kl_vs_width: prediction must be a FiniteWidthCorrection"):
        plot.kl_vs_width(df, predicted=3.0)
    with pytest.raises(netsor.ProgramError, match="^plot.kl_vs_width: predicted is a line c/n² in the width"):
        plot.kl_vs_width(df.rename(columns={"width": "heads"}), against="heads", predicted=(3.0, 0.1))


def test_every_figure_says_what_it_shows():
    import matplotlib.pyplot as plt
    df = pd.DataFrame(dict(width=[16, 16, 64, 64], seed=[0, 1, 0, 1], estimator="mixture",
                           kl=[1e-2, 1.1e-2, 8e-4, 9e-4], se=1e-4, n_samples=5000))
    _, ax = plot.kl_vs_width(df, title="KL of y1, attention s=4")
    assert ax.get_title() == "KL of y1, attention s=4\nmixture estimator, 5,000 draws × 2 seeds per point"
    _, kept = plt.subplots()
    kept.set_title("mine")
    assert plot.kl_vs_width(df, ax=kept)[1].get_title() == "mine"  # an axes with a title keeps it
    layer = attention_layer(seq_len=2, heads=1, inputs="gaussian", mask="causal")
    _, ax = plot.densities(layer, widths=[16], size=500, seed=0)
    assert ax.get_title().startswith(layer.summary + "\ny1: exact finite width, 500 draws per width")
    _, ax = plot.scores({"1/sqrt(n)": layer}, widths=[16], size=500)
    assert ax.get_title() == "score p₁₁ of 1/sqrt(n): 500 draws per width and for the limit"
    plt.close("all")
