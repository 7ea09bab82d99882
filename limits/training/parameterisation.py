"""How a transformer's weights are initialised, multiplied and stepped as N, H and L grow (BCP24 §2, Table 1).

Every weight is W = m · θ with θ ~ N(0, σ²) the trained parameter and m a fixed multiplier; m σ is the weight's
standard deviation at initialisation (the program's N(0, var/fan_in)), while m alone sets how a gradient step on θ
moves W (SGD: ΔW ∝ η m², Adam: ΔW ∝ η m). With n = N·H the model width, L the depth, γ₀ the feature-learning
strength, c = 3/2 − α_A and λ the depth factor below:

    group            σ (SGD)        m (SGD)          σ (Adam)        m (Adam)
    read-in (n×D)    λ              1/(λ√D)          λ/√n            √n/(λ√D)
    W_Q, W_K (N×n)   N^(c−1/2)      N^(1/2−c)/√n     same            same
    W_V, W_O, MLP    √var           1/√fan_in        same            same
    readout (C×n)    λ              1/(λ n)          λ/√n            1/(λ√n)
    learning rate    η₀ γ₀² n (L/L₀)^(2α_L−1)        η₀ γ₀ n^(−1/2) (L/L₀)^(α_L−1)
    λ                (L/L₀)^((2α_L−1)/2)             (L/L₀)^(α_L−1)

λ cancels the learning rate's depth factor on the read-in and readout (as BCP24's depth script does), which the
hidden blocks need and the first and last layers do not. The trained output is centred, f_c = (f − f₀)/γ₀. The read-in
and readout rows of Table 1 are read from the paper and from the authors' public training scripts (github
Pehlevan-Group/inf_transformer_limits), with two differences: their Adam learning rate omits γ₀ (which only
rescales η₀ at fixed γ₀), and their Adam readout starts with θ ~ N(0, 1), i.e. W of standard size n^(−1/2); here
θ ~ N(0, 1/n), so W starts at the mean-field size 1/n for both optimisers (with W of size n^(−1/2) the term
W·Δx of the output grows like √n under Adam — the coordinate check in the tests shows it).
`standard` is the contrast: every θ ~ N(0, var/fan_in) with m = 1 (readout too), the output neither centred nor
divided by γ₀, and η = η₀ whatever the size.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

from netsor import ProgramError

OPTIMIZERS = ("sgd", "adam")
BASE_DEPTH = 1.0  # L₀: the depth at which the depth factors are 1 (any constant only rescales η₀)


@dataclass(frozen=True)
class Scaling:
    """One weight group: θ ~ N(0, std²) trained, W = multiplier · θ used."""

    std: float
    multiplier: float


@dataclass(frozen=True)
class Parameterisation:
    """BCP24's parameterisation for one optimiser ('sgd' with momentum, or 'adam'), or the standard one.

    The score and residual exponents α_A, α_L belong to the architecture (`limits.transformer`); this object adds
    what training needs: the optimiser, γ₀, and whether the model is mean-field (BCP24) or standard."""

    optimizer: str = "sgd"
    gamma0: float = 0.1
    standard: bool = False
    momentum: float = 0.9

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise ProgramError(f"parameterisation: optimizer must be one of {', '.join(OPTIMIZERS)}, "
                               f"got {self.optimizer!r}")
        g, mu = self.gamma0, self.momentum
        if isinstance(g, bool) or not isinstance(g, numbers.Real) or not 0 < g < math.inf:
            raise ProgramError(f"parameterisation: gamma0 must be a finite positive number, got {g!r}")
        if isinstance(mu, bool) or not isinstance(mu, numbers.Real) or not 0 <= mu < 1:
            raise ProgramError(f"parameterisation: momentum must be a number in [0, 1), got {mu!r}")
        if not isinstance(self.standard, bool):
            raise ProgramError(f"parameterisation: standard must be True or False, got {self.standard!r}")

    @property
    def name(self) -> str:
        return f"{'SP' if self.standard else 'muP'}-{self.optimizer}"

    def depth_factor(self, depth: int, residual_exponent: float) -> float:
        """λ: (L/L₀)^((2α_L−1)/2) for SGD, (L/L₀)^(α_L−1) for Adam (1 in the standard parameterisation)."""
        if self.standard:
            return 1.0
        ratio = depth / BASE_DEPTH
        if self.optimizer == "sgd":
            return ratio ** ((2 * residual_exponent - 1) / 2)
        return ratio ** (residual_exponent - 1)

    def learning_rate(self, base: float, width: int, depth: int, residual_exponent: float) -> float:
        """η from η₀ = base: η₀ γ₀² n (L/L₀)^(2α_L−1) (SGD), η₀ γ₀ n^(−1/2) (L/L₀)^(α_L−1) (Adam), η₀ (standard)."""
        if self.standard:
            return base
        ratio = depth / BASE_DEPTH
        if self.optimizer == "sgd":
            return base * self.gamma0 ** 2 * width * ratio ** (2 * residual_exponent - 1)
        return base * self.gamma0 * width ** -0.5 * ratio ** (residual_exponent - 1)

    def read_in(self, width: int, token_dim: int, lam: float) -> Scaling:
        if self.standard:
            return Scaling(token_dim ** -0.5, 1.0)
        if self.optimizer == "sgd":
            return Scaling(lam, 1.0 / (lam * math.sqrt(token_dim)))
        return Scaling(lam / math.sqrt(width), math.sqrt(width) / (lam * math.sqrt(token_dim)))

    def query_key(self, width: int, head_dim: int, score_exponent: float) -> Scaling:
        """σ = N^(c−1/2), m = N^(1/2−c)/√n with c = 3/2 − α_A, so W = mθ has variance 1/n as in the program."""
        if self.standard:
            return Scaling(width ** -0.5, 1.0)
        c = 1.5 - score_exponent
        return Scaling(head_dim ** (c - 0.5), head_dim ** (0.5 - c) / math.sqrt(width))

    def hidden(self, fan_in: int, var: float = 1.0) -> Scaling:
        if self.standard:
            return Scaling(math.sqrt(var / fan_in), 1.0)
        return Scaling(math.sqrt(var), 1.0 / math.sqrt(fan_in))

    def readout(self, width: int, lam: float) -> Scaling:
        if self.standard:
            return Scaling(width ** -0.5, 1.0)
        if self.optimizer == "sgd":
            return Scaling(lam, 1.0 / (lam * width))
        return Scaling(lam / math.sqrt(width), 1.0 / (lam * math.sqrt(width)))

    def output(self, f, f0):
        """The trained output: (f − f₀)/γ₀ (mean-field), f itself (standard)."""
        return f if self.standard else (f - f0) / self.gamma0


def sgd(gamma0: float = 0.1, momentum: float = 0.9) -> Parameterisation:
    return Parameterisation("sgd", gamma0, False, momentum)


def adam(gamma0: float = 0.1) -> Parameterisation:
    return Parameterisation("adam", gamma0, False)


def standard(optimizer: str = "sgd", momentum: float = 0.9) -> Parameterisation:
    return Parameterisation(optimizer, 1.0, True, momentum)
