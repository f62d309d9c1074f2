"""Optimizers: SO, the sparse optimizer (``so``, ``scale_by_so``), and SGD with PyTorch's coupled weight decay
(``sgd``, ``sgd_nesterov``)."""

from jax_cer.optim.sgd import sgd, sgd_nesterov
from jax_cer.optim.so import DenseLeafState, ScaleBySOState, SparseLeafState, random_subset, scale_by_so, so, sparse_k

__all__ = [
    "DenseLeafState",
    "ScaleBySOState",
    "SparseLeafState",
    "random_subset",
    "scale_by_so",
    "sgd",
    "sgd_nesterov",
    "so",
    "sparse_k",
]
