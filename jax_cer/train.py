"""``jax_cer.train``: the same module as :mod:`jax_cer.training.fusion` (a stable public import path)."""

import sys

from jax_cer.training import fusion as _module

sys.modules[__name__] = _module
