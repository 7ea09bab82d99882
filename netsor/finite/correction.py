"""The first finite-width correction of a program's law: the O(1/n) terms of its moments and density, and the
constant c of KL(finite n ‖ limit) = c/n² + o(n⁻²) (README, *The first finite-width correction*).

Every program the exact sampler reduces (`netsor.finite.exact`) is, at width n, a smooth function of random inputs
whose laws converge as n grows. With ε = 1/sqrt(n), exactly through O(ε²) in law:

* Bartlett's factor of a Gram, T/sqrt(n) = I + εE + ε²M, E below the diagonal N(0, 1), on it N(0, ½), and M the
  χ mean shift, M_ii = −o_i/2 − 1/4 for T_ii² ~ χ²_{n−o_i} (E[χ_k] = sqrt(k)(1 − 1/(4k) + O(k⁻²)));
* a Gram G = b bᵀ + w T̂T̂ᵀ (T̂ = T/sqrt(n), w = n), and a cross block G_AB = b_A b_Bᵀ + sqrt(w) T̂ Ξ, Ξ iid N(0, 1);
* a nonlinear front's Gram, an average of n iid terms given the layer below: F = μ(q) + εΦ, μ the Gaussian moments
  of φ at the pre-activation variance q, Φ Gaussian with the fourth-moment covariance of φφᵀ (a CLT whose third
  cumulant enters only at O(ε⁴)); q itself is the previous layer's F: the four-point-vertex recursion of
  Roberts–Yaida–Hanin, generated layer by layer.

Given these, the targets are Gaussian with mean m(ε) and covariance V(ε), computed by the sampler's own evaluation
(`outputs_given_grams`) at the pseudo-width w = 1/ε². Per draw, m and V are expanded to second order by symmetric
differences at ε = ±δ, ±2δ, ±3δ (Richardson; a ±δ, ±2δ twin bounds their own error), and so is any moment or
density h(m, V): E h_n = E h₀ + E h₂/n + O(n⁻²), the O(ε) term vanishing in expectation (E, Φ, Ξ are
symmetric). Where nothing but E and Φ is random
(deterministic limits: deep linear chains, MLPs), h₂ is a quadratic polynomial in them and a symmetric cubature
(±sqrt(d) σ_a e_a, 2d points) computes E h₂ exactly; elsewhere the limit's own randomness is Monte Carlo, with
standard errors from a jackknife over blocks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import sympy

from ..errors import ProgramError
from ..ir.program import WIDTH, Dot, HeadSum, Input, MatMul, Nonlin, Program, Vector
from ..limit.quadrature import (MAX_LOG_VARIANCE_RANGE, gaussian_expectation, gaussian_factor, half_line_rule,
                                linear_binning)
from ..parallel import map_blocks
from ..random import check_size, seed_sequence, stream
from .exact.block import outputs_given_grams
from .exact.plan import ExactPlan, _linear_source

__all__ = ["finite_width_correction", "FiniteWidthCorrection"]

DELTA = 2.0 ** -9  # the ε steps: pseudo-widths 2^18 / k²; Richardson error ~δ⁴ h₆, rounding ~1e-16·sqrt(w)/δ²
EPSILONS = (DELTA, -DELTA, 2 * DELTA, -2 * DELTA, 3 * DELTA, -3 * DELTA)
BLOCK = 4096  # draws per random stream
MIN_BLOCKS = 32  # Monte Carlo: at least this many blocks, for the jackknife
MIN_SIZE = 1024
MAX_CUBATURE = 1 << 14  # perturbation dimensions up to which the exact cubature runs (2d points)
MAX_VARIABLES = 16
KL_GRID = 2049
MAX_KL_GRID = 1 << 15
TRIM = 1e-3  # the share of smallest-variance draws whose removal must not move c
NODES = 1024  # log-variance nodes of the centred KL constant


def _refuse(where: str, reason: str):
    raise ProgramError(f"finite_width_correction: {where}: {reason}")


# ---- truncated power series in ε, coefficients on the last axis (…, 3)
def _mul(a, b):
    return np.stack([a[..., 0] * b[..., 0], a[..., 0] * b[..., 1] + a[..., 1] * b[..., 0],
                     a[..., 0] * b[..., 2] + a[..., 1] * b[..., 1] + a[..., 2] * b[..., 0]], axis=-1)


def _div(a, b):
    q0 = a[..., 0] / b[..., 0]
    q1 = (a[..., 1] - q0 * b[..., 1]) / b[..., 0]
    q2 = (a[..., 2] - q0 * b[..., 2] - q1 * b[..., 1]) / b[..., 0]
    return np.stack([q0, q1, q2], axis=-1)


_EVEN = np.linalg.inv(np.array([[1.0, k * k, k ** 4] for k in (1, 2, 3)]))  # h₀, δ²h₂, δ⁴h₄ from even parts
_ODD = np.linalg.inv(np.array([[k, k ** 3, k ** 5] for k in (1.0, 2.0, 3.0)]))  # δh₁, δ³h₃, δ⁵h₅ from odd parts


def _series(values, points: int = 3):
    """(h₀, h₁, h₂) from h at ε = δ, −δ, 2δ, −2δ, 3δ, −3δ (axis 0), h(ε) = h₀ + εh₁ + ε²h₂ + …, by Richardson
    on the even and odd parts: with points = 3 exact through ε⁴ (error O(δ⁴) in h₂); points = 2 uses ±δ, ±2δ
    only (error O(δ²)), the coarse twin whose difference bounds the fine one's error."""
    even = np.stack([(values[2 * i] + values[2 * i + 1]) / 2 for i in range(points)])
    odd = np.stack([(values[2 * i] - values[2 * i + 1]) / 2 for i in range(points)])
    if points == 3:
        E, O = _EVEN, _ODD
    else:
        E = np.linalg.inv(np.array([[1.0, 1.0], [1.0, 4.0]]))
        O = np.linalg.inv(np.array([[1.0, 1.0], [2.0, 8.0]]))
    h0 = np.tensordot(E[0], even, axes=(0, 0))
    h2 = np.tensordot(E[1], even, axes=(0, 0)) / DELTA ** 2
    h1 = np.tensordot(O[0], odd, axes=(0, 0)) / DELTA
    return np.stack([h0, h1, h2], axis=-1)


def _raw_moments(m, v):
    """Series of E[y^k | rest], k = 1..4, for y | rest ~ N(m, v): (…, 4, 3)."""
    m2 = _mul(m, m)
    return np.stack([m, m2 + v, _mul(m2, m) + 3 * _mul(m, v),
                     _mul(m2, m2) + 6 * _mul(m2, v) + 3 * _mul(v, v)], axis=-2)


def _excess_kurtosis(R):
    """Series of the excess kurtosis from series of raw moments (…, 4, 3)."""
    r1, r2, r3, r4 = (R[..., i, :] for i in range(4))
    r11 = _mul(r1, r1)
    mu2 = r2 - r11
    mu4 = r4 - 4 * _mul(r1, r3) + 6 * _mul(r11, r2) - 3 * _mul(r11, r11)
    out = _div(mu4, _mul(mu2, mu2))
    out[..., 0] -= 3.0
    return out


# ---- the nonlinear front at the level of its Grams
@dataclass
class _Source:
    """A front pre-activation: an input (variance fixed) or W a (variance σ² F_aa, F the level below)."""
    level: int
    var: float = 0.0  # inputs: the variance; MatMuls: σ²
    arg: int = -1  # MatMuls: the statistic F_aa it reads
    q: float = 0.0  # the limit variance


class _FrontModel:
    """A front whose vectors are f(u) for pre-activations u that are mutually independent given the layer below
    (inputs with zero mutual covariance, MatMuls by distinct matrices each applied to one vector), f identity or
    a univariate φ. Its Grams, level by level: F = μ(q) + εΦ (module docstring)."""

    def __init__(self, plan: ExactPlan, targets):
        self.plan = plan
        self.stats: list = []  # ((source, f), (source, g)) per Gram statistic
        self._stat_index: dict = {}
        self.sources: list[_Source] = []
        self.of: dict[int, tuple[int, object]] = {}  # vector index → (source, f)
        by_matrix: dict[int, int] = {}
        inputs: list[Input] = []
        front = [n for n in plan.needed if n.index in plan.front]
        where = lambda n: f"{n.name} := {n.definition()}"  # noqa: E731
        for node in front:
            if not isinstance(node, Vector) or node.dim != WIDTH:
                _refuse(where(node), "the correction covers nonlinear fronts of width-n vectors only (no scalars "
                                     "or moments computed through a nonlinearity)")
            if isinstance(node, Input):
                for other in inputs:
                    if other.group is node.group and node.group.cov[other.position, node.position] != 0.0:
                        _refuse(where(node), f"inputs {other.name} and {node.name} are correlated and both enter a "
                                             f"nonlinearity: the correction needs independent pre-activations")
                inputs.append(node)
                self.of[node.index] = (len(self.sources), None)
                var = float(node.group.cov[node.position, node.position])
                self.sources.append(_Source(0, var, q=var))
            elif isinstance(node, MatMul):
                args = plan.args[node.matrix.index]
                if len(args) != 1 or node.matrix.shape != (WIDTH, WIDTH):
                    _refuse(where(node), f"{node.matrix.name} acts on {len(args)} vectors of the front; the "
                                         f"correction covers fronts whose matrices each act on one vector")
                if node.matrix.index not in by_matrix:
                    a = _linear_source(node.arg)
                    source, _ = self.of[a.index]
                    by_matrix[node.matrix.index] = len(self.sources)
                    self.sources.append(_Source(self.sources[source].level + 1, node.matrix.var,
                                                self.statistic(a, a)))
                self.of[node.index] = (by_matrix[node.matrix.index], None)
            elif isinstance(node, Nonlin) and node.phi.linear:
                self.of[node.index] = self.of[_linear_source(node).index]
            elif isinstance(node, Nonlin) and node.phi.arity == 1:
                source, f = self.of[_linear_source(node.args[0]).index]
                if f is not None:
                    _refuse(where(node), "a nonlinearity of a nonlinearity; write it as one Nonlinearity")
                self.of[node.index] = (source, node.phi)
            else:
                _refuse(where(node), f"{type(node).__name__} nodes in a nonlinear front are not covered (only "
                                     f"inputs, MatMuls and univariate nonlinearities)")
        front_cols = [c for c, _ in plan.front_columns]
        for t in targets:
            if isinstance(t, Vector) and t.dim == WIDTH and set(plan.cols(t).tolist()) & set(front_cols):
                _refuse(where(t), "a target on the nonlinear front: the correction reads the front only through "
                                  "its Gram (read it out through a matrix)")
        nodes = {n.index: n for n in plan.needed}
        self.column_vectors = [nodes[idx] for _, idx in plan.front_columns]
        self.column_stats = np.array([[self.statistic(u, v) for v in self.column_vectors]
                                      for u in self.column_vectors], dtype=np.int64).reshape(
            len(self.column_vectors), len(self.column_vectors))
        self._moments()

    # statistics: the Gram entries (1/n) Σ_α f(u_α) g(u'_α) the program reads
    def statistic(self, u, v) -> int:
        su, fu = self.of[u.index] if u.index in self.of else self.of[_linear_source(u).index]
        sv, fv = self.of[v.index] if v.index in self.of else self.of[_linear_source(v).index]
        if self.sources[su].level != self.sources[sv].level:
            _refuse(f"{u.name}·{v.name}", "the program reads the Gram of front vectors of different layers; the "
                                          "correction covers layered fronts only")
        key = tuple(sorted([(su, id(fu)), (sv, id(fv))]))
        if key not in self._stat_index:
            self._stat_index[key] = len(self.stats)
            self.stats.append(((su, fu), (sv, fv)))
        return self._stat_index[key]

    def _moments(self):
        """Per statistic, the Taylor coefficients of its mean μ(q) in q at the limit q∞ (products over
        independent sources of E[Π f(u)] with Hermite weights He₂, He₄: ∂_q E f = E[f He₂(z)]/(2q),
        ∂²_q E f = E[f He₄(z)]/(4q²)); per level, the factor of Φ's covariance at q∞."""
        for s in self.sources:  # in order: a MatMul's statistic is at a lower level, computed before
            if s.arg >= 0:
                s.q = s.var * self._mean_at_limit(s.arg)
        self.levels = sorted({self.sources[st[0][0]].level for st in self.stats})
        self.level_stats = {lv: [i for i, st in enumerate(self.stats) if self.sources[st[0][0]].level == lv]
                            for lv in self.levels}
        self.factors = {}
        for lv, idx in self.level_stats.items():
            mean = np.array([self._mean_at_limit(i) for i in idx])
            second = np.empty((len(idx), len(idx)))
            for a, i in enumerate(idx):
                for b, j in enumerate(idx):
                    second[a, b] = self._product_moment(list(self.stats[i]) + list(self.stats[j]))
            self.factors[lv] = gaussian_factor(second - np.outer(mean, mean))
        self.dims = sum(f.shape[1] for f in self.factors.values())

    def _source_moment(self, source: int, functions, weights=False):
        """E[Π f(u)], u ~ N(0, q∞) (and with He₂, He₄ weights: (3,))."""
        q = self.sources[source].q
        if q <= 0.0:
            raise ProgramError(f"finite_width_correction: a front pre-activation has variance {q:g}")
        kinks = [(np.ones(1), k) for f in functions if f is not None for k in f.kinks]

        def integrand(points):
            u = points[:, 0]
            value = np.ones_like(u)
            for f in functions:
                value = value * (u if f is None else f(u))
            if not weights:
                return value
            z2 = u * u / q
            return np.stack([value, value * (z2 - 1), value * (z2 * z2 - 6 * z2 + 3)], axis=1)

        return np.asarray(gaussian_expectation(integrand, np.array([[q]]), kinks=kinks), dtype=float)

    def _product_moment(self, pairs) -> float:
        grouped: dict[int, list] = {}
        for s, f in pairs:
            grouped.setdefault(s, []).append(f)
        return float(np.prod([self._source_moment(s, fs) for s, fs in grouped.items()]))

    def _mean_at_limit(self, stat: int) -> float:
        return self._product_moment(list(self.stats[stat]))

    def prepare(self):
        """Per statistic and source involved, the Taylor coefficients (value, ∂_q, ½∂²_q) of its factor."""
        self.taylor = []
        for st in self.stats:
            grouped: dict[int, list] = {}
            for s, f in st:
                grouped.setdefault(s, []).append(f)
            parts = []
            for s, fs in grouped.items():
                w = self._source_moment(s, fs, weights=True)
                q = self.sources[s].q
                parts.append((s, np.array([w[0], w[1] / (2 * q), w[2] / (8 * q * q)])))
            self.taylor.append(parts)

    def grams(self, eps: float, phi: dict) -> np.ndarray:
        """F(ε) of the front columns, (S, m, m), from the level fluctuations phi[level] (S, stats of the level)."""
        S = next(iter(phi.values())).shape[0] if phi else 1
        values = np.zeros((S, len(self.stats)))
        q = {}
        for lv in self.levels:
            for i in self.level_stats[lv]:
                mean = np.ones(S)
                for s, coef in self.taylor[i]:
                    src = self.sources[s]
                    if src.arg < 0:
                        dq = np.zeros(S)
                    else:
                        if s not in q:
                            q[s] = src.var * values[:, src.arg]
                        dq = q[s] - src.q
                    mean = mean * (coef[0] + dq * (coef[1] + dq * coef[2]))
                values[:, i] = mean
            values[:, self.level_stats[lv]] += eps * phi[lv]
        return values[:, self.column_stats]


# ---- the perturbed random inputs of one block
def _chi_shift(offset: int, r: int) -> np.ndarray:
    """M_ii: the O(1/n) mean of T_ii/sqrt(n) − 1 for T_ii² ~ χ²_{n − offset − i}, i < r: −(offset + i)/2 − 1/4
    (from sqrt(n − o) = sqrt(n)(1 − o/(2n)) and E[χ_k] = sqrt(k)(1 − 1/(4k) + O(k⁻²)))."""
    return -(offset + np.arange(r)) / 2.0 - 0.25


class _Perturbation:
    """The random inputs of one block: row 0 b (S, M), per read component its E (and Ξ), per front level Φ; and
    the Grams they give at any ε (pseudo-width 1/ε²)."""

    def __init__(self, plan: ExactPlan, front: _FrontModel | None, root, block: int, S: int, cubature: bool):
        self.plan, self.front, self.S = plan, front, S
        self.kinds = []
        dims = []  # (("E", component), side) of every Bartlett perturbation E (side × side, lower triangle)
        front_cols = {c for c, _ in plan.front_columns}
        for i, cols in enumerate(plan.components):
            r = len(cols)
            if not plan.read_components[i]:
                self.kinds.append(None)
            elif front_cols.intersection(cols.tolist()):
                self.kinds.append(("front",))
            elif plan.bipartite[i] is not None:
                A, B = plan.bipartite[i]
                self.kinds.append(("bipartite", A, B))
                dims.append((("E", i), len(A)))
            else:
                self.kinds.append(("wishart",))
                dims.append((("E", i), r))
        self.E, self.xi, self.phi = {}, {}, {}
        self.b0 = np.zeros((S, plan.size))
        if cubature:
            self._cubature(dims)
            return
        self.b0[:, plan.row0_columns] = stream(root, block, 0).standard_normal((S, len(plan.row0_columns)))
        for (_, i), r in dims:
            E = np.tril(stream(root, block, 1, i).standard_normal((S, r, r)))
            idx = np.arange(r)
            E[:, idx, idx] *= math.sqrt(0.5)
            self.E[i] = E
            if self.kinds[i][0] == "bipartite":
                self.xi[i] = stream(root, block, 2, i).standard_normal((S, r, len(self.kinds[i][2])))
        if front is not None:
            for lv, F in front.factors.items():
                self.phi[lv] = stream(root, block, 3, lv).standard_normal((S, F.shape[1])) @ F.T

    def _cubature(self, dims):
        """2d points ±sqrt(d)·sd·e_a over every perturbation coordinate: exact for quadratic functions of them."""
        entries = []
        for (_, i), r in dims:
            for a in range(r):
                for b in range(a + 1):
                    entries.append((("E", i), (a, b), math.sqrt(0.5) if a == b else 1.0))
        if self.front is not None:
            for lv, F in self.front.factors.items():
                for a in range(F.shape[1]):
                    entries.append((("phi", lv), a, 1.0))
        d = len(entries)
        S = self.S
        for (_, i), r in dims:
            self.E[i] = np.zeros((S, r, r))
        if self.front is not None:
            for lv, F in self.front.factors.items():
                self.phi[lv] = np.zeros((S, F.shape[0]))
        for p, (key, at, sd) in enumerate(entries):
            for sign, row in ((1.0, 2 * p), (-1.0, 2 * p + 1)):
                if key[0] == "E":
                    self.E[key[1]][row, at[0], at[1]] = sign * math.sqrt(d) * sd
                else:
                    self.phi[key[1]][row] = sign * math.sqrt(d) * self.front.factors[key[1]][:, at]

    def grams(self, eps: float) -> list:
        plan, S = self.plan, self.S
        width = 1.0 / eps ** 2
        out = []
        front_gram = None
        if self.front is not None:
            front_gram = width * self.front.grams(eps, self.phi)
        for i, cols in enumerate(plan.components):
            kind = self.kinds[i]
            if kind is None:
                out.append(None)
                continue
            if kind[0] == "front":
                position = {c: j for j, (c, _) in enumerate(plan.front_columns)}
                at = np.array([position[int(c)] for c in cols])
                out.append(front_gram[:, at[:, None], at[None, :]])
                continue
            E = self.E[i]
            r = E.shape[1]
            shift = _chi_shift(0 if plan.gram_only[i] else 1, r)
            T = eps * E
            T[:, np.arange(r), np.arange(r)] += 1.0 + eps ** 2 * shift
            b = self.b0[:, cols]
            if kind[0] == "wishart":
                G = T @ T.transpose(0, 2, 1)  # batched BLAS: einsum would loop
                G *= width
                if not plan.gram_only[i]:
                    G += b[:, :, None] * b[:, None, :]
            else:
                _, A, B = kind
                cross = T @ self.xi[i]
                cross /= abs(eps)
                if not plan.gram_only[i]:
                    cross += math.copysign(1.0, eps) * b[:, A, None] * b[:, None, B]
                G = np.zeros((S, len(cols), len(cols)))
                G[:, A[:, None], B[None, :]] = cross
                G[:, B[:, None], A[None, :]] = cross.transpose(0, 2, 1)
            out.append(G)
        return out


@dataclass
class FiniteWidthCorrection:
    """The O(1/n) correction of the law of `variables` (see `finite_width_correction`).

    cov, excess_kurtosis: C₁ and κ₁ (Cov_n = Cov_∞ + C₁/n + O(n⁻²), κ_n = κ_∞ + κ₁/n + O(n⁻²)), with standard
    errors cov_se, excess_kurtosis_se (where `exact`, only the bound on the ε-differences' own error);
    limit_cov, limit_excess_kurtosis the n → ∞ values,
    and odd_cov the O(n^{-1/2}) coefficient of the covariance, zero in theory (a check, with odd_cov_se)."""

    variables: tuple
    size: int
    exact: bool
    limit_cov: np.ndarray
    limit_cov_se: np.ndarray
    cov: np.ndarray
    cov_se: np.ndarray
    limit_excess_kurtosis: np.ndarray
    excess_kurtosis: np.ndarray
    excess_kurtosis_se: np.ndarray
    odd_cov: np.ndarray
    odd_cov_se: np.ndarray
    chain: tuple | None = None  # (layers, limit variance) of a deep linear chain, for the formulas
    _m: np.ndarray = field(default=None, repr=False)  # per draw, series of each variable's mean (S, k, 3)
    _v: np.ndarray = field(default=None, repr=False)  # and of its variance (S, k, 3)
    _blocks: np.ndarray = field(default=None, repr=False)  # block of each draw
    _coarse: tuple = field(default=None, repr=False)  # (m, v) from the coarse ε-differences
    _kl: dict = field(default_factory=dict, repr=False)

    def _variable(self, variable, where: str) -> int:
        if variable is None:
            if len(self.variables) != 1:
                raise ProgramError(f"{where}: the correction has {len(self.variables)} variables; name one with "
                                   f"variable=")
            return 0
        names = list(self.variables)
        name = getattr(variable, "name", variable)
        if name not in names:
            raise ProgramError(f"{where}: variable {variable!r} is not one of {', '.join(names)}")
        return names.index(name)

    def _gaussian_part(self, j: int, where: str, coarse: bool = False):
        m, v = (self._coarse[0][:, j], self._coarse[1][:, j]) if coarse else (self._m[:, j], self._v[:, j])
        if np.any(v[:, 0] <= 0.0):
            raise ProgramError(f"{where}: {self.variables[j]} has no Gaussian part given the rest (a scalar, or a "
                               f"variance 0 in some draw), so its density has no such correction")
        return m, v

    @staticmethod
    def _terms(y, m, v):
        """Per draw and point, φ(y; m₀, V₀) and the ε² coefficient of φ(y; m(ε), V(ε)), (S, P) each."""
        u = y[None, :] - m[:, 0, None]
        V = v[:, 0, None]
        phi = np.exp(-0.5 * u * u / V) / np.sqrt(2 * np.pi * V)
        m1, m2, v1, v2 = m[:, 1, None], m[:, 2, None], v[:, 1, None], v[:, 2, None]
        a = u / V
        d_m = a
        d_v = (a * a - 1 / V) / 2
        d_mm = a * a - 1 / V
        d_mv = u * (u * u - 3 * V) / (2 * V ** 3)
        d_vv = (u ** 4 - 6 * u * u * V + 3 * V * V) / (4 * V ** 4)
        second = d_m * m2 + d_v * v2 + 0.5 * (d_mm * m1 * m1 + 2 * d_mv * m1 * v1 + d_vv * v1 * v1)
        return phi, phi * second

    def _sums(self, y, j: int, coarse: bool = False):
        """Per block, sums over its draws of φ₀, of f₁'s terms and of their squares, (B, P) each."""
        m, v = self._gaussian_part(j, "density", coarse)
        B = int(self._blocks.max()) + 1
        f0, f1, f11 = (np.zeros((B, len(y))) for _ in range(3))
        for start in range(0, len(m), 2048):
            sl = slice(start, start + 2048)
            phi, term = self._terms(y, m[sl], v[sl])
            np.add.at(f0, self._blocks[sl], phi)
            np.add.at(f1, self._blocks[sl], term)
            np.add.at(f11, self._blocks[sl], term * term)
        return f0, f1, f11

    def density(self, y, variable=None, error: bool = False):
        """f₁(y), the O(1/n) density correction of one variable: f_n = f_∞ + f₁/n + o(1/n) (with error: and its
        standard error; where exact, only the bound on the ε-differences' error)."""
        j = self._variable(variable, "density")
        y = np.asarray(y, dtype=float)
        if y.ndim > 1 or not np.all(np.isfinite(y)):
            raise ProgramError("density: y must be a finite number or 1-D array of them")
        flat = np.atleast_1d(y)
        _, f1, f11 = self._sums(flat, j)
        _, rough, _ = self._sums(flat, j, coarse=True)
        S = len(self._m)
        mean = f1.sum(0) / S
        se = np.zeros_like(mean) if self.exact else np.sqrt(np.maximum(f11.sum(0) / S - mean ** 2, 0) / (S - 1))
        se = np.sqrt(se ** 2 + (mean - rough.sum(0) / S) ** 2)
        mean, se = mean.reshape(y.shape), se.reshape(y.shape)
        return (mean, se) if error else mean

    def limit_density(self, y, variable=None):
        """f_∞(y), the limit density, as the mixture of the same draws."""
        j = self._variable(variable, "limit_density")
        flat = np.atleast_1d(np.asarray(y, dtype=float))
        f0, _, _ = self._sums(flat, j)
        return (f0.sum(0) / len(self._m)).reshape(np.shape(y))

    def kl_constant(self, variable=None):
        """(c, se): c = ½∫f₁²/f_∞, so that KL(finite n ‖ limit) = c/n² + o(n⁻²). f₁² is estimated without bias
        (a U-statistic over draws) and the standard error is a jackknife over blocks plus the ε-differences' error
        bound (only that bound where exact). Refused where c is not resolved or hinges on near-degenerate draws."""
        j = self._variable(variable, "kl_constant")
        if j in self._kl:
            return self._kl[j]
        m, v = self._gaussian_part(j, "kl_constant")
        scale = np.sqrt(v[:, 0])[:, None]
        if np.all(np.abs(m) <= 1e-9 * scale) and np.all(np.abs(self._coarse[0][:, j]) <= 1e-9 * scale):
            self._kl[j] = self._kl_centred(j)
            return self._kl[j]
        reach = float((np.abs(m[:, 0]) + 12.0 * np.sqrt(v[:, 0])).max())
        # the trapezoid rule is spectrally accurate on Gaussians sampled at ≤ σ/2: resolve the narrowest component
        points = max(KL_GRID, int(math.ceil(4.0 * reach / math.sqrt(v[:, 0].min()))) + 1)
        if points > MAX_KL_GRID:
            raise ProgramError(f"kl_constant: {self.variables[j]}'s conditional standard deviations span "
                               f"{reach / 12 / math.sqrt(v[:, 0].min()):.3g}× — more than a grid of {MAX_KL_GRID} "
                               f"points resolves")
        y = np.linspace(-reach, reach, points)
        counts = np.bincount(self._blocks).astype(float)
        weights = np.full(points, 0.5 * (y[1] - y[0]))  # ½ ∫ on the trapezoid grid
        out = self._constant_and_error(weights, self._sums(y, j), self._sums(y, j, coarse=True), counts)
        self._kl[j] = self._resolved(j, *out)
        return self._kl[j]

    def _constant_and_error(self, weights, fine, coarse, counts):
        """(c, se) from per-block grid sums (f₀, f₁, f₁₁) of the fine and the coarse series: the jackknife over
        blocks plus the coarse twin's distance (only that distance where exact)."""
        f0, f1, f11 = fine
        S = counts.sum()
        total = _kl_integral(weights, f0.sum(0), f1.sum(0), f11.sum(0), S, self.exact)
        numerical = abs(total - _kl_integral(weights, *(g.sum(0) for g in coarse), S, self.exact))
        if self.exact:
            return total, numerical
        leave = np.array([_kl_integral(weights, f0.sum(0) - f0[b], f1.sum(0) - f1[b], f11.sum(0) - f11[b],
                                       S - counts[b], False) for b in range(len(counts))])
        return total, float(np.sqrt(_jackknife_se(leave) ** 2 + numerical ** 2))

    def _resolved(self, j: int, total: float, se: float):
        """(c, se), or ProgramError where c is not resolved (se > c/2; c is a KL, so 1e-9 is zero): heavy-tailed
        draws, no measurement."""
        if se > 0.5 * abs(total) + 1e-9:
            raise ProgramError(f"kl_constant: {self.variables[j]}: c = {total:.4g} ± {se:.2g} is not resolved (the "
                               f"draws' contributions are heavy-tailed, down to conditional variance "
                               f"{self._v[:, j, 0].min():.2g}); more draws may resolve it, or KL may not decay "
                               f"like c/n²")
        return total, se

    def _kl_centred(self, j: int):
        """kl_constant where y | rest ~ N(0, V(ε)): f₁ = E[V₂ ∂_Vφ + ½V₁² ∂²_Vφ] at V₀. The draws are binned in
        log V₀ (cloud-in-cell, NODES nodes) and the symmetric integrand integrated on the half line y = e^t by
        Simpson in t, as the 1-D mixture KL estimator does, resolving every component from 1e-4 σ_min to 14 σ_max."""
        B = int(self._blocks.max()) + 1
        counts = np.bincount(self._blocks, minlength=B).astype(float)

        def per_block(v, keep=None):
            """(B, 6, nodes) binned sums of 1, V₂, ½V₁², V₂², V₂V₁², ¼V₁⁴ (over the draws `keep`, default all),
            and the node log-variances."""
            u = np.log(v[:, 0])
            lo, hi = u.min(), u.max()
            if hi - lo > MAX_LOG_VARIANCE_RANGE:
                raise ProgramError(f"kl_constant: {self.variables[j]}'s conditional variances span a factor "
                                   f"e^{hi - lo:.0f} (at most e^{MAX_LOG_VARIANCE_RANGE:g})")
            bins = 1 if hi - lo < 1e-12 else NODES
            step = (hi - lo) / (bins - 1) if bins > 1 else 1.0
            left, frac = linear_binning(u, lo, step, bins)
            a, b = v[:, 2], 0.5 * v[:, 1] ** 2
            ones = np.ones_like(a) if keep is None else keep.astype(float)
            a, b = a * ones, b * ones
            out = np.zeros((B, 6, bins))
            for c, coef in enumerate((ones, a, b, a * a, 2 * a * b, b * b)):
                for node, weight in ((left, 1 - frac), (left + 1, frac)):
                    if bins == 1 and node is not left:
                        continue
                    np.add.at(out[:, c], (self._blocks, np.minimum(node, bins - 1)), coef * weight)
            return out, lo + step * np.arange(bins)

        fine, nodes = per_block(self._v[:, j])
        rough, rough_nodes = per_block(self._coarse[1][:, j])
        y, dy = half_line_rule(min(nodes.min(), rough_nodes.min()), max(nodes.max(), rough_nodes.max()))

        def basis(nodes):
            V = np.exp(nodes)[:, None]
            phi = np.exp(-0.5 * y[None, :] ** 2 / V) / np.sqrt(2 * np.pi * V)
            y2 = y[None, :] ** 2
            d_v = phi * (y2 / V - 1) / (2 * V)
            d_vv = phi * (y2 * y2 - 6 * y2 * V + 3 * V * V) / (4 * V ** 4)
            return phi, d_v, d_vv

        def grids(sums, nodes):
            phi, d_v, d_vv = basis(nodes)
            f0 = sums[:, 0] @ phi
            f1 = sums[:, 1] @ d_v + sums[:, 2] @ d_vv
            f11 = sums[:, 3] @ (d_v * d_v) + sums[:, 4] @ (d_v * d_vv) + sums[:, 5] @ (d_vv * d_vv)
            return f0, f1, f11

        # ½ ∫ over the line = ∫ over the half line: the rule's weights as they are
        total, se = self._constant_and_error(dy, grids(fine, nodes), grids(rough, rough_nodes), counts)
        # c must not hinge on the rarest, narrowest components: where the thousandth of draws with the smallest
        # V₀ moves it, f₁²/f_∞ is (nearly) not integrable there and c/n² is not the KL's leading term
        variances = self._v[:, j, 0]
        keep = variances >= np.quantile(variances, TRIM)
        trimmed, trimmed_nodes = per_block(self._v[:, j], keep)
        without = _kl_integral(dy, *(t.sum(0) for t in grids(trimmed, trimmed_nodes)), float(keep.sum()),
                               self.exact)
        if abs(total - without) > 3 * se + 0.01 * abs(total):
            raise ProgramError(f"kl_constant: {self.variables[j]}: c = {total:.4g} ± {se:.2g} changes to "
                               f"{without:.4g} without the {TRIM:.1%} of draws of smallest conditional variance "
                               f"(down to {variances.min():.2g}): f₁²/f_∞ is dominated by near-degenerate "
                               f"components, so KL may not decay like c/n² and no constant is reported")
        return self._resolved(j, total, se)

    def predicted_kl(self, width, variable=None):
        """c/n² at the given width(s), with its standard error."""
        c, se = self.kl_constant(variable)
        n = np.asarray(width, dtype=float)
        return c / n ** 2, se / n ** 2

    def cov_at(self, width) -> np.ndarray:
        """Cov_∞ + C₁/n: the covariance at width n to this order."""
        return self.limit_cov + self.cov / float(width)

    def describe(self, latex: bool = False) -> str:
        """The coefficients: as formulas (sympy) for a deep linear chain, else a table with standard errors."""
        lines = [f"finite-width correction of {', '.join(self.variables)} ({'exact' if self.exact else 'Monte Carlo'}"
                 f", {self.size} draws)"]
        if self.chain is not None:
            for name, expr in chain_formulas(*self.chain).items():
                lines.append(f"  {name} = {sympy.latex(expr) if latex else sympy.sstr(expr)}")
        for j, name in enumerate(self.variables):
            line = (f"  {name}: Var_∞ = {self.limit_cov[j, j]:.6g}, C₁ = {self.cov[j, j]:.6g} ± "
                    f"{self.cov_se[j, j]:.2g}, κ_∞ = {self.limit_excess_kurtosis[j]:.6g}, κ₁ = "
                    f"{self.excess_kurtosis[j]:.6g} ± {self.excess_kurtosis_se[j]:.2g}")
            if np.all(self._v[:, j, 0] > 0.0):  # a Gaussian part: its KL constant
                try:
                    c, se = self.kl_constant(name)
                    line += f", KL ≈ c/n² with c = {c:.6g} ± {se:.2g}"
                except ProgramError:
                    line += ", KL constant not resolved (see kl_constant)"
            lines.append(line)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.describe()

    def _repr_html_(self) -> str:
        """Jupyter: `describe()` as text."""
        from ..display import html_description
        return html_description(self.describe())

    def _repr_latex_(self) -> str:
        """Jupyter: `describe(latex=True)` as display math."""
        from ..display import latex_lines
        return latex_lines(self.describe(latex=True).splitlines())


def chain_formulas(layers: int, variance: float) -> dict:
    """Deep linear chain y = W_L ⋯ W_1 x (coordinate 0), V_n = V_∞ Π_l χ²_n/n: its exact excess kurtosis and the
    O(1/n) coefficients, derived by sympy from E[(χ²_n/n)²] = 1 + 2/n."""
    n, y = sympy.symbols("n y", positive=True)
    L = sympy.Integer(layers)
    V = sympy.nsimplify(variance)
    kappa_n = 3 * (1 + 2 / n) ** L - 3
    t = sympy.symbols("t", positive=True)  # t = 1/n
    kappa_1 = sympy.limit(sympy.diff(kappa_n.subs(n, 1 / t), t), t, 0)
    s = sympy.symbols("s", positive=True)
    phi = sympy.exp(-y ** 2 / (2 * s)) / sympy.sqrt(2 * sympy.pi * s)
    var_x = sympy.limit(((1 + 2 * t) ** L - 1) / t, t, 0)  # n Var(Π χ²/n) → 2L
    f1 = sympy.simplify((var_x / 2 * s ** 2 * sympy.diff(phi, s, 2)).subs(s, V))
    c = sympy.simplify(sympy.integrate(f1 ** 2 / phi.subs(s, V), (y, -sympy.oo, sympy.oo)) / 2)
    return {"κ_n": kappa_n, "κ₁": kappa_1, "C₁": sympy.Integer(0), "f₁(y)": f1, "c": c}


def _chain(program: Program, target) -> tuple | None:
    """(layers, limit variance) when the target is W_L ⋯ W_1 x for an input x and matrices used once each."""
    node, var, layers = _linear_source(target), 1.0, 0
    uses: dict[int, int] = {}
    for n in program.nodes:
        if isinstance(n, MatMul):
            uses[n.matrix.index] = uses.get(n.matrix.index, 0) + 1
    while isinstance(node, MatMul):
        if uses[node.matrix.index] != 1 or node.matrix.shape != (WIDTH, WIDTH):
            return None
        var *= node.matrix.var
        layers += 1
        node = _linear_source(node.arg)
    if not isinstance(node, Input) or node.dim != WIDTH or layers == 0:
        return None
    return layers, var * float(node.group.cov[node.position, node.position])


def _cubature_applies(plan: ExactPlan) -> bool:
    """Whether nothing but the perturbations is random (the limit is deterministic given them): no cross block
    (its Ξ), no 1/sqrt(n) dot (it reads E at O(1)), no explicit fixed-dimension rows, no row 0 read by a Gram."""
    if any(b is not None for b, read in zip(plan.bipartite, plan.read_components) if read):
        return False
    for node in plan.needed:
        if isinstance(node, Vector) and node.dim != WIDTH:
            return False
        if isinstance(node, Dot) and node.exponent != 1.0:
            return False
    front_cols = {c for c, _ in plan.front_columns}  # their row 0 is never read here (_FrontModel refuses it)
    return set(plan.row0_columns.tolist()) - front_cols <= set(plan.free_columns.tolist())


def finite_width_correction(program: Program, variables, size: int = 1 << 17, seed=0,
                            threads: int | None = None) -> FiniteWidthCorrection:
    """The O(1/n) correction of the law of `variables` (coordinate 0 of vectors, scalars' values) at width n.

    Covers every program the exact sampler reduces (attention with Gaussian or given-covariance tokens, fixed head
    dimensions, deep linear chains, reused matrices) and layered nonlinear fronts (clip / relu tokens, MLPs with any
    univariate φ) whose pre-activations are independent given the layer below. `size` draws of the limit's
    randomness (Monte Carlo; ignored where the correction is exact), from `seed`; `threads` as in simulate."""
    where = "finite_width_correction"
    if not isinstance(program, Program):
        raise ProgramError(f"{where}: expected a netsor Program, got {type(program).__name__}")
    head_sum = next((n for n in program.nodes if isinstance(n, HeadSum)), None)
    if head_sum is not None:
        raise ProgramError(f"{where}: {head_sum.name} := {head_sum.definition()} sums over infinitely many heads; "
                           f"the program has no finite-width network to correct")
    targets = program.resolve(variables, where)
    if len(targets) > MAX_VARIABLES:
        raise ProgramError(f"{where}: at most {MAX_VARIABLES} variables at once, got {len(targets)}")
    size = check_size(size, f"{where}: size")
    root = seed_sequence(seed)
    if threads is not None:
        threads = check_size(threads, "threads")
    try:
        plan = ExactPlan(program, targets)
    except ProgramError as error:
        raise ProgramError(f"{where}: the correction needs the exact reduction of the program, and {error}") from None
    front = _FrontModel(plan, targets) if plan.front else None
    if front is not None:
        front.prepare()
    cubature = _cubature_applies(plan)
    if cubature:
        probe = _Perturbation(plan, front, root, 0, 0, cubature=False)
        d = sum(E.shape[1] * (E.shape[1] + 1) // 2 for E in probe.E.values()) + (front.dims if front else 0)
        cubature = 0 < d <= MAX_CUBATURE
    if cubature:
        blocks = [(0, 2 * d)]
    else:
        if size < MIN_SIZE:
            raise ProgramError(f"{where}: size must be at least {MIN_SIZE} where the correction is Monte Carlo "
                               f"(its errors come from a jackknife over {MIN_BLOCKS} blocks), got {size}")
        per = min(BLOCK, -(-size // MIN_BLOCKS))
        blocks = [(b, min(per, size - start)) for b, start in enumerate(range(0, size, per))]
    k = len(targets)

    def work(item):
        b, S = item
        pert = _Perturbation(plan, front, root, b, S, cubature)
        means, covs = [], []
        for eps in EPSILONS:
            _, mean, cov = outputs_given_grams(plan, 1.0 / eps ** 2, targets, root, b, S, False, True, pert.b0,
                                               pert.grams(eps))
            means.append(mean)
            covs.append(cov)
        means, covs = np.array(means), np.array(covs)
        diag = np.arange(k)
        out = []
        for points in (3, 2):  # the fine series, and its coarse twin
            m, V = _series(means, points), _series(covs, points)
            if not (np.all(np.isfinite(m)) and np.all(np.isfinite(V))):
                raise ProgramError(f"{where}: the expansion is not finite for some draw (a variance or score that "
                                   f"degenerates); the program is outside what the correction covers")
            out.append((_block_sums(m, V), m, V[:, diag, diag]))  # only the diagonal is kept per draw
        return out

    results = list(map_blocks(work, blocks, threads))
    owner = np.concatenate([np.full(S, i) for i, (_, S) in enumerate(blocks)])
    counts = np.array([S for _, S in blocks], dtype=float)
    fine, coarse = ([r[i] for r in results] for i in range(2))
    full, ses = _aggregate([f[0] for f in fine], counts, cubature)
    rough, _ = _aggregate([c[0] for c in coarse], counts, cubature)
    # the ε-differences' own error: the coarse (O(δ²)) twin's distance bounds the fine (O(δ⁴)) one's
    ses = [np.sqrt(se ** 2 + (f - r) ** 2) for se, f, r in zip(ses, full, rough)]
    m, v = (np.concatenate([f[i] for f in fine]) for i in (1, 2))
    coarse_m, coarse_v = (np.concatenate([c[i] for c in coarse]) for i in (1, 2))
    chain = _chain(program, targets[0]) if cubature and k == 1 and isinstance(targets[0], Vector) else None
    return FiniteWidthCorrection(
        variables=tuple(t.name for t in targets), size=int(len(m)), exact=cubature,
        limit_cov=full[0], limit_cov_se=ses[0], cov=full[1], cov_se=ses[1],
        limit_excess_kurtosis=full[2], excess_kurtosis=full[3], excess_kurtosis_se=ses[3],
        odd_cov=full[4], odd_cov_se=ses[4], chain=chain,
        _m=m, _v=v, _blocks=owner, _coarse=(coarse_m, coarse_v))


def _block_sums(m, V):
    """Sums over a block's draws of the series of m, of V + m mᵀ and of each variable's raw moments."""
    diag = np.arange(m.shape[1])
    second = V + _mul(m[:, :, None, :], m[:, None, :, :])
    return m.sum(0), second.sum(0), _raw_moments(m, V[:, diag, diag]).sum(0)


def _aggregate(block_sums, counts, cubature: bool):
    """The limit and O(1/n) coefficients of covariance and excess kurtosis (and the odd coefficient) from the
    blocks' sums, with jackknife standard errors over blocks (zero for the cubature)."""
    B = len(counts)
    sums = [np.array([b[i] for b in block_sums]) for i in range(3)]

    def statistics(Sm, S2, SR, count):
        mean_m, mean_2, mean_r = Sm / count, S2 / count, SR / count
        odd = (mean_2 - _mul(mean_m[:, None], mean_m[None, :]))[..., 1]
        for a in (mean_m, mean_2, mean_r):
            a[..., 1] = 0.0  # zero in theory: its noise must not enter the products below
        cov = mean_2 - _mul(mean_m[:, None], mean_m[None, :])
        kurt = _excess_kurtosis(mean_r)
        return [cov[..., 0], cov[..., 2], kurt[..., 0], kurt[..., 2], odd]

    full = statistics(*(s.sum(0) for s in sums), counts.sum())
    if cubature:
        return full, [np.zeros_like(a) for a in full]
    leave = [statistics(*(s.sum(0) - s[b] for s in sums), counts.sum() - counts[b]) for b in range(B)]
    return full, [_jackknife_se(np.array([lv[i] for lv in leave])) for i in range(len(full))]


def _jackknife_se(leave_out: np.ndarray) -> np.ndarray:
    """The delete-one-block jackknife standard error from the B leave-one-out estimates (axis 0)."""
    B = len(leave_out)
    return np.sqrt((B - 1) / B * np.sum((leave_out - leave_out.mean(0)) ** 2, axis=0))


def _kl_integral(weights, F0, F1, F11, S, exact: bool) -> float:
    """Σ weights · f₁²/f_∞ on a grid from sums over S draws of φ₀, of f₁'s terms and of their squares: f₁² by
    the U-statistic (A² − Σ a²)/(S(S − 1)), unbiased, unless exact (no noise: the plain square)."""
    square = (F1 / S) ** 2 if exact else (F1 * F1 - F11) / (S * (S - 1))
    ok = F0 > 0
    return float(np.sum(weights[ok] * square[ok] / (F0[ok] / S)))
