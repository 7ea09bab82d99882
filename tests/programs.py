"""Small networks for the tests, written with the public `netsor` API alone (no `limits`).

Each builder declares its nodes in the order, with the matrix variances and shapes and the kinds of nodes, of the
matching `limits` builder (`limits.attention_layer`, `limits.mlp`, `limits.transformer`): seeded draws are keyed by
node position, so a test gets the same numbers from either. tests/limits/test_programs_match.py checks this node
by node. Only the options the tests use are supported.

    attention_layer: tokens x_1..x_s; per head h: q_i = W_Q x_i, k_j = W_K x_j, v_j = W_V x_j,
                     p_ij = q_i·k_j / d^a, A_i = softmax(p_i), o_i = W_O Σ_j A_ij v_j; y_i = H^{-1/2} Σ_h o^h_i
    mlp:             h¹ the inputs, h^{ℓ+1} = W^{ℓ+1} φ(h^ℓ), readout f = W_out φ(h^depth)
    transformer:     pre-LN blocks x ← x + c H^{-1/2} Σ_h o^h(LN x), x ← x + c W_2 φ(W_1 LN x), c = L^{-1/2};
                     readout f = W_out (1/s) Σ_i x_i
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import netsor

__all__ = ["attention_layer", "mlp", "transformer", "mlp_weight_var"]


@dataclass(frozen=True)
class Built:
    """A program and the nodes a test asks about."""

    program: netsor.Program
    inputs: tuple
    outputs: tuple

    def law(self) -> netsor.Law:
        return netsor.limit(self.program)


@dataclass(frozen=True)
class AttentionLayer(Built):
    scores: tuple  # scores[h][i][j]
    attention: tuple  # attention[h][i] = softmax(scores[h][i]), a tuple over j


@dataclass(frozen=True)
class Network(Built):
    layers: tuple  # per hidden layer, the pre-activations of each input (layers[0] = the inputs)


@dataclass(frozen=True)
class Block:
    scores: tuple
    attention: tuple
    head_outputs: tuple  # head_outputs[h][i] = o^h_i
    after_attention: tuple
    output: tuple


@dataclass(frozen=True)
class Transformer(Built):
    blocks: tuple

    @property
    def residual(self) -> tuple:
        """The residual stream after the last block."""
        return self.blocks[-1].output


def _tokens(prog, seq_len, inputs, clip):
    """x_1..x_s: iid N(0, 1) ("gaussian"), clip / relu of W^i h ("paper" / "relu"), or with an s×s covariance."""
    names = [f"x{i}" for i in range(1, seq_len + 1)]
    if isinstance(inputs, str) and inputs == "gaussian":
        return prog.inputs(names)
    if isinstance(inputs, str):
        assert inputs in ("paper", "relu"), inputs
        h = prog.input("h")
        phi = netsor.clip(clip) if inputs == "paper" else "relu"
        return tuple(netsor.nonlin(phi, prog.matrix(f"W{i}") @ h, name=name) for i, name in enumerate(names, 1))
    return prog.inputs(names, cov=np.asarray(inputs, dtype=float))


def _heads(prog, tokens, heads, head_dim, scale, tag, out_proj=True, tied_qk=False, wo_first=True):
    """Multi-head attention over `tokens`: W_Q, W_K, W_V (and W_O first or after the softmaxes), then q, k, v,
    scores, softmaxes, and m_i, o_i token by token. Returns (scores, attention, head_outputs), indexed [h]."""
    dim = "n" if head_dim is None else head_dim
    s = len(tokens)
    scores, attention, outputs = [], [], []
    for h in range(1, heads + 1):
        t = f"{tag}h{h}"
        WQ = prog.matrix(f"WQ{t}", shape=(dim, "n"))
        WK = WQ if tied_qk else prog.matrix(f"WK{t}", shape=(dim, "n"))
        WV = prog.matrix(f"WV{t}", shape=(dim, "n"))
        WO = prog.matrix(f"WO{t}", shape=("n", dim)) if out_proj and wo_first else None
        q = [netsor.matmul(WQ, x, name=f"q{t}_{i}") for i, x in enumerate(tokens, 1)]
        k = q if tied_qk else [netsor.matmul(WK, x, name=f"k{t}_{i}") for i, x in enumerate(tokens, 1)]
        v = [netsor.matmul(WV, x, name=f"v{t}_{i}") for i, x in enumerate(tokens, 1)]
        p = tuple(tuple(netsor.dot(q[i], k[j], scale=scale, name=f"p{t}_{i + 1}_{j + 1}") for j in range(s))
                  for i in range(s))
        a = tuple(netsor.softmax(row, name=f"A{t}_{i}") for i, row in enumerate(p, 1))
        if out_proj and not wo_first:
            WO = prog.matrix(f"WO{t}", shape=("n", dim))
        o = []
        for i in range(1, s + 1):
            m = netsor.lincomb(a[i - 1], v, name=f"m{t}_{i}")
            o.append(netsor.matmul(WO, m, name=f"o{t}_{i}") if out_proj else m)
        scores.append(p)
        attention.append(a)
        outputs.append(tuple(o))
    return tuple(scores), tuple(attention), tuple(outputs)


def attention_layer(seq_len=4, heads=2, head_dim=None, scaling="sqrt", inputs="paper", out_proj=True, clip=100.0,
                    tied_qk=False) -> AttentionLayer:
    """One multi-head attention layer, y_i = H^{-1/2} Σ_h W_O^h Σ_j A^h_ij v^h_j (W_O declared after the scores,
    as `limits.attention_layer` does)."""
    prog = netsor.Program("attention")
    xs = _tokens(prog, seq_len, inputs, clip)
    scores, attention, head_outputs = _heads(prog, xs, heads, head_dim, scaling, "", out_proj, tied_qk,
                                             wo_first=False)
    outputs = tuple(netsor.lincomb([heads ** -0.5] * heads, [o[i] for o in head_outputs], name=f"y{i + 1}")
                    for i in range(seq_len))
    return AttentionLayer(prog, tuple(xs), outputs, scores, attention)


def mlp(depth=2, nonlinearity="relu", inputs=1, weight_var=2.0) -> Network:
    """h¹_a the inputs (`inputs` independent points, or jointly N(0, Σ)), h^{ℓ+1}_a = W^ℓ x^ℓ_a with
    x^ℓ_a = φ(h^ℓ_a), and the readout f_a = W_out x^depth_a; every W has entries N(0, weight_var/n)."""
    prog = netsor.Program("mlp")
    if isinstance(inputs, int):
        xs = prog.inputs([f"h1_{a}" for a in range(1, inputs + 1)])
    else:
        cov = np.asarray(inputs, dtype=float)
        xs = prog.inputs([f"h1_{a}" for a in range(1, cov.shape[0] + 1)], cov=cov)
    layers, h = [xs], xs
    for layer in range(2, depth + 2):
        readout = layer == depth + 1
        W = prog.matrix("Wout" if readout else f"W{layer}", var=weight_var)
        acts = [netsor.nonlin(nonlinearity, v, name=f"x{layer - 1}_{a}") for a, v in enumerate(h, 1)]
        h = tuple(netsor.matmul(W, x, name=f"f_{a}" if readout else f"h{layer}_{a}") for a, x in enumerate(acts, 1))
        if not readout:
            layers.append(h)
    return Network(prog, tuple(xs), h, tuple(layers))


def mlp_weight_var(phi) -> float:
    """1/E[φ(Z)²], Z ~ N(0, 1), from netsor's kernel of φ: W_2's variance, which gives the MLP branch unit variance."""
    prog = netsor.Program("unit-variance")
    z = prog.input("z")
    phi_z = netsor.nonlin(phi, z, name="phi_z")
    return 1.0 / float(netsor.limit(prog).kernel([phi_z])[0, 0])


def _kernel(xs, layer):
    """x_i·x_j / n for i ≤ j (declared, like `limits.transformer`'s kernel nodes, to keep node positions)."""
    s = len(xs)
    for i in range(s):
        for j in range(i, s):
            netsor.dot(xs[i], xs[j], scale="linear", name=f"K{layer}_{i + 1}_{j + 1}")


def transformer(depth=2, seq_len=4, heads=2, mlp="relu") -> Transformer:
    """A pre-LN transformer on gaussian tokens, d = n, scores over sqrt(n), branches scaled by c = depth^{-1/2}."""
    prog = netsor.Program("transformer")
    tokens = xs = prog.inputs([f"x{i}" for i in range(1, seq_len + 1)])
    c = depth ** -0.5
    w2_var = mlp_weight_var(mlp)
    _kernel(xs, 0)
    blocks = []
    for layer in range(1, depth + 1):
        u = [netsor.layernorm(x, name=f"u{layer}_{i}") for i, x in enumerate(xs, 1)]
        scores, attention, head_outputs = _heads(prog, u, heads, None, 0.5, f"b{layer}")
        after = tuple(netsor.lincomb([1.0] + [c * heads ** -0.5] * heads, [xs[i]] + [o[i] for o in head_outputs],
                                     name=f"xa{layer}_{i + 1}") for i in range(seq_len))
        W1, W2 = prog.matrix(f"W1b{layer}"), prog.matrix(f"W2b{layer}", var=w2_var)
        xs = tuple(netsor.residual(x, netsor.feedforward(netsor.layernorm(x, name=f"w{layer}_{i}"), W1, W2, mlp,
                                                         name=f"z{layer}_{i}"), c, name=f"x{layer}_{i}")
                   for i, x in enumerate(after, 1))
        _kernel(xs, layer)
        blocks.append(Block(scores, attention, head_outputs, after, xs))
    pooled = netsor.mean_pool(xs, name="pool")
    f = netsor.matmul(prog.matrix("Wout"), pooled, name="f")
    return Transformer(prog, tuple(tokens), (f,), tuple(blocks))
