"""The one table of tolerances.

Every comparison against a reference reads its bound here: the golden checks of the fusion models,
the SO trajectory and the SO tests (spec examples, dense formulation), the text encoder and LoRA
classifier, the live parity tests, the single-layer checks against PyTorch (the known traps), the
attention kernels' tests and ``python -m repro.kernel_check``. A test never loosens a bound locally; a
check that needs a new one adds a named row with the reason. Equivalence checks between two JAX code
paths (batch invariance, sharded against single-device, merged against unmerged LoRA) are not
comparisons against a reference and keep their own bounds, marked as such where they are.

float32 checks run with full-precision matmuls (``jax.default_matmul_precision("highest")``; TF32 off
in PyTorch). Low-precision kernels follow the FlashAttention rule (:func:`flash_rule_bound`).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import jax.numpy as jnp

TOLERANCES: Mapping[str, float] = MappingProxyType(
    {
        # fusion models against the golden files (spec fusion-models.md)
        "layer": 1e-5,  # one layer (stage) from the reference values of its inputs, max abs error
        "forward": 1e-4,  # end to end from the inputs: logits, loss, every intermediate, max abs error
        "grad": 1e-4,  # gradients in float64, max abs error / max |reference gradient|
        "grad_floor": 1e-6,  # the denominator is at least this fraction of the case's largest reference gradient
        "state": 1e-4,  # BatchNorm running statistics after a training-mode pass, max abs error
        # the SO optimizer's trajectory (spec sparse-optimizer.md §6.3): supports exactly; m and v within
        # "so"; W within "so" + "so_relative" * |W| (the two sides factor the learning rate differently).
        # "so" also bounds SO's float32 parameters against the spec's float32 worked example and against
        # optax's Adam at density 1.
        "so": 1e-6,
        "so_relative": 1e-5,
        # SO in float64 against the dense formulation of the spec (tests/so_reference.py) on random problems:
        # the same operations up to reordering, so only float64 rounding over a few dozen steps
        "so_dense_params": 1e-12,
        "so_dense_moments": 1e-14,
        # a value the spec prints (worked examples): to 6 decimals, half a unit in the last place; to 10
        # significant digits (values of magnitude ~1), one unit in the last place
        "spec_6_decimals": 5e-7,
        "spec_10_digits": 1e-9,
        # the text encoder against transformers / sentence-transformers, and the LoRA classifier
        "text_layer": 1e-5,  # hidden states over real tokens, every layer, max abs error
        "text_end_to_end": 1e-5,  # sentence embeddings and classifier logits, max abs error
        "text_step": 1e-4,  # parameter change of one training step, relative to the largest change
        # the attention kernels in float32 against a float64 reference (output and dQ, dK, dV); also the
        # XLA path of flash_attention against flax.nnx.dot_product_attention in float32
        "kernel_fp32": 1e-5,
        # single layers and ops against PyTorch (the known traps between the two frameworks' defaults)
        # use "layer"; two rows for what it does not fit:
        "layer_wide": 1e-4,  # a Linear over 12800 inputs (IR-50's flatten): float32 sums in another order
        "elementwise": 1e-6,  # an element-wise op, a weight re-layout, running statistics, an optimizer step
    }
)

FLASH_RULE: Mapping[str, float] = MappingProxyType({"out": 2.0, "dq": 3.0, "dk": 3.0, "dv": 3.0})
"""The FlashAttention rule for float16 / bfloat16 (spec attention-kernels.md): a kernel's max error
against float64 may be at most this multiple of the error that plain JAX attention makes in the same
dtype, plus the dtype's rounding floor at the output's magnitude."""


def flash_rule_bound(name: str, low_precision_error: float, reference_max_abs: float, dtype) -> float:
    """The FlashAttention rule's bound for output ``name`` (``out``, ``dq``, ``dk``, ``dv``):
    ``FLASH_RULE[name] * low_precision_error + eps(dtype) * reference_max_abs``."""
    if name not in FLASH_RULE:
        raise KeyError(f"no FlashAttention rule for {name!r}; outputs are {sorted(FLASH_RULE)}")
    return FLASH_RULE[name] * low_precision_error + float(jnp.finfo(dtype).eps) * reference_max_abs
