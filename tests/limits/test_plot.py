"""limits.plot draws and writes PNG and PDF."""
import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

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
