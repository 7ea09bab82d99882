"""Every notebook (jupytext percent script in notebooks/) runs end to end and asserts its claims. (How long each
takes is for the benchmarks to measure: tests assert no wall-clock times.)

The notebooks are independent scripts, each mostly one busy core, so they run PARALLEL at a time in subprocesses,
all started when the first notebook test needs them (slowest first, so the last to finish is a short one); each
test waits for its own notebook and reports its output. Running one test (-k 03) runs only that notebook."""
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py"))
PARALLEL = 2  # the suite's budget is two cores
SLOWEST_FIRST = ("06_deep_stacks", "03_head_dim", "01_single_layer_limit")  # only the order they start in
TIMEOUT = 600  # seconds, per notebook


def run_notebook(notebook: Path, figures: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, MPLBACKEND="Agg", NETSOR_FIGURES=str(figures),
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    return subprocess.run([sys.executable, notebook.name], cwd=notebook.parent, env=env, capture_output=True,
                          text=True, timeout=TIMEOUT)


@pytest.fixture(scope="module")
def notebook_runs(request, tmp_path_factory):
    """{notebook: (future of its CompletedProcess, its figures folder)} for the notebooks this session selected."""
    selected = {item.callspec.params["notebook"] for item in request.session.items
                if getattr(item, "originalname", None) == "test_notebook_runs_and_its_claims_hold"}
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    order = sorted(selected, key=lambda p: (rank.get(p.stem, len(rank)), p.name))
    pool = ThreadPoolExecutor(max_workers=PARALLEL)
    runs = {}
    for notebook in order:
        figures = tmp_path_factory.mktemp(notebook.stem)
        runs[notebook] = pool.submit(run_notebook, notebook, figures), figures
    yield runs
    pool.shutdown(wait=True, cancel_futures=True)


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 2


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_and_its_claims_hold(notebook, notebook_runs):
    future, figures = notebook_runs[notebook]
    result = future.result()
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "all claims hold" in result.stdout
    assert list(figures.glob("*.png")), "the notebook writes its figures"
