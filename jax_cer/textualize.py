"""``jax_cer.textualize``: the same module as :mod:`jax_cer.text.textualize` (a stable public import path)."""

import sys

from jax_cer.text import textualize as _module

sys.modules[__name__] = _module
