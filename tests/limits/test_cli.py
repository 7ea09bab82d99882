"""The `netsor-limits` command line: files written, exit codes, one-line errors, --help."""
import configparser
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

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
    assert "width" in printed and "mixture" in printed
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
