"""Every notebook runs end to end as a Jupyter notebook and asserts its claims, and its committed .ipynb (outputs
stored, figures inline) is the notebook its jupytext script describes. (How long each takes is for the benchmarks
to measure: tests assert no wall-clock times.)

The notebooks are independent, each mostly one busy core, so they run PARALLEL at a time, each in a subprocess
(`notebooks/render.py --check`: a fresh kernel, the quick mode), all started when the first notebook test needs
them (slowest first, so the last to finish is a short one); each test waits for its own notebook and reports its
output. Running one test (-k 03) runs only that notebook."""
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jupytext
import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py"))
PARALLEL = 2  # the suite's budget is two cores
SLOWEST_FIRST = ("06_deep_stacks", "03_head_dim", "01_single_layer_limit")  # only the order they start in
TIMEOUT = 600  # seconds, per notebook


def run_notebook(notebook: Path, figures: Path, out: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, NETSOR_FIGURES=str(figures),
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    return subprocess.run([sys.executable, "render.py", "--check", notebook.stem, "--out", str(out), "--jobs", "1"],
                          cwd=notebook.parent, env=env, capture_output=True, text=True, timeout=TIMEOUT)


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
        figures, out = tmp_path_factory.mktemp(notebook.stem), tmp_path_factory.mktemp(notebook.stem + "-ipynb")
        runs[notebook] = pool.submit(run_notebook, notebook, figures, out), figures
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
    assert list(figures.rglob("*.png")), "the notebook writes its figures"


def _cells(notebook):
    return [(cell.cell_type, cell.source.strip()) for cell in notebook.cells]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_ipynb_is_the_script_with_its_outputs(notebook):
    """The .ipynb a repository page renders: the same cells as the script (jupytext pairing), its figures stored
    inline, opening with its claim and ending with the asserted answer ('all claims hold' among its outputs)."""
    paired = notebook.with_suffix(".ipynb")
    assert paired.exists(), f"{paired.name} is missing: run `python render.py {notebook.stem[:2]}` in notebooks/"
    script, stored = jupytext.read(notebook), nbformat.read(paired, as_version=4)
    assert _cells(stored) == _cells(script), f"{paired.name} is out of date: run `python render.py {notebook.stem[:2]}`"
    assert stored.cells[0].cell_type == "markdown" and ("**Claim" in stored.cells[0].source
                                                        or "**Answer" in stored.cells[0].source)
    code = [cell for cell in stored.cells if cell.cell_type == "code"]
    assert all(cell.get("execution_count") for cell in code), "every code cell was executed"
    images = [out for cell in code for out in cell.outputs if "image/png" in out.get("data", {})]
    assert images, "the figures are stored in the notebook"
    last = "".join(out.get("text", "") for out in code[-1].outputs if out.get("output_type") == "stream")
    assert "all claims hold" in code[-1].source and "all claims hold" in last
    assert not any(out.get("output_type") == "error" for cell in code for out in cell.outputs)
