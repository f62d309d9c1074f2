"""``jax_cer.parallel``: the same module as :mod:`jax_cer.training.parallel` (a stable public import path)."""

import sys

from jax_cer.training import parallel as _module

sys.modules[__name__] = _module
