"""Finite-width and limit draws from common random numbers."""
from __future__ import annotations

from ..errors import ProgramError
from ..ir.program import Program
from .exact.block import simulate_exact_block
from .exact.plan import ExactPlan
from .runner import checked_arguments, run_blocks_in_parts, with_moments


def simulate_coupled(program: Program, width: int, variables, size: int, seed=None):
    """Finite-width and limit draws from common random numbers (README, *Exact finite-width sampling*), with their
    conditional moments.

    Returns a `CoupledDraws`: `finite` and `limit` (size, k) — each has exactly its own law (the finite-width
    law at `width`, the infinite-width law), but both are driven by the same row-0 normals and Bartlett
    normals, so their difference has a small variance that shrinks with n — and, for each, the mean and
    covariance of the draws given the random scalars and Grams (`finite_mean`, `finite_cov`, `limit_mean`,
    `limit_cov`), the Gaussian components of Rao-Blackwellized density estimates.
    """
    width, targets, size, root, _ = checked_arguments("simulate_coupled", program, width, variables, size, seed,
                                                  floats_per_network=lambda t: 2 * with_moments(t))
    plan = ExactPlan(program, targets)
    if plan.front:
        raise ProgramError("simulate_coupled: coupled limit draws do not cover a nonlinear front yet "
                           f"({next(n.name for n in plan.needed if n.index in plan.front)} is computed through one)")
    k = len(targets)

    def work(b):  # the finite and the limit draws of one block, from the same streams
        return (*simulate_exact_block(plan, width, targets, root, b[0], b[2], moments=True),
                *simulate_exact_block(plan, width, targets, root, b[0], b[2], limit=True, moments=True))

    parts = run_blocks_in_parts(work, size, plan.block_size(width), [(k,), (k,), (k, k)] * 2, None)
    return CoupledDraws(finite=parts[0], finite_mean=parts[1], finite_cov=parts[2],
                        limit=parts[3], limit_mean=parts[4], limit_cov=parts[5])


class CoupledDraws:
    """Paired finite-width and limit draws, with the conditional Gaussian moments of each."""

    def __init__(self, finite, limit, finite_mean, finite_cov, limit_mean, limit_cov):
        self.finite, self.limit = finite, limit
        self.finite_mean, self.finite_cov = finite_mean, finite_cov
        self.limit_mean, self.limit_cov = limit_mean, limit_cov

    def __repr__(self) -> str:
        return f"<CoupledDraws: {self.finite.shape[0]} pairs of {self.finite.shape[1]} variables>"
