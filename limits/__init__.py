"""limits: uses of the netsor language — builders (MLP, attention, transformer stacks), divergences between
finite-width and limit laws, sweeps of KL against width or heads (local or Dask), plots and the `netsor-limits`
command line; `limits.training` (JAX + optax, the `train` extra) trains the same transformers in BCP24's
parameterisations. The module `limits.stack` holds the transformer; `limits.transformer` is its builder function.

SKI25, BCP24: the papers cited by short name in the docstrings (full references in the README, *References*,
and in netsor's module docstring).
"""
from importlib import import_module

# Exports load on first use (PEP 562): `netsor-limits` imports this package before its Ctrl-C guard, so the
# package itself stays light; numpy, numba and netsor load with the first name that needs them.
_EXPORTS = {
    "AttentionLayer": "attention", "attention_layer": "attention", "Network": "builders", "mlp": "builders",
    "KLEstimate": "divergence", "kl": "divergence", "Transformer": "stack", "transformer": "stack",
    "RateFit": "sweep", "fit_rate": "sweep", "ConstantFit": "sweep", "fit_constant": "sweep",
    "local_slopes": "sweep", "kernel_vs_heads": "sweep", "kl_vs_heads": "sweep", "kl_vs_width": "sweep",
    "positional": "positions", "ScoreMap": "score_maps",
    "SequencePath": "sweep", "one_query_draws": "long_sequence", "OneQueryDraws": "long_sequence",
}
_MODULES = ("divergence", "plot", "stack", "training", "score_maps", "long_sequence")

__all__ = ["AttentionLayer", "attention_layer", "Network", "mlp", "divergence", "kl", "KLEstimate",
           "kl_vs_width", "kl_vs_heads", "kernel_vs_heads", "fit_rate", "RateFit", "fit_constant", "ConstantFit",
           "local_slopes", "plot", "Transformer", "transformer", "stack", "training", "positional", "ScoreMap",
           "score_maps", "SequencePath", "one_query_draws", "OneQueryDraws", "long_sequence"]


def __getattr__(name: str):
    if name in _MODULES:
        return import_module(f".{name}", __name__)
    if name in _EXPORTS:
        value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value  # later lookups skip this hook
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
