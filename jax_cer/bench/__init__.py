"""Benchmarks and their report.

- ``jax-cer bench`` (:mod:`jax_cer.bench.runner`) runs the benchmark cases (:mod:`jax_cer.bench.cases`)
  in a pytest subprocess and writes one result file.
- ``jax-cer report`` (:mod:`jax_cer.bench.report`) reads result folders (:mod:`jax_cer.bench.load`),
  picks each row's run (:mod:`jax_cer.bench.runs`), builds the sections (:mod:`jax_cer.bench.sections`)
  and the plots (:mod:`jax_cer.bench.plot`), and writes the markdown.
- :mod:`jax_cer.bench.kernel_check`, :mod:`jax_cer.bench.merge` and :mod:`jax_cer.bench.ncu` serve the
  repository's GPU campaign (long-sequence kernel check, joined result files, Nsight Compute summaries).
"""
