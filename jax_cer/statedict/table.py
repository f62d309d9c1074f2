"""Conversion tables between original (PyTorch) state dicts and Flax NNX modules, with one strict check.

A conversion table is an ordered list of :class:`Entry` rows, one per original key: the key, the
path of the Flax variable that holds it and the layout :class:`~jax_cer.statedict.rules.Rule`
between them. Tables come from one of two places:

- a walk over the layers' own declarations (the fusion models' ``TORCH_PARAMS`` and
  ``torch_children``: :func:`jax_cer.models.torch_entries`), where names and order follow the
  original modules;
- :func:`entries_by_name`, which names every variable of a module after its path and a naming
  table keyed by the variable's leaf name (transformers' BERT: ``kernel`` -> ``weight``
  transposed, ``scale`` -> ``weight``; PEFT's LoRA factors; a classifier head).

Every model then goes through the same three functions: :func:`check_state_dict` raises one
:class:`StateDictError` naming every missing, unexpected, misshapen, mistyped or non-finite key
(and differing duplicates), :func:`load_entries` copies a checked state dict into the module,
and :func:`export_entries` is the exact inverse.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jax_cer.statedict.rules import ParamRow, Rule


class StateDictError(ValueError):
    """A state dict that does not match the model; the message lists every offending key."""


@dataclasses.dataclass(frozen=True)
class Entry:
    """One row of a model's conversion table."""

    key: str
    """Original state-dict key, e.g. ``temporal.video.network.0.conv1.weight_v``."""
    path: tuple
    """Path of the Flax variable inside the model, e.g. ``('temporal', 'video', 'network', 0, 'conv1', 'v')``."""
    rule: Rule
    torch_shape: tuple[int, ...]
    torch_dtype: str
    """The dtype an export writes: ``float32`` for the fusion models' parameters and statistics (or
    the variable's own float dtype), ``int64`` for ``num_batches_tracked``. A check accepts any
    floating dtype for a float entry and any integer dtype for an ``int64`` one."""
    alias_of: str | None = None
    """For the duplicated TCN keys (``net.0.*`` = ``conv1.*``): the key this one repeats."""
    trainable: bool = True
    """False for buffers (BatchNorm running statistics and counters)."""


def variable_at(module: Any, path: Sequence[Any]) -> Any:
    """The object at ``path`` inside ``module``: attributes by name, list items by index, dict items by key."""
    obj = module
    for p in path:
        obj = obj[p] if isinstance(p, int) or isinstance(obj, (nnx.Dict, dict)) else getattr(obj, p)
    return obj


def original_key(path: Sequence[Any], table: Sequence[ParamRow]) -> tuple[str, Rule]:
    """The original key of the variable at ``path`` and its rule, by the first row of ``table``
    whose Flax attribute is the path's leaf (``(..., 'query', 'kernel')`` -> ``....query.weight``)."""
    *mods, leaf = (str(p) for p in path)
    for torch_name, attr, rule in table:
        if attr == leaf:
            return ".".join([*mods, torch_name]), rule
    raise StateDictError(
        f"no original name for parameter {'.'.join([*mods, leaf])}: its leaf {leaf!r} is in no row of the naming "
        f"table ({sorted({attr for _, attr, _ in table})})"
    )


def entries_by_name(module: nnx.Module, table: Sequence[ParamRow], *, filter: Any = nnx.Param) -> list[Entry]:
    """The conversion table of ``module``'s variables selected by ``filter`` (an ``nnx`` filter),
    each named by :func:`original_key`, in ``nnx.state`` order. Export dtypes are the variables' own."""
    entries = []
    for path, var in nnx.to_flat_state(nnx.state(module, filter)):
        key, rule = original_key(path, table)
        value = var.get_value()
        entries.append(
            Entry(
                key=key,
                path=tuple(path),
                rule=rule,
                torch_shape=tuple(rule.torch_shape(tuple(value.shape))),
                torch_dtype=jnp.dtype(value.dtype).name,
            )
        )
    return entries


def _overflow(arr: np.ndarray, dtype: str) -> float | None:
    """The largest finite value of ``dtype`` if ``arr`` (finite) holds a larger magnitude, else None:
    casting it to ``dtype`` (float32, or a 16-bit model's float16 / bfloat16) would make it inf."""
    target = jnp.dtype(dtype)
    if not jnp.issubdtype(target, jnp.floating) or not arr.size:
        return None
    limit = float(jnp.finfo(target).max)
    if float(jnp.finfo(arr.dtype).max) <= limit:
        return None
    return limit if float(np.max(np.abs(arr))) > limit else None


def check_state_dict(
    entries: Sequence[Entry],
    state_dict: Mapping[str, np.ndarray],
    *,
    source: str,
    target: str,
    optional: Mapping[str, Callable[[np.ndarray], str | None]] | None = None,
    key_hint: str = "",
) -> None:
    """Raises one :class:`StateDictError` listing every problem of ``state_dict`` against ``entries``.

    Problems: missing keys, unexpected keys, a shape other than the entry's original shape, a
    non-floating dtype for a float entry (non-integer for an ``int64`` counter), NaN or inf values,
    and an alias that differs from the key it duplicates. ``optional`` maps keys the file may hold
    but the model does not load (e.g. transformers' ``embeddings.position_ids``) to a check that
    returns a problem or None. The message starts ``"<source> does not match <target>:"``;
    ``key_hint`` is appended when keys are missing or unexpected.
    """
    optional = optional or {}
    expected = {e.key: e for e in entries}
    problems: list[str] = []
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected and k not in optional]
    if missing:
        problems.append(f"missing keys ({len(missing)}): {missing}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {unexpected}")
    for key, e in expected.items():
        if key not in state_dict:
            continue
        arr = np.asarray(state_dict[key])
        if tuple(arr.shape) != e.torch_shape:
            problems.append(f"{key}: shape {list(arr.shape)}, expected {list(e.torch_shape)}")
            continue
        if e.torch_dtype == "int64":
            if not np.issubdtype(arr.dtype, np.integer):
                problems.append(f"{key}: dtype {arr.dtype}, expected an integer counter")
            continue
        if not jnp.issubdtype(arr.dtype, jnp.floating):
            problems.append(f"{key}: dtype {arr.dtype}, expected floating point")
        elif not np.all(np.isfinite(arr)):
            problems.append(f"{key}: holds {int(np.sum(~np.isfinite(arr)))} NaN/inf values")
        elif (limit := _overflow(arr, e.torch_dtype)) is not None:
            problems.append(
                f"{key}: holds values up to {float(np.max(np.abs(arr))):.3g}, beyond {e.torch_dtype}'s range "
                f"({limit:.3g}): they would become inf"
            )
        elif (
            e.alias_of is not None
            and e.alias_of in state_dict
            and not np.array_equal(arr, np.asarray(state_dict[e.alias_of]))
        ):
            problems.append(f"{key}: differs from its duplicate {e.alias_of} (they must be the same tensor)")
    for key, check in optional.items():
        problem = check(np.asarray(state_dict[key])) if key in state_dict else None
        if problem:
            problems.append(f"{key}: {problem}")
    if problems:
        hint = key_hint if (missing or unexpected) else ""
        raise StateDictError(f"{source} does not match {target}:\n  " + "\n  ".join(problems) + hint)


def load_entries(module: nnx.Module, entries: Sequence[Entry], state_dict: Mapping[str, np.ndarray]) -> None:
    """Copies a state dict that passed :func:`check_state_dict` into ``module`` (in place): each
    entry's array through its rule, cast to the variable's dtype. Aliases are skipped (they repeat
    another key)."""
    for e in entries:
        if e.alias_of is None:
            var = variable_at(module, e.path)
            arr = e.rule.to_flax(np.asarray(state_dict[e.key]))
            var.set_value(jnp.asarray(arr.astype(var.get_value().dtype)))


def export_entries(
    module: nnx.Module, entries: Sequence[Entry], *, values: Any = None, trainable_only: bool = False
) -> dict[str, np.ndarray]:
    """The module's variables under the original keys, layouts and dtypes, in the table's order.

    ``values``: optionally an ``nnx.State`` with the module's structure (e.g. gradients from
    ``jax.grad`` over ``nnx.split(model, nnx.Param, ...)``) to export instead of the module's own
    values; entries missing from it are skipped. ``trainable_only``: skip buffers.
    """
    flat = None
    if values is not None:
        flat = {tuple(p): v for p, v in nnx.to_flat_state(values)}
    out: dict[str, np.ndarray] = {}
    for e in entries:
        if trainable_only and not e.trainable:
            continue
        if e.alias_of is not None:
            if e.alias_of in out:
                out[e.key] = out[e.alias_of].copy()
            continue
        if flat is None:
            leaf = variable_at(module, e.path)
        elif e.path in flat:
            leaf = flat[e.path]
        else:
            continue
        arr = np.asarray(leaf.get_value() if hasattr(leaf, "get_value") else leaf)
        out[e.key] = e.rule.to_torch(arr).astype(jnp.dtype(e.torch_dtype), copy=False)
    return out
