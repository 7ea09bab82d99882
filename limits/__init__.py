"""limits: uses of the netsor language — builders for standard networks (and, as they land, attention layers,
divergences, width sweeps, plots and the command line)."""
from .builders import Network, mlp

__all__ = ["Network", "mlp"]
