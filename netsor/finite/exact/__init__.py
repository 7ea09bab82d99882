"""Exact finite-width sampling from Gram matrices: the plan (basis columns, components), nonlinear fronts, the
step-by-step block and the fused linear kernel."""
