"""Compiled (numba) primitives: per-sample linear algebra, random draws (normals, χ², Bartlett factors), and the
kernels of exact and lazy sampling. The names below are public: `limits` builds its own kernels on them
(`limits.long_sequence` draws a Bartlett factor's two halves apart, `bartlett_chi_bits` then `bartlett_normal_bits`,
to reflect its χ's for an antithetic twin before the normals are drawn; `chi_constants(dof, M)` are their constants).

RANK_RTOL is the one rank rule of every semidefinite factorisation: a pivot below RANK_RTOL × the largest diagonal
entry is an exact zero. CODE_* are the integer codes (`Nonlinearity.code`) by which a compiled kernel applies a
nonlinearity itself (CODE_NONE: no kernel does); they are owned by `netsor.ir.nonlinearities`."""
from ..ir.nonlinearities import (CODE_CLIP, CODE_ERF, CODE_GELU, CODE_IDENTITY, CODE_LEAKY_RELU, CODE_NONE, CODE_RELU,
                                 CODE_TANH)
from .linalg import (RANK_RTOL, cholesky_into, cholesky_lanes, sample_gaussian, semidefinite_cholesky, softmax_columns,
                     softmax_into)
from .wishart import _chi_constants as chi_constants
from .wishart import (any_chisquare, bartlett_chi_bits, bartlett_factor, bartlett_normal_bits, chisquare,
                      standard_normals)

__all__ = ["RANK_RTOL", "cholesky_into", "cholesky_lanes", "semidefinite_cholesky", "sample_gaussian",
           "softmax_columns", "softmax_into", "bartlett_factor", "bartlett_normal_bits", "bartlett_chi_bits",
           "chisquare", "any_chisquare", "chi_constants", "standard_normals", "CODE_NONE",
           "CODE_IDENTITY", "CODE_RELU", "CODE_ERF", "CODE_TANH", "CODE_GELU", "CODE_CLIP", "CODE_LEAKY_RELU"]
