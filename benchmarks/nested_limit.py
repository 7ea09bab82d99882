"""Samples/s of the nested infinite-width limit of `limits.transformer(depth=4, seq_len=4, heads=2)`: the compiled
kernel-level sampler (`Transformer.nested_kernels`, the readout's conditional variance per sample) against the
law derived from the program by `netsor.limit` (`conditional_moments` of the readout, the same law), timed in one
process."""
from __future__ import annotations

from limits import transformer

from .timing import rate

DEPTH, SEQ, HEADS = 4, 4, 2


def run(quick: bool = False) -> list[dict]:
    model = transformer(depth=DEPTH, seq_len=SEQ, heads=HEADS)
    law = model.law()
    compiled_count = 1 << (16 if quick else 20)
    program_count = 1 << (12 if quick else 15)
    ours = rate(lambda: model.nested_kernels(compiled_count, seed=0).mean(axis=(1, 2)), compiled_count)
    baseline = rate(lambda: law.conditional_moments(model.outputs, program_count, seed=0), program_count,
                    repeats=2)
    return [dict(benchmark="nested limit", case=f"transformer depth {DEPTH}, s={SEQ}, H={HEADS}",
                 value=ours, unit="samples/s", baseline=baseline, baseline_name="netsor.limit(program)",
                 ratio=ours / baseline,
                 note="nested limit: the compiled kernel-level sampler draws each block's scores given the earlier "
                      "blocks' random kernel (numba, thread pool over blocks of 4096 samples); the baseline is the "
                      "same law derived node by node from the program (numpy, per-sample kernels).")]
