"""Sweeps: tidy tables, determinism, the decay fit, resuming an interrupted run, and Dask equal to local."""
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import netsor
from limits import attention_layer, fit_rate, kl_vs_heads, kl_vs_width, sweep

ROOT = Path(__file__).resolve().parents[2]
SMALL = dict(size=3000, progress=False)


@pytest.fixture(scope="module")
def layer():
    return attention_layer(seq_len=3, heads=2, inputs="gaussian")


def test_kl_vs_width_table(layer):
    df = kl_vs_width(layer, widths=[64, 16], seeds=2, **SMALL)
    assert list(df.columns) == sweep.COLUMNS
    assert df[["width", "seed"]].values.tolist() == [[16, 0], [16, 1], [64, 0], [64, 1]]
    assert (df["estimator"] == "mixture").all() and (df["n_samples"] == 3000).all()
    # same seeds, same rows — whichever other seeds or widths are in the sweep
    one = kl_vs_width(layer, widths=[16], seeds=[1], **SMALL)
    assert one["kl"].iloc[0] == df["kl"].iloc[1]
    # the KL at n = 16 is resolved and larger than at 64
    assert (df["kl"] > 3 * df["se"]).all()
    assert df["kl"].iloc[:2].mean() > df["kl"].iloc[2:].mean()


@pytest.mark.parametrize("estimator", ["kde", "fftkde", "knn", "coupled"])
def test_every_estimator_runs_in_a_sweep(layer, estimator):
    df = kl_vs_width(layer, widths=[16], seeds=1, estimator=estimator, **SMALL)
    assert df["estimator"].iloc[0] == estimator and np.isfinite(df["kl"].iloc[0])


def test_kl_vs_heads_decreases_towards_the_gaussian():
    df = kl_vs_heads(heads=[1, 4], seq_len=3, inputs="gaussian", size=20_000, seeds=1, progress=False)
    assert list(df.columns[:2]) == ["heads", "width"] and np.isinf(df["width"]).all()
    assert df["kl"].iloc[0] > 3 * df["kl"].iloc[1] > 0
    finite = kl_vs_heads(heads=[1], width=16, seq_len=3, inputs="gaussian", **SMALL)
    assert finite["width"].iloc[0] == 16 and finite["kl"].iloc[0] > 0


def test_fit_rate_recovers_a_known_exponent_and_skips_bounds():
    rng = np.random.default_rng(0)
    widths = [16, 64, 256, 1024, 4096]
    rows = []
    for w in widths:
        for s in range(4):
            truth = 3.0 * w ** -1.5
            se = 0.05 * truth if w < 4096 else 10 * truth  # the last point is unresolved
            rows.append({"width": w, "seed": s, "kl": truth + se * rng.standard_normal(), "se": se})
    fit = fit_rate(pd.DataFrame(rows))
    assert fit.ci[0] < 1.5 < fit.ci[1] and fit.ci[1] - fit.ci[0] < 0.1
    assert fit.points["used"].tolist() == [True, True, True, True, False]
    # power: a wrong exponent is outside the interval
    assert not fit.ci[0] < 1.0 < fit.ci[1]
    with pytest.raises(netsor.ProgramError, match="nothing to fit"):
        fit_rate(pd.DataFrame(rows[:4] + [dict(r, kl=1e-9) for r in rows[4:]]))


def test_out_dir_resumes_without_recomputing(layer, tmp_path, monkeypatch):
    first = kl_vs_width(layer, widths=[16, 32], seeds=2, out_dir=tmp_path, **SMALL)
    assert (tmp_path / "kl_vs_width.csv").exists()
    (task_dir,) = tmp_path.glob("tasks-*")
    files = sorted(task_dir.glob("mixture-*.json"))
    assert len(files) == 4 and json.loads((task_dir / "sweep.json").read_text())["size"] == 3000
    files[0].unlink()
    calls = []
    original = sweep.run_task
    monkeypatch.setattr(sweep, "run_task", lambda task: calls.append(task.key) or original(task))
    again = kl_vs_width(layer, widths=[16, 32], seeds=2, out_dir=tmp_path, **SMALL)
    assert calls == [files[0].stem]
    pd.testing.assert_frame_equal(first.drop(columns="seconds"), again.drop(columns="seconds"))
    # a different configuration in the same folder does not reuse these results
    calls.clear()
    kl_vs_width(layer, widths=[16], seeds=1, out_dir=tmp_path, size=2000, progress=False)
    assert len(calls) == 1 and len(list(tmp_path.glob("tasks-*"))) == 2


def test_killed_sweep_keeps_finished_tasks(tmp_path):
    script = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(ROOT)!r})
        from limits import attention_layer, kl_vs_width
        kl_vs_width(attention_layer(seq_len=3, heads=2, inputs="gaussian"), widths=[16, 32, 64, 128, 256, 512],
                    seeds=3, size=80_000, out_dir={str(tmp_path)!r}, progress=False)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(tmp_path.glob("tasks-*/mixture-*.json"))) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kept = {p.stem: p.read_text() for p in tmp_path.glob("tasks-*/mixture-*.json")}
    assert 2 <= len(kept) < 18, proc.stderr.read().decode()[-2000:]
    assert not list(tmp_path.glob("tasks-*/*.tmp"))  # atomic writes: no half files are visible as results
    calls = []
    original = sweep.run_task
    sweep.run_task = lambda task: calls.append(task.key) or original(task)
    try:
        df = kl_vs_width(attention_layer(seq_len=3, heads=2, inputs="gaussian"), widths=[16, 32, 64, 128, 256, 512],
                         seeds=3, size=80_000, out_dir=tmp_path, progress=False)
    finally:
        sweep.run_task = original
    assert len(df) == 18 and len(calls) == 18 - len(kept) and not set(calls) & set(kept)
    for key, text in kept.items():  # finished tasks are untouched
        assert (next(tmp_path.glob(f"tasks-*/{key}.json"))).read_text() == text


def test_dask_backend_equals_local(layer):
    pytest.importorskip("dask.distributed")
    from dask.distributed import Client, LocalCluster
    local = kl_vs_width(layer, widths=[16, 64], seeds=2, estimator="mixture", **SMALL)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        remote = kl_vs_width(layer, widths=[16, 64], seeds=2, estimator="mixture", backend="dask", client=client,
                             **SMALL)
        heads_local = kl_vs_heads(heads=[1, 2], seq_len=3, inputs="gaussian", **SMALL)
        heads_remote = kl_vs_heads(heads=[1, 2], seq_len=3, inputs="gaussian", backend="dask", client=client,
                                   **SMALL)
        # nonlinear tokens: the pickled program reaches the workers with the same clip and relu objects, so the
        # exact sampler takes the same one-layer front there: drawn from its Gram (paper tokens, clip 100, which no
        # coordinate reaches) and streamed row by row (clip 1.5, relu)
        fronts = [attention_layer(seq_len=3, heads=1, inputs="paper"),
                  attention_layer(seq_len=3, heads=1, inputs="paper", clip=1.5),
                  attention_layer(seq_len=3, heads=1, inputs="relu")]
        front_local = [kl_vs_width(f, widths=[16, 1024], seeds=1, **SMALL) for f in fronts]
        front_remote = [kl_vs_width(f, widths=[16, 1024], seeds=1, backend="dask", client=client, **SMALL)
                        for f in fronts]
    pd.testing.assert_frame_equal(local.drop(columns="seconds"), remote.drop(columns="seconds"))
    pd.testing.assert_frame_equal(heads_local.drop(columns="seconds"), heads_remote.drop(columns="seconds"))
    for a, b in zip(front_local, front_remote):
        pd.testing.assert_frame_equal(a.drop(columns="seconds"), b.drop(columns="seconds"))
    # no client: the sweep starts (and closes) its own two-worker LocalCluster
    own = kl_vs_width(layer, widths=[16], seeds=[1], backend="dask", **SMALL)
    assert own["kl"].iloc[0] == local["kl"].iloc[1]


@pytest.mark.parametrize("call, message", [
    (lambda L: kl_vs_width(L, widths=[0], **SMALL), "widths"),
    (lambda L: kl_vs_width(L, widths=[16], seeds=0, **SMALL), "seeds"),
    (lambda L: kl_vs_width(L, widths=[16], seeds=[1, 1], **SMALL), "repeat"),
    (lambda L: kl_vs_width(L, widths=[16], estimator="tv", **SMALL), "unknown estimator"),
    (lambda L: kl_vs_width(L, widths=[16], backend="ray", **SMALL), "unknown backend"),
    (lambda L: kl_vs_width(L.program, widths=[16], **SMALL), "name the variables"),
    (lambda L: kl_vs_width("attention", widths=[16], **SMALL), "expected an AttentionLayer"),
    (lambda L: kl_vs_width(L, widths=[16], size=1, progress=False), "size"),
    (lambda L: kl_vs_heads(heads=[1], outputs=[7], seq_len=3, **SMALL), "outputs"),
    (lambda L: kl_vs_heads(heads=[1], estimator="coupled", seq_len=3, **SMALL), "coupled"),
    # issue 13 item 7: repeats, floats, bools and absurd counts are refused up front, naming the argument
    (lambda L: kl_vs_width(L, widths=(16, 16), **SMALL), "widths repeat"),
    (lambda L: kl_vs_width(L, widths=np.array([16, 16]), **SMALL), "widths repeat"),
    (lambda L: kl_vs_heads(heads=(2, 2), seq_len=3, **SMALL), "heads repeat"),
    (lambda L: kl_vs_heads(heads=[1], outputs=[0, 0], seq_len=3, **SMALL), "outputs repeat"),
    (lambda L: kl_vs_width(L, widths=[2 ** 62 + 1], **SMALL), "widths must be at most 2\\^62"),
    (lambda L: kl_vs_width(L, widths=16.0, **SMALL), "widths must be"),
    (lambda L: kl_vs_width(L, widths=[16.0], **SMALL), "widths must be integers"),
    (lambda L: kl_vs_width(L, widths=[True], **SMALL), "widths must be integers"),
    (lambda L: kl_vs_width(L, widths="16", **SMALL), "widths must be"),
    (lambda L: kl_vs_width(L, widths=np.array(16.0), **SMALL), "widths must be"),
    (lambda L: kl_vs_width(L, widths=[16], seeds=2.0, **SMALL), "seeds"),
    (lambda L: kl_vs_width(L, widths=[16], seeds=2 ** 30, **SMALL), "seeds must be a count in 1..2\\^20"),
    (lambda L: kl_vs_width(L, widths=[16], size=3000.0, progress=False), "size"),
    (lambda L: kl_vs_heads(heads=[1], width=[16], seq_len=3, **SMALL), "width must be a positive integer"),
    (lambda L: kl_vs_width(L, widths=[16], client="tcp://127.0.0.1:1", **SMALL), "client is for backend 'dask'"),
    (lambda L: kl_vs_width(L, widths=[16], out_dir="", **SMALL), "out_dir must be a folder"),
    (lambda L: kl_vs_width(L, widths=[16], size=3000, progress="yes"), "progress"),
])
def test_bad_sweep_arguments(layer, call, message):
    with pytest.raises(netsor.ProgramError, match=message):
        call(layer)


def test_unwritable_out_dir_is_a_program_error(layer, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(netsor.ProgramError, match="out_dir"):
        kl_vs_width(layer, widths=[16], out_dir=blocker / "sub", **SMALL)
    assert os.path.exists(blocker)


def _one_input_program(phi, var=1.0):
    prog = netsor.Program("look-alike")
    x = prog.input("x", var=var)
    h = prog.matrix("W") @ netsor.nonlin(phi, x, name="a")
    return prog, h


def test_programs_that_print_alike_do_not_share_stored_results(tmp_path):
    """Two user functions called relu, and variances past the print precision, print the same program; the store
    keys tasks by the programs' content, so the second sweep computes its own rows."""
    def relu(x):
        return np.maximum(x, 0)

    first, h1 = _one_input_program(relu)

    def relu(x):  # noqa: F811 - the look-alike is the point
        return 2 * np.maximum(x, 0)

    second, h2 = _one_input_program(relu)
    third, h3 = _one_input_program(netsor.relu, var=1.0 + 1e-13)
    fourth, h4 = _one_input_program(netsor.relu)
    assert str(first) == str(second) and str(third) == str(fourth)
    rows = [kl_vs_width(p, [h], widths=[16], out_dir=tmp_path, **SMALL)
            for p, h in ((first, h1), (second, h2), (third, h3), (fourth, h4))]
    assert len(list(tmp_path.glob("tasks-*"))) == 4
    fresh = kl_vs_width(second, [h2], widths=[16], **SMALL)
    pd.testing.assert_frame_equal(rows[1].drop(columns="seconds"), fresh.drop(columns="seconds"))
    # the same content built again shares its results
    again, h_again = _one_input_program(netsor.relu)
    assert netsor.fingerprint(again) == netsor.fingerprint(fourth)
    kl_vs_width(again, [h_again], widths=[16], out_dir=tmp_path, **SMALL)
    assert len(list(tmp_path.glob("tasks-*"))) == 4


def test_a_program_that_cannot_be_fingerprinted_is_not_stored(tmp_path):
    class Opaque:  # a callable with no Python __call__ and no attributes: nothing to hash its content by
        __slots__ = ()
        __call__ = np.tanh

    prog, h = _one_input_program(Opaque())
    with pytest.raises(netsor.ProgramError, match="fingerprint"):
        kl_vs_width(prog, [h], widths=[16], out_dir=tmp_path, **SMALL)
    assert len(kl_vs_width(prog, [h], widths=[16], **SMALL)) == 1  # without a store it runs


@pytest.mark.parametrize("content, reason", [
    ('{"width": 16, "se', "unreadable"), ("{}", "lacks"), ("[1, 2]", "not a row"),
    (None, "width = 32"), ("text-kl", "kl = 'x'"), ("nan-kl", "kl = nan")])
def test_bad_stored_files_are_recomputed_and_reported(layer, tmp_path, content, reason):
    first = kl_vs_width(layer, widths=[16], seeds=1, out_dir=tmp_path, **SMALL)
    (file,) = next(tmp_path.glob("tasks-*")).glob("mixture-*.json")
    row = json.loads(file.read_text())
    if content is None:
        content = json.dumps(dict(row, width=32))
    elif content == "text-kl":
        content = json.dumps(dict(row, kl="x"))
    elif content == "nan-kl":
        content = json.dumps(dict(row, kl=float("nan")))
    file.write_text(content)
    with pytest.warns(RuntimeWarning, match=reason):
        again = kl_vs_width(layer, widths=[16], seeds=1, out_dir=tmp_path, **SMALL)
    pd.testing.assert_frame_equal(first.drop(columns="seconds"), again.drop(columns="seconds"))
    assert json.loads(file.read_text())["kl"] == row["kl"]  # the recomputed row replaced the bad file


def _rate_rows(kl=lambda w: 0.3 * w ** -2.0):
    rng = np.random.default_rng(4)
    return [dict(width=w, seed=s, kl=kl(w) * (1 + 0.01 * rng.standard_normal()), se=0.01 * kl(w))
            for w in (16, 64, 256, 1024) for s in range(2)]


@pytest.mark.parametrize("change, options, message", [
    (lambda r: dict(r, kl=math.inf) if r["width"] == 64 else r, {}, "kl is not a finite number at width = 64"),
    (lambda r: dict(r, kl=math.nan) if r["width"] == 16 else r, {}, "not a measurement"),
    (lambda r: dict(r, width=0) if r["width"] == 16 else r, {}, "width must be positive"),
    (lambda r: dict(r, se=-1.0) if r["width"] == 256 else r, {}, "se is negative"),
    (lambda r: r, {"level": 1.5}, "level"),
    (lambda r: r, {"level": 0.0}, "level"),
    (lambda r: r, {"min_snr": 0}, "min_snr"),
])
def test_fit_rate_refuses_what_it_cannot_fit(change, options, message):
    rows = [change(r) for r in _rate_rows()]
    with pytest.raises(netsor.ProgramError, match=message):
        fit_rate(pd.DataFrame(rows), **options)


def test_fit_rate_says_which_points_it_used():
    rows = _rate_rows() + [dict(width=math.inf, seed=0, kl=1e-3, se=1e-5)]  # a limit row: a value, not a rate point
    fit = fit_rate(pd.DataFrame(rows))
    assert fit.exponent == pytest.approx(2.0, abs=0.05)
    assert fit.points.set_index("width")["used"].to_dict() == {16: True, 64: True, 256: True, 1024: True,
                                                                 math.inf: False}


def test_numpy_integers_are_python_ints_in_the_store(layer, tmp_path, monkeypatch):
    """np.int64 sizes, widths and seeds (and arrays of them) are normalised at the boundary: the JSON store takes
    them, and a rerun with plain ints is the same sweep (nothing recomputed)."""
    first = kl_vs_width(layer, widths=np.array([16, 32]), size=np.int64(3000), seeds=np.int64(1), out_dir=tmp_path,
                        progress=False)
    assert first["width"].tolist() == [16, 32] and first["n_samples"].tolist() == [3000, 3000]
    calls = []
    original = sweep.run_task
    monkeypatch.setattr(sweep, "run_task", lambda task: calls.append(task.key) or original(task))
    again = kl_vs_width(layer, widths=[16, 32], size=3000, seeds=1, out_dir=tmp_path, progress=False)
    assert calls == [] and len(list(tmp_path.glob("tasks-*"))) == 1
    pd.testing.assert_frame_equal(first, again)
    heads = kl_vs_heads(heads=np.array([1]), width=np.int64(16), outputs=np.array([0]), seq_len=3,
                        inputs="gaussian", seeds=[np.int64(2)], out_dir=tmp_path, **SMALL)
    assert heads[["heads", "width", "seed"]].values.tolist() == [[1, 16, 2]]


def test_a_store_that_cannot_be_written_is_a_program_error(layer, tmp_path):
    (tmp_path / "kl_vs_width.csv").mkdir()  # the table's file name is taken by a folder
    with pytest.raises(netsor.ProgramError, match="out_dir .*: cannot write kl_vs_width.csv"):
        kl_vs_width(layer, widths=[16], out_dir=tmp_path, **SMALL)
    assert not list(tmp_path.glob("tasks-*/*.tmp"))


def test_unreachable_scheduler_is_a_program_error_naming_client(layer, monkeypatch):
    pytest.importorskip("dask.distributed")
    monkeypatch.setattr(sweep, "CONNECT_TIMEOUT", 1)
    with pytest.raises(netsor.ProgramError, match=r"client tcp://127.0.0.1:1: cannot connect \(.*after 1 s\)$"):
        kl_vs_width(layer, widths=[16], backend="dask", client="tcp://127.0.0.1:1", **SMALL)


def test_dask_from_a_starting_worker_says_to_guard_the_script(layer, monkeypatch):
    """A script without `if __name__ == "__main__":` re-runs in each spawned worker while it starts; the call there
    is refused with the hint (and so is a local cluster that fails to start, in the parent)."""
    pytest.importorskip("dask.distributed")
    import multiprocessing

    import dask.distributed

    monkeypatch.setattr(multiprocessing.current_process(), "_inheriting", True, raising=False)
    with pytest.raises(netsor.ProgramError, match='if __name__ == "__main__":'):
        kl_vs_width(layer, widths=[16], backend="dask", **SMALL)
    monkeypatch.undo()

    def nanny_fails(*args, **kwargs):
        raise RuntimeError("Nanny failed to start.")

    monkeypatch.setattr(dask.distributed, "LocalCluster", nanny_fails)
    # as from a script (a pytest-xdist worker's __main__ has no file)
    monkeypatch.setattr(sys.modules["__main__"], "__file__", "script.py", raising=False)
    with pytest.raises(netsor.ProgramError, match=r"the local cluster did not start \(RuntimeError: Nanny failed to "
                                                  r'start.\); if it was called from .*`if __name__ == "__main__":`'):
        kl_vs_heads(heads=[1], seq_len=3, backend="dask", **SMALL)


def test_own_cluster_workers_start_with_ctrl_c_ignored(layer, monkeypatch):
    """A terminal's Ctrl-C reaches the workers too: they start with SIGINT ignored (and print no tracebacks), and the
    sweep's process gets its handler back, also when the cluster fails to start."""
    pytest.importorskip("dask.distributed")
    import dask.distributed

    seen = []

    def records_sigint(*args, **kwargs):
        seen.append(signal.getsignal(signal.SIGINT))
        raise OSError("no ports left")

    monkeypatch.setattr(dask.distributed, "LocalCluster", records_sigint)
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(netsor.ProgramError, match=r"did not start \(OSError: no ports left\)"):
        kl_vs_width(layer, widths=[16], backend="dask", **SMALL)
    assert seen == [signal.SIG_IGN] and signal.getsignal(signal.SIGINT) is before


def test_pass_through_options_and_fits_are_checked():
    with pytest.raises(netsor.ProgramError, match=r"^kl_vs_heads: attention_layer takes no option bogus"):
        sweep.kl_vs_heads(bogus=1)
    with pytest.raises(netsor.ProgramError, match=r"^kernel_vs_heads: transformer takes no option bogus"):
        sweep.kernel_vs_heads(bogus=1)
    df = pd.DataFrame({"width": [16, 64, 256], "kl": [1e-2, 1e-3, 1e-4], "se": [1e-4, 1e-5, np.inf]})
    with pytest.raises(netsor.ProgramError, match=r"se is negative or infinite at width = 256"):
        sweep.fit_rate(df)
    fit = sweep.fit_rate(df.assign(se=[1e-4, 1e-5, 1e-6]))
    assert fit.exponent == pytest.approx(np.log(10) / np.log(4), rel=1e-6)
    with pytest.raises(netsor.ProgramError, match=r"^predict: x must be positive numbers"):
        fit.predict("a")


# ---- issue 15 item 4: the measured constant n²·KL, against a prediction
def _constant_rows(c=2.0, d=-10.0, widths=(16, 64, 256, 1024, 4096, 16384), seeds=3, rel=0.02, seed=0):
    """KL = (c + d/n)/n² plus noise, relative SE growing with n; the largest width unresolved."""
    rng = np.random.default_rng(seed)
    rows = []
    for w in widths:
        truth = (c + d / w) / w ** 2
        se = rel * truth * (w / 16) ** 0.25 if w < max(widths) else 2 * truth
        rows += [dict(width=w, seed=s, kl=truth + se * rng.standard_normal(), se=se) for s in range(seeds)]
    return rows


def test_fit_constant_recovers_c_and_flags_a_wrong_prediction():
    assert sweep.fit_constant(pd.DataFrame(_constant_rows())).widths == (1024, 4096)  # by default the two largest
    fit = sweep.fit_constant(pd.DataFrame(_constant_rows()), pool=3)
    assert fit.widths == (256, 1024, 4096)  # the three largest resolved widths: n = 16384 is a bound
    assert fit.points.set_index("width")["used"].to_dict() == {16: True, 64: True, 256: True, 1024: True,
                                                               4096: True, 16384: False}
    assert fit.ci[0] < 2.0 < fit.ci[1] and fit.ci[1] - fit.ci[0] < 0.4, fit
    assert fit.points["n2kl"].iloc[0] == pytest.approx(2.0 - 10 / 16, rel=0.1)  # n²·KL per width, below c at n = 16
    right = sweep.fit_constant(pd.DataFrame(_constant_rows()), prediction=(2.0, 0.02), pool=3)
    assert abs(right.z) < 2 and right.ratio_ci[0] < 1 < right.ratio_ci[1]
    wrong = sweep.fit_constant(pd.DataFrame(_constant_rows()), prediction=(3.0, 0.02), pool=3)
    assert wrong.z < -5 and wrong.ratio_ci[1] < 0.8, wrong  # power: a 50% wrong c is rejected
    assert "measured/predicted" in str(wrong) and "pooled over n = 256, 1024, 4096" in str(wrong)
    # pooling the small widths, where the d/n term matters, would be biased: the scatter widens the interval
    small = sweep.fit_constant(pd.DataFrame(_constant_rows()), pool=5)
    assert small.widths == (16, 64, 256, 1024, 4096) and small.se > fit.se


def test_fit_constant_of_a_measured_sweep_agrees_with_the_exact_correction():
    """A deep linear chain y = W₂W₁x: c = 3 exactly (the correction's cubature), measured by the mixture
    estimator; the correction itself is accepted as the prediction."""
    prog = netsor.Program("chain")
    y = prog.matrix("W2") @ (prog.matrix("W1") @ prog.input("x"))
    df = kl_vs_width(prog, [y], widths=[256, 1024, 4096], size=20_000, seeds=2, progress=False)
    correction = netsor.finite_width_correction(prog, [y])
    assert correction.exact and correction.kl_constant()[0] == pytest.approx(3.0, rel=1e-6)
    fit = sweep.fit_constant(df, prediction=correction)
    assert fit.ci[0] < 3.0 < fit.ci[1] and abs(fit.z) < 3 and fit.predicted[0] == pytest.approx(3.0, rel=1e-6)
    assert sweep.fit_constant(df, prediction=(4.0, 0.0)).z < -5


@pytest.mark.parametrize("options, message", [
    ({"prediction": "2.0"}, r"^fit_constant: prediction must be a FiniteWidthCorrection or a pair \(c, se\)"),
    ({"prediction": (2.0,)}, "prediction must be a FiniteWidthCorrection or a pair"),
    ({"prediction": (True, 0.1)}, "prediction must be a FiniteWidthCorrection or a pair"),
    ({"prediction": (-1.0, 0.1)}, r"prediction must be a positive c with a finite se ≥ 0, got \(-1, 0.1\)"),
    ({"prediction": (2.0, math.inf)}, "positive c with a finite se"),
    ({"pool": 0}, "^fit_constant: pool must be a positive integer"),
    ({"level": 1.0}, "^fit_constant: level must be a number in"),
    ({"min_snr": -1}, "^fit_constant: min_snr must be a positive number"),
])
def test_fit_constant_refuses_bad_arguments(options, message):
    with pytest.raises(netsor.ProgramError, match=message):
        sweep.fit_constant(pd.DataFrame(_constant_rows()), **options)


def test_fit_constant_needs_a_resolved_width():
    rows = [dict(r, kl=1e-12) for r in _constant_rows()]
    with pytest.raises(netsor.ProgramError, match="^fit_constant: no width has kl above 3 SE"):
        sweep.fit_constant(pd.DataFrame(rows))
    with pytest.raises(netsor.ProgramError, match=r"^fit_constant: expected a DataFrame with columns"):
        sweep.fit_constant(pd.DataFrame({"width": [16]}))
    limit_row = _constant_rows() + [dict(width=math.inf, seed=0, kl=1e-3, se=1e-5)]  # ignored: no n² at n = ∞
    assert sweep.fit_constant(pd.DataFrame(limit_row)).widths == (1024, 4096)


def test_local_slopes_between_resolved_neighbours():
    from limits import local_slopes
    widths = np.array([16, 64, 256, 1024, 4096])
    kl = 3.0 * widths ** -2.0 * (1 - 4.0 / widths)  # an n⁻² law with a 1/n correction: slopes rise to 2
    df = pd.DataFrame({"width": widths, "kl": kl, "se": 0.01 * kl})
    slopes = local_slopes(df)
    expected = -np.diff(np.log(kl)) / np.diff(np.log(widths))
    np.testing.assert_allclose(slopes["slope"], expected, rtol=1e-12)
    np.testing.assert_allclose(slopes["se"], math.sqrt(2) * 0.01 / math.log(4), rtol=1e-12)
    assert slopes["slope"].is_monotonic_increasing and abs(slopes["slope"].iloc[-1] - 2) < 3e-3
    df.loc[df.width == 4096, "se"] = kl[-1]  # a bound (under 3 SE) is skipped, not a neighbour
    assert local_slopes(df)["to"].tolist() == [64, 256, 1024]
    with pytest.raises(netsor.ProgramError, match="local_slopes: .*must be positive"):
        local_slopes(df.assign(width=-df.width))
