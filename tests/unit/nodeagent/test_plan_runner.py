"""The loop around the plan: runner backoff and resync, watch re-listing, health endpoints, udev nudges, settings."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry, Counter

import apiclient
from nodeagent.health import HealthServer, HealthState
from nodeagent.reconcile.runner import LADDER_S, Runner, Watcher, backoff
from nodeagent.settings import AgentSettings
from nodeagent.udev import UdevNudger, wants
from tests.support.fake_kube import FakeKube


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_a_failing_pass_backs_off_on_the_ladder_and_a_success_resets_it() -> None:
    results = [apiclient.KubeError("down"), apiclient.KubeError("down"), apiclient.KubeError("down"), None]

    def work() -> None:
        r = results.pop(0)
        if r is not None:
            raise r

    runner = Runner(work, clock=Clock(), resync_s=300.0)
    assert [runner.step() for _ in range(4)] == [LADDER_S[0], LADDER_S[1], LADDER_S[2], 300.0]
    assert runner.stats.consecutive_failures == 0 and runner.stats.failures == 3


def test_an_unexpected_exception_does_not_end_the_loop() -> None:
    def work() -> None:
        raise RuntimeError("bug")

    runner = Runner(work, clock=Clock())
    assert runner.step() == LADDER_S[0]
    assert runner.stats.last_error == "bug"


def test_a_pass_may_ask_for_the_next_one_sooner_than_the_resync() -> None:
    runner = Runner(lambda: None, clock=Clock(), resync_s=300.0)
    runner.sooner = lambda: 30.0  # e.g. while the offering gate holds a claim back
    assert runner.step() == 30.0
    runner.sooner = lambda: 900.0
    assert runner.step() == 300.0
    runner.sooner = lambda: None
    assert runner.step() == 300.0


def test_the_backoff_ladder_ends_at_its_last_rung() -> None:
    assert backoff(1) == LADDER_S[0] and backoff(100) == LADDER_S[-1]


def test_nudges_during_a_pass_collapse_into_one_more_pass() -> None:
    passes: list[float] = []
    stop = threading.Event()

    def work() -> None:
        passes.append(time.monotonic())
        if len(passes) == 1:
            for _ in range(10):
                runner.nudge()

    runner = Runner(work, clock=time.monotonic, resync_s=60.0)
    t = threading.Thread(target=runner.run, args=(stop,))
    t.start()
    time.sleep(0.5)
    stop.set()
    runner.wake()
    t.join(5)
    assert len(passes) in (2, 3)  # the first, one for the collapsed nudges, maybe one for the stop wake-up


def test_a_watcher_relists_and_rewatches_after_the_server_ends_the_watch() -> None:
    api = FakeKube()
    nudges: list[int] = []
    stop = threading.Event()
    w = Watcher(api, apiclient.PCIDEVICECLAIMS, lambda: nudges.append(1), ladder=(0.01,))
    t = threading.Thread(target=w.run, args=(stop,))
    t.start()
    deadline = time.monotonic() + 5
    while not nudges and time.monotonic() < deadline:
        time.sleep(0.01)
    api.put(apiclient.PCIDEVICECLAIMS, {"metadata": {"name": "a"}})
    api.end_watches()
    while w.restarts < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    api.put(apiclient.PCIDEVICECLAIMS, {"metadata": {"name": "b"}})
    time.sleep(0.2)
    stop.set()
    t.join(5)
    lists = [c for c in api.calls if c.verb == "list"]
    assert len(lists) >= 2 and w.restarts >= 1
    assert len(nudges) >= 4  # two lists, two events


def test_a_watcher_backs_off_while_the_server_is_down() -> None:
    api = FakeKube()
    api.down = True
    stop = threading.Event()
    w = Watcher(api, apiclient.PCIDEVICES, lambda: None, ladder=(0.05,))
    t = threading.Thread(target=w.run, args=(stop,))
    t.start()
    time.sleep(0.3)
    stop.set()
    t.join(5)
    assert 2 <= len(api.calls) <= 10


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_readiness_needs_a_successful_pass_and_a_traced_root_filesystem() -> None:
    clock = Clock()
    state = HealthState(clock, stale_after_s=60)
    registry = CollectorRegistry()
    Counter("pcidevices_agent_test", "test counter", registry=registry).inc()
    server = HealthServer(state, registry, host="127.0.0.1", port=0).start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        assert _get(base + "/readyz") == (503, "no successful reconcile pass yet\n")
        state.passed(True, root_traced=False)
        assert _get(base + "/readyz") == (503, "the root filesystem could not be traced to a device\n")
        state.passed(True, root_traced=True)
        assert _get(base + "/readyz") == (200, "ok\n")
        assert _get(base + "/healthz") == (200, "ok\n")
        clock.t += 120
        assert _get(base + "/healthz")[0] == 503
        assert "pcidevices_agent_test_total 1.0" in _get(base + "/metrics")[1]
    finally:
        server.stop()


def test_udev_events_for_pci_and_usb_nudge_and_others_do_not() -> None:
    assert wants("add", "pci") and wants("unbind", "usb")
    assert not wants("add", "block") and not wants(None, "pci")
    nudges: list[int] = []
    n = UdevNudger(lambda: nudges.append(1), monitor_factory=lambda: None)
    n._event(SimpleNamespace(action="bind", subsystem="pci"))
    n._event(SimpleNamespace(action="add", subsystem="net"))
    assert nudges == [1]


def test_settings_come_from_the_environment_and_reject_bad_values() -> None:
    s = AgentSettings.from_env({"NODE_NAME": "n1", "RESOURCE_NAMES": "pooled", "KUBELET_DIR": "/k"})
    assert (s.node_name, s.resource_names, s.pod_resources_socket) == ("n1", "pooled", "/k/pod-resources/kubelet.sock")
    with pytest.raises(ValueError, match="NODE_NAME"):
        AgentSettings.from_env({})
    with pytest.raises(ValueError, match="RESOURCE_NAMES"):
        AgentSettings.from_env({"NODE_NAME": "n1", "RESOURCE_NAMES": "shared"})


def test_run_without_a_node_name_exits_with_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import io
    import logging

    from nodeagent.__main__ import main

    monkeypatch.delenv("NODE_NAME", raising=False)
    monkeypatch.setattr(logging.getLogger(), "level", logging.getLogger().level)  # main() sets it; restore after
    err = io.StringIO()
    assert main(["run"], out=io.StringIO(), err=err) == 2
    assert "NODE_NAME must be set" in err.getvalue()
