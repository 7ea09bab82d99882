"""Training: runs learn, diverged runs are reported as such (never NaN), vectorised runs equal one-at-a-time runs,
and the coordinate check separates the mean-field parameterisations from the standard one."""
import math

import jax
import numpy as np
import pandas as pd
import pytest

from netsor import ProgramError
from limits.training.data import digits
from limits.training.model import trainable
from limits.training.parameterisation import adam, sgd, standard
from limits.training.runs import coord_check, train

STEPS = 60


@pytest.fixture(scope="module")
def data():
    return digits()


@pytest.fixture(scope="module")
def model(data):
    return trainable(depth=2, heads=2, head_dim=8, token_dim=data.token_dim, outputs=data.outputs)


@pytest.fixture(scope="module")
def runs(model, data):
    return train(model, data, [0.3, 100.0], seeds=2, steps=STEPS, curve_points=6)


def test_runs_learn_and_diverged_runs_say_so(runs):
    frame = runs.frame
    good, bad = frame[frame.lr == 0.3], frame[frame.lr == 100.0]
    # chance level is log 10 = 2.30 for 10 classes; a learning run is well below it within 60 steps
    assert (good.final_loss < 1.9).all() and (good.test_loss < 2.2).all() and not good.diverged.any()
    assert (good.test_accuracy > 0.3).all()
    assert bad.diverged.all() and np.isinf(bad.final_loss).all()
    assert bad.attention_variance.isna().all()  # missing, as pandas' NA ...
    numeric = frame.select_dtypes("number").to_numpy(dtype=float, na_value=0.0)
    assert not np.isnan(numeric).any()  # ... never a NaN
    curve = runs.curves[(runs.curves.lr == 0.3) & (runs.curves.seed == 0)]
    assert len(curve) == 6 and curve.loss.iloc[-1] < curve.loss.iloc[0]


def test_vectorised_runs_equal_single_runs(runs, model, data):
    single = train(model, data, [0.3], seeds=[1], steps=STEPS, curve_points=6)
    row = runs.frame[(runs.frame.lr == 0.3) & (runs.frame.seed == 1)].iloc[0]
    # the same weights and batches; vmap only reorders float32 sums, whose rounding 60 steps amplify to ~1e-4 on the
    # CPU (on a GPU, JAX's default TF32 matmuls round at ~1e-3 per product, amplified alike)
    rel = 2e-3 if jax.default_backend() == "cpu" else 5e-2
    for column in ("final_loss", "test_loss", "attention_variance", "qk_movement", "stream_change"):
        assert single.frame[column].iloc[0] == pytest.approx(row[column], rel=rel), column


def test_seeds_differ_and_repeat(runs, model, data):
    frame = runs.frame[runs.frame.lr == 0.3]
    assert frame.final_loss.iloc[0] != frame.final_loss.iloc[1]
    again = train(model, data, [0.3, 100.0], seeds=2, steps=STEPS, curve_points=6).frame
    pd.testing.assert_frame_equal(again, runs.frame)


def _ratio(df, column):
    """Seed-mean size after the last step at the largest N over that at the smallest."""
    last = df[df.step == df.step.max()].groupby("N")[column].mean()
    return last.iloc[-1] / last.iloc[0]


@pytest.mark.parametrize("parameterisation", [sgd(), adam()], ids=["muP-sgd", "muP-adam"])
def test_coordinate_check_mean_field_is_width_independent(data, parameterisation):
    df = coord_check(parameterisation, head_dims=(16, 128), data=data, learning_rate=0.1)
    # a width limit: the stream's update and the output move by O(1) as n grows 8×
    for column in ("stream_change", "output_change"):
        assert 0.5 < _ratio(df, column) < 2.0, column


def test_coordinate_check_fails_for_the_standard_parameterisation(data):
    # the power case: a fixed learning rate in SP moves the output more and more as n grows
    df = coord_check(standard(), head_dims=(16, 128), data=data, learning_rate=0.01)
    assert _ratio(df, "output_change") > 3.0 and _ratio(df, "stream_change") > 2.0


@pytest.mark.parametrize("kwargs, match", [
    (dict(learning_rates=[0.1, -1]), "learning_rates"), (dict(learning_rates=[math.nan]), "learning_rates"),
    (dict(learning_rates=[0.1, 0.1]), "distinct"), (dict(steps=0), "steps"), (dict(seeds=-1), "seed"),
    (dict(batch_size=2.5), "batch_size"), (dict(probe_size=2), "probe_size"), (dict(curve_points=500), "curve_points"),
    (dict(probe_size=5000, curve_points=5), "probe_size")])
def test_bad_arguments_are_refused(model, data, kwargs, match):
    arguments = dict(learning_rates=[0.1], steps=10)
    arguments.update(kwargs)
    with pytest.raises(ProgramError, match=match):
        train(model, data, **arguments)


def test_model_and_data_must_fit(data):
    with pytest.raises(ProgramError, match="dimension"):
        train(trainable(token_dim=3, outputs=10), data, [0.1], steps=5)
    with pytest.raises(ProgramError, match="model"):
        train("model", data, [0.1])
    with pytest.raises(ProgramError, match="data"):
        train(trainable(), np.zeros((3, 4)), [0.1])
