"""Where the Triton kernels run: compiled for a GPU, or in Triton's CPU interpreter.

``triton.jit`` decides when a kernel module is imported whether its kernels are interpreted
(``TRITON_INTERPRET=1``) or compiled, and Triton's own helpers read the variable at run time, so
one process runs in one mode. The mode is chosen the first time a kernel is needed
(:func:`kernel_module`, :func:`interpreting`): ``TRITON_INTERPRET=1`` when the variable is unset
and JAX sees no GPU (CPU machines, CI); an explicit setting is left alone. Importing the package
changes nothing. Triton fixes the mode of its language module when ``triton`` is first imported,
so a process that imports triton itself before the first kernel call must set the variable first
(an error says so). To interpret on a GPU machine, set ``TRITON_INTERPRET=1``; the ahead-of-time
compile check (:mod:`jax_cer.kernels.aot`) runs in its own process with ``TRITON_INTERPRET=0``.
"""

from __future__ import annotations

import functools
import os
import sys
from types import ModuleType

import jax


def choose_mode() -> None:
    """Sets ``TRITON_INTERPRET=1`` if it is unset and JAX has no GPU (before triton is imported)."""
    if "TRITON_INTERPRET" in os.environ or jax.default_backend() == "gpu":
        return
    if "triton" in sys.modules:
        raise RuntimeError(
            "the attention kernels need Triton's interpreter on this machine (JAX sees no GPU), but triton was "
            "imported before TRITON_INTERPRET was set, so its language module is fixed in compiled mode: set "
            "TRITON_INTERPRET=1 before importing triton (or anything that imports it), or use backend='xla'"
        )
    os.environ["TRITON_INTERPRET"] = "1"


def interpreting() -> bool:
    """Whether this process runs the kernels in Triton's interpreter (chooses the mode if unset)."""
    choose_mode()
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.cache
def kernel_module() -> ModuleType:
    """The kernel module, in this process's mode (imports triton)."""
    choose_mode()
    from jax_cer.kernels import _attention_kernels  # noqa: PLC0415 - imports triton, after the mode is chosen

    return _attention_kernels


def require_mode(interpret: bool) -> ModuleType:
    """The kernel module, after checking that this process runs the requested mode."""
    if interpret != interpreting():
        if interpret:
            raise RuntimeError(
                "backend='interpret' needs TRITON_INTERPRET=1 before the first kernel call (it is unset or 0 "
                "here, so the kernels are compiled for the GPU); use backend='triton' or 'xla'"
            )
        raise RuntimeError(
            "backend='triton' needs the compiled kernels, but TRITON_INTERPRET=1 is set (the CPU interpreter "
            "mode); unset it before the first kernel call"
        )
    return kernel_module()
