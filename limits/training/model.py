"""The trainable finite-width model of `limits.transformer`, in JAX: the same blocks, read in from data.

Tokens t_1..t_s ∈ R^D (patches or embeddings) enter through a read-in x⁰_i = W_in t_i (n×D). Then, as in
`limits.stack` (block ℓ = 1..L, c = β₀ L^(−α_L), H heads of dimension N, n the width):
    u_i = x_i / sqrt(|x_i|²/n),  q^h_i = W_Q^h u_i,  k^h_j = W_K^h u_j,  v^h_j = W_V^h u_j,
    p^h_ij = q^h_i·k^h_j / N^(α_A),  x_i ← x_i + c H^(−1/2) Σ_h W_O^h Σ_j softmax_j(p^h_i) v^h_j,
    x_i ← x_i + c W_2 φ(W_1 u'_i),  u'_i = LN(x_i)      (when the architecture has an MLP)
    f = W_out (1/s) Σ_i x^L_i  (C outputs; the loss sees `Parameterisation.output(f, f₀)`).
Every W = m·θ as `Parameterisation` prescribes; at initialisation W has the program's N(0, var/fan_in) entries,
except the readout, whose scale is the parameterisation's (mean-field: 1/n for SGD). So given the tokens, the
initial x⁰ are Gaussian with token covariance G_ij = t_i·t_j/D and the stream has exactly the law of
`limits.transformer(..., inputs=G)` at width n; `standardised_output` rescales f to the program's readout
N(0, 1/n) (tested against `netsor.simulate`).
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

import netsor
from netsor import ProgramError

from ..blocks import _count
from ..stack import Transformer, _exponent, mlp_weight_var, transformer
from .parameterisation import Parameterisation

WHERE = "trainable"
INIT_STREAM = 7  # spawn key of the initial weights' stream (the batches use BATCH_STREAM in `train`)
MAX_PARAMETERS = 1 << 31  # a model beyond this is a typo in a sweep, not a run on one device


@dataclass(frozen=True)
class TrainableTransformer:
    """A pre-LN transformer with H heads of dimension N at width n, read in from D-dimensional tokens, with C
    outputs, in a parameterisation (`limits.training.parameterisation`). Hashable: jit treats it as static."""

    depth: int
    heads: int
    head_dim: int
    width: int
    token_dim: int
    outputs: int
    score_exponent: float
    residual_exponent: float
    beta0: float
    mlp: str | None
    parameterisation: Parameterisation

    # ---- derived constants (plain floats: the multipliers are not trained)
    @property
    def branch_scale(self) -> float:
        return self.beta0 * self.depth ** (-self.residual_exponent)

    @property
    def depth_factor(self) -> float:
        return self.parameterisation.depth_factor(self.depth, self.residual_exponent)

    def scalings(self) -> dict:
        """The (std, multiplier) of each weight group."""
        p, n, lam = self.parameterisation, self.width, self.depth_factor
        groups = {"read_in": p.read_in(n, self.token_dim, lam),
                  "query": p.query_key(n, self.head_dim, self.score_exponent),
                  "key": p.query_key(n, self.head_dim, self.score_exponent),
                  "value": p.hidden(n), "out": p.hidden(self.head_dim), "readout": p.readout(n, lam)}
        if self.mlp is not None:
            groups["mlp_in"] = p.hidden(n)
            groups["mlp_out"] = p.hidden(n, mlp_weight_var(self.mlp))
        return groups

    def shapes(self) -> dict:
        L, H, N, n = self.depth, self.heads, self.head_dim, self.width
        shapes = {"read_in": (n, self.token_dim), "query": (L, H, N, n), "key": (L, H, N, n), "value": (L, H, N, n),
                  "out": (L, H, n, N), "readout": (self.outputs, n)}
        if self.mlp is not None:
            shapes["mlp_in"] = shapes["mlp_out"] = (L, n, n)
        return shapes

    @property
    def parameter_count(self) -> int:
        return sum(math.prod(s) for s in self.shapes().values())

    def learning_rate(self, base):
        """η for η₀ = base (a number or an array of them), as the parameterisation scales it."""
        return self.parameterisation.learning_rate(base, self.width, self.depth, self.residual_exponent)

    # ---- the model
    def init(self, seed) -> dict:
        """θ at initialisation, each group N(0, std²) in float32, drawn by numpy from SeedSequence(seed) (groups in
        name order): the same weights on every device and for any batching of runs, and no random-number kernel
        for XLA to compile."""
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(INIT_STREAM,)))
        scalings, shapes = self.scalings(), self.shapes()
        return {name: (scalings[name].std * rng.standard_normal(shapes[name], dtype=np.float32)).astype(np.float32)
                for name in sorted(shapes)}

    def effective(self, params: dict) -> dict:
        """W = m·θ for every group."""
        scalings = self.scalings()
        return {name: scalings[name].multiplier * theta for name, theta in params.items()}

    def apply(self, params: dict, tokens, internals: bool = False):
        """f (B, C) for tokens (B, s, D); with internals also the scores (B, L, H, s, s) and the final stream
        (B, s, n)."""
        W = self.effective(params)
        phi = _activation(self.mlp) if self.mlp is not None else None
        c, H = self.branch_scale, self.heads
        x = jnp.einsum("bsd,nd->bsn", tokens, W["read_in"])

        def block(x, layer):
            u = _layernorm(x)
            q = jnp.einsum("bsn,hkn->bhsk", u, layer["query"])
            k = jnp.einsum("bsn,hkn->bhsk", u, layer["key"])
            v = jnp.einsum("bsn,hkn->bhsk", u, layer["value"])
            scores = jnp.einsum("bhik,bhjk->bhij", q, k) / self.head_dim ** self.score_exponent
            mixed = jnp.einsum("bhij,bhjk->bhik", jax.nn.softmax(scores, axis=-1), v)
            x = x + c * H ** -0.5 * jnp.einsum("bhik,hnk->bin", mixed, layer["out"])
            if phi is not None:
                hidden = phi(jnp.einsum("bsn,mn->bsm", _layernorm(x), layer["mlp_in"]))
                x = x + c * jnp.einsum("bsm,nm->bsn", hidden, layer["mlp_out"])
            return x, scores

        layers = {name: W[name] for name in ("query", "key", "value", "out", "mlp_in", "mlp_out") if name in W}
        x, scores = jax.lax.scan(block, x, layers)
        f = jnp.einsum("bn,cn->bc", x.mean(axis=1), W["readout"])
        if not internals:
            return f
        return f, {"scores": jnp.moveaxis(scores, 0, 1), "stream": x}

    def standardised_output(self, f):
        """f rescaled to a readout with N(0, 1/n) entries, the program's `Wout` (for the law at initialisation)."""
        readout = self.scalings()["readout"]
        return f / (readout.std * readout.multiplier * math.sqrt(self.width))

    def program(self, tokens: np.ndarray) -> Transformer:
        """The Netsor program whose law this model has at initialisation for one input: `limits.transformer` with
        the token covariance G = t tᵀ/D (positive definite: D ≥ s tokens in general position)."""
        tokens = np.asarray(tokens, dtype=float)
        if tokens.ndim != 2 or tokens.shape[1] != self.token_dim:
            raise ProgramError(f"{WHERE}.program: tokens must be (s, {self.token_dim}), got {tokens.shape}")
        gram = tokens @ tokens.T / self.token_dim
        return transformer(depth=self.depth, seq_len=len(tokens), heads=self.heads, head_dim=self.head_dim,
                           score_exponent=self.score_exponent, residual_exponent=self.residual_exponent,
                           beta0=self.beta0, inputs=gram, mlp=self.mlp)


def _layernorm(x):
    return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True))


_ACTIVATIONS: dict = {}


def _activation(mlp: str):
    """The MLP's φ as a JAX function: the netsor nonlinearity's own JAX twin, built once per process."""
    try:  # the name resolved as every builder resolves it, into netsor's own Nonlinearity object
        phi = netsor.nonlin(mlp, netsor.Program("activation").input("z")).phi
    except ProgramError as exc:
        raise ProgramError(f"{WHERE}: mlp: {exc}") from None
    fn = _ACTIVATIONS.get(phi)
    if fn is None:
        fn = _ACTIVATIONS[phi] = phi.jax_function(f"{WHERE}: mlp")
    return fn


def trainable(depth: int = 2, heads: int = 4, head_dim: int = 8, token_dim: int = 4, outputs: int = 1,
              width: int | None = None, score_exponent: float = 1.0, residual_exponent: float = 0.5,
              beta0: float = 4.0, mlp: str | None = "relu",
              parameterisation: Parameterisation | None = None) -> TrainableTransformer:
    """A trainable pre-LN transformer (BCP24's defaults: α_A = 1, α_L = 1/2, β₀ = 4, width n = N·H)."""
    depth, heads, head_dim = (_count(v, name, where=WHERE) for v, name in
                              ((depth, "depth"), (heads, "heads"), (head_dim, "head_dim")))
    token_dim, outputs = _count(token_dim, "token_dim", where=WHERE), _count(outputs, "outputs", where=WHERE)
    width = heads * head_dim if width is None else _count(width, "width", where=WHERE)
    score_exponent = _exponent(score_exponent, "score_exponent", 0.0)
    residual_exponent = _exponent(residual_exponent, "residual_exponent", 0.0)
    beta0 = _exponent(beta0, "beta0", 0.0)
    if mlp is not None:
        if not isinstance(mlp, str):
            raise ProgramError(f"{WHERE}: mlp must be a nonlinearity name or None, got {mlp!r}")
        _activation(mlp)  # refuse a name without a JAX twin now, not inside a jit
    if parameterisation is None:
        from .parameterisation import sgd
        parameterisation = sgd()
    if not isinstance(parameterisation, Parameterisation):
        raise ProgramError(f"{WHERE}: parameterisation must be a limits.training Parameterisation, "
                           f"got {type(parameterisation).__name__}")
    model = TrainableTransformer(depth, heads, head_dim, width, token_dim, outputs, score_exponent,
                                 residual_exponent, beta0, mlp, parameterisation)
    if model.parameter_count > MAX_PARAMETERS:
        raise ProgramError(f"{WHERE}: {model.parameter_count:.3g} parameters (at most {MAX_PARAMETERS:.3g})")
    return model


def from_transformer(architecture: Transformer, token_dim: int, outputs: int = 1, width: int | None = None,
                     parameterisation: Parameterisation | None = None) -> TrainableTransformer:
    """The trainable model of a `limits.transformer` program (its depth, heads, head dimension, exponents, β₀ and
    MLP); the program's tokens are replaced by the read-in of data."""
    if not isinstance(architecture, Transformer):
        raise ProgramError(f"{WHERE}: expected a limits.transformer, got {type(architecture).__name__}")
    if architecture.head_dim is None:
        raise ProgramError(f"{WHERE}: the transformer has head dimension n; training needs a fixed head_dim N")
    if width is not None and (isinstance(width, bool) or not isinstance(width, numbers.Integral)):
        raise ProgramError(f"{WHERE}: width must be a positive integer or None, got {width!r}")
    return trainable(architecture.depth, architecture.heads, architecture.head_dim, token_dim, outputs, width,
                     architecture.score_exponent, architecture.residual_exponent, architecture.beta0,
                     architecture.mlp, parameterisation)
