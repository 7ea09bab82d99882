"""limits: uses of the netsor language — builders (MLP, attention, transformer stacks), divergences between
finite-width and limit laws, sweeps of KL against width or heads (local or Dask), plots and the `netsor-limits`
command line. The module `limits.stack` holds the transformer; `limits.transformer` is its builder function.

SKI25, BCP24: the papers cited by short name in the docstrings (full references in the README, *References*,
and in netsor's module docstring).
"""
from . import divergence, plot, stack
from .attention import AttentionLayer, attention_layer
from .builders import Network, mlp
from .divergence import KLEstimate, kl
from .stack import Transformer, transformer
from .sweep import RateFit, fit_rate, kernel_vs_heads, kl_vs_heads, kl_vs_width

__all__ = ["AttentionLayer", "attention_layer", "Network", "mlp", "divergence", "kl", "KLEstimate",
           "kl_vs_width", "kl_vs_heads", "kernel_vs_heads", "fit_rate", "RateFit", "plot",
           "Transformer", "transformer", "stack"]
