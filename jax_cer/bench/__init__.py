"""Benchmark pipeline: machine records, the ``jax-cer bench`` runner and the BENCHMARKS.md report."""
