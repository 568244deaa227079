"""Test tiers: a test's tier is the folder it lives in (tests/<tier>/...).

Locally, a tier whose tools are missing skips with a reason; under CI=true a skip is turned into a failure, so
no tier can silently drop out of a run.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

TIERS = ("unit", "sysfs", "replay", "live", "cluster", "kernel", "node")
_TESTS = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        rel = Path(str(item.fspath)).resolve().relative_to(_TESTS.resolve())
        tier = rel.parts[0] if len(rel.parts) > 1 else None
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if in_ci() and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.longrepr = f"skipped under CI=true, where no tier may skip: {reason}"
