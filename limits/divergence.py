"""KL(finite width n ‖ limit): estimators, and what each can resolve (README, *Measuring KL(finite n ‖ limit)*).

Sample-based, for any two samples (N, k):
- "kde": SKI25's published method — scipy `gaussian_kde` of each sample on a 500-point grid spanning the limit
  sample, `scipy.stats.entropy`.
  Kept to reproduce the figure. Its floor (two samples of the *same* law, 5e4 each) is ≈ 1e-3: values near it
  measure the estimator, not the network. 1-D only; no standard error (the spread over seeds is the honest one).
- "fftkde": the same with KDEpy's FFT KDE (Silverman bandwidth) on a 2^14-point grid: much faster, same floor.
  Where a KDE is under 1e-3 of its peak (the FFT's binning and truncated kernel are off there, by orders of
  magnitude in heavy tails) it is summed directly, in logs, so the value is the KL of the two KDEs.
- "knn": Wang–Kulkarni–Verdú (2009) k-nearest-neighbour estimator, any dimension (scipy cKDTree);
  D̂ = (d/N) Σ_i log(ν_k(i)/ρ_k(i)) + log(M/(N−1)). Its SE treats the terms as independent (approximate).
  Continuous laws only: samples with ties (a draw repeated within or across the samples) are refused.

Component-based, when both laws are Gaussian mixtures f(y) = mean_m N(y; μ_m, C_m) — the limit given its random
scores, the finite-width law given its Grams (`netsor.simulate_with_moments`, `Law.conditional_moments`):
- "mixture": Rao-Blackwellized quadrature. 1-D zero-mean: both densities on a log-spaced grid of the half line
  (log-variance binned, O(grid × bins)), KL = 2∫₀^∞ f_n log(f_n/f_∞) − f_n + f_∞ (non-negative integrand), the O(1/M)
  plug-in bias estimated and subtracted, SE from the influence functions ψ(s) = E_{y|s} log(f_n/f_∞) and
  χ(t) = E_{y|t}[1 − f_n/f_∞] (plus the size of the bias correction). Every component is used.
  Joint (k ≥ 2) or non-zero means: KL = E_n log(f̂_n/f̂_∞) averaged over draws within E evaluation components of
  the finite law (an antithetic pair each, or a randomly shifted Sobol' net), densities f̂ from D other components
  per law, and the delta-method bias of each log f̂, −v/2 (v = Var f̂ / f², estimated from the same components),
  subtracted. SE² = Var(per-component term)/E (the draws within components included) + Σ_laws Var_j(influence of
  density component j)/D + (size of the bias correction)². Unbiased at the resolution it reports: identical inputs
  give 0 within the SE, and there is no floor under it. Its cost is E × draws × D: E ≈ D grow with what is given
  up to a budget of component evaluations (option `budget`; the SE falls as budget^-1/4 once it binds), and the
  estimate's `n_finite`, `n_limit` and `note` say what entered it.
- "coupled": the mixture estimator on paired components from common random numbers (`netsor.simulate_coupled`):
  densities from the same pairs for both laws (their covariance enters the bias), and E_∞[1 − f_n/f_∞] (= 0) added
  at common draws so that each pair's term is second order in the gap between the pair; the SE uses the variance
  over pairs of those terms and of the density pairs' influence, far smaller because the pairs nearly agree.

Every estimate is a `KLEstimate`; where the value is under 2 SE it is reported as an upper bound, not a value.
"""
from __future__ import annotations

import math
import numbers
import time
from dataclasses import dataclass

import numpy as np
from scipy import integrate, stats
from scipy.linalg import solve_triangular
from scipy.spatial import cKDTree
from scipy.special import logsumexp, ndtri
from scipy.stats import qmc

from netsor import CoupledDraws, GaussianLaw, ProgramError
from netsor.quadrature import MAX_LOG_VARIANCE_RANGE, half_line_rule  # variances e^60 apart: KL ≳ 30
from netsor.quadrature import linear_binning as _linear_binning

from ._mixture_kernels import mixture_influence, mixture_log_density, paired_bias_integrand, paired_log_density

SAMPLE_METHODS = ("kde", "fftkde", "knn")
COMPONENT_METHODS = ("mixture", "coupled")
METHODS = SAMPLE_METHODS + COMPONENT_METHODS
# Options each estimator takes (anything else given is refused, never ignored).
OPTIONS = {"kde": ("grid_points",), "fftkde": ("grid_points",), "knn": ("k",), "mixture 1-D": ("bins",),
           "mixture joint": ("eval_components", "density_components", "points", "budget", "seed")}
# Component evaluations (point × component pairs) the joint estimator may spend by default: a few seconds on 2 cores.
JOINT_BUDGET = 1 << 28
INFLUENCE_COMPONENTS = 2048  # density components whose influence is evaluated to estimate its variance
_STREAM = 0x4B4C  # spawn key of the joint estimator's draws ("KL")


@dataclass(frozen=True)
class KLEstimate:
    """An estimate of KL(finite ‖ limit) in nats with its standard error (nan where the method defines none).

    n_finite, n_limit: the draws or components that entered the estimate (fewer than given where `note` says so).
    """

    value: float
    se: float
    method: str
    n_finite: int
    n_limit: int
    seconds: float = float("nan")
    note: str = ""

    def __post_init__(self):
        if not math.isfinite(self.value):
            raise ProgramError(f"KLEstimate: value must be a finite number, got {self.value!r}")
        if not (math.isnan(self.se) or 0 <= self.se < math.inf):
            raise ProgramError(f"KLEstimate: se must be finite and ≥ 0 (nan: none defined), got {self.se!r}")

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
        note = f" [{self.note}]" if self.note else ""
        if self.upper_bound:
            return f"KL < {self.bound:.3g} ({self.method}; {self.value:.2g} ± {self.se:.2g}){note}"
        if np.isfinite(self.se):
            return f"KL = {self.value:.4g} ± {self.se:.2g} ({self.method}){note}"
        return f"KL = {self.value:.4g} ({self.method}){note}"

    def _repr_html_(self) -> str:
        """Jupyter: the estimate, its method and sample sizes."""
        from netsor.display import html_block
        return html_block(str(self), f"method {self.method}; {self.n_finite} finite and {self.n_limit} limit draws "
                                     f"or components; {self.seconds:.3g} s")

    def _repr_latex_(self) -> str:
        """Jupyter: KL = value ± se (or the bound) as math."""
        from netsor.display import latex_number
        if self.upper_bound:
            body = f"\\mathrm{{KL}} < {latex_number(self.bound, 3)}"
        elif np.isfinite(self.se):
            body = f"\\mathrm{{KL}} = {latex_number(self.value)} \\pm {latex_number(self.se, 2)}"
        else:
            body = f"\\mathrm{{KL}} = {latex_number(self.value)}"
        return f"${body}$ ({self.method}, {self.n_finite} draws)"


def kl(finite, limit=None, method: str = "mixture", **options) -> KLEstimate:
    """KL(finite ‖ limit) by `method` (see the module docstring).

    Sample methods ("kde", "fftkde", "knn"): `finite` and `limit` are draws, (N,) or (N, k).
    "mixture": each is the law's Gaussian components — variances (M,), covariances (M, k, k), a (means, covs)
    pair, or a `netsor.GaussianLaw` (one component).
    "coupled": `finite` is a `netsor.CoupledDraws` or draws with its attributes (finite_mean, finite_cov, limit_mean,
    limit_cov, twin_mean, twin_cov, antithetic; e.g. `limits.long_sequence.OneQueryDraws`), limit omitted; or two
    equally long paired component arrays.
    Options: kde, fftkde grid_points (≥ 2); knn k (1 ≤ k ≤ min(N − 1, M)); 1-D zero-mean mixture/coupled bins
    (≥ 2); joint mixture/coupled eval_components, density_components (≥ 2 each; default: as many as `budget`
    allows, about equal), points (draws per evaluation component, a power of 2; default 2, more where `budget`
    has room), budget (component evaluations, default 2^28), seed (of the draws within components, default 0).
    n_finite, n_limit of the result count what entered the estimate; `note` says when that is less than given.
    """
    if method not in METHODS:
        raise ProgramError(f"kl: unknown method {method!r}; choose from {', '.join(METHODS)}")
    start = time.perf_counter()
    twin = None
    if method == "coupled" and _coupled(finite):
        if limit is not None:
            raise ProgramError("kl: with CoupledDraws, pass no separate limit")
        if finite.antithetic:
            twin = (finite.twin_mean, finite.twin_cov)
        finite, limit = (finite.finite_mean, finite.finite_cov), (finite.limit_mean, finite.limit_cov)
    if limit is None:
        raise ProgramError(f"kl: method {method!r} needs both the finite and the limit argument")
    note = ""
    if method in SAMPLE_METHODS:
        x, z = _samples(finite, "finite"), _samples(limit, "limit")
        if x.shape[1] != z.shape[1]:
            raise ProgramError(f"kl: finite and limit samples have different dimensions ({x.shape[1]}, {z.shape[1]})")
        _check_options(options, method, method)
        if method == "knn":
            value, se = _knn(x, z, **_knn_options(options, len(x), len(z)))
        else:
            if x.shape[1] != 1:
                raise ProgramError(f"kl: method {method!r} is 1-D (the published estimator); use 'knn' or 'mixture' "
                                   "for joints")
            for a, name in ((x, "finite"), (z, "limit")):
                if np.ptp(a) == 0:
                    raise ProgramError(f"kl: the {name} sample is constant; a KDE needs samples with spread")
            grid = options.get("grid_points", 500 if method == "kde" else 2 ** 14)
            _check_int(grid, "grid_points", 2)
            value, se = (_kde if method == "kde" else _fftkde)(x[:, 0], z[:, 0], int(grid))
            # said in the result, not only in the docs: this number carries no error estimate
            note = "no error estimate: the KDE's smoothing bias and noise are not estimated (SKI25's estimator)"
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
        if twin is not None:
            mt, ct = _components(twin, "twin")
            centred = max(np.abs(mn).max(), np.abs(ml).max(), np.abs(mt).max()) <= 1e-12 * scale
        else:
            centred = max(np.abs(mn).max(), np.abs(ml).max()) <= 1e-12 * scale
        if cn.shape[1] == 1 and centred:
            _check_options(options, "mixture 1-D", "the 1-D mixture estimator")
            bins = options.get("bins", 2048)
            _check_int(bins, "bins", 2)
            value, se = _mixture_1d(cn[:, 0, 0], cl[:, 0, 0], paired, int(bins),
                                    None if twin is None else ct[:, 0, 0])
            n_finite, n_limit = len(cn) * (1 if twin is None else 2), len(cl)
        else:
            if twin is not None:
                note = "the antithetic twins are not used by the joint estimator (pairs only)"
            _check_options(options, "mixture joint", "the joint mixture estimator")
            if len(cn) == len(cl) == 1 and options:
                raise ProgramError(f"kl: options {sorted(options)} do not apply: both laws are one Gaussian (the KL "
                                   "is in closed form)")
            value, se, (n_finite, n_limit), _ = _mixture_joint(mn, cn, ml, cl, paired, **_joint_options(options))
            if (n_finite, n_limit) != (len(cn), len(cl)):
                note = "; ".join(filter(None, [note, f"used {n_finite} of {len(cn)} finite and {n_limit} of "
                                                     f"{len(cl)} limit components"]))
    if not (math.isfinite(value) and (math.isnan(se) and method in ("kde", "fftkde") or math.isfinite(se))):
        raise ProgramError(f"kl: method {method!r} gave a non-finite estimate ({value} ± {se}): the samples' laws "
                           "barely overlap where the estimator looks; KL is not resolved")
    return KLEstimate(float(value), float(se), method, int(n_finite), int(n_limit), time.perf_counter() - start, note)


# ---- inputs and options
_COUPLED_ATTRIBUTES = ("finite_mean", "finite_cov", "limit_mean", "limit_cov", "twin_mean", "twin_cov", "antithetic")


def _coupled(x) -> bool:
    """A `netsor.CoupledDraws`, or any draws exposing its attributes (e.g. `limits.long_sequence.OneQueryDraws`)."""
    return isinstance(x, CoupledDraws) or all(hasattr(x, name) for name in _COUPLED_ATTRIBUTES)


def _check_options(options: dict, key: str, what: str):
    extra = sorted(set(options) - set(OPTIONS[key]))
    if extra:
        raise ProgramError(f"kl: options {extra} do not apply to {what} (it takes {', '.join(OPTIONS[key])})")


def _check_int(value, name: str, low: int, high: int | None = None, why: str = ""):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low or (
            high is not None and value > high):
        span = f"≥ {low}" if high is None else f"in [{low}, {high}]"
        raise ProgramError(f"kl: option {name} must be an integer {span}{why}, got {value!r}")


def _knn_options(options: dict, n: int, m: int) -> dict:
    k = options.get("k", 1)
    _check_int(k, "k", 1, min(n - 1, m), " (k-th neighbour in the finite sample without the point itself, and in "
               "the limit sample)")
    return {"k": int(k)}


def _joint_options(options: dict) -> dict:
    out = {}
    for name in ("eval_components", "density_components"):
        if options.get(name) is not None:
            _check_int(options[name], name, 2)
            out[name] = int(options[name])
    points = options.get("points")
    if points is not None:
        _check_int(points, "points", 2)
        if points & (points - 1):
            raise ProgramError(f"kl: option points must be a power of 2 (a Sobol' net per component), got {points!r}")
        out["points"] = int(points)
    if "budget" in options:
        budget = options["budget"]
        if isinstance(budget, bool) or not isinstance(budget, numbers.Real) or not 1 <= budget < math.inf:
            raise ProgramError(f"kl: option budget must be a finite number ≥ 1 of component evaluations, got "
                               f"{budget!r}")
        out["budget"] = float(budget)
    if "seed" in options:
        _check_int(options["seed"], "seed", 0)
        out["seed"] = int(options["seed"])
    return out


def _as_floats(x, name: str, what: str) -> np.ndarray:
    try:
        return np.asarray(x, dtype=float)
    except (TypeError, ValueError):
        raise ProgramError(f"kl: {name} {what} must be numeric arrays, got {type(x).__name__}") from None


def _samples(x, name: str) -> np.ndarray:
    x = _as_floats(x, name, "samples")
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
        means, covs = np.asarray(x.mean, dtype=float)[None], np.asarray(x.cov, dtype=float)[None]
    elif isinstance(x, tuple) and len(x) == 2:
        means, covs = (_as_floats(a, name, "components") for a in x)
    else:
        covs, means = _as_floats(x, name, "components"), None
    if covs.ndim == 1:
        covs = covs[:, None, None]
    if covs.ndim != 3 or covs.shape[1] != covs.shape[2] or len(covs) < 1 or covs.shape[1] < 1:
        raise ProgramError(f"kl: {name} components must be variances (M,) or covariances (M, k, k), "
                           f"got shape {covs.shape}")
    means = np.zeros(covs.shape[:2]) if means is None else means.reshape(len(covs), -1)
    if means.shape != covs.shape[:2]:
        raise ProgramError(f"kl: {name} means have shape {means.shape}, expected {covs.shape[:2]}")
    if not (np.all(np.isfinite(covs)) and np.all(np.isfinite(means))):
        raise ProgramError(f"kl: {name} components contain NaN or inf")
    diag = np.diagonal(covs, axis1=1, axis2=2)
    if np.any(diag <= 0):
        if np.all(diag >= 0):  # exact zeros: an atom (e.g. ReLU attention's y = 0 when no key gets weight)
            raise ProgramError(f"kl: {name} components have a non-positive variance ({np.sum(diag == 0)} exactly 0): "
                               "the law has an atom there and no density, so no density-based KL is estimated")
        raise ProgramError(f"kl: {name} components have a non-positive variance: the variable is not Gaussian given "
                           "what was conditioned on, so this law has no mixture form here; use a sample-based "
                           "estimator (kde, fftkde, knn)")
    scale = np.sqrt(diag[:, :, None]) * np.sqrt(diag[:, None, :])  # a product of roots: no overflow at 1e300
    if np.any(np.abs(covs - covs.transpose(0, 2, 1)) > 1e-8 * scale):
        raise ProgramError(f"kl: {name} covariances are not symmetric")
    return means, covs


# ---- sample-based estimators
def _kde(x, z, grid_points: int):
    # the grid spans the limit sample: over the pooled range, the finite sample's heavy tails at small n reach
    # where the limit's KDE underflows to 0 and the estimate is inf
    grid = np.linspace(z.min(), z.max(), grid_points)
    p, q = stats.gaussian_kde(x)(grid), stats.gaussian_kde(z)(grid)
    if not p.sum() > 0:
        raise ProgramError("kl: the finite sample's KDE vanishes on the limit sample's range; KL is not resolved")
    return float(stats.entropy(p, q)), math.nan


def _fftkde(x, z, grid_points: int):
    from KDEpy import FFTKDE
    bandwidths = [_silverman(a) for a in (x, z)]
    pad = 6 * max(bandwidths)
    grid = np.linspace(min(x.min(), z.min()) - pad, max(x.max(), z.max()) + pad, grid_points)
    logs = []
    for sample, bw in zip((x, z), bandwidths):
        f = FFTKDE(bw=bw).fit(sample).evaluate(grid)
        # Below 1e-3 of its peak the FFT's value is off by more than 3e-4 (binning, a truncated kernel) and far
        # below by orders of magnitude; log(p/q) there would be set by that where heavy tails of a finite sample
        # reach (it halved the KL at n = 16): evaluate those points exactly, in logs.
        log_f = np.log(np.maximum(f, np.finfo(float).tiny))
        far = f < 1e-3 * f.max()
        if far.any():
            log_f[far] = _log_gaussian_kde(grid[far], np.sort(sample), bw)
        logs.append(log_f)
    log_p, log_q = logs
    p, q = np.exp(log_p), np.exp(log_q)
    integrand = p * (log_p - log_q) - p + q  # non-negative; the last two terms integrate to ≈ 0
    return float(integrate.trapezoid(integrand, grid)), math.nan


def _log_gaussian_kde(y, sorted_sample, bw, chunk: int = 1 << 22):
    """log (1/N) Σ_j N(y; x_j, bw²), from the sample points within √(d² + 70) bandwidths of each y (d: the nearest
    one's distance), the others adding less than e^-35 of the nearest one's term."""
    n = len(sorted_sample)
    s = sorted_sample / bw
    u = y / bw
    i = np.searchsorted(s, u)
    nearest = np.minimum(np.abs(u - s[np.clip(i - 1, 0, n - 1)]), np.abs(s[np.clip(i, 0, n - 1)] - u))
    reach = np.sqrt(nearest ** 2 + 70.0)
    lo, hi = np.searchsorted(s, u - reach), np.searchsorted(s, u + reach, side="right")
    out = np.empty(len(u))
    counts = hi - lo
    start = 0
    while start < len(u):  # chunks of at most `chunk` (point, sample) pairs
        stop = start + max(1, int(np.searchsorted(np.cumsum(counts[start:]), chunk)))
        c = counts[start:stop]
        owner = np.repeat(np.arange(stop - start), c)
        rows = np.arange(c.sum()) - np.repeat(np.cumsum(c) - c, c) + np.repeat(lo[start:stop], c)
        d = u[start:stop][owner] - s[rows]
        top = -0.5 * nearest[start:stop] ** 2
        total = np.bincount(owner, np.exp(-0.5 * d ** 2 - top[owner]), minlength=stop - start)
        out[start:stop] = top + np.log(total)
        start = stop
    return out - math.log(n * bw * math.sqrt(2 * math.pi))


def _silverman(a: np.ndarray) -> float:
    iqr = np.subtract(*np.percentile(a, [75, 25]))
    spread = min(a.std(ddof=1), iqr / 1.349) if iqr > 0 else a.std(ddof=1)
    return float(0.9 * spread * len(a) ** -0.2)


def _knn(x, z, k: int):
    n, d = x.shape
    z_tree = cKDTree(z)
    own = cKDTree(x).query(x, k + 1, workers=-1)[0]  # own sample; column 0 is the point itself
    other = z_tree.query(x, k, workers=-1)[0].reshape(n, k)
    # A zero distance is a tie: log(ν/ρ) is then ±∞ or the k-th neighbour of a repeated point, and the estimator
    # (which assumes continuous laws) has no meaning; refuse ties anywhere rather than clip them.
    ties = {"finite": int(np.sum(own[:, 1] == 0)), "limit": int(np.sum(z_tree.query(z, 2, workers=-1)[0][:, 1] == 0)),
            "finite and limit": int(np.sum(other[:, 0] == 0))}
    for where, count in ties.items():
        if count:
            raise ProgramError(f"kl: knn: {count} {where} samples share their position with another draw (ties: "
                               "duplicated or discrete draws); knn needs samples of continuous laws")
    terms = d * np.log(other[:, k - 1] / own[:, k])
    return float(terms.mean() + math.log(len(z) / (n - 1))), float(terms.std(ddof=1) / math.sqrt(n))


# ---- component-based estimators
def _node_weights(left, frac, bins: int) -> np.ndarray:
    w = np.bincount(left, 1 - frac, minlength=bins)
    if bins > 1:
        w += np.bincount(left + 1, frac, minlength=bins)
    return w / len(left)


def _mixture_1d(var_n, var_l, paired: bool, bins: int = 2048, twin=None):
    """1-D zero-mean mixtures (module docstring). With `twin` (paired only), triples (var_n[m], twin[m], var_l[m]):
    the finite law is the mixture of the units (φ_s + φ_s′)/2 over m, and every O(1/M) bias term and influence is
    taken per triple."""
    un, ul = np.log(var_n), np.log(var_l)
    ut = None if twin is None else np.log(twin)
    un_all = un if ut is None else np.concatenate([un, ut])
    lo, hi = min(un_all.min(), ul.min()), max(un_all.max(), ul.max())
    if hi - lo > MAX_LOG_VARIANCE_RANGE:  # the grid grows with the range; such laws are not close in any sense
        raise ProgramError(f"kl: the component variances span a factor e^{hi - lo:.0f} (at most "
                           f"e^{MAX_LOG_VARIANCE_RANGE:g}): the laws are far apart and the mixture grid is not built")
    bins = 1 if hi - lo < 1e-12 else int(bins)
    step = (hi - lo) / (bins - 1) if bins > 1 else 1.0
    nodes = lo + step * np.arange(bins)
    (ln, fn), (ll, fl) = _linear_binning(un_all, lo, step, bins), _linear_binning(ul, lo, step, bins)
    wn, wl = _node_weights(ln, fn, bins), _node_weights(ll, fl, bins)

    y, dy = half_line_rule(lo, hi)  # the half line y = e^t, Simpson in t: every component resolved

    # (bins, G) arrays dominate the cost: each is built once, and temporaries are updated in place
    log_phi = -0.5 * y[None, :] ** 2 / np.exp(nodes)[:, None]
    log_phi -= 0.5 * (nodes[:, None] + math.log(2 * math.pi))
    phi = np.exp(log_phi)
    log_fn, log_fl = _log_mix(wn, phi, log_phi), _log_mix(wl, phi, log_phi)
    f_n, f_l = np.exp(log_fn), np.exp(log_fl)
    log_ratio = log_fn - log_fl
    plug_in = 2 * np.sum(dy * (f_n * log_ratio - f_n + f_l))

    # O(1/M) bias of the plug-in: ½∫ Var f̂_n / f_n + f_n Var f̂_∞ / f_∞² − 2 Cov(f̂_n, f̂_∞) / f_∞.
    Mn, Ml = len(var_n), len(var_l)
    if paired:
        # ½∫ Var(g − r φ_t)/(M f_n), g the finite unit of a pair (φ_s) or of twins ((φ_s + φ_s′)/2), r = f_n/f_∞
        # (the quadratic term of the KL in (δf_n, δf_∞)), summed component by component: its three moments
        # apart would cancel only to the binning's accuracy, far above KL at large n. On every 8th point of
        # the rule (trapezoid in log y): the integrand is smooth there
        y_c, f_c, r_c = y[::8], f_n[::8], np.exp(np.minimum(log_ratio[::8], 700.0))
        t_c = np.log(y_c)
        dy_c = np.zeros(len(y_c))
        dy_c[1:] += np.diff(t_c) / 2
        dy_c[:-1] += np.diff(t_c) / 2
        dy_c = dy_c * y_c
        dy_c[0] += y_c[0]
        twin_logs = un if ut is None else ut
        spread = paired_bias_integrand(y_c, r_c, np.exp(-un), un, np.exp(-twin_logs), twin_logs, np.exp(-ul), ul,
                                       ut is not None)
        with np.errstate(divide="ignore", invalid="ignore"):
            bias = float(np.sum(np.where(f_c > 0, dy_c * spread / f_c, 0.0))) / Mn  # ½ · 2 (both half lines)
    else:
        phi_sq = phi ** 2
        sq_n, sq_l = _log_mix(wn, phi_sq, log_phi, 2.0), _log_mix(wl, phi_sq, log_phi, 2.0)
        del phi_sq
        second = (np.exp(sq_n - log_fn) - f_n) / Mn + (np.exp(log_fn + sq_l - 2 * log_fl) - f_n) / Ml
        bias = np.sum(dy * second)  # ½ · 2 (both half lines)

    # Influence functions at the nodes, then at each component by the same linear interpolation.
    psi_nodes = 2 * (phi @ (dy * log_ratio))  # = (2 φ) @ …: scaling by 2 is exact
    # χ(t) = ∫ φ_t (1 − f_n/f_∞): the product φ_t·r in logs, as r overflows where the limit's tail is thinner
    # (capped: it overflows only at nodes far outside the limit's components, where χ is never evaluated)
    capped = np.add(log_phi, log_ratio, out=log_phi)  # log_phi is not used after this
    np.exp(np.minimum(capped, 700.0, out=capped), out=capped)
    chi_nodes = 2 * (phi @ dy - capped @ dy)
    psi = _interpolate(psi_nodes, ln, fn, bins)
    if ut is not None:
        psi = (psi[:Mn] + psi[Mn:]) / 2  # per triple
    chi = _interpolate(chi_nodes, ll, fl, bins)
    if paired:
        first = np.var(psi + chi, ddof=1) / Mn if Mn > 1 else 0.0
    else:
        first = (np.var(psi, ddof=1) / Mn if Mn > 1 else 0.0) + (np.var(chi, ddof=1) / Ml if Ml > 1 else 0.0)
    return plug_in - bias, math.sqrt(first + bias ** 2)


def _log_mix(weights, values, log_values, power: float = 1.0):
    """log Σ_b w_b v_b(y) per grid point, v = exp(power · log_values): a matrix product, with log-sum-exp only where
    it underflows (far tails)."""
    total = weights @ values
    with np.errstate(divide="ignore"):
        out = np.log(total)
        small = total < 1e-250
        if small.any():
            logs = log_values[:, small] if power == 1.0 else power * log_values[:, small]
            out[small] = logsumexp(logs + np.log(weights)[:, None], axis=0)
    return out


def _interpolate(values, left, frac, bins):
    if bins == 1:
        return np.full(len(left), values[0])
    return values[left] * (1 - frac) + values[left + 1] * frac


def _mixture_joint(mn, cn, ml, cl, paired: bool, eval_components=None, density_components=None, points=None,
                   budget=None, seed=0):
    """KL = E_n log(f̂_n/f̂_∞) (+ E_∞[1 − f̂_n/f̂_∞] for pairs) at draws within evaluation components, f̂ from
    disjoint density components (the same pairs for both laws when paired) → (value, SE, components used, parts)."""
    k = cn.shape[1]
    Ln, Ll = _cholesky(cn, "finite"), _cholesky(cl, "limit")
    if len(cn) == 1 and len(cl) == 1:
        return (*_gaussian_kl(mn[0], Ln[0], ml[0], Ll[0]), (1, 1), {})
    plan = _Plan(len(cn), len(cl), paired, eval_components, density_components, points, budget or JOINT_BUDGET)
    if budget is not None and not plan.budget_used:
        raise ProgramError("kl: option budget has no effect here: eval_components, density_components and points "
                           "fix the work (give fewer of them, or no budget)")
    U, P = plan.units, plan.points
    xi = _standard_draws(U, P, k, seed)

    def draws(means, chol):
        rows = plan.eval_rows
        return (means[rows, None, :] + np.einsum("mij,mpj->mpi", chol[rows], xi)).reshape(-1, k)

    Q = U * P
    comp_n = _prepared(mn[plan.rows_n], Ln[plan.rows_n])
    comp_l = _prepared(ml[plan.rows_l], Ll[plan.rows_l])
    S = slice(0, INFLUENCE_COMPONENTS)  # the influence's variance from the first density components
    if paired:
        D = plan.Dn
        Y = np.concatenate([draws(mn, Ln), draws(ml, Ll)])  # each pair's finite draws, then (same ξ) its limit's
        log_fn, log_fl, sq_n, sq_l, cross = paired_log_density(Y, *comp_n, *comp_l)
        v_n, v_l = np.expm1(sq_n - 2 * log_fn) / D, np.expm1(sq_l - 2 * log_fl) / D
        c = np.expm1(cross - log_fn - log_fl) / D  # Cov(f̂_n, f̂_∞)/(f_n f_∞): both from the same pairs
        log_r = log_fn - log_fl
        _check_ratio(log_r[Q:])
        r = np.exp(log_r[Q:])  # at the limit's draws, where E_∞[1 − f_n/f_∞] is taken
        # delta-method bias of the plug-ins, E log f̂ ≈ log f − v/2 and E f̂_n/f̂_∞ ≈ r (1 + v_∞ − c), subtracted
        b1, b2 = ((v_n - v_l) / 2)[:Q], r * (v_l - c)[Q:]
        term = log_r[:Q] + b1 + (1 - r + b2)
        # its size: the estimated bias, or ½ Var(f̂_n/f_n − f̂_∞/f_∞) (the bias at equal draws) where that is larger
        bias_err = max(abs(b1.mean() + b2.mean()), np.mean((v_n + v_l) / 2 - c))
        coef = np.concatenate([np.full(Q, 1.0 / Q), -r / Q])  # ∂ estimate / ∂ log f̂_n (= −∂ / ∂ log f̂_∞)
        # a pair's influence: its finite member's through f̂_n minus its limit member's through f̂_∞
        influence = (mixture_influence(Y, coef, log_fn, *(a[S] for a in comp_n))
                     - mixture_influence(Y, coef, log_fl, *(a[S] for a in comp_l)))
        var_density = np.var(influence, ddof=1) / D
    else:
        Y = draws(mn, Ln)
        log_fn, sq_n = mixture_log_density(Y, *comp_n)
        log_fl, sq_l = mixture_log_density(Y, *comp_l)
        v_n = np.zeros(Q) if plan.exact_n else np.expm1(sq_n - 2 * log_fn) / plan.Dn
        v_l = np.zeros(Q) if plan.exact_l else np.expm1(sq_l - 2 * log_fl) / plan.Dl
        term = log_fn - log_fl + (v_n - v_l) / 2
        bias_err = np.mean((v_n + v_l) / 2)  # two independent corrections: either may be off by its size
        var_density = 0.0
        for exact, comp, D, log_f, sign in ((plan.exact_n, comp_n, plan.Dn, log_fn, 1.0),
                                            (plan.exact_l, comp_l, plan.Dl, log_fl, -1.0)):
            if not exact:
                influence = mixture_influence(Y, np.full(Q, sign / Q), log_f, *(a[S] for a in comp))
                var_density += np.var(influence, ddof=1) / D
    units = term.reshape(U, P).mean(1)  # independent given the densities: one per evaluation component
    var_eval = np.var(units, ddof=1) / U
    parts = dict(var_eval=var_eval, var_density=var_density, bias_err=bias_err, units=U, points=P)
    return units.mean(), math.sqrt(var_eval + var_density + bias_err ** 2), plan.used, parts


def _standard_draws(U, P, k, seed) -> np.ndarray:
    """(U, P, k) standard normal draws, independent across the U units: an antithetic pair (P = 2), or a Sobol' net
    of P = 2^m points under an independent random digital shift per unit (each point exactly uniform on the 2^-52
    grid, so every unit's average is unbiased to ~1e-15; its variance falls faster than 1/P for smooth terms)."""
    # a stream of its own (spawn key "KL"), never default_rng(seed)'s: components the caller drew from that same
    # seed would otherwise share their random numbers with these draws and bias the estimate
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_STREAM,)))
    if P == 2:
        xi = rng.standard_normal((U, 1, k))
        return np.concatenate([xi, -xi], axis=1)
    net = (qmc.Sobol(d=k, scramble=False, bits=52).random(P) * 2.0 ** 52).astype(np.uint64)
    shift = rng.integers(0, 2 ** 52, size=(U, 1, k), dtype=np.uint64)
    return ndtri(((net[None] ^ shift).astype(float) + 0.5) / 2.0 ** 52)


class _Plan:
    """Which components evaluate and which make the densities, and how many draws each unit gets: as many as given,
    up to `budget` component evaluations (point × component pairs), evaluation ≈ density components when cut."""

    REPLICAS = 64  # units for a single exact Gaussian: its draws in independent groups, to estimate their variance

    def __init__(self, Mn, Ml, paired, E, D, P, budget):
        self.exact_n, self.exact_l = Mn == 1, Ml == 1  # a Gaussian: its density is exact, nothing is sampled
        self.paired, self.budget, self.budget_used = paired, budget, False
        D_given = D is not None
        P0 = 2 if P is None else P
        if self.exact_n:  # unpaired: paired laws of one component each have the closed form
            if E is not None:
                raise ProgramError("kl: option eval_components does not apply: the finite law is one Gaussian, "
                                   "evaluated exactly")
            E = self.REPLICAS
            if D is None:
                D = self._largest(lambda x: self.cost(E, x, max(2, x // E)), Ml)  # draws ≈ density components
            elif D > Ml:
                raise ProgramError(f"kl: option density_components={D} exceeds the {Ml} limit components")
            self.eval_rows = np.zeros(E, dtype=np.intp)
        else:
            if Mn < 4:
                raise ProgramError(f"kl: the joint mixture estimator needs 1 finite component (a Gaussian) or at "
                                   f"least 4 (2 to evaluate, 2 for the density), got {Mn}")
            if E is not None and E > Mn - 2:
                raise ProgramError(f"kl: option eval_components={E} leaves fewer than 2 of the {Mn} finite "
                                   "components for the density")
            if E is None and D is None:
                E = self._largest(lambda x: self.cost(x, x, P0), Mn // 2)
            elif E is None:
                E = self._largest(lambda x: self.cost(x, D, P0), max(2, Mn - D))
            if D is None:
                D = self._largest(lambda x: self.cost(E, x, P0), Mn - E)
            if E + D > Mn:
                raise ProgramError(f"kl: options eval_components={E}, density_components={D} need {E + D} finite "
                                   f"components, got {Mn}")
            self.eval_rows = np.arange(E)
        if P is None:
            # spare budget (few components given) buys more draws per unit: a finer net within each component
            P0 = 2 ** self._largest(lambda m: self.cost(E, D, 2 ** m), 16 if self.exact_n else 6, low=1)
        self.units, self.points, self.Dn = E, P0, 1 if self.exact_n else D
        if paired:
            self.Dl = D
            self.rows_n = self.rows_l = slice(E, E + D)
        else:
            self.rows_n = slice(0, 1) if self.exact_n else slice(E, E + D)
            # the limit's density components start where the finite law's do when there is room: two samples of
            # one law then give the same density pair (and identical inputs an exact 0), and nothing else changes
            start = E if not self.exact_n and Ml >= E + 2 else 0
            self.Dl = 1 if self.exact_l else min(D, Ml - start)
            if not self.exact_l and self.Dl < 2:
                raise ProgramError(f"kl: the joint mixture estimator needs at least 2 limit components, got {Ml}")
            if not self.exact_l and D_given and self.Dl < D:
                raise ProgramError(f"kl: option density_components={D} exceeds the {Ml - start} limit components "
                                   "available")
            self.rows_l = slice(0, 1) if self.exact_l else slice(start, start + self.Dl)
        self.used = ((E + D, E + D) if paired else (1 if self.exact_n else E + D, 1 if self.exact_l else self.Dl))

    def cost(self, E, D, P):
        """Component evaluations: densities and influences at E·P points (both laws' draws when paired)."""
        side = D + min(D, INFLUENCE_COMPONENTS)
        if self.paired:
            return 4 * E * P * side  # two sets of draws, two exponentials per pair
        return E * P * ((1 if self.exact_n else side) + (1 if self.exact_l else side))

    def _largest(self, cost, high, low=2):
        """The largest x in [low, high] with cost(x) within the budget."""
        self.budget_used = True
        if cost(low) > self.budget:
            raise ProgramError(f"kl: option budget={self.budget:g} cannot pay for the smallest joint estimate "
                               f"({cost(low):g} component evaluations)")
        while low < high:
            mid = (low + high + 1) // 2
            low, high = (mid, high) if cost(mid) <= self.budget else (low, mid - 1)
        return low


def _check_ratio(log_r):
    if log_r.max(initial=-np.inf) > 700:
        raise ProgramError("kl: the finite density exceeds the limit's by more than e^700 where the limit has mass; "
                           "the mixture estimator cannot resolve this KL (the laws barely overlap)")


def _prepared(means, chol):
    """(means, L⁻¹, −½ log det(2π C)) as the kernels take them."""
    k = means.shape[1]
    inv = np.linalg.inv(chol)
    log_norm = -np.log(np.diagonal(chol, axis1=1, axis2=2)).sum(1) - 0.5 * k * math.log(2 * math.pi)
    return np.ascontiguousarray(means), np.ascontiguousarray(inv), log_norm


def _gaussian_kl(ma, La, mb, Lb) -> tuple[float, float]:
    """KL(N(μ_a, A) ‖ N(μ_b, B)) = ½ [tr(B⁻¹A) − k + δᵀB⁻¹δ + log det B − log det A], δ = μ_b − μ_a, with a bound
    on its rounding error (the terms cancel where the laws are close) as its SE."""
    X = solve_triangular(Lb, La, lower=True)
    d = solve_triangular(Lb, mb - ma, lower=True)
    log_b, log_a = 2 * np.log(np.diag(Lb)).sum(), 2 * np.log(np.diag(La)).sum()
    terms = (np.sum(X ** 2), len(ma), d @ d, log_b, log_a)
    rounding = 64 * np.finfo(float).eps * sum(abs(t) for t in terms)
    return 0.5 * (terms[0] - terms[1] + terms[2] + terms[3] - terms[4]), rounding


def _cholesky(covs, name: str) -> np.ndarray:
    try:
        return np.linalg.cholesky(covs)
    except np.linalg.LinAlgError:
        raise ProgramError(f"kl: a {name} component covariance is singular; the mixture has no joint density "
                           "(drop the redundant variables)") from None
