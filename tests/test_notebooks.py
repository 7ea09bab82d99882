"""Every notebook (jupytext percent script in notebooks/) runs end to end and asserts its claims. (How long each
takes is for the benchmarks to measure: tests assert no wall-clock times.)"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py"))


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 2


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_and_its_claims_hold(notebook, tmp_path):
    env = dict(os.environ, MPLBACKEND="Agg", NETSOR_FIGURES=str(tmp_path),
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    result = subprocess.run([sys.executable, notebook.name], cwd=notebook.parent, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "all claims hold" in result.stdout
    assert list(tmp_path.glob("*.png")), "the notebook writes its figures"
