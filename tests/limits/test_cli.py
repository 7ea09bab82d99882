"""The `netsor-limits` command line: files written, exit codes, one-line errors, --help."""
import configparser
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import integrate, stats

from limits.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_console_script_is_declared():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    assert "netsor-limits = limits.cli:run" in cfg["options.entry_points"]["console_scripts"]


def test_help_exits_zero():
    result = subprocess.run([sys.executable, "-m", "limits", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0 and "kl" in result.stdout and "describe" in result.stdout
    result = subprocess.run([sys.executable, "-m", "limits", "kl", "--help"], capture_output=True, text=True,
                            cwd=ROOT)
    assert result.returncode == 0 and "--widths" in result.stdout and "--estimator" in result.stdout


@pytest.mark.parametrize("argv, message", [
    ([], "choose a command"),
    (["fit"], "invalid choice"),
    (["kl", "--widths", "0,16"], "positive integers"),
    (["kl", "--widths", "abc"], "comma-separated integers"),
    (["kl", "--estimator", "tv"], "invalid choice"),
    (["kl", "--seeds=-1,2"], "non-negative"),
    (["kl", "--heads", "inf"], "no finite width"),
    (["kl", "--output", "9", "--widths", "16"], "--output must be in 0..3"),
    (["describe", "--seq-len", "0"], "positive integer"),
    (["kl", "--bogus"], "unrecognized arguments"),
])
def test_bad_options_one_line_exit_2(argv, message, capsys, tmp_path):
    assert main(argv + ["--out", str(tmp_path)] if argv and argv[0] == "kl" and "--bogus" not in argv
                else argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err


def test_bad_option_in_a_subprocess_has_no_traceback():
    result = subprocess.run([sys.executable, "-m", "limits", "kl", "--size", "many"], capture_output=True,
                            text=True, cwd=ROOT)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_kl_writes_table_csv_and_figures(tmp_path, capsys):
    out = tmp_path / "results"
    assert main(["kl", "--inputs", "gaussian", "--seq-len", "3", "--widths", "16,64", "--size", "3000",
                 "--seeds", "2", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "width" in printed and "coupled" in printed and "local slope −Δlog KL/Δlog n: 16→64: " in printed
    df = pd.read_csv(out / "kl_vs_width.csv")
    assert df[["width", "seed"]].values.tolist() == [[16, 0], [16, 1], [64, 0], [64, 1]]
    assert (out / "kl_vs_width.png").stat().st_size > 1000 and (out / "kl_vs_width.pdf").exists()


def test_sample_and_describe(tmp_path, capsys):
    assert main(["sample", "--inputs", "gaussian", "--width", "32", "--size", "500", "--out", str(tmp_path)]) == 0
    df = pd.read_csv(tmp_path / "samples_n32.csv")
    assert df.shape == (500, 4) and list(df.columns) == ["y1", "y2", "y3", "y4"]
    assert main(["sample", "--heads", "inf", "--size", "300", "--out", str(tmp_path)]) == 0
    assert pd.read_csv(tmp_path / "samples_limit.csv").shape == (300, 4)
    capsys.readouterr()
    assert main(["describe", "--heads", "1", "--seq-len", "2"]) == 0
    assert "N(0" in capsys.readouterr().out


# ---- issue 13 item 7: every bad invocation is one line and exit 2; Ctrl-C is one line and exit 130
@pytest.mark.parametrize("argv, message", [
    (["kl", "--widths", "99999999999999999999"], "argument --widths: expected values at most 2^62"),
    (["kl", "--widths", "16,16"], "argument --widths: 16 repeated"),
    (["kl", "--seeds", "3,0,3"], "argument --seeds: 3 repeated"),
    (["kl", "--seeds", "99999999999999999999"], "argument --seeds: expected at most 2^20"),
    (["kl", "--size", "1"], "argument --size: expected an integer ≥ 2"),
    (["kl", "--scheduler", "tcp://127.0.0.1:1"], "--scheduler needs --backend dask"),
    (["kl", "--backend", "dask", "--scheduler", " "], "argument --scheduler: expected a scheduler address"),
    (["kl", "--out", ""], "argument --out: expected a folder"),
    (["kl", "--heads", "1000000000"], "--heads 1000000000 and --seq-len 4 make"),
    (["sample", "--width", str(2 ** 62 + 1)], "argument --width: expected at most 2^62"),
    (["sample", "--head-dim", "99999999999999999999"], "argument --head-dim: expected at most 2^62"),
    (["sample", "--seed=-1"], "argument --seed: expected a non-negative integer"),
    (["sample", "--output", "7"], "--output must be in 0..3"),
    (["describe", "--output", "4"], "--output must be in 0..3"),
    (["describe", "--seq-len", "99999999999999999999"], "attention scores"),
    (["describe", "--heads", "inf", "--latex"], "--latex"),
])
def test_more_bad_values_one_line_exit_2(argv, message, capsys, tmp_path):
    out = ["--out", str(tmp_path / "out")] if argv[0] != "describe" and "--out" not in argv else []
    assert main(argv + out) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_unreachable_scheduler_fails_fast_in_one_line(capsys, tmp_path, monkeypatch):
    pytest.importorskip("dask.distributed")
    from limits import sweep
    monkeypatch.setattr(sweep, "CONNECT_TIMEOUT", 1)  # the default (a few seconds) is the same code path
    assert main(["kl", "--widths", "16", "--size", "100", "--seeds", "1", "--backend", "dask", "--scheduler",
                 "tcp://127.0.0.1:1", "--out", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("netsor-limits: error: --scheduler tcp://127.0.0.1:1: cannot connect (")
    assert err.count("\n") == 1 and "after 1 s" in err


def _blocked(tmp_path, case):
    """An --out that cannot be written, and what the error must say."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    if case == "file":
        return blocker, "is a file, not a folder"
    if case == "under a file":
        return blocker / "x" / "y", "cannot write there"
    (tmp_path / "csv" / "samples_n16.csv").mkdir(parents=True)  # the file to write is a folder
    return tmp_path / "csv", "cannot write samples_n16.csv"


@pytest.mark.parametrize("case", ["file", "under a file", "csv is a folder"])
def test_unwritable_out_is_one_line_naming_out(case, capsys, tmp_path):
    out, message = _blocked(tmp_path, case)
    assert main(["sample", "--inputs", "gaussian", "--seq-len", "2", "--width", "16", "--size", "50",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"netsor-limits: error: --out {out}: ") and message in err and err.count("\n") == 1
    if case != "csv is a folder":
        assert main(["kl", "--widths", "16", "--size", "50", "--out", str(out), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"netsor-limits: error: --out {out}: ") and message in err and err.count("\n") == 1


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes into read-only folders")
def test_out_without_permission_is_one_line(capsys, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        assert main(["sample", "--inputs", "gaussian", "--seq-len", "2", "--size", "50", "--out", str(locked)]) == 2
    finally:
        locked.chmod(0o755)
    err = capsys.readouterr().err
    assert err.startswith(f"netsor-limits: error: --out {locked}: cannot write there") and err.count("\n") == 1


def test_output_selects_one_output(tmp_path, capsys):
    assert main(["sample", "--inputs", "gaussian", "--seq-len", "3", "--width", "16", "--size", "200",
                 "--output", "1", "--out", str(tmp_path)]) == 0
    assert list(pd.read_csv(tmp_path / "samples_n16.csv").columns) == ["y2"]
    capsys.readouterr()
    assert main(["describe", "--heads", "inf", "--seq-len", "3", "--output", "2"]) == 0
    printed = capsys.readouterr().out
    assert "(y3) ~ N(0, C)" in printed and "y1" not in printed


def test_memory_error_and_warnings_are_one_line(monkeypatch, capsys):
    import warnings

    import limits.cli as cli

    def no_memory(args):
        raise MemoryError("Unable to allocate 14.6 TiB for an array")

    def warns(args):
        warnings.warn("first line\nsecond line", RuntimeWarning)

    monkeypatch.setattr(cli, "_describe", no_memory)
    assert main(["describe"]) == 2
    err = capsys.readouterr().err
    assert err == "netsor-limits: error: out of memory (Unable to allocate 14.6 TiB for an array); ask for less " \
                  "(--size, --width)\n"
    monkeypatch.setattr(cli, "_describe", warns)
    assert main(["describe"]) == 0
    assert capsys.readouterr().err == "netsor-limits: warning: first line\n"


# the driver imports limits.cli as `netsor-limits` does (the package's exports load lazily), says whether that
# import pulled a heavy module, and announces itself from inside run()'s guarded region
_SIGINT_DRIVER = """
import sys
sys.path.insert(0, sys.argv[1])
import limits.cli as cli
heavy = sorted(m for m in ("numpy", "numba", "pandas", "netsor") if m in sys.modules)
main = cli.main
def announced(argv=None):
    print("ready", heavy, flush=True)
    return main(argv)
cli.main = announced
sys.argv = ["netsor-limits", "kl", "--widths", "16,64", "--size", "400000", "--seeds", "40", "--no-progress",
            "--out", sys.argv[2]]
cli.run()
"""


def test_ctrl_c_from_start_up_on_is_one_line_and_exit_130(tmp_path):
    """SIGINT every 20 ms from the moment run() starts (so during the heavy imports, parsing and the sweep, and
    again while it cleans up) until the process ends: one line, exit 130, never a traceback."""
    # a background job (CI started with `&`, nohup) inherits SIGINT ignored, which the CLI rightly keeps: the
    # driver starts with the default disposition, as a terminal's foreground process does
    proc = subprocess.Popen([sys.executable, "-c", _SIGINT_DRIVER, str(ROOT), str(tmp_path / "out")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        ready = proc.stdout.readline()
        sent = 0
        while proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            sent += 1
            try:
                proc.wait(0.02)
            except subprocess.TimeoutExpired:
                pass
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert ready == "ready []\n", (ready, err[-2000:])  # cli.py itself loads no heavy module: they load under guard
    assert sent >= 1 and proc.returncode == 130, err[-2000:]
    lines = err.splitlines()
    assert "Traceback" not in err and 1 <= len(lines) <= 2 and all(
        line.startswith("netsor-limits: interrupted") for line in lines), err[-2000:]


def test_python_m_limits_cli_runs_the_command_line():
    result = subprocess.run([sys.executable, "-m", "limits.cli", "describe", "--heads", "0"], capture_output=True,
                            text=True, cwd=ROOT)
    assert result.returncode == 2 and "argument --heads" in result.stderr and result.stderr.count("\n") == 1


# ---- issue 15 item 4: --predict, the constant of KL = c/n² from the first finite-width correction
def test_kl_predict_prints_and_draws_the_predicted_constant(tmp_path, capsys, monkeypatch):
    from limits import plot
    drawn = {}
    original = plot.kl_vs_width

    def spy(df, **options):
        drawn.update(options)
        return original(df, **options)

    monkeypatch.setattr(plot, "kl_vs_width", spy)
    assert main(["kl", "--inputs", "gaussian", "--seq-len", "3", "--widths", "16,64", "--size", "3000",
                 "--seeds", "2", "--predict", "--predict-size", "1024", "--out", str(tmp_path), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    line = next(t for t in printed.splitlines() if t.startswith("predicted by the first finite-width correction"))
    assert "Monte Carlo, 1024 draws" in line
    c = float(line.split("c = ")[1].split(" ± ")[0])
    assert 1.0 < c < 3.0  # s = 3, H = 2, Gaussian tokens: c ≈ 1.9
    assert "n²·KL → c = " in printed and "measured/predicted = " in printed and ", z = " in printed
    assert drawn["predicted"][0] == pytest.approx(c, rel=1e-3)  # the figure draws the same line
    assert (tmp_path / "kl_vs_width.png").stat().st_size > 1000


def test_kl_without_predict_prints_no_prediction(tmp_path, capsys):
    assert main(["kl", "--inputs", "gaussian", "--seq-len", "2", "--widths", "16", "--size", "500", "--seeds", "1",
                 "--out", str(tmp_path), "--no-progress"]) == 0
    assert "predicted" not in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--predict-size", "4096"], "error: --predict-size needs --predict"),
    (["--predict", "--predict-size", "10"], "error: --predict: finite_width_correction: size must be at least 1024"),
    (["--predict", "--predict-size", "0"], "argument --predict-size: expected a positive integer"),
])
def test_predict_refusals_are_one_line_exit_2(argv, message, capsys, tmp_path):
    assert main(["kl", "--inputs", "gaussian", "--widths", "16", "--size", "200", "--out", str(tmp_path / "out"),
                 "--no-progress"] + argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err
    assert not (tmp_path / "out" / "kl_vs_width.csv").exists()  # refused before the sweep ran


def test_predict_on_a_program_the_correction_refuses_says_why(capsys, tmp_path, monkeypatch):
    import netsor

    def refuses(program, variables, **options):
        raise netsor.ProgramError("finite_width_correction: x := clip(W h): a reason\nand a second line")

    monkeypatch.setattr(netsor, "finite_width_correction", refuses)
    assert main(["kl", "--widths", "16", "--size", "200", "--predict", "--out", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err == "netsor-limits: error: --predict: finite_width_correction: x := clip(W h): a reason\n"
    assert not (tmp_path / "kl_vs_width.csv").exists()


# ---- issue 17: the attention variants on the command line
def test_variants_build_the_layer_they_name(tmp_path, capsys):
    assert main(["describe", "--seq-len", "3", "--heads", "1", "--inputs", "gaussian", "--mask", "causal",
                 "--score-map", "relu", "--temperature", "2", "--alibi", "0.5", "--output", "1"]) == 0
    text = capsys.readouterr().out
    assert "(p_2,1, p_2,2) ~ N(0, C)" in text and "A_2[0] = Max(0, z_2,1)/2" in text
    assert main(["describe", "--seq-len", "2", "--kv-len", "3", "--heads", "1", "--inputs", "gaussian",
                 "--positional", "sinusoidal", "--value-nonlinearity", "tanh", "--output", "0"]) == 0
    text = capsys.readouterr().out
    # query 1 against memory tokens 1..3 (inputs x3..x5); tokens + sinusoidal encodings: K_jj = 1 + 1
    assert "(p_1,1, p_1,2, p_1,3) ~ N(0, C), C = K_l ⊗ K_r" in text and "over (k_1, k_2, k_3)" in text
    tanh_square = integrate.quad(lambda g: np.tanh(np.sqrt(2) * g) ** 2 * stats.norm.pdf(g), -12, 12)[0]
    assert f"K[y1,y1] = {tanh_square:.6f}*A_1[0]**2" in text  # E[tanh(v)²], v ~ N(0, 2)
    assert main(["kl", "--seq-len", "2", "--heads", "1", "--inputs", "gaussian", "--tied-qk", "--scaling", "linear",
                 "--widths", "16,64", "--size", "2000", "--seeds", "1", "--estimator", "mixture", "--out",
                 str(tmp_path), "--no-progress"]) == 0
    assert "1/d scores, gaussian tokens, tied W_K = W_Q; mixture" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["describe", "--positional", "sinusoidal"], "--positional adds encodings to gaussian tokens"),
    (["describe", "--tied-qk", "--inputs", "gaussian"], "tied_qk (W_K = W_Q) with head dimension n needs scores / n"),
    (["describe", "--score-map", "tanh"], "argument --score-map: invalid choice"),
    (["describe", "--temperature", "0"], "argument --temperature: expected a finite positive number"),
    (["describe", "--kv-len", "2", "--mask", "causal", "--inputs", "gaussian"], "causal mask needs as many keys"),
    (["describe", "--value-nonlinearity", "nope", "--inputs", "gaussian"], "value_nonlinearity"),
])
def test_variant_errors_are_one_line_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err


# ---- issue 18: figures say what they show; --open shows them
def test_kl_figure_title_names_layer_estimator_and_draws_and_open_opens_it(tmp_path, capsys, monkeypatch):
    import matplotlib.pyplot as plt

    from limits import plot
    titles, opened = [], []
    original = plot.kl_vs_width

    def spy(df, **kwargs):
        fig, ax = original(df, **kwargs)
        titles.append(ax.get_title())
        return fig, ax

    monkeypatch.setattr(plot, "kl_vs_width", spy)
    monkeypatch.setattr("webbrowser.open", lambda uri: opened.append(uri) or True)
    assert main(["kl", "--inputs", "gaussian", "--seq-len", "2", "--heads", "1", "--mask", "causal", "--widths",
                 "16,64", "--size", "500", "--seeds", "2", "--out", str(tmp_path), "--no-progress", "--open"]) == 0
    (title,) = titles
    assert ("KL(finite n ‖ limit) of y1, attention s=2, H=1, d=n, 1/sqrt(d) scores, gaussian tokens, causal mask"
            in title)
    assert "coupled estimator, 500 draws × 2 seeds per point" in title
    assert opened == [(tmp_path / "kl_vs_width.png").resolve().as_uri()]
    assert f"opened {tmp_path / 'kl_vs_width.png'}" in capsys.readouterr().out
    monkeypatch.setattr("webbrowser.open", lambda uri: False)  # no viewer: the path is printed instead
    assert main(["kl", "--inputs", "gaussian", "--seq-len", "2", "--heads", "1", "--widths", "16", "--size", "500",
                 "--seeds", "1", "--out", str(tmp_path), "--no-progress", "--open"]) == 0
    assert f"no viewer to open {tmp_path / 'kl_vs_width.png'} here" in capsys.readouterr().out
    plt.close("all")
