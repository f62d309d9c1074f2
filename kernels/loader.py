"""Where the Triton kernels run: compiled for a GPU, or in Triton's CPU interpreter.

``triton.jit`` decides when a kernel module is imported whether its kernels are interpreted
(``TRITON_INTERPRET=1``) or compiled, and Triton's own helpers read the variable at run time, so
one process runs in one mode. ``import kernels`` sets ``TRITON_INTERPRET=1`` when the variable is
unset and JAX sees no GPU (CPU machines, CI), and leaves it alone otherwise. To interpret on a GPU
machine, set ``TRITON_INTERPRET=1`` before importing ``kernels``; the ahead-of-time compile check
(:mod:`kernels.aot`) runs in its own process with ``TRITON_INTERPRET=0``.
"""

from __future__ import annotations

import functools
import os
from types import ModuleType


def choose_mode() -> None:
    """Sets ``TRITON_INTERPRET=1`` if it is unset and JAX has no GPU (called by ``import kernels``)."""
    if "TRITON_INTERPRET" in os.environ:
        return
    import jax

    if jax.default_backend() != "gpu":
        os.environ["TRITON_INTERPRET"] = "1"


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.cache
def kernel_module() -> ModuleType:
    """The kernel module, in this process's mode."""
    from kernels import _attention_kernels

    return _attention_kernels


def require_mode(interpret: bool) -> ModuleType:
    """The kernel module, after checking that this process runs the requested mode."""
    if interpret != interpreting():
        if interpret:
            raise RuntimeError(
                "backend='interpret' needs TRITON_INTERPRET=1 set before `import kernels` (it is unset or 0 "
                "here, so the kernels are compiled for the GPU); use backend='triton' or 'xla'"
            )
        raise RuntimeError(
            "backend='triton' needs the compiled kernels, but TRITON_INTERPRET=1 is set (the CPU interpreter "
            "mode); unset it before importing kernels"
        )
    return kernel_module()
