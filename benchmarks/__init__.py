"""Benchmarks: every speed claim as a ratio against a baseline timed in the same run (`python -m benchmarks`)."""
