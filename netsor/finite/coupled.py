"""Finite-width and limit draws from common random numbers."""
from __future__ import annotations

from ..errors import ProgramError
from ..ir.program import Program
from .exact.block import simulate_exact_block
from .exact.plan import ExactPlan
from .runner import checked_arguments, run_blocks_in_parts, with_moments


def simulate_coupled(program: Program, width: int, variables, size: int, seed=None, antithetic: bool = True,
                     threads=None):
    """Finite-width and limit draws from common random numbers (README, *Coupled draws*), with their conditional
    moments.

    Returns a `CoupledDraws`: `finite` and `limit` (size, k) — each has exactly its own law (the finite-width
    law at `width`, the infinite-width law), but both are driven by the same row-0 normals and Bartlett
    normals, so their difference has a small variance that shrinks with n — and, for each, the mean and
    covariance of the draws given the random scalars and Grams (`finite_mean`, `finite_cov`, `limit_mean`,
    `limit_cov`), the Gaussian components of Rao-Blackwellized density estimates. With `antithetic` (default),
    also `twin`, `twin_mean`, `twin_cov`: a second finite-width draw per pair, exactly the finite law again,
    whose Grams' first-order fluctuations are the negated ones of `finite` (`antithetic_factor`), so that the
    twins' average differs from the limit at second order only (what makes KL ∝ n⁻² resolvable at large n).
    """
    width, targets, size, root, threads = checked_arguments(
        "simulate_coupled", program, width, variables, size, seed, threads,
        floats_per_network=lambda t: (3 if antithetic else 2) * with_moments(t))
    if not isinstance(antithetic, bool):
        raise ProgramError(f"simulate_coupled: antithetic must be True or False, got {antithetic!r}")
    plan = ExactPlan(program, targets)
    if plan.front and plan.layer is None:
        raise ProgramError("simulate_coupled: coupled limit draws cover a nonlinear front of one layer (φ(W x) of "
                           "inputs, φ relu or clip) only; "
                           f"{next(n.name for n in plan.needed if n.index in plan.front)} is computed through a "
                           "deeper one")
    k = len(targets)

    def work(b):  # the finite and the limit draws of one block (and the finite twin), from the same streams
        out = (*simulate_exact_block(plan, width, targets, root, b[0], b[2], moments=True),
               *simulate_exact_block(plan, width, targets, root, b[0], b[2], limit=True, moments=True))
        if antithetic:
            out += simulate_exact_block(plan, width, targets, root, b[0], b[2], moments=True, twin=True)
        return out

    parts = run_blocks_in_parts(work, size, plan.block_size(width), [(k,), (k,), (k, k)] * (3 if antithetic else 2),
                                threads)
    twin = dict(twin=parts[6], twin_mean=parts[7], twin_cov=parts[8]) if antithetic else {}
    return CoupledDraws(finite=parts[0], finite_mean=parts[1], finite_cov=parts[2],
                        limit=parts[3], limit_mean=parts[4], limit_cov=parts[5], **twin)


class CoupledDraws:
    """Paired finite-width and limit draws, with the conditional Gaussian moments of each; with antithetic twins
    (`twin`, `twin_mean`, `twin_cov`: None without), triples of two finite draws and one limit draw."""

    def __init__(self, finite, limit, finite_mean, finite_cov, limit_mean, limit_cov, twin=None, twin_mean=None,
                 twin_cov=None):
        self.finite, self.limit = finite, limit
        self.finite_mean, self.finite_cov = finite_mean, finite_cov
        self.limit_mean, self.limit_cov = limit_mean, limit_cov
        self.twin, self.twin_mean, self.twin_cov = twin, twin_mean, twin_cov

    @property
    def antithetic(self) -> bool:
        return self.twin is not None

    def __repr__(self) -> str:
        kind = "triples (two antithetic finite draws and a limit draw)" if self.antithetic else "pairs"
        return f"<CoupledDraws: {self.finite.shape[0]} {kind} of {self.finite.shape[1]} variables>"
