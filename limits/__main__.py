"""`python -m limits`: a small end-to-end example — a 2-hidden-layer ReLU MLP on two correlated data points,
its infinite-width covariance, and finite-width networks at growing width measured against it."""
from __future__ import annotations

import time

import numpy as np

from netsor.testing import relative_frobenius_error

from .builders import mlp


def main() -> None:
    net = mlp(depth=2, nonlinearity="relu", inputs=[[1.0, 0.6], [0.6, 1.0]])
    print(net.program, end="\n\n")
    law = net.law()
    variables = list(net.layers[-1]) + list(net.outputs)
    exact = law.cov(variables)
    names = ", ".join(v.name for v in variables)
    print(f"Infinite-width covariance of ({names}):")
    print(np.array2string(exact, precision=4), end="\n\n")
    print("Finite width, 4000 networks each: relative Frobenius error of the sample covariance")
    for width in (16, 64, 256):
        start = time.perf_counter()
        draws = net.simulate(width, 4000, seed=width, variables=variables)
        err = relative_frobenius_error(draws, exact)
        print(f"  n = {width:4d}: {err:.3f}   ({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
