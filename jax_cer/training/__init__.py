"""Training and evaluation: configurations, the jitted step, the training loop, checkpoints, data parallelism."""
