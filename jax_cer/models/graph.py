"""Models as ordered graphs of named stages.

A model's forward pass is a list of :class:`Stage` rows, each computing one named
intermediate (named like the original module that produced it, e.g. ``temporal.video`` or
``fuse.CA_av``) from model inputs or earlier intermediates. Running every stage in order is
the forward pass; running one stage on reference values of its inputs is a per-layer parity
check. Both use the same code, so a parity failure names the first layer that differs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import jax


@dataclasses.dataclass(frozen=True)
class Stage:
    """One named step of a forward pass: ``env[name] = fn(*(env[k] for k in inputs))``."""

    name: str
    inputs: tuple[str, ...]
    fn: Callable[..., jax.Array]


def run_stages(stages: Sequence[Stage], inputs: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """Runs every stage in order; returns the inputs and every intermediate by name."""
    env = dict(inputs)
    for stage in stages:
        env[stage.name] = stage.fn(*(env[k] for k in stage.inputs))
    return env


def run_stage_from(stages: Sequence[Stage], known: Mapping[str, jax.Array], name: str) -> jax.Array:
    """Computes intermediate ``name`` from the nearest values available in ``known``.

    Every input of the stage that is in ``known`` is taken from there (``name`` itself never
    is); a missing one is recomputed from its own inputs, recursively. With ``known`` holding
    reference intermediates, this checks one layer (or the shortest chain of layers whose ends
    are stored) in isolation.
    """
    by_name = {s.name: s for s in stages}
    if name not in by_name:
        raise KeyError(f"no stage named {name!r}; stages are {list(by_name)}")
    cache: dict[str, jax.Array] = {}

    def value(key: str, top: bool) -> jax.Array:
        if not top and key in known:
            return known[key]
        if key in cache:
            return cache[key]
        if key not in by_name:
            raise KeyError(f"stage input {key!r} is neither a stage nor among the known values")
        stage = by_name[key]
        cache[key] = stage.fn(*(value(k, False) for k in stage.inputs))
        return cache[key]

    return value(name, True)
