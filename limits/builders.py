"""Builders: standard networks written as Netsor programs, each an object that knows its program, its
infinite-width law and its finite-width simulation."""
from __future__ import annotations

import numbers
from dataclasses import dataclass, field

import numpy as np

import netsor
from netsor import ProgramError


@dataclass(frozen=True)
class Network:
    """A program plus the variables a user asks about. `law()` is the limit; `simulate` the finite width."""

    program: netsor.Program
    inputs: tuple
    outputs: tuple
    layers: tuple = field(default=())  # per hidden layer, the pre-activations for each input

    def law(self) -> netsor.Law:
        return netsor.limit(self.program)

    def simulate(self, width: int, size: int, seed=None, variables=None, **options) -> np.ndarray:
        return netsor.simulate(self.program, width, variables or self.outputs, size, seed, **options)


def mlp(depth: int = 2, nonlinearity="relu", inputs=1, weight_var: float = 2.0, readout: bool = True,
        name: str = "mlp") -> Network:
    """An MLP at initialisation in Netsor form.

    The first-layer pre-activations h¹(ξ_a) are the program's inputs, jointly N(0, Σ) across the data points
    (Σ the data kernel; `inputs` is Σ or a number of independent points). Each further layer is
    h^{ℓ+1} = W^{ℓ+1} φ(h^ℓ) with entries N(0, weight_var/n); `depth` counts hidden layers, and `readout` adds
    f = W^{out} φ(h^depth) (an n-vector whose coordinate 0 is the network output).
    """
    if isinstance(depth, bool) or not isinstance(depth, numbers.Integral) or depth < 1:
        raise ProgramError(f"mlp: depth must be a positive integer, got {depth!r}")
    prog = netsor.Program(name)
    if isinstance(inputs, numbers.Integral) and not isinstance(inputs, bool):
        xs = prog.inputs([f"h1_{a}" for a in range(1, inputs + 1)] if inputs >= 1 else inputs)
    else:
        cov = np.asarray(inputs, dtype=float)
        k = cov.shape[0] if cov.ndim == 2 else 0
        xs = prog.inputs([f"h1_{a}" for a in range(1, k + 1)] or 0, cov=cov)
    layers = [xs]
    h = xs
    for layer in range(2, depth + 1 + int(readout)):
        is_readout = readout and layer == depth + 1
        W = prog.matrix("Wout" if is_readout else f"W{layer}", var=weight_var)
        acts = [netsor.nonlin(nonlinearity, v, name=f"x{layer - 1}_{a}") for a, v in enumerate(h, 1)]
        h = tuple(netsor.matmul(W, x, name=(f"f_{a}" if is_readout else f"h{layer}_{a}"))
                  for a, x in enumerate(acts, 1))
        if not is_readout:
            layers.append(h)
    return Network(prog, tuple(xs), tuple(h), tuple(layers))
