"""The infinite-width law of a Netsor program: the master theorem, made hierarchical by random scalars.

G-vars (inputs and MatMuls) have jointly Gaussian limits: Cov(Z^{Wx}, Z^{Wy}) = σ_W² E[Z^x Z^y], MatMuls by
different matrices and inputs are independent; Z^{φ(x)} = φ(Z^x), Z^{Σ c_j v_j} = Σ c_j Z^{v_j}; moment scalars and
1/n dots converge to expectations. Two things stay random as n → ∞ (SKI25):

* 1/sqrt(n) dots p = g·g′/sqrt(n) with E[Z^g Z^g′] = 0: jointly Gaussian, independent of every vector, with the
  Isserlis covariance Cov(p_ab, p_cd) = Σ_ac Σ_bd + Σ_ad Σ_bc;
* vectors of a fixed dimension N: their N coordinates are iid rows, so dots, moments and MatMuls over N keep
  their exact finite-N law.

The law is therefore hierarchical: sample these sources level by level (a source's level is one more than the
deepest source it depends on; sources of deeper levels are Gaussian *conditional* on the earlier ones, a
conjecture beyond SKI25's single layer), then every vector is Gaussian given them with the master-theorem
covariance computed conditionally: kernels become arrays with one value per sample.
"""
from __future__ import annotations

import math
from functools import cached_property

import numpy as np

from ..compiled.limit import sample_gaussian_into
from ..compiled.linalg import semidefinite_cholesky
from ..errors import ProgramError
from ..ir.program import WIDTH, Dot, HeadSum, Program, Scalar, Vector, is_row_gvar, is_source, is_sqrt_dot
from ..parallel import map_blocks
from ..random import check_size, seed_sequence, stream
from .calculus import _Calculus, _Env
from .gaussian import GaussianLaw
from .quadrature import gaussian_factor
from .structure import SAMPLE_BLOCK, _check_zero_kernel, _Structure

# Inner draws per sample of the random scalars for conditional integrals without a closed form, in Monte Carlo
# moments (antithetic pairs): variance E[Var(f | scalars)] / INNER_DRAWS on top of the outer term, at little cost
# next to the sampling of the scalars.
INNER_DRAWS = 32
HEAD_SUM_SIZE = 400_000  # draws of one head's random scalars behind the covariance that head sums are sampled from
HEAD_SUM_STREAM = 1 << 40  # stream key of head-sum draws, beyond every block index
# Chunks of a block: at most CHUNK_FLOATS values per chunk (arrays that stay in cache, and memory reused, not
# freshly mapped, from chunk to chunk), never fewer than MIN_CHUNK samples (the Python work of one chunk is spread
# over that many samples).
CHUNK_FLOATS = 1 << 20
MIN_CHUNK = 1 << 12
NORMAL_ROWS = 256  # samples of normals drawn at a time for a shared-covariance Gaussian: a small array, in cache


# --------------------------------------------------------------------------------------------------- the law
class Law:
    """The infinite-width law of a program's coordinates and scalars.

    Deterministic programs: kernel / mean / cov are exact (closed forms, or quadrature with `error=True` bounds).
    With random scalars (1/sqrt(n) dots, fixed head dimensions) the law is hierarchical: `sample_scalars` draws
    them, `conditional_cov` gives the Gaussian covariance of vectors given them, `sample` draws the joint law,
    `logpdf` / `pdf` evaluate its Rao-Blackwellized mixture density and `cov` is a Monte Carlo average of the
    conditional moments with its standard error.
    """

    def __init__(self, program: Program):
        if not isinstance(program, Program):
            raise ProgramError(f"limit: expected a netsor Program, got {type(program).__name__}")
        self.program = program
        for node in program.nodes:
            after = next((p for p in node.parents() if isinstance(p, HeadSum)), None)
            if after is not None:
                raise ProgramError(f"{node.name} := {node.definition()}: uses the infinite head sum {after.name}; "
                                   f"the limit of nodes after a head sum is not derived here")
        self._derived_nodes = len(program)
        self._head_sum_factors: dict = {}
        self.structure = _Structure(program)
        self._fine = _Calculus(self.structure)
        self._shared_factors: dict = {}
        self._plans: dict = {}
        self._check_dot_kernels()
        if self.structure.uncovered_dots:
            raise ProgramError(self.structure.uncovered_dots[0][1])

    def _resolve(self, variables, where: str = "variables"):
        """program.resolve, refusing nodes added after this law was derived (their structure is unknown to it)."""
        if len(self.program) != self._derived_nodes:
            raise ProgramError(f"{where}: {self.program.name} gained nodes after netsor.limit() derived this law; "
                               f"call netsor.limit(program) again")
        return self.program.resolve(variables, where)

    @cached_property
    def _coarse(self) -> _Calculus:
        return _Calculus(self.structure, coarse=True)

    def __repr__(self) -> str:
        kind = "hierarchical Gaussian" if self.random_scalars else "Gaussian given deterministic scalars"
        return f"<Law of {self.program.name!r}: infinite-width limit, {kind}>"

    @property
    def random_scalars(self) -> tuple[Scalar, ...]:
        """The scalar nodes whose limits are random."""
        return tuple(n for n in self.program.nodes if isinstance(n, Scalar) and self.structure.is_random(n))

    def is_random(self, variable) -> bool:
        """Whether the limit of a variable depends on random scalars (or fixed-dimension rows)."""
        (node,) = self._resolve([variable], "is_random")
        return self.structure.is_random(node)

    def _check_dot_kernels(self) -> None:
        for node in self.program.nodes:
            if (isinstance(node, Dot) and node.args[0].dim == WIDTH and node.exponent < 1.0
                    and not self.structure.is_random(node.args[0]) and not self.structure.is_random(node.args[1])):
                _check_zero_kernel(node, self._fine.kernel_matrix(list(node.args), list(node.args)))

    # ---- exact moments (deterministic programs)
    def _first_and_second(self, calc: _Calculus, nodes):
        """Conditional means (B, k) and second moments (B, k, k) of the requested variables."""
        k = len(nodes)
        B = calc.B
        mean = np.zeros((B, k))
        second = np.zeros((B, k, k))
        wide = [i for i, u in enumerate(nodes) if isinstance(u, Vector) and u.dim == WIDTH]
        for i, u in enumerate(nodes):
            if isinstance(u, Scalar):
                mean[:, i] = calc.scalar(u)
            elif u.dim != WIDTH:
                mean[:, i] = calc.rows(u)[:, 0]  # given its rows, coordinate 0 of a fixed-dimension vector is known
        if wide:
            vs = [nodes[i] for i in wide]
            mean[:, wide] = calc.mean_vector(vs).T
        second[:] = mean[:, :, None] * mean[:, None, :]  # independent given the randomness, or deterministic
        if wide:
            index = np.asarray(wide)
            second[:, index[:, None], index[None, :]] = calc.kernel_matrix(vs, vs).transpose(2, 0, 1)
        return mean, second

    def _moments(self, variables, pick, error, size, seed):
        """Validate, compute, and refuse a result that is not finite (a user function returned NaN or inf)."""
        if not isinstance(error, (bool, np.bool_)):
            raise ProgramError(f"error must be True or False, got {error!r}")
        nodes = self._resolve(variables)
        size = check_size(size, "size")
        if size < 2:
            raise ProgramError(f"size = {size}: a Monte Carlo estimate and its SE need at least 2 draws")
        seed_sequence(seed)  # checked even where the moments are exact
        result = self._computed_moments(nodes, pick, bool(error), size, seed)
        for part in (result if error else (result,)):
            if not np.all(np.isfinite(part)):
                raise ProgramError(f"{', '.join(n.name for n in nodes)}: the limit moments are not finite (a "
                                   f"nonlinearity or scalar function returned NaN or inf)")
        return result

    def _computed_moments(self, nodes, pick, error, size, seed):
        if any(isinstance(n, HeadSum) for n in nodes):
            return self._moments_with_head_sums(nodes, pick, error, size, seed)
        if all(self._is_first_level_dot(n) or not self.structure.is_random(n) for n in nodes) and \
                any(self.structure.is_random(n) for n in nodes):
            value = pick(*self._exact_with_first_level_dots(nodes))
            return (value, np.zeros_like(value)) if error else value
        if not any(self.structure.is_random(n) for n in nodes):
            fine = pick(*(a[0] for a in self._first_and_second(self._fine, nodes)))
            if not error:
                return fine
            coarse = pick(*(a[0] for a in self._first_and_second(self._coarse, nodes)))
            return fine, 2 * np.abs(fine - coarse) + 1e-14 * np.abs(fine)
        # Monte Carlo over the random scalars of the conditional moments; SE from the influence function
        check_size(size, "size", floats_per_item=len(nodes) * (len(nodes) + 1))  # what it keeps per sample
        def work(env, calc, rng):
            # the result is linear in each sample's conditional moments: integrals without a closed form may be
            # unbiased inner Monte Carlo estimates, whose noise the influence-function SE below includes
            with calc.inner_monte_carlo(rng, INNER_DRAWS):
                m, s = self._first_and_second(calc, nodes)
            return np.broadcast_to(m, (env.size,) + m.shape[1:]), np.broadcast_to(s, (env.size,) + s.shape[1:])

        parts = list(self._map_blocks(nodes, size, seed_sequence(seed), work))
        m, s = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        value, influence = pick.monte_carlo(m, s)
        if not error:
            return value
        return value, influence.std(axis=0) / math.sqrt(len(m))

    def _moments_with_head_sums(self, nodes, pick, error, size, seed):
        """Head sums are N(0, E[Z^v Z^vᵀ]) over one head (Monte Carlo over its random scalars, with that SE) and
        independent of every other node and of other groups' sums."""
        k = len(nodes)
        is_mean = pick is _pick_mean
        value, se = (np.zeros(k), np.zeros(k)) if is_mean else (np.zeros((k, k)), np.zeros((k, k)))
        others, groups = _split_head_sums(nodes)
        if others:
            v, e = self._moments([nodes[i] for i in others], pick, True, size, seed)
            index = others if is_mean else np.ix_(others, others)
            value[index], se[index] = v, e
        if not is_mean:
            for members in groups:
                K, e = self.kernel([nodes[i].arg for i in members], error=True, size=size, seed=seed)
                value[np.ix_(members, members)], se[np.ix_(members, members)] = K, e
        return (value, se) if error else value

    def _head_sum_draws(self, nodes, members, size: int, rng) -> np.ndarray:
        """(size, m) draws of head sums of one group from N(0, K), K their kernel over one head (estimated once
        per law with HEAD_SUM_SIZE draws of its random scalars where it has any; `kernel(error=True)` gives its
        SE)."""
        factor = self._head_sum_factor(nodes, members)
        return rng.standard_normal((size, factor.shape[1])) @ factor.T

    def _head_sum_factor(self, nodes, members) -> np.ndarray:
        key = tuple(nodes[i].index for i in members)
        if key not in self._head_sum_factors:
            K = self.kernel([nodes[i].arg for i in members], size=HEAD_SUM_SIZE, seed=0)
            self._head_sum_factors[key] = gaussian_factor(K)
        return self._head_sum_factors[key]

    def _is_first_level_dot(self, node) -> bool:
        return is_sqrt_dot(node) and self.structure.level[node.index] == 1

    def _exact_with_first_level_dots(self, nodes):
        """Mean and second moments when the only random variables are first-level scores: those are jointly
        Gaussian with the Isserlis covariance, zero mean, independent of everything else."""
        dots = [i for i, n in enumerate(nodes) if self._is_first_level_dot(n)]
        others = [i for i in range(len(nodes)) if i not in dots]
        mean, second = np.zeros(len(nodes)), np.zeros((len(nodes), len(nodes)))
        if others:
            m, s = self._first_and_second(self._fine, [nodes[i] for i in others])
            mean[others] = m[0]
            second[np.ix_(others, others)] = s[0]
        second[np.ix_(dots, dots)] = self.score_cov([nodes[i] for i in dots])
        return mean, second

    def score_cov(self, dots) -> np.ndarray:
        """The exact covariance Σ_ac Σ_bd + Σ_ad Σ_bc of first-level 1/sqrt(n) dots p = a·b/sqrt(n)."""
        dots = self._resolve(dots, "score_cov")
        for d in dots:
            if not self._is_first_level_dot(d):
                raise ProgramError(f"score_cov: {d.name} is not a 1/sqrt(n) dot of deterministic vectors")
        return _isserlis(self._fine, dots)[0][:, :, 0]

    def kernel(self, variables, error: bool = False, size: int = 200_000, seed=0):
        """E[Z^u Z^v] over the variables, (k, k); `error=True` adds the quadrature bound (or the Monte Carlo SE)."""
        return self._moments(variables, _pick_kernel, error, size, seed)

    def mean(self, variables, error: bool = False, size: int = 200_000, seed=0):
        """E[Z^v] for each variable, (k,)."""
        return self._moments(variables, _pick_mean, error, size, seed)

    def cov(self, variables, error: bool = False, size: int = 200_000, seed=0):
        """Cov(Z^u, Z^v) = E[Z^u Z^v] − E[Z^u] E[Z^v], (k, k): exact where the scalars are deterministic, else a
        Monte Carlo average of conditional moments over `size` draws of the scalars (error=True: its SE)."""
        return self._moments(variables, _pick_cov, error, size, seed)

    def value(self, scalar) -> float:
        """The deterministic limit of a scalar node (or name)."""
        (node,) = self._resolve([scalar], "value")
        if not isinstance(node, Scalar):
            raise ProgramError(f"value: {node.name} is a vector; use mean/cov/sample")
        if self.structure.is_random(node):
            raise ProgramError(f"value: {node.name} is random in the limit; use sample_scalars")
        return float(self._fine.scalar(node)[0])

    # ---- sampling
    def _map_blocks(self, nodes, size: int, root, work, threads: int | None = None, chunked: bool = False):
        """Yield work(env, calculus, rng) for each block of samples, in block order, run on a thread pool; each
        block first samples every source the nodes depend on from its own stream, so results do not depend on
        the thread count. chunked: a block is worked through in chunks of samples (its streams continued from
        chunk to chunk), one result per chunk, for a `work` whose draws are sample-major: then results do not
        depend on the chunking either, and a chunk's arrays stay small enough to be reused from cache."""
        levels, step = self._sampling_plan(nodes)
        step = step if chunked else SAMPLE_BLOCK
        blocks = ((b, min(SAMPLE_BLOCK, size - start)) for b, start in enumerate(range(0, size, SAMPLE_BLOCK)))

        def run(block):
            b, count = block
            # one stream per (block, stage), continued over the block's chunks: the first samples never depend
            # on how many are drawn
            streams: dict = {}

            def rng_for(*stage):
                if stage not in streams:
                    streams[stage] = stream(root, b, *stage)
                return streams[stage]

            out, buffers = [], {}
            for start in range(0, count, step):
                env = _Env(min(step, count - start))
                calc = _Calculus(self.structure, env=env, base=self._fine)
                self._sample_sources(levels, env, calc, lambda *stage: rng_for(0, *stage), buffers)
                out.append(work(env, calc, rng_for(1)))
            return out

        for parts in map_blocks(run, blocks, threads):
            yield from parts

    def _sampling_plan(self, nodes):
        """The sources the nodes depend on by level, [(level, dots, whether their vectors are random, row G-vars by
        dimension)], and the samples per chunk: CHUNK_FLOATS over the values kept per sample (random ancestors, a
        fixed-dimension vector's N rows each), a power of two in [MIN_CHUNK, SAMPLE_BLOCK]. Cached per set of
        nodes."""
        key = tuple(n.index for n in nodes)
        plan = self._plans.get(key)
        if plan is None:
            needed = self.program.ancestors(nodes)
            sources = [n for n in needed if is_source(n)]
            levels = []
            for level in sorted({self.structure.level[s.index] for s in sources}):
                dots = [s for s in sources if is_sqrt_dot(s) and self.structure.level[s.index] == level]
                rows = [s for s in sources if is_row_gvar(s) and self.structure.level[s.index] == level]
                by_dim = [(dim, [g for g in rows if g.dim == dim]) for dim in sorted({g.dim for g in rows})]
                random = any(self.structure.is_random(v) for d in dots for v in d.args)  # Isserlis per sample
                levels.append((level, dots, random, by_dim))
            floats = sum(n.dim if isinstance(n, Vector) and n.dim != WIDTH else 1
                         for n in needed if self.structure.is_random(n)) + len(nodes) ** 2
            step = SAMPLE_BLOCK
            while step > MIN_CHUNK and step * floats > CHUNK_FLOATS:
                step //= 2
            plan = self._plans[key] = (levels, step)
        return plan

    def _sample_sources(self, levels, env: _Env, calc: _Calculus, rng_for, buffers: dict) -> None:
        """Draw the sources of `_sampling_plan`, level by level, into env; draws with a shared covariance go into
        `buffers`, arrays kept for the chunks of one block (no fresh memory per chunk)."""
        for level, dots, random, by_dim in levels:
            if dots:
                key = ("dots",) + tuple(d.index for d in dots)
                if random:
                    cov, K, a, b = _isserlis(calc, dots)
                    # kernels that depend on earlier draws: check E[Z^g1 Z^g2] = 0 per sample (the others were
                    # checked once, when the law was built)
                    for d, i, j in zip(dots, a, b):
                        _check_zero_kernel(d, K[np.ix_([i, j], [i, j])])
                    draws = self._gaussian(cov, rng_for(level, 0), env.size, key, buffers)
                else:  # one covariance for all samples: factored once per law, never formed again per block
                    draws = self._shared_gaussian(key, lambda: _dot_blocks(self._fine, dots), rng_for(level, 0),
                                                  env.size, buffers)
                for i, d in enumerate(dots):
                    env.values[d.index] = draws[i]
            for dim, group in by_dim:
                K = calc.atom_kernel(group, group)
                if K.shape[2] > 1:  # one covariance per sample, shared by its N rows
                    K = np.ascontiguousarray(np.repeat(K, dim, axis=2))
                key = ("rows",) + tuple(g.index for g in group)
                draws = self._gaussian(K, rng_for(level, 1, dim), env.size * dim, key, buffers)
                draws = draws.reshape(len(group), env.size, dim)
                for i, g in enumerate(group):
                    env.rows[g.index] = draws[i]

    def _gaussian(self, cov: np.ndarray, rng, S: int, key, buffers: dict) -> np.ndarray:
        """S draws (d, S) of N(0, cov), cov (d, d, B), from S × d sample-major normals of rng: one factor shared by
        all samples (factored once per law and set of variables `key`) or one per sample."""
        if cov.shape[2] > 1:
            return _per_sample_gaussian(cov, _normals(rng, cov.shape[0], S))
        shared = cov[:, :, 0]
        return self._shared_gaussian(key, lambda: [(block, shared[np.ix_(block, block)])
                                                   for block in independent_blocks(shared)], rng, S, buffers)

    def _shared_gaussian(self, key, blocks_of, rng, S: int, buffers: dict) -> np.ndarray:
        """S draws (d, S) through the factor of a covariance shared by all samples, factored block by independent
        block once per law and `key` (blocks_of() gives the (indices, covariance) of those blocks), into
        buffers[key]. The S × d sample-major normals are drawn NORMAL_ROWS samples at a time into one small array
        (the same numbers as one draw of all: a Generator fills in order)."""
        factors = self._shared_factors.get(key)
        if factors is None:  # independent groups (e.g. heads) are factored separately: less work per sample
            factors = self._shared_factors[key] = _shared_factors(blocks_of())
        singles, scales, blocks, d = factors
        buffer = buffers.get(key)
        if buffer is None or buffer.shape[1] < S:
            buffer = buffers[key] = np.empty((d, S))
        out = buffer[:, :S]
        z = np.empty((min(S, NORMAL_ROWS), d))
        for start in range(0, S, NORMAL_ROWS):
            zs = z[:min(NORMAL_ROWS, S - start)]
            rng.standard_normal(out=zs)
            columns = slice(start, start + len(zs))
            if len(singles):  # 1 × 1 blocks (independent variables): f z, as the product with a 1 × 1 factor is
                out[singles, columns] = scales[:, None] * zs[:, singles].T
            for index, factor in blocks:
                out[index, columns] = factor @ zs[:, index].T  # BLAS reads the transposed view without a copy
        return out

    def sample(self, variables, size: int, seed=None, threads: int | None = None) -> np.ndarray:
        """(size, k) joint draws of the limit: coordinate 0 of each vector, the value of each scalar."""
        nodes = self._resolve(variables, "sample")
        size = check_size(size, floats_per_item=len(nodes))
        if threads is not None:
            threads = check_size(threads, "threads")
        if any(isinstance(n, HeadSum) for n in nodes):
            return self._sample_with_head_sums(nodes, size, seed, threads)
        out = np.empty((size, len(nodes)))
        start = 0
        for part in self._map_blocks(nodes, size, seed_sequence(seed),
                                     lambda env, calc, rng: self._draw_given_sources(nodes, env, calc, rng), threads,
                                     chunked=True):
            out[start:start + len(part)] = part
            start += len(part)
        _check_finite_draws(out, nodes)
        return out

    rvs = sample  # scipy.stats spelling

    def _sample_with_head_sums(self, nodes, size, seed, threads):
        """Head sums drawn from their Gaussian limit on streams of their own, the other nodes as usual: they are
        independent."""
        root = seed_sequence(seed)
        out = np.empty((size, len(nodes)))
        others, groups = _split_head_sums(nodes)
        if others:
            out[:, others] = self.sample([nodes[i] for i in others], size, root, threads)
        for position, members in enumerate(groups):
            out[:, members] = self._head_sum_draws(nodes, members, size, stream(root, HEAD_SUM_STREAM, position))
        return out

    def sample_scalars(self, scalars, size: int, seed=None) -> np.ndarray:
        """(size, k) joint draws of scalar nodes (random or not)."""
        nodes = self._resolve(scalars, "sample_scalars")
        for n in nodes:
            if not isinstance(n, Scalar):
                raise ProgramError(f"sample_scalars: {n.name} is a vector; use sample")
        return self.sample(nodes, size, seed)

    def _draw_given_sources(self, nodes, env: _Env, calc: _Calculus, rng) -> np.ndarray:
        S = env.size
        out = np.empty((S, len(nodes)))
        wide = [i for i, n in enumerate(nodes) if isinstance(n, Vector) and n.dim == WIDTH]
        for i, n in enumerate(nodes):
            if isinstance(n, Scalar):
                out[:, i] = np.broadcast_to(calc.scalar(n), (S,))
            elif i not in wide:
                out[:, i] = calc.rows(n)[:, 0]
        if not wide:
            return out
        vectors = [nodes[i] for i in wide]
        if all(calc.is_gaussian(v) for v in vectors):  # draw the requested combinations directly
            K = calc.kernel_matrix(vectors, vectors)
            out[:, wide] = _per_sample_gaussian(K, _normals(rng, len(vectors), S)).T
            return out
        gvars = sorted({g for v in vectors for g in calc.frontier(v)}, key=lambda g: g.index)
        K = calc.kernel_matrix(gvars, gvars)
        g = _per_sample_gaussian(K, _normals(rng, len(gvars), S))
        env_values = {gv.index: g[j] for j, gv in enumerate(gvars)}
        memo: dict = {}
        for i in wide:
            out[:, i] = np.broadcast_to(calc.evaluate(nodes[i], env_values, memo), (S,))
        return out

    def conditional_cov(self, variables, size: int, seed=None) -> np.ndarray:
        """(size, k, k): Cov(Z | random scalars) for draws of the random scalars (zero rows for scalars)."""
        return self.conditional_moments(variables, size, seed)[1]

    def conditional_moments(self, variables, size: int, seed=None):
        """(means (size, k), covariances (size, k, k)) of the variables given draws of the random scalars."""
        nodes = self._resolve(variables, "conditional_moments")
        size = check_size(size, floats_per_item=len(nodes) * (len(nodes) + 1))
        if any(isinstance(n, HeadSum) for n in nodes):  # independent of the random scalars: N(0, K) given any
            means, covs = np.zeros((size, len(nodes))), np.zeros((size, len(nodes), len(nodes)))
            others, groups = _split_head_sums(nodes)
            if others:
                m, c = self.conditional_moments([nodes[i] for i in others], size, seed)
                means[:, others], covs[:, np.asarray(others)[:, None], others] = m, c
            for members in groups:
                factor = self._head_sum_factor(nodes, members)
                covs[:, np.asarray(members)[:, None], members] = factor @ factor.T
            return means, covs

        def work(env, calc, rng):
            m, s = self._first_and_second(calc, nodes)
            m = np.broadcast_to(m, (env.size,) + m.shape[1:])
            return m, np.broadcast_to(s, (env.size,) + s.shape[1:]) - m[:, :, None] * m[:, None, :]

        means, covs = np.empty((size, len(nodes))), np.empty((size, len(nodes), len(nodes)))
        start = 0
        for m, c in self._map_blocks(nodes, size, seed_sequence(seed), work, chunked=True):
            means[start:start + len(m)], covs[start:start + len(m)] = m, c
            start += len(m)
        return means, covs

    # ---- densities
    def logpdf(self, y, variables, mixture_size: int = 4096, seed=0) -> np.ndarray:
        """log density of the joint law at points y (..., k): log mean_m N(y; μ_m, C_m) over `mixture_size` draws
        of the random scalars (exact, M = 1, when there are none). Needs vectors Gaussian given the scalars."""
        from scipy.special import logsumexp  # here, not at import: scipy.special is slow to import
        nodes = self._resolve(variables, "logpdf")
        for n in nodes:
            if not (isinstance(n, Vector) and n.dim == WIDTH):
                raise ProgramError(f"logpdf: {n.name} is not a width-n vector")
        mixture_size = check_size(mixture_size, "mixture_size")
        seed_sequence(seed)
        try:
            y = np.asarray(y, dtype=float)
        except (TypeError, ValueError):
            raise ProgramError(f"logpdf: points must be an array of numbers, got {y!r}") from None
        if not np.all(np.isfinite(y)):
            raise ProgramError("logpdf: points must be finite")
        k = len(nodes)
        if k == 1:  # one variable: any array of points
            shape, points = y.shape, y.reshape(-1, 1)
        elif y.shape[-1:] == (k,):
            shape, points = y.shape[:-1], y.reshape(-1, k)
        else:
            raise ProgramError(f"logpdf: points must have last dimension {k}, got shape {y.shape}")
        for n in nodes:
            if not self.structure.is_gaussian(n):
                raise ProgramError(f"logpdf: {n.name} is not Gaussian given the random scalars; sample it instead")
        random = any(self.structure.is_random(n) for n in nodes)
        means, covs = self.conditional_moments(nodes, mixture_size if random else 1, seed)
        chol = np.linalg.cholesky(covs)
        logdet = 2 * np.log(np.diagonal(chol, axis1=1, axis2=2)).sum(axis=1)
        out = np.empty(len(points))
        for start in range(0, len(points), 2048):
            diff = points[start:start + 2048, None, :] - means[None, :, :]  # (q, M, k)
            solved = np.linalg.solve(chol[None], diff[..., None])[..., 0]
            log_terms = -0.5 * (solved ** 2).sum(-1) - 0.5 * logdet[None] - 0.5 * k * math.log(2 * math.pi)
            out[start:start + 2048] = logsumexp(log_terms, axis=1) - math.log(len(means))
        return out.reshape(shape)

    def pdf(self, y, variables, mixture_size: int = 4096, seed=0) -> np.ndarray:
        """Density of the joint law at y (see `logpdf`)."""
        return np.exp(self.logpdf(y, variables, mixture_size, seed))

    def infinite_sum_limit(self, variables, size: int = 400_000, seed=0):
        """The Gaussian limit of H^{-1/2} Σ_h Z_h over H → ∞ independent copies of the program (heads):
        N(0, E[Z Zᵀ]), the expectation over the random scalars taken by Monte Carlo (its SE kept as cov_se)."""
        nodes = self._resolve(variables, "infinite_sum_limit")
        mean, mean_se = self.mean(nodes, error=True, size=size, seed=seed)
        if np.any(np.abs(mean) > 5 * mean_se + 1e-12):
            raise ProgramError("infinite_sum_limit: the variables have non-zero mean, so their normalised sum over "
                               "copies diverges")
        kernel, se = self.kernel(nodes, error=True, size=size, seed=seed)
        return GaussianLaw(nodes, np.zeros(len(nodes)), kernel, se,
                           description="Infinite-copies (infinite-head) limit: Gaussian with covariance E[Z Zᵀ]")

    def gaussian(self, variables, size: int = 400_000, seed=0) -> GaussianLaw:
        """N(mean, cov) of the variables as a `GaussianLaw` (cov_se its Monte Carlo SE where estimated): the law
        itself for variables jointly Gaussian with fixed moments (head sums, deterministic programs' G-vars), else
        their Gaussian summary."""
        nodes = self._resolve(variables, "gaussian")
        mean = self.mean(nodes, size=size, seed=seed)
        cov, se = self.cov(nodes, error=True, size=size, seed=seed)
        return GaussianLaw(nodes, mean, cov, se, description=f"Gaussian with the moments of netsor.limit"
                                                              f"({self.program.name!r})")

    def describe(self, variables=None, latex: bool = False) -> str:
        """The law as formulas: random scalars and their covariance, the conditional law of the variables."""
        from .symbolic import describe  # sympy, only for printing: not at import

        return describe(self, variables, latex=latex)

    def _repr_html_(self) -> str:
        """Jupyter: `describe()` of the program's outputs as text."""
        from ..display import html_description
        return html_description(self.describe())

    def _repr_latex_(self) -> str:
        """Jupyter: `describe(latex=True)` as display math."""
        from ..display import latex_lines
        return latex_lines(self.describe(latex=True).splitlines())


def independent_blocks(cov: np.ndarray) -> list[list[int]]:
    """Connected components of the non-zero pattern of a covariance, in order of their first index: mutually
    independent groups."""
    linked = (cov != 0.0) | (cov.T != 0.0)
    unseen, blocks = np.ones(cov.shape[0], dtype=bool), []
    for first in range(cov.shape[0]):
        if not unseen[first]:
            continue
        unseen[first] = False
        members = np.zeros_like(unseen)
        members[first] = True
        frontier = members.copy()
        while frontier.any():  # breadth first, one vectorised step per distance from `first`
            frontier = linked[frontier].any(axis=0) & unseen
            unseen &= ~frontier
            members |= frontier
        blocks.append(np.flatnonzero(members).tolist())
    return blocks


def _shared_factors(blocks):
    """(positions of 1 × 1 blocks, their factors √c, [(index, factor)] of the larger blocks, dimension) for blocks
    [(indices, covariance)] of one shared covariance: semidefinite Cholesky factors (a 1 × 1 block's is √c, or 0
    at c ≤ 0), applied to the 1 × 1 blocks all at once."""
    singles, scales, larger = [], [], []
    for block, cov in blocks:
        factor = semidefinite_cholesky(np.ascontiguousarray(cov)[:, :, None])[:, :, 0]
        if len(block) == 1:
            singles.append(block[0])
            scales.append(factor[0, 0])
        else:
            larger.append((_as_slice(block), factor))
    return (np.asarray(singles, dtype=np.intp), np.asarray(scales, dtype=float), larger,
            sum(len(block) for block, _ in blocks))


def _dot_blocks(calc: _Calculus, dots):
    """Independent blocks [(positions, Isserlis covariance)] of first-level dots, found without forming their
    whole covariance: Cov(p_ab, p_cd) = Σ_ac Σ_bd + Σ_ad Σ_bc vanishes unless the components of {a, b} and
    {c, d} in the kernel Σ of their vectors are the same pair, so dots are grouped by that pair first and each
    group is split by `independent_blocks`."""
    args = list({v.index: v for d in dots for v in d.args}.values())
    K = calc.kernel_matrix(args, args)[:, :, 0]
    component = np.empty(len(args), dtype=np.intp)
    for label, members in enumerate(independent_blocks(K)):
        component[members] = label
    position = {v.index: i for i, v in enumerate(args)}
    a = np.array([position[d.args[0].index] for d in dots])
    b = np.array([position[d.args[1].index] for d in dots])
    groups: dict = {}
    for i, pair in enumerate(zip(np.minimum(component[a], component[b]), np.maximum(component[a], component[b]))):
        groups.setdefault(pair, []).append(i)
    out = []
    for members in groups.values():
        ga, gb = a[members], b[members]
        cov = K[np.ix_(ga, ga)] * K[np.ix_(gb, gb)] + K[np.ix_(ga, gb)] * K[np.ix_(gb, ga)]
        out.extend(([members[i] for i in block], cov[np.ix_(block, block)]) for block in independent_blocks(cov))
    return out


def _as_slice(index: list[int]):
    """A slice for a run of consecutive indices (a view, not a copy), else the list itself."""
    return slice(index[0], index[-1] + 1) if index == list(range(index[0], index[-1] + 1)) else index


def _check_finite_draws(draws: np.ndarray, nodes) -> None:
    bad = ~np.isfinite(draws).all(axis=0)
    if bad.any():
        node = nodes[int(np.argmax(bad))]
        raise ProgramError(f"{node.name}: draws are not finite (a nonlinearity or scalar function returned NaN or inf)")


def _split_head_sums(nodes) -> tuple[list[int], list[list[int]]]:
    """Positions among nodes of the other nodes, and of the head sums by their group (in order of first
    appearance): the two parts are independent in the limit."""
    others, groups = [], {}
    for i, n in enumerate(nodes):
        if isinstance(n, HeadSum):
            groups.setdefault(id(n.group), []).append(i)
        else:
            others.append(i)
    return others, list(groups.values())


def _per_sample_gaussian(cov: np.ndarray, z: np.ndarray) -> np.ndarray:
    """(d, S): L_s z[s] with L_s the semidefinite Cholesky factor of cov (d, d, S) per sample, or of a shared
    cov (d, d, 1) factored whole."""
    out = np.empty((cov.shape[0], z.shape[0]))
    sample_gaussian_into(np.ascontiguousarray(cov), z, out)
    return out


def _normals(rng, d: int, S: int) -> np.ndarray:
    """(S, d) standard normals, drawn sample-major so the first samples do not depend on how many are drawn."""
    return rng.standard_normal((S, d))


def _isserlis(calc: _Calculus, dots):
    """Cov(p_ab, p_cd) = Σ_ac Σ_bd + Σ_ad Σ_bc for dots p = a·b/sqrt(n), with Σ the (conditional) kernel of their
    vectors; returns (cov (D, D, B), Σ, positions of the left and right vectors in Σ)."""
    args = list({v.index: v for d in dots for v in d.args}.values())
    K = calc.kernel_matrix(args, args)
    position = {v.index: i for i, v in enumerate(args)}
    a = np.array([position[d.args[0].index] for d in dots])
    b = np.array([position[d.args[1].index] for d in dots])
    cov = K[np.ix_(a, a)] * K[np.ix_(b, b)] + K[np.ix_(a, b)] * K[np.ix_(b, a)]
    return cov, K, a, b


class _Pick:
    """Which moment a public method returns, exactly and as a Monte Carlo estimate with its influence function."""

    def __init__(self, exact, monte_carlo):
        self.exact, self.monte_carlo = exact, monte_carlo

    def __call__(self, mean, second):
        return self.exact(mean, second)


def _mc_kernel(m, s):
    return s.mean(axis=0), s


def _mc_mean(m, s):
    return m.mean(axis=0), m


def _mc_cov(m, s):
    mbar = m.mean(axis=0)
    influence = s - m[:, :, None] * mbar[None, None, :] - mbar[None, :, None] * m[:, None, :]
    return s.mean(axis=0) - np.outer(mbar, mbar), influence


_pick_kernel = _Pick(lambda m, s: s, _mc_kernel)
_pick_mean = _Pick(lambda m, s: m, _mc_mean)
_pick_cov = _Pick(lambda m, s: s - np.outer(m, m), _mc_cov)


def limit(program: Program) -> Law:
    """The infinite-width law of `program` (Yang's master theorem, with SKI25's random scalars)."""
    return Law(program)
