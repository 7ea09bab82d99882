"""The infinite-width semantics: which nodes stay random (structure), the conditional master-theorem calculus,
the hierarchical `Law`, the Gaussian law of normalised sums, quadrature, and the law printed as formulas."""
