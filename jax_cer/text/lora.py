"""LoRA for Flax NNX linear layers (PEFT's ``LoraConfig`` semantics, spec ``textualization.md`` §6.2).

``apply_lora(model, targets, rank=8, alpha=8, dropout=0.0, rslora=False, rngs=...)`` replaces,
in place, every :class:`flax.nnx.Linear` whose dotted path matches a target by PEFT's rule (the
path equals the target or ends with ``"." + target``: ``"output.dense"`` also matches
``attention.output.dense``) with a :class:`LoRALinear` around the same layer object (no copy of
the base weights). The branch is ``scaling * B(A(dropout(x)))`` with ``A ~ U(-1/sqrt(in),
1/sqrt(in))`` (PEFT's kaiming_uniform(a=sqrt 5)), ``B = 0`` and ``scaling = alpha / rank``, or
``alpha / sqrt(rank)`` with rsLoRA. The factors are :class:`LoRAParam` variables, so
``nnx.split(model, LoRAParam, ...)`` (or :func:`lora_trainable`, which adds a head) separates
what trains from the frozen base. :func:`merge_lora` folds the branch into the base kernels
(``W + scaling * A B``) and puts plain ``nnx.Linear`` layers back. :data:`LORA_NAMES` names the
factors as PEFT does (``<module>.lora_A`` ``[r, in]``, ``<module>.lora_B`` ``[out, r]``), for
:func:`jax_cer.statedict.entries_by_name`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jax_cer.statedict import LINEAR, ParamRow

LORA_NAMES: tuple[ParamRow, ...] = (
    ("lora_A", "lora_a", LINEAR),  # PEFT's A [r, in] = lora_a [in, r] transposed
    ("lora_B", "lora_b", LINEAR),  # PEFT's B [out, r] = lora_b [r, out] transposed
)
"""Naming table of the LoRA factors: PEFT's parameter names and layouts."""


class LoRAParam(nnx.Param):
    """A LoRA factor (trainable while the base parameters are frozen)."""


class LoRALinear(nnx.Module):
    """``base(x) + scaling * dropout(x) @ lora_a @ lora_b``; ``lora_a`` ``[in, r]``, ``lora_b`` ``[r, out]``."""

    def __init__(
        self,
        base: nnx.Linear,
        rank: int,
        alpha: float,
        *,
        dropout: float = 0.0,
        rslora: bool = False,
        rngs: nnx.Rngs,
    ):
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout}")
        n_in, n_out = base.in_features, base.out_features
        dtype = base.kernel.get_value().dtype
        bound = 1.0 / math.sqrt(n_in)
        self.base = base
        self.lora_a = LoRAParam(jax.random.uniform(rngs.params(), (n_in, rank), dtype, -bound, bound))
        self.lora_b = LoRAParam(jnp.zeros((rank, n_out), dtype))
        self.rank, self.alpha, self.rslora = rank, float(alpha), rslora
        self.scaling = self.alpha / (math.sqrt(rank) if rslora else rank)
        self.dropout = nnx.Dropout(dropout, deterministic=True, rngs=rngs)

    def delta(self) -> jax.Array:
        """``scaling * A B``: the ``[in, out]`` change of the base kernel."""
        return self.scaling * (self.lora_a[...] @ self.lora_b[...])

    def __call__(self, x: jax.Array) -> jax.Array:
        branch = (self.dropout(x) @ self.lora_a[...]) @ self.lora_b[...]
        return self.base(x) + self.scaling * branch


def _modules(model: nnx.Module):
    for path, module in nnx.iter_graph(model):
        if isinstance(module, nnx.Module):
            yield tuple(str(p) for p in path), module


def matches(path: Sequence[str], target: str) -> bool:
    """PEFT's target rule on a dotted module path."""
    name = ".".join(path)
    return name == target or name.endswith("." + target)


def _set(model: nnx.Module, path: Sequence[str], value) -> None:
    parent = model
    for p in path[:-1]:
        parent = parent[int(p)] if isinstance(parent, nnx.List) else getattr(parent, p)
    if isinstance(parent, nnx.List):
        parent[int(path[-1])] = value
    else:
        setattr(parent, path[-1], value)


def apply_lora(
    model: nnx.Module,
    targets: Sequence[str],
    *,
    rank: int = 8,
    alpha: float = 8.0,
    dropout: float = 0.0,
    rslora: bool = False,
    rngs: nnx.Rngs,
) -> list[str]:
    """Wraps the targeted linears in place; returns their dotted paths (an error if none matched)."""
    if isinstance(targets, str):
        targets = (targets,)
    found = [
        path
        for path, m in _modules(model)
        if isinstance(m, nnx.Linear) and not (path and path[-1] == "base") and any(matches(path, t) for t in targets)
    ]
    if not found:
        linears = sorted(".".join(p) for p, m in _modules(model) if isinstance(m, nnx.Linear))
        raise ValueError(f"no nnx.Linear matches the LoRA targets {list(targets)}; linears: {linears[:12]} ...")
    for path in found:
        base = model
        for p in path:
            base = base[int(p)] if isinstance(base, nnx.List) else getattr(base, p)
        _set(model, path, LoRALinear(base, rank, alpha, dropout=dropout, rslora=rslora, rngs=rngs))
    return [".".join(p) for p in found]


def merge_lora(model: nnx.Module) -> nnx.Module:
    """Folds every :class:`LoRALinear` into its base layer (in place) and returns ``model``."""
    wrapped = [(path, m) for path, m in _modules(model) if isinstance(m, LoRALinear)]
    for path, m in wrapped:
        kernel = m.base.kernel.get_value()
        m.base.kernel.set_value(kernel + m.delta().astype(kernel.dtype))
        _set(model, path, m.base)
    return model


def lora_trainable(*head_names: str):
    """NNX filter: the LoRA factors plus every parameter under a module named in ``head_names``."""
    heads = [nnx.All(nnx.Param, nnx.PathContains(name)) for name in head_names]
    return nnx.Any(LoRAParam, *heads)
