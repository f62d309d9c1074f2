"""``jax_cer.train_step``: the same module as :mod:`jax_cer.training.step` (a stable public import path)."""

import sys

from jax_cer.training import step as _module

sys.modules[__name__] = _module
