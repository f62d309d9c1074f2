"""Optimizers: SO, the sparse optimizer (``so``, ``scale_by_so``)."""

from jax_cer.optim.so import DenseLeafState, ScaleBySOState, SparseLeafState, random_subset, scale_by_so, so, sparse_k

__all__ = ["DenseLeafState", "ScaleBySOState", "SparseLeafState", "random_subset", "scale_by_so", "so", "sparse_k"]
