"""netsor: infinite-width limits of neural networks written as Netsor (Tensor Programs) programs.

Write a program, then ask for its infinite-width law (`limit`) or its finite-width law (`simulate`).

Layout (each layer uses only the ones above it):
    netsor.errors, netsor.random       the one exception; random streams keyed by (seed, block, stream)
    netsor.compiled                    numba primitives: per-sample linear algebra, softmax, normals, χ², Bartlett
    netsor.ir                          the language: program, nonlinearities (with their closed forms), layers,
                                       the shared semantics of derived nodes
    netsor.limit                       the infinite-width semantics: structure, calculus, Law, GaussianLaw,
                                       quadrature, symbolic printing
    netsor.finite                      finite-width interpreters: dense, lazy, exact (plan, fronts, block, fused
                                       linear kernel), coupled draws, the block runner, `simulate`; the first
                                       finite-width correction (`finite_width_correction`, the O(1/n) law)
    netsor.parallel                    the one block runner (thread pool, results in order)
    netsor.testing, netsor.quadrature  public helpers: covariance checks, Gaussian quadrature rules

References cited by short name in the docstrings (full list in the README, *References*):
    SKI25  M. Sakai, R. Karakida, M. Imaizumi, "Infinite-Width Limit of a Single Attention Layer: Analysis via
           Tensor Programs", arXiv:2506.00846
    BCP24  B. Bordelon, H. Chaudhry, C. Pehlevan, "Infinite Limits of Multi-head Transformer Dynamics",
           arXiv:2405.15712
    Yang   G. Yang, "Tensor Programs I: Wide Feedforward or Recurrent Neural Networks of Any Architecture are
           Gaussian Processes", arXiv:1910.12478
"""
from importlib import import_module

from . import compiled, display, parallel, quadrature, random, testing
from .errors import ProgramError
from .ir.fingerprint import fingerprint
from .ir.layers import feedforward, layernorm, mean_pool, residual
from .ir.nonlinearities import (Clip, LeakyRelu, Nonlinearity, as_nonlinearity, clip, erf, from_sympy, gelu, identity,
                                leaky_relu, relu, square, tanh)
from .ir.program import (Dot, HeadSum, Input, LinComb, MatMul, Matrix, Moment, Node, Nonlin, Program, Scalar,
                         ScalarFn, SoftmaxEntry, Vector, check_covariance, dot, dot_exponent, infinite_head_sum,
                         lincomb, matmul, moment, nonlin, scalar_fn, softmax)
from .ir.semantics import stable_softmax
from .limit.gaussian import GaussianLaw
from .limit.law import Law, limit

__version__ = "0.1.0"

__all__ = [
    "ProgramError", "Program", "Node", "Vector", "Scalar", "Matrix", "Input", "MatMul", "Nonlin", "LinComb",
    "Moment", "Dot", "ScalarFn", "SoftmaxEntry", "HeadSum", "matmul", "nonlin", "lincomb", "moment", "dot",
    "scalar_fn", "softmax", "stable_softmax", "dot_exponent", "infinite_head_sum", "check_covariance",
    "fingerprint", "limit", "Law", "GaussianLaw",
    "simulate", "simulate_with_moments", "MAX_WIDTH", "finite_width_correction", "FiniteWidthCorrection",
    "simulate_coupled", "CoupledDraws", "dense_block_size", "Nonlinearity", "Clip", "LeakyRelu", "identity",
    "relu", "erf", "tanh", "gelu", "square", "clip", "leaky_relu", "from_sympy", "as_nonlinearity", "layernorm",
    "residual",
    "feedforward", "mean_pool",
    "compiled", "display", "parallel", "quadrature", "random", "testing",
]

# The finite-width interpreters load on first use (PEP 562): the limit, and start-up, need none of them.
_FINITE = {"FiniteWidthCorrection": ("correction", "FiniteWidthCorrection"),
           "finite_width_correction": ("correction", "finite_width_correction"),
           "CoupledDraws": ("coupled", "CoupledDraws"), "simulate_coupled": ("coupled", "simulate_coupled"),
           "dense_block_size": ("dense", "block_size"), "MAX_WIDTH": ("runner", "MAX_WIDTH"),
           "simulate": ("simulate", "simulate"), "simulate_with_moments": ("simulate", "simulate_with_moments")}


def __getattr__(name: str):
    if name in _FINITE:
        module, attribute = _FINITE[name]
        value = getattr(import_module(f".finite.{module}", __name__), attribute)
        globals()[name] = value  # later lookups skip this hook
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
