"""How many rounds a case times, and the record of it in the case's ``extra_info``.

Every case has a default number of rounds per platform (its *full* run). ``jax-cer bench --rounds N``
(or ``$JAX_CER_BENCH_ROUNDS``) overrides it for every case: a quick check. Each benchmark records
``rounds`` (used) and ``full_rounds`` (its default here), so that the report prefers a full run's
figure and marks one that only a quick run measured.
"""

from __future__ import annotations

import os
from collections.abc import Callable

ROUNDS_ENV = "JAX_CER_BENCH_ROUNDS"


def rounds_override() -> int | None:
    """The rounds every case runs instead of its default (``$JAX_CER_BENCH_ROUNDS``), or None."""
    value = os.environ.get(ROUNDS_ENV, "").strip()
    if not value:
        return None
    try:
        rounds = int(value)
    except ValueError:
        raise ValueError(f"${ROUNDS_ENV}={value!r} is not a whole number of rounds") from None
    if rounds < 1:
        raise ValueError(f"${ROUNDS_ENV}={value!r}: a case needs at least 1 round")
    return rounds


def timed(benchmark, fn: Callable[[], object], *, full_rounds: int, warmup_rounds: int) -> None:
    """Times ``fn`` (one call per round, after ``warmup_rounds`` untimed calls) with pytest-benchmark's
    ``benchmark`` fixture, for ``full_rounds`` rounds unless the rounds are overridden, and records
    ``rounds`` and ``full_rounds`` in the benchmark's ``extra_info``."""
    rounds = rounds_override() or full_rounds
    benchmark.extra_info.update(rounds=rounds, full_rounds=full_rounds)
    benchmark.pedantic(fn, rounds=rounds, warmup_rounds=warmup_rounds, iterations=1)
