"""Build each notebook's .ipynb, with its outputs, from its jupytext script (the .py files are the source; the two
are paired: `formats: ipynb,py:percent`).

    python render.py                      every notebook, each in its recorded mode (NETSOR_FULL=1 where it has one)
    python render.py 09 10                those notebooks only
    python render.py --quick 04           the quick mode (what the test suite runs), written to the .ipynb
    python render.py --check 04 --out DIR execute the quick mode into DIR/04_….ipynb and print its text outputs

Cells run in a Jupyter kernel of this Python (ipykernel), from this folder, so figures appear inline and tables
print as they would for a reader. A notebook run in its recorded mode writes its figure files to figures/ (the
committed figures and the .ipynb then come from the same run); a quick run of a notebook whose recorded run is the
full one (--quick, --check) writes them to NETSOR_FIGURES, or a temporary folder, never over the recorded ones.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
FULL_MODE = ("03_head_dim", "06_deep_stacks", "08_kl_predicted", "09_attention_variants", "10_growing_sequences")
SLOWEST_FIRST = ("06_deep_stacks", "10_growing_sequences", "03_head_dim", "08_kl_predicted", "09_attention_variants")
TIMEOUT = 3600  # seconds per cell (a full run's sweep cell takes minutes)


def scripts(selected=()) -> list[Path]:
    found = sorted(HERE.glob("[0-9][0-9]_*.py"))
    if selected:
        found = [p for p in found if any(p.stem.startswith(s) for s in selected)]
    return found


def execute(script: Path, full: bool, figures: Path, timeout: int = TIMEOUT):
    """The notebook of `script` executed in a fresh kernel: an nbformat NotebookNode with its outputs."""
    import jupytext
    from nbclient import NotebookClient

    notebook = jupytext.read(script)
    notebook.metadata["jupytext"] = {"formats": "ipynb,py:percent"}
    env = dict(os.environ, NETSOR_FIGURES=str(figures), PYTHONPATH=os.pathsep.join(
        filter(None, [str(HERE.parent), os.environ.get("PYTHONPATH")])))
    env.pop("MPLBACKEND", None)  # the kernel's inline backend shows the figures in the notebook
    env.pop("NETSOR_FULL", None)
    if full:
        env["NETSOR_FULL"] = "1"
    NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(HERE)}}).execute(env=env, cwd=str(HERE))
    return notebook


def text_outputs(notebook) -> str:
    """What the notebook printed (streams and plain-text results), in order."""
    parts = []
    for cell in notebook.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                parts.append(out.get("text", ""))
            elif "data" in out and "text/plain" in out["data"]:
                parts.append(out["data"]["text/plain"] + "\n")
    return "".join(parts)


def main(argv=None) -> int:
    import nbformat

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", help="prefixes such as 04 (default: all)")
    parser.add_argument("--quick", action="store_true", help="the quick mode even where a recorded full run exists")
    parser.add_argument("--check", action="store_true", help="quick mode into --out, printing the text outputs")
    parser.add_argument("--out", type=Path, default=None, help="folder for the .ipynb (default: next to the .py)")
    parser.add_argument("--jobs", type=int, default=2, help="notebooks at a time (default 2)")
    args = parser.parse_args(argv)
    chosen = scripts(args.notebooks)
    if not chosen:
        print(f"render: no notebook matches {args.notebooks}", file=sys.stderr)
        return 2
    scratch = Path(os.environ.get("NETSOR_FIGURES") or tempfile.mkdtemp(prefix="netsor-figures-"))

    def build(script: Path) -> str:
        full = not (args.quick or args.check) and script.stem in FULL_MODE
        recorded = not args.check and (full or script.stem not in FULL_MODE)
        notebook = execute(script, full, Path("figures") if recorded else scratch / script.stem)
        target = (args.out or HERE) / (script.stem + ".ipynb")
        target.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(notebook, target)
        mode = "full mode" if full else ("quick mode" if script.stem in FULL_MODE else "its one mode")
        return text_outputs(notebook) if args.check else f"wrote {target} ({mode})\n"

    slowest = {name: rank for rank, name in enumerate(SLOWEST_FIRST)}
    order = sorted(chosen, key=lambda p: (slowest.get(p.stem, len(slowest)), p.name))
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for text in pool.map(build, order):
            sys.stdout.write(text)
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
