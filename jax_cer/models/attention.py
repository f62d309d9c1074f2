"""The models' default attention function, :func:`dot_product_attention`.

It is :func:`jax_cer.kernels.xla.dot_product_attention`: the signature of
:func:`flax.nnx.dot_product_attention` plus ``kv_lengths``, computed as head-major batched
matmuls (1.5-3x faster than Flax's on XLA:CPU at the models' shapes) with the Triton kernels'
semantics (bottom-right aligned causal masking; a query that sees no key gives zeros). That
module's docstring says where these differ from Flax. Any function with this signature plugs into
the models' ``attention_fn`` hook instead (e.g. :func:`jax_cer.kernels.flash_attention`).
"""

from jax_cer.kernels.xla import AttentionFn, dot_product_attention

__all__ = ["AttentionFn", "dot_product_attention"]
