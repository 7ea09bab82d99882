"""The layout keeps its promises: netsor's modules import each other without cycles, and `limits`, the notebooks
and the benchmarks use netsor's public API only."""
import ast
import importlib
from pathlib import Path

import pytest

import netsor

ROOT = Path(__file__).resolve().parent.parent
PUBLIC_MODULES = ("netsor", "netsor.random", "netsor.testing", "netsor.quadrature", "netsor.compiled",
                  "netsor.parallel", "netsor.display")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def netsor_modules() -> dict[str, Path]:
    return {module_name(p): p for p in (ROOT / "netsor").rglob("*.py")}


def imported_modules(path: Path, modules: dict) -> set[str]:
    """The netsor modules a file imports anywhere in it (top level or inside functions)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "netsor")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            if target.split(".")[0] != "netsor":
                continue
            found.add(target)
            found.update(f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in modules)
    return {m for m in found if m in modules and m != name}


def test_the_netsor_import_graph_is_acyclic():
    modules = netsor_modules()
    # a package's __init__ re-exports its children; the children never import it back (checked below)
    graph = {m: imported_modules(p, modules) for m, p in modules.items()}
    for m, targets in graph.items():
        for t in targets:
            if t != "netsor" and m.startswith(t + "."):
                pytest.fail(f"{m} imports its own package {t}")
    state: dict[str, int] = {}

    def visit(m, path):
        state[m] = 1
        for t in sorted(graph[m] - {"netsor"}):
            if state.get(t) == 1:
                pytest.fail("import cycle: " + " → ".join(path[path.index(t):] + [t]))
            if t not in state:
                visit(t, path + [t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert len(graph) > 20


def test_the_cycle_check_can_fail(tmp_path):
    """Power: the same walk over a file that imports a module importing it back finds the edge both ways."""
    modules = netsor_modules()
    fake = ROOT / "netsor" / "ir" / "program.py"
    assert "netsor.ir.nonlinearities" in imported_modules(fake, modules)
    assert "netsor.ir.program" not in imported_modules(ROOT / "netsor" / "ir" / "nonlinearities.py", modules)


def public_names(module: str) -> set[str]:
    return set(importlib.import_module(module).__all__)


def violations(path: Path) -> list[str]:
    """Imports of netsor internals, or of names a public module does not export, in one file."""
    found = []
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "netsor":
            if node.module not in PUBLIC_MODULES:
                found.append(f"{path.name}:{node.lineno} imports from {node.module}")
                continue
            exported = public_names(node.module)
            found.extend(f"{path.name}:{node.lineno} imports {a.name} from {node.module}"
                         for a in node.names if a.name not in exported)
        elif isinstance(node, ast.Import):
            found.extend(f"{path.name}:{node.lineno} imports {a.name}" for a in node.names
                         if a.name.split(".")[0] == "netsor" and a.name not in PUBLIC_MODULES)
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "netsor":
            if node.attr not in netsor.__all__:
                found.append(f"{path.name}:{node.lineno} uses netsor.{node.attr}")
    return found


@pytest.mark.parametrize("folder", ["limits", "notebooks", "benchmarks"])
def test_uses_of_netsor_go_through_its_public_api(folder):
    files = sorted((ROOT / folder).rglob("*.py"))
    assert files
    problems = [v for path in files for v in violations(path)]
    assert not problems, "\n".join(problems)


def test_the_public_api_check_can_fail(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import netsor\nfrom netsor.finite.exact.plan import ExactPlan\nfrom netsor import _private\n"
                   "from netsor.random import stream, _internal\nx = netsor.finite\n")
    assert len(violations(bad)) == 4


def test_every_public_name_exists():
    for module in PUBLIC_MODULES:
        mod = importlib.import_module(module)
        missing = [name for name in mod.__all__ if not hasattr(mod, name)]
        assert not missing, f"{module}.__all__ names {missing}"
