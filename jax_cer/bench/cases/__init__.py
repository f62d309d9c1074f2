"""The benchmark cases: pytest files (marker ``benchmark``) that ``jax-cer bench`` runs.

``test_bench_models``: forward and training step of every fusion model, JAX against the PyTorch
reference (:mod:`jax_cer.reference`). ``test_bench_train``: the ``jax-cer train`` loop against the
reference's loop. ``test_bench_attention``: ``flash_attention`` against
``jax.nn.dot_product_attention``. ``test_bench_so``: the SO optimizer against ``optax.adam``.
``test_bench_text``: the text encoder against transformers' ``BertModel``. ``test_bench_devices``:
training throughput against the number of devices the batch is split over
(:mod:`jax_cer.bench.train_throughput`).

Each case records what it measured in its ``extra_info`` (component, variant, implementation,
shapes, dtype, device, rounds) and the machine in ``machine_info["jax_cer"]``, so that
``jax-cer report`` can tabulate any set of result files. The PyTorch sides skip, with the reason,
where torch (or transformers) is not installed.
"""
