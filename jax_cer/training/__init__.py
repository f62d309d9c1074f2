"""Training and evaluation: one loop for every run, with the fusion and the text models as its tasks.

- :mod:`~jax_cer.training.configs`: the run configurations and the named ones of ``jax-cer train``;
- :mod:`~jax_cer.training.loop`: the training loop (resume, logging, validation, checkpoints);
- :mod:`~jax_cer.training.checkpoints`: a run's work directory (config.json, metrics.jsonl, checksummed
  orbax checkpoints);
- :mod:`~jax_cer.training.fusion` and :mod:`~jax_cer.training.text`: the two tasks, their
  trainers and checkpoint evaluation; their data in :mod:`~jax_cer.training.fusion_data` and
  :mod:`~jax_cer.training.text_data`; scoring in :mod:`~jax_cer.training.evaluate`;
- :mod:`~jax_cer.training.step`: the jitted step and forward; :mod:`~jax_cer.training.parallel`:
  data parallelism over the devices of one host or several (``jax.distributed``).
"""
