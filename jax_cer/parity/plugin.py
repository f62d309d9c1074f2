"""pytest plugin: the parity checks of ``jax-cer repro`` as test items.

Installed with the package (entry point ``pytest11``), so it works from any folder, without test
files or a conftest::

    pytest --jax-cer-repro                                   # every case
    pytest --jax-cer-repro --jax-cer-cases tcn,so --junitxml=parity.xml
    pytest --jax-cer-repro --jax-cer-golden-dir /path/to/golden

One item per case and check, e.g. ``jax-cer-repro::tcn::layer``, ``jax-cer-repro::tcn::grad input``,
``jax-cer-repro::so::supports``, ``jax-cer-repro::text_encoder::layers``: the items are known at
collection time (:func:`jax_cer.parity.repro.planned_checks`, from the manifest); a case runs once,
at its first item, and its items share the rows. An item fails with the check's worst key, error,
tolerance and detail, or, when the run did not report the check, with what the case reported
instead. With ``-n`` (pytest-xdist), ``--dist loadscope`` keeps a case's items on one worker.

Without ``--jax-cer-repro`` the plugin adds nothing; importing it imports neither JAX nor the
checks (it is loaded by every pytest session of an environment where jax-cer is installed).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:  # for annotations only: importing the checks loads JAX
    from jax_cer.parity.repro import PlannedCheck
    from jax_cer.parity.result import CheckResult

ROOT = "jax-cer-repro"
"""The name of the collector that holds the parity items (the first part of their node ids)."""


class ParityCheckFailed(Exception):
    """A parity item's failure; its message is the whole report (no traceback is shown)."""


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("jax-cer", "jax-cer parity checks against the golden reference files")
    group.addoption(
        "--jax-cer-repro",
        action="store_true",
        default=False,
        help="collect one test item per jax-cer parity check (the checks of `jax-cer repro`)",
    )
    group.addoption(
        "--jax-cer-cases",
        action="append",
        metavar="CASES",
        help="with --jax-cer-repro: comma-separated case names (golden cases such as tcn or can_train, 'so' for "
        "the optimizer trajectory, 'text' for the text encoder and LoRA classifier); repeatable; default all",
    )
    group.addoption(
        "--jax-cer-golden-dir",
        metavar="DIR",
        help="with --jax-cer-repro: golden folder (default: $JAX_CER_GOLDEN, else the files shipped in the package)",
    )


def pytest_configure(config: pytest.Config) -> None:
    """With ``--jax-cer-repro``: reads the manifest, checks the case names and registers
    :class:`ReproSession`, which adds the items; without it, nothing."""
    if not config.getoption("jax_cer_repro"):
        if config.getoption("jax_cer_cases") or config.getoption("jax_cer_golden_dir"):
            raise pytest.UsageError("--jax-cer-cases and --jax-cer-golden-dir need --jax-cer-repro")
        return
    from jax_cer.parity import golden, repro  # noqa: PLC0415 - JAX and the checks load only when asked for

    option = config.getoption("jax_cer_golden_dir")
    folder = Path(option).resolve() if option else golden.default_golden_dir()
    try:
        manifest = golden.load_manifest(folder)
        names = repro.select_cases(config.getoption("jax_cer_cases"), manifest)
    except repro.UnknownCaseError as e:
        raise pytest.UsageError(f"--jax-cer-cases: {e}") from None
    except golden.GoldenFileError as e:
        raise pytest.UsageError(f"--jax-cer-repro: {e}") from None
    session = ReproSession(folder, manifest, names)
    config.stash[SESSION_KEY] = session
    config.pluginmanager.register(session, ROOT)


class ReproSession:
    """The parity run of one pytest session: golden folder, manifest, selected cases and the rows of
    the cases run so far (each case runs once, at its first item)."""

    def __init__(self, folder: Path, manifest: dict[str, Any], names: list[str]) -> None:
        self.folder = folder
        self.manifest = manifest
        self.names = names
        self.results: dict[str, list[CheckResult]] = {}

    def rows(self, run: str) -> list[CheckResult]:
        """The rows of case ``run`` (a selected case name), computed at the first call."""
        from jax_cer.parity import repro  # noqa: PLC0415 - JAX and the checks load only when asked for

        if run not in self.results:
            self.results[run] = repro.run_checks(run, self.manifest, self.folder)
        return self.results[run]

    @pytest.hookimpl(wrapper=True)
    def pytest_make_collect_report(self, collector: pytest.Collector):
        """Adds the parity collector to the session's top-level collectors."""
        report = yield
        if isinstance(collector, pytest.Session) and report.passed:
            # an explicit id: the items are named jax-cer-repro::<case>::<check>, with no file path
            report.result.append(ReproCollector.from_parent(collector, name=ROOT, nodeid=ROOT))
        return report

    def pytest_report_header(self) -> list[str]:
        return [f"jax-cer parity: cases {', '.join(self.names)} from {self.folder}"]


SESSION_KEY = pytest.StashKey[ReproSession]()


class ReproCollector(pytest.Collector):
    """The parity items, grouped by the case column of their rows."""

    def collect(self) -> Iterator[pytest.Collector]:
        from jax_cer.parity import repro  # noqa: PLC0415 - JAX and the checks load only when asked for

        session = self.config.stash[SESSION_KEY]
        groups: dict[str, list[PlannedCheck]] = {}
        for name in session.names:
            for planned in repro.planned_checks(name, session.manifest):
                groups.setdefault(planned.case, []).append(planned)
        for case, planned in groups.items():
            yield CaseCollector.from_parent(self, name=case, planned=planned)


class CaseCollector(pytest.Collector):
    """The items of one case column (``tcn``, ``so``, ``text_encoder``, ...)."""

    def __init__(self, *, planned: list[PlannedCheck], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.planned = planned

    def collect(self) -> Iterator[pytest.Item]:
        for planned in self.planned:
            yield CheckItem.from_parent(self, name=planned.check, planned=planned)


class CheckItem(pytest.Item):
    """One parity check; the first item of a case runs the case."""

    def __init__(self, *, planned: PlannedCheck, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.planned = planned

    def runtest(self) -> None:
        from jax_cer.parity import repro  # noqa: PLC0415 - JAX and the checks load only when asked for

        rows = self.config.stash[SESSION_KEY].rows(self.planned.run)
        mine = [r for r in rows if (r.case, r.check) == (self.planned.case, self.planned.check)]
        if not mine:
            others = [r for r in rows if not r.passed]
            reported = "; ".join(f"{r.name}: {r.key}: {r.detail}" for r in others) or "no failure"
            raise ParityCheckFailed(
                f"{self.planned.name} was not reported by the run of case {self.planned.run!r}; "
                f"the run reported {reported}"
            )
        row = mine[0]
        self.user_properties += [("max_error", row.max_error), ("tolerance", row.tolerance), ("worst_key", row.key)]
        if not row.passed:
            message = (
                f"{row.name} FAILED: worst {row.key}: max error {repro.format_error(row.max_error)}, tolerance "
                f"{row.tolerance:.0e} ({row.count} compared)"
            )
            if row.detail:
                message += f"\n{row.detail}"
            raise ParityCheckFailed(message)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style=None) -> str:
        if isinstance(excinfo.value, ParityCheckFailed):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self) -> tuple[Any, int | None, str]:
        return self.path, None, f"{ROOT}::{self.planned.name}"
