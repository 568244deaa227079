"""Fixtures of the cluster tier: one real control plane per test session, with our CRDs installed.

The binaries come from `scripts/prepare-cluster` (scripts/test runs it before this tier). Without them the tier skips
locally with the command to run; under CI=true the root conftest turns that skip into a failure.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.controlplane import Binaries, BinariesMissing, ControlPlane

REPO = Path(__file__).resolve().parents[2]
CRDS = REPO / "crds"
TEST_CRDS = REPO / "tests" / "fixtures" / "crds"

_STARTUP = pytest.StashKey[list[str]]()


def _report(config: pytest.Config, line: str) -> None:
    config.stash.setdefault(_STARTUP, []).append(line)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    lines = config.stash.get(_STARTUP, [])
    if lines:
        terminalreporter.section("control plane")
        for line in lines:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def binaries() -> Binaries:
    try:
        return Binaries.locate(REPO)
    except BinariesMissing as e:
        pytest.skip(f"cluster tier needs the control-plane binaries: {e}")


@pytest.fixture(scope="session")
def control_plane(
    binaries: Binaries, tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config
) -> Iterator[ControlPlane]:
    """etcd + kube-apiserver for the whole session (kube-controller-manager only once a test asks for it)."""
    cp = ControlPlane(binaries, tmp_path_factory.mktemp("controlplane"))
    with cp:
        assert cp.startup_seconds is not None
        _report(pytestconfig, f"etcd + kube-apiserver ready in {cp.startup_seconds:.1f}s ({cp.server}, {cp.workdir})")
        yield cp


@pytest.fixture(scope="session")
def garbage_collector(control_plane: ControlPlane, pytestconfig: pytest.Config) -> ControlPlane:
    """The session's control plane with kube-controller-manager (garbage collector, namespace controller) running."""
    if not control_plane.controller_manager_running:
        started = time.monotonic()
        control_plane.start_controller_manager()
        _report(pytestconfig, f"kube-controller-manager ready in {time.monotonic() - started:.1f}s")
    return control_plane


@pytest.fixture(scope="session")
def installed_crds(control_plane: ControlPlane, pytestconfig: pytest.Config) -> str:
    """Our CRDs (crds/) and the test-only KubeVirt/Harvester CRDs, applied with kubectl and ready to be watched.

    Returns kubectl's output so a test can check how they were applied.
    """
    started = time.monotonic()
    out = control_plane.install_crds(CRDS, TEST_CRDS)
    _report(pytestconfig, f"CRDs installed and watchable in {time.monotonic() - started:.1f}s")
    return out


@pytest.fixture
def unique() -> str:
    """A short name fragment unique to this test, valid in DNS labels (tests share one API server)."""
    return "t" + uuid.uuid4().hex[:8]
