"""Run every benchmark in one process and write benchmarks/RESULTS.md and benchmarks/results.json.

    python -m benchmarks [--quick] [--only NAME ...]
    python benchmarks/run.py
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"

import numba  # noqa: E402
import numpy  # noqa: E402
import scipy  # noqa: E402

from benchmarks import (attention, correction, dense, exact, kl_sweep, lazy, long_sequence, nested_limit,  # noqa: E402
                        scaling, startup, training)

HERE = Path(__file__).resolve().parent
SUITES = {"dense": dense.run, "attention": attention.run, "exact": exact.run, "lazy": lazy.run,
          "nested_limit": nested_limit.run, "kl_sweep": kl_sweep.run, "correction": correction.run,
          "training": training.run, "startup": startup.run, "scaling": scaling.run,
          "long_sequence": long_sequence.run}


def machine() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return dict(cpu=cpu, cores=os.cpu_count(), python=platform.python_version(), numpy=numpy.__version__,
                scipy=scipy.__version__, numba=numba.__version__, system=platform.platform(),
                date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))


def previous_rows(keep: set) -> list[dict]:
    """Rows of the suites in `keep` from the last results.json, so a partial run (--only) keeps the others."""
    try:
        saved = json.loads((HERE / "results.json").read_text())
    except (OSError, ValueError):
        return []
    date = saved.get("machine", {}).get("date", "earlier run")
    return [dict(r, run=r.get("run", date)) for r in saved.get("results", []) if r.get("suite") in keep]


def write(rows: list[dict], info: dict) -> None:
    (HERE / "results.json").write_text(json.dumps(dict(machine=info, results=rows), indent=2) + "\n")
    lines = ["# Benchmark results", "",
             "Written by `python -m benchmarks`; every ratio is against a baseline timed in the same run.", "",
             f"Machine: {info['cpu']}, {info['cores']} cores; {info['system']}; Python {info['python']}, "
             f"numpy {info['numpy']}, scipy {info['scipy']}, numba {info['numba']}; run {info['date']}.", "",
             "| benchmark | case | value | baseline | ratio | run |", "|---|---|---|---|---|---|"]
    for r in rows:
        baseline = "—" if r.get("baseline") is None else f"{r['baseline']:.4g} {r['unit']} ({r['baseline_name']})"
        ratio = "—" if r.get("ratio") is None else f"{r['ratio']:.3g}×"
        lines.append(f"| {r['benchmark']} | {r['case']} | {r['value']:.4g} {r['unit']} | {baseline} | {ratio} | "
                     f"{r.get('run', info['date'])} |")
    notes = [r["note"] for r in rows if r.get("note")]
    if notes:
        lines += ["", *[f"- {n}" for n in notes]]
    # sections written by hand (from the first "## " heading on) are kept as they are
    try:
        previous = (HERE / "RESULTS.md").read_text()
    except OSError:
        previous = ""
    start = previous.find("\n## ")
    kept = previous[start:] if start >= 0 else ""
    (HERE / "RESULTS.md").write_text("\n".join(lines) + "\n" + kept)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small cases only (a smoke run)")
    parser.add_argument("--only", nargs="+", choices=sorted(SUITES), help="run only these suites")
    args = parser.parse_args(argv)
    info = machine()
    chosen = args.only or list(SUITES)
    # a partial run keeps the other suites' last results, each row marked with the run it comes from
    rows = [] if args.quick else previous_rows(set(SUITES) - set(chosen))
    for name in chosen:
        print(f"running {name} ...", flush=True)
        for row in SUITES[name](quick=args.quick):
            ratio = "no baseline" if row.get("ratio") is None else f"{row['ratio']:.3g}× {row['baseline_name']}"
            print(f"  {row['case']}: {row['value']:.4g} {row['unit']}  ({ratio})", flush=True)
            rows.append(dict(row, suite=name, run=info["date"]))
    rows.sort(key=lambda r: list(SUITES).index(r["suite"]) if r.get("suite") in SUITES else len(SUITES))
    write(rows, info)
    print(f"wrote {HERE / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
