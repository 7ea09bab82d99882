"""netsor: infinite-width limits of neural networks written as Netsor (Tensor Programs) programs.

Write a program, then ask for its infinite-width law (`limit`) or its finite-width law (`simulate`)."""
from .errors import ProgramError
from .law import Law, limit
from .layers import feedforward, layernorm, mean_pool, residual
from .nonlinearities import Nonlinearity, clip, erf, from_sympy, gelu, identity, relu, square, tanh
from .program import (Dot, Input, LinComb, MatMul, Matrix, Moment, Node, Nonlin, Program, Scalar, ScalarFn,
                      SoftmaxEntry, Vector, dot, lincomb, matmul, moment, nonlin, scalar_fn, softmax)
from .exact import CoupledDraws, simulate_coupled
from .finite_width import simulate, simulate_with_moments

__version__ = "0.1.0"

__all__ = [
    "ProgramError", "Program", "Node", "Vector", "Scalar", "Matrix", "Input", "MatMul", "Nonlin", "LinComb",
    "Moment", "Dot", "ScalarFn", "SoftmaxEntry", "matmul", "nonlin", "lincomb", "moment", "dot", "scalar_fn",
    "softmax", "limit", "Law", "simulate", "simulate_with_moments", "simulate_coupled", "CoupledDraws", "Nonlinearity", "identity",
    "relu", "erf", "tanh", "gelu", "square", "clip", "from_sympy", "layernorm", "residual", "feedforward", "mean_pool",
]
