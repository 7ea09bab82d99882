"""KL(finite width n ‖ limit): estimators, and what each can resolve (README, *Measuring KL(finite n ‖ limit)*).

Sample-based, for any two samples (N, k):
- "kde": SKI25's published method — scipy `gaussian_kde` of each sample on a 500-point grid spanning the limit
  sample, `scipy.stats.entropy`.
  Kept to reproduce the figure. Its floor (two samples of the *same* law, 5e4 each) is ≈ 1e-3: values near it
  measure the estimator, not the network. 1-D only; no standard error (the spread over seeds is the honest one).
- "fftkde": the same with KDEpy's FFT KDE (Silverman bandwidth) on a 2^14-point grid: much faster, same floor.
- "knn": Wang–Kulkarni–Verdú (2009) k-nearest-neighbour estimator, any dimension (scipy cKDTree);
  D̂ = (d/N) Σ_i log(ν_k(i)/ρ_k(i)) + log(M/(N−1)). Its SE treats the terms as independent (approximate).

Component-based, when both laws are Gaussian mixtures f(y) = mean_m N(y; μ_m, C_m) — the limit given its random
scores, the finite-width law given its Grams (`netsor.simulate_with_moments`, `Law.conditional_moments`):
- "mixture": Rao-Blackwellized quadrature. 1-D zero-mean: both densities on a log-spaced grid of the half line
  (log-variance binned, O(grid × bins)), KL = 2∫₀^∞ f_n log(f_n/f_∞) − f_n + f_∞ (non-negative integrand), the O(1/M)
  plug-in bias estimated and subtracted, SE from the influence functions ψ(s) = E_{y|s} log(f_n/f_∞) and
  χ(t) = E_{y|t}[1 − f_n/f_∞] (plus the size of the bias correction). Joint (k ≥ 2) or non-zero means:
  Gauss–Hermite nodes within a few hundred evaluation components, densities from the other components.
- "coupled": the mixture estimator on paired components from common random numbers (`netsor.simulate_coupled`):
  the SE uses var(ψ_m + χ_m) over pairs, which is far smaller because the pairs nearly agree.

Every estimate is a `KLEstimate`; where the value is under 2 SE it is reported as an upper bound, not a value.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
from scipy import integrate, stats
from scipy.spatial import cKDTree
from scipy.special import logsumexp

from netsor import CoupledDraws, GaussianLaw, ProgramError
from netsor.quadrature import tensor_hermite_rule

SAMPLE_METHODS = ("kde", "fftkde", "knn")
COMPONENT_METHODS = ("mixture", "coupled")
METHODS = SAMPLE_METHODS + COMPONENT_METHODS


@dataclass(frozen=True)
class KLEstimate:
    """An estimate of KL(finite ‖ limit) in nats with its standard error (nan where the method defines none)."""

    value: float
    se: float
    method: str
    n_finite: int
    n_limit: int
    seconds: float = float("nan")

    @property
    def upper_bound(self) -> bool:
        """True when the value is under 2 SE: then only `bound` is meaningful."""
        return bool(np.isfinite(self.se) and self.value < 2 * self.se)

    @property
    def bound(self) -> float:
        """An upper confidence bound max(value, 0) + 2 SE (the value itself when SE is undefined)."""
        return max(self.value, 0.0) + 2 * self.se if np.isfinite(self.se) else self.value

    def __float__(self) -> float:
        return float(self.value)

    def __str__(self) -> str:
        if self.upper_bound:
            return f"KL < {self.bound:.3g} ({self.method}; {self.value:.2g} ± {self.se:.2g})"
        if np.isfinite(self.se):
            return f"KL = {self.value:.4g} ± {self.se:.2g} ({self.method})"
        return f"KL = {self.value:.4g} ({self.method})"


def kl(finite, limit=None, method: str = "mixture", **options) -> KLEstimate:
    """KL(finite ‖ limit) by `method` (see the module docstring).

    Sample methods ("kde", "fftkde", "knn"): `finite` and `limit` are draws, (N,) or (N, k).
    "mixture": each is the law's Gaussian components — variances (M,), covariances (M, k, k), a (means, covs)
    pair, or a `netsor.GaussianLaw` (one component).
    "coupled": `finite` is a `netsor.CoupledDraws` (limit omitted), or two equally long paired component arrays.
    Options: kde grid_points; fftkde grid_points; knn k; mixture/coupled bins, eval_components,
    density_components, order.
    """
    if method not in METHODS:
        raise ProgramError(f"kl: unknown method {method!r}; choose from {', '.join(METHODS)}")
    start = time.perf_counter()
    if method == "coupled" and isinstance(finite, CoupledDraws):
        if limit is not None:
            raise ProgramError("kl: with CoupledDraws, pass no separate limit")
        finite, limit = (finite.finite_mean, finite.finite_cov), (finite.limit_mean, finite.limit_cov)
    if limit is None:
        raise ProgramError(f"kl: method {method!r} needs both the finite and the limit argument")
    if method in SAMPLE_METHODS:
        x, z = _samples(finite, "finite"), _samples(limit, "limit")
        if x.shape[1] != z.shape[1]:
            raise ProgramError(f"kl: finite and limit samples have different dimensions ({x.shape[1]}, {z.shape[1]})")
        value, se = {"kde": _kde, "fftkde": _fftkde, "knn": _knn}[method](x, z, **options)
        n_finite, n_limit = len(x), len(z)
    else:
        (mn, cn), (ml, cl) = _components(finite, "finite"), _components(limit, "limit")
        if cn.shape[1] != cl.shape[1]:
            raise ProgramError(f"kl: finite and limit components have different dimensions ({cn.shape[1]}, "
                               f"{cl.shape[1]})")
        paired = method == "coupled"
        if paired and len(cn) != len(cl):
            raise ProgramError(f"kl: coupled components must come in pairs, got {len(cn)} and {len(cl)}")
        scale = np.sqrt(np.abs(np.concatenate([cn[:, 0, 0], cl[:, 0, 0]])).max())
        if cn.shape[1] == 1 and max(np.abs(mn).max(), np.abs(ml).max()) <= 1e-12 * scale:
            value, se = _mixture_1d(cn[:, 0, 0], cl[:, 0, 0], paired, **options)
        else:
            value, se = _mixture_joint(mn, cn, ml, cl, paired, **options)
        n_finite, n_limit = len(cn), len(cl)
    return KLEstimate(float(value), float(se), method, n_finite, n_limit, time.perf_counter() - start)


# ---- inputs
def _samples(x, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=float)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or len(x) < 2:
        raise ProgramError(f"kl: {name} samples must be an array (N,) or (N, k) with N ≥ 2, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ProgramError(f"kl: {name} samples contain NaN or inf")
    return x


def _components(x, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(means (M, k), covariances (M, k, k)) of a Gaussian mixture given as described in `kl`."""
    if isinstance(x, GaussianLaw):
        return x.mean[None], x.cov[None]
    if isinstance(x, tuple) and len(x) == 2:
        means, covs = (np.asarray(a, dtype=float) for a in x)
    else:
        covs, means = np.asarray(x, dtype=float), None
    if covs.ndim == 1:
        covs = covs[:, None, None]
    if covs.ndim != 3 or covs.shape[1] != covs.shape[2] or len(covs) < 1:
        raise ProgramError(f"kl: {name} components must be variances (M,) or covariances (M, k, k), "
                           f"got shape {covs.shape}")
    means = np.zeros(covs.shape[:2]) if means is None else means.reshape(len(covs), -1)
    if means.shape != covs.shape[:2]:
        raise ProgramError(f"kl: {name} means have shape {means.shape}, expected {covs.shape[:2]}")
    if not (np.all(np.isfinite(covs)) and np.all(np.isfinite(means))):
        raise ProgramError(f"kl: {name} components contain NaN or inf")
    diag = np.diagonal(covs, axis1=1, axis2=2)
    if np.any(diag <= 0):
        raise ProgramError(f"kl: {name} components have a non-positive variance: the variable is not Gaussian given "
                           "what was conditioned on, so this law has no mixture form here; use a sample-based "
                           "estimator (kde, fftkde, knn)")
    return means, covs


# ---- sample-based estimators
def _kde(x, z, grid_points: int = 500):
    if x.shape[1] != 1:
        raise ProgramError("kl: method 'kde' is 1-D (the published estimator); use 'knn' or 'mixture' for joints")
    x, z = x[:, 0], z[:, 0]
    # the grid spans the limit sample: over the pooled range, the finite sample's heavy tails at small n reach
    # where the limit's KDE underflows to 0 and the estimate is inf
    grid = np.linspace(z.min(), z.max(), int(grid_points))
    p, q = stats.gaussian_kde(x)(grid), stats.gaussian_kde(z)(grid)
    return float(stats.entropy(p, q)), math.nan


def _fftkde(x, z, grid_points: int = 2 ** 14):
    from KDEpy import FFTKDE
    if x.shape[1] != 1:
        raise ProgramError("kl: method 'fftkde' is 1-D here; use 'knn' or 'mixture' for joints")
    x, z = x[:, 0], z[:, 0]
    bandwidths = [_silverman(a) for a in (x, z)]
    pad = 6 * max(bandwidths)
    grid = np.linspace(min(x.min(), z.min()) - pad, max(x.max(), z.max()) + pad, int(grid_points))
    p = FFTKDE(bw=bandwidths[0]).fit(x).evaluate(grid)
    q = FFTKDE(bw=bandwidths[1]).fit(z).evaluate(grid)
    tiny = np.finfo(float).tiny
    p, q = np.maximum(p, tiny), np.maximum(q, tiny)
    integrand = p * np.log(p / q) - p + q  # non-negative; the last two terms integrate to ≈ 0
    return float(integrate.trapezoid(integrand, grid)), math.nan


def _silverman(a: np.ndarray) -> float:
    iqr = np.subtract(*np.percentile(a, [75, 25]))
    spread = min(a.std(ddof=1), iqr / 1.349) if iqr > 0 else a.std(ddof=1)
    return float(0.9 * spread * len(a) ** -0.2) or 1e-12


def _knn(x, z, k: int = 1):
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1 or k >= len(x):
        raise ProgramError(f"kl: knn needs an integer k in [1, N), got {k!r}")
    n, d = x.shape
    rho = cKDTree(x).query(x, k + 1, workers=-1)[0][:, k]  # own sample, excluding the point itself
    nu = cKDTree(z).query(x, k, workers=-1)[0]
    nu = nu if nu.ndim == 1 else nu[:, k - 1]
    tiny = np.finfo(float).tiny
    terms = d * np.log(np.maximum(nu, tiny) / np.maximum(rho, tiny))
    return float(terms.mean() + math.log(len(z) / (n - 1))), float(terms.std(ddof=1) / math.sqrt(n))


# ---- component-based estimators
def _linear_binning(u: np.ndarray, lo: float, step: float, bins: int):
    """Left node and fraction of each point on the node grid lo + step·j (cloud-in-cell weights)."""
    if bins == 1:
        return np.zeros(len(u), dtype=np.intp), np.zeros(len(u))
    t = np.clip((u - lo) / step, 0, bins - 1)
    left = np.minimum(t.astype(np.intp), bins - 2)
    return left, t - left


def _node_weights(left, frac, bins: int) -> np.ndarray:
    w = np.bincount(left, 1 - frac, minlength=bins)
    if bins > 1:
        w += np.bincount(left + 1, frac, minlength=bins)
    return w / len(left)


def _mixture_1d(var_n, var_l, paired: bool, bins: int = 2048, **unused):
    if unused:
        raise ProgramError(f"kl: options {sorted(unused)} do not apply to the 1-D mixture estimator")
    un, ul = np.log(var_n), np.log(var_l)
    lo, hi = min(un.min(), ul.min()), max(un.max(), ul.max())
    bins = 1 if hi - lo < 1e-12 else int(bins)
    step = (hi - lo) / (bins - 1) if bins > 1 else 1.0
    nodes = lo + step * np.arange(bins)
    (ln, fn), (ll, fl) = _linear_binning(un, lo, step, bins), _linear_binning(ul, lo, step, bins)
    wn, wl = _node_weights(ln, fn, bins), _node_weights(ll, fl, bins)

    # Half-line grid y = e^v, Simpson in v (dy = y dv): resolves every component from 1e-4 σ_min to 14 σ_max.
    v_lo, v_hi = lo / 2 + math.log(1e-4), hi / 2 + math.log(14.0)
    G = max(2001, int((v_hi - v_lo) / 0.004) | 1)
    v = np.linspace(v_lo, v_hi, G)
    y = np.exp(v)
    simpson = np.ones(G)
    simpson[1:-1:2], simpson[2:-1:2] = 4.0, 2.0
    dy = simpson * (v[1] - v[0]) / 3 * y
    dy[0] += y[0]  # [0, y₀]: every density is flat there

    log_phi = -0.5 * y[None, :] ** 2 / np.exp(nodes)[:, None] - 0.5 * (nodes[:, None] + math.log(2 * math.pi))
    phi = np.exp(log_phi)
    log_fn, log_fl = _log_mix(wn, phi, log_phi), _log_mix(wl, phi, log_phi)
    f_n, f_l = np.exp(log_fn), np.exp(log_fl)
    log_ratio = log_fn - log_fl
    plug_in = 2 * np.sum(dy * (f_n * log_ratio - f_n + f_l))

    # O(1/M) bias of the plug-in: ½∫ Var f̂_n / f_n + f_n Var f̂_∞ / f_∞² − 2 Cov(f̂_n, f̂_∞) / f_∞.
    Mn, Ml = len(var_n), len(var_l)
    sq_n, sq_l = _log_mix(wn, phi ** 2, 2 * log_phi), _log_mix(wl, phi ** 2, 2 * log_phi)
    second = (np.exp(sq_n - log_fn) - f_n) / Mn + (np.exp(log_fn + sq_l - 2 * log_fl) - f_n) / Ml
    if paired:
        second -= 2 * (np.exp(_log_cross_moment(un, ul, y) - log_fl) - f_n) / Mn
    bias = np.sum(dy * second)  # ½ · 2 (both half lines)

    # Influence functions at the nodes, then at each component by the same linear interpolation.
    psi_nodes = 2 * phi @ (dy * log_ratio)
    # χ(t) = ∫ φ_t (1 − f_n/f_∞): the product φ_t·r in logs, as r overflows where the limit's tail is thinner
    # (capped: it overflows only at nodes far outside the limit's components, where χ is never evaluated)
    chi_nodes = 2 * (phi @ dy - np.exp(np.minimum(log_phi + log_ratio, 700.0)) @ dy)
    psi = _interpolate(psi_nodes, ln, fn, bins)
    chi = _interpolate(chi_nodes, ll, fl, bins)
    if paired:
        first = np.var(psi + chi, ddof=1) / Mn if Mn > 1 else 0.0
    else:
        first = (np.var(psi, ddof=1) / Mn if Mn > 1 else 0.0) + (np.var(chi, ddof=1) / Ml if Ml > 1 else 0.0)
    return plug_in - bias, math.sqrt(first + bias ** 2)


def _log_mix(weights, values, log_values):
    """log Σ_b w_b v_b(y) per grid point: a matrix product, with log-sum-exp only where it underflows (far tails)."""
    total = weights @ values
    with np.errstate(divide="ignore"):
        out = np.log(total)
        small = total < 1e-250
        if small.any():
            out[small] = logsumexp(log_values[:, small] + np.log(weights)[:, None], axis=0)
    return out


def _interpolate(values, left, frac, bins):
    if bins == 1:
        return np.full(len(left), values[0])
    return values[left] * (1 - frac) + values[left + 1] * frac


def _log_cross_moment(un, ul, y, bins: int = 96):
    """log E_m[φ_{s_m}(y) φ_{t_m}(y)] over pairs, from a coarse joint histogram of (log s², log t²)."""
    lo, hi = min(un.min(), ul.min()), max(un.max(), ul.max())
    edges = np.linspace(lo, hi + 1e-12, bins + 1)
    cell_n = np.clip(np.searchsorted(edges, un, side="right") - 1, 0, bins - 1)
    cell_l = np.clip(np.searchsorted(edges, ul, side="right") - 1, 0, bins - 1)
    cells, counts = np.unique(cell_n * bins + cell_l, return_counts=True)
    centers = (edges[:-1] + edges[1:]) / 2
    a, b = centers[cells // bins], centers[cells % bins]
    log_terms = (-0.5 * y[None] ** 2 * (np.exp(-a) + np.exp(-b))[:, None] - 0.5 * (a + b)[:, None]
                 - math.log(2 * math.pi) + np.log(counts / len(un))[:, None])
    return logsumexp(log_terms, axis=0)


def _mixture_joint(mn, cn, ml, cl, paired: bool, eval_components: int = 256, density_components: int = 16384,
                   order: int | None = None, **unused):
    """Gauss–Hermite within evaluation components, densities from disjoint density components:
    KL = E_n[log f_n/f_∞] + E_∞[1 − f_n/f_∞], each expectation Rao-Blackwellized over y given a component."""
    from ._mixture_kernels import mixture_log_density
    if unused:
        raise ProgramError(f"kl: options {sorted(unused)} do not apply to the joint mixture estimator")
    k = cn.shape[1]
    order = order or {1: 24, 2: 8, 3: 5}.get(k, 3)
    nodes, weights = tensor_hermite_rule(int(order), k)
    Ln, Ll = _cholesky(cn, "finite"), _cholesky(cl, "limit")
    Mn, Ml = len(cn), len(cl)
    single_n, single_l = Mn == 1, Ml == 1  # a Gaussian law: exact density, one evaluation component
    E = int(eval_components)
    En = 1 if single_n else min(E, Mn // 2)
    El = 1 if single_l else min(E, Ml // 2)
    if paired:
        En = El = min(En, El)
    if En < 1 or El < 1:
        raise ProgramError("kl: the joint mixture estimator needs at least 2 components per side")
    # Density components: disjoint from the evaluation ones (and, for pairs, from each other's partners).
    rest_n = np.arange(0 if single_n else En, Mn)
    rest_l = np.arange(0 if single_l else El, Ml)
    if paired:
        half = (Mn - En) // 2
        rest_n, rest_l = rest_n[:half], rest_l[half:]
    D = int(density_components)
    rest_n, rest_l = rest_n[:D], rest_l[:D]

    def density(points, means, chol, rows):
        inv = np.linalg.inv(chol[rows])
        log_norm = -np.log(np.diagonal(chol[rows], axis1=1, axis2=2)).sum(1) - 0.5 * k * math.log(2 * math.pi)
        log_f, log_sq = mixture_log_density(points, np.ascontiguousarray(means[rows]), inv, log_norm)
        rel_var = (np.exp(log_sq - 2 * log_f) - 1) / len(rows) if len(rows) > 1 else np.zeros(len(points))
        return log_f, rel_var

    def at_components(means, chol, count):
        points = means[:count, None, :] + np.einsum("mij,pj->mpi", chol[:count], nodes)
        return points.reshape(-1, k)

    yn, yl = at_components(mn, Ln, En), at_components(ml, Ll, El)
    fn_n, vn_n = density(yn, mn, Ln, rest_n)
    fl_n, vl_n = density(yn, ml, Ll, rest_l)
    fn_l, vn_l = density(yl, mn, Ln, rest_n)
    fl_l, vl_l = density(yl, ml, Ll, rest_l)
    log_ratio = fn_n - fl_n + vn_n / 2 - vl_n / 2  # E log f̂ ≈ log f − v/2
    ratio = np.exp(np.minimum(fn_l - fl_l, 700.0)) / (1 + vl_l)  # E[f̂_n / f̂_∞] ≈ r (1 + v_∞)
    psi = (log_ratio.reshape(En, -1) * weights).sum(1)
    chi = ((1 - ratio).reshape(El, -1) * weights).sum(1)
    value = psi.mean() + chi.mean()
    if paired:
        var = np.var(psi + chi, ddof=1) / En if En > 1 else 0.0
    else:
        var = (np.var(psi, ddof=1) / En if En > 1 else 0.0) + (np.var(chi, ddof=1) / El if El > 1 else 0.0)
    return value, math.sqrt(var)


def _cholesky(covs, name: str) -> np.ndarray:
    try:
        return np.linalg.cholesky(covs)
    except np.linalg.LinAlgError:
        raise ProgramError(f"kl: a {name} component covariance is singular; the mixture has no joint density "
                           "(drop the redundant variables)") from None
