"""limits: uses of the netsor language — builders for standard networks (and, as they land, attention layers,
divergences, width sweeps, plots and the command line)."""
from .attention import AttentionLayer, attention_layer
from .builders import Network, mlp

__all__ = ["AttentionLayer", "attention_layer", "Network", "mlp"]
