"""Builders: standard networks written as Netsor programs, each an object that knows its program, its
infinite-width law and its finite-width simulation."""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field

import numpy as np

import netsor
from netsor import ProgramError


MAX_DEPTH = 10_000  # layers of a program built node by node
MAX_POINTS = 10_000  # data points (inputs) of one program


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
    if isinstance(depth, bool) or not isinstance(depth, numbers.Integral) or not 1 <= depth <= MAX_DEPTH:
        raise ProgramError(f"mlp: depth must be an integer from 1 to {MAX_DEPTH}, got {depth!r}")
    if isinstance(weight_var, bool) or not isinstance(weight_var, numbers.Real) or not 0 <= weight_var < math.inf:
        raise ProgramError(f"mlp: weight_var must be a finite non-negative number, got {weight_var!r}")
    if not isinstance(readout, (bool, np.bool_)):
        raise ProgramError(f"mlp: readout must be True or False, got {readout!r}")
    prog = netsor.Program(name)
    if isinstance(inputs, numbers.Integral) and not isinstance(inputs, bool):
        if not 1 <= inputs <= MAX_POINTS:
            raise ProgramError(f"mlp: inputs (a number of data points) must be from 1 to {MAX_POINTS}, got {inputs}")
        xs = prog.inputs([f"h1_{a}" for a in range(1, inputs + 1)])
    else:
        try:
            cov = np.asarray(inputs, dtype=float)
        except (TypeError, ValueError):
            raise ProgramError(f"mlp: inputs must be a number of data points or their k×k kernel, got "
                               f"{inputs!r}") from None
        if cov.ndim != 2 or cov.shape[0] != cov.shape[1] or not 1 <= cov.shape[0] <= MAX_POINTS:
            raise ProgramError(f"mlp: inputs must be a number of data points or their k×k kernel, got shape "
                               f"{cov.shape}")
        xs = prog.inputs([f"h1_{a}" for a in range(1, cov.shape[0] + 1)], cov=cov)
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
