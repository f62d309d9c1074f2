"""One row of a parity report: :class:`CheckResult`, and the helpers that build rows.

Every parity check (the fusion models' golden cases, the SO trajectory, the text encoder and the
LoRA classifier) reports a list of rows; ``jax-cer repro`` prints them as a table and writes them
to its JSON, and the pytest plugin turns each into a test item.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from typing import Any

import numpy as np


@dataclasses.dataclass
class CheckResult:
    """One line of the parity report."""

    case: str
    check: str
    key: str
    """The worst key (layer, intermediate, parameter) of the check."""
    max_error: float
    tolerance: float
    passed: bool
    seconds: float
    count: int = 1
    """How many arrays the check covers."""
    detail: str = ""

    @property
    def name(self) -> str:
        """``case::check``, the row's name in failure messages and test ids."""
        return f"{self.case}::{self.check}"

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def worst_error(errors: Mapping[str, float]) -> tuple[str, float]:
    """The key with the largest error and that error; ``("-", 0.0)`` when there is none."""
    if not errors:
        return "-", 0.0
    key = max(errors, key=lambda k: errors[k])
    return key, errors[key]


def check_result(
    case: str, check: str, errors: Mapping[str, float], tolerance: float, t0: float, detail: str = ""
) -> CheckResult:
    """The row of a check that compares several arrays: ``errors`` maps each array's key to its
    error; the check passes when every error is finite and at most ``tolerance``. ``t0`` is the
    ``time.perf_counter()`` at which the check started."""
    key, err = worst_error(errors)
    ok = bool(all(np.isfinite(v) and v <= tolerance for v in errors.values()))
    return CheckResult(case, check, key, err, tolerance, ok, time.perf_counter() - t0, len(errors), detail)


def error_result(case: str, error: BaseException, t0: float, check: str = "error") -> CheckResult:
    """The failed row of a case that raised ``error`` before its checks could report."""
    return CheckResult(
        case, check, type(error).__name__, float("nan"), 0.0, False, time.perf_counter() - t0, 0, str(error)
    )
