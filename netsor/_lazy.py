"""Modules imported on first use: sympy takes about a second to import and only printing and symbolic work read
it, so `import netsor` and sampling do not pay for it."""
from __future__ import annotations

import importlib


class LazyModule:
    """Stands for the module `name` and imports it at the first attribute read (then every read is the module's)."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str):
        if attr.startswith("__"):  # copy, pickle and introspection probes: not a use of the module
            raise AttributeError(attr)
        return getattr(importlib.import_module(self._name), attr)

    def __repr__(self) -> str:
        return f"<lazily imported module {self._name!r}>"


sympy = LazyModule("sympy")
