"""``jax_cer.lora``: the same module as :mod:`jax_cer.text.lora` (a stable public import path)."""

import sys

from jax_cer.text import lora as _module

sys.modules[__name__] = _module
