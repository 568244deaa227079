"""The running agent (threads: runner, watches) on a simulated host against the in-memory API: event-driven
convergence, restarts of the API's watches, and an idle agent that writes nothing."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import apiclient
from nodeagent.wiring import Agent
from policy import names
from tests.support.agent_env import build_agent, kubevirt_cr, pci_claim
from tests.support.fake_kube import FakeKube
from tests.support.simhost import SimHost

NODE = "node1"
NIC = "0000:00:02.0"


def _until(ok: Callable[[], bool], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ok():
            return True
        time.sleep(0.01)
    return ok()


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[SimHost, FakeKube, Agent]]:
    host = SimHost(tmp_path)
    host.pci(NIC, native="e1000e", group=1)
    api = FakeKube()
    api.put(apiclient.NODES, {"metadata": {"name": NODE}})
    api.put(apiclient.KUBEVIRTS, kubevirt_cr(), namespace="harvester-system")
    agent = build_agent(host, api, NODE, resync_s=3600.0).start()
    try:
        yield host, api, agent
    finally:
        agent.stop()


def _enabled(api: FakeKube) -> bool:
    c = api.peek("pcideviceclaims", names.pcidevice_name(NODE, NIC))
    return bool(c and (c.get("status") or {}).get("passthroughEnabled"))


def test_a_new_claim_is_enabled_by_its_watch_event_without_waiting_for_a_resync(
    env: tuple[SimHost, FakeKube, Agent],
) -> None:
    host, api, agent = env
    assert _until(lambda: api.peek("pcidevices", names.pcidevice_name(NODE, NIC)) is not None)
    started = time.monotonic()
    api.put(apiclient.PCIDEVICECLAIMS, pci_claim(NODE, NIC))
    assert _until(lambda: _enabled(api), timeout=3.0)
    assert time.monotonic() - started < 3.0  # the resync is an hour away: only the watch event can explain this
    assert host.sim.driver(NIC) == "vfio-pci"


def test_the_agent_converges_after_the_api_drops_every_watch(env: tuple[SimHost, FakeKube, Agent]) -> None:
    host, api, agent = env
    assert _until(lambda: agent.runner.stats.passes > 0)
    api.down = True
    time.sleep(0.3)
    api.put(apiclient.PCIDEVICECLAIMS, pci_claim(NODE, NIC))  # written while the agent cannot see the server
    api.end_watches()
    api.down = False
    assert _until(lambda: _enabled(api), timeout=10.0)
    assert len([o for o in api.objects("pcidevices")]) == 2


def test_an_idle_running_agent_makes_no_writes(env: tuple[SimHost, FakeKube, Agent]) -> None:
    host, api, agent = env
    api.put(apiclient.PCIDEVICECLAIMS, pci_claim(NODE, NIC))
    assert _until(lambda: _enabled(api))
    time.sleep(0.5)  # the echoes of our own writes settle
    before = len(api.writes)
    passes = agent.runner.stats.passes
    for _ in range(5):
        agent.runner.nudge()  # as a resync or a udev event would
        time.sleep(0.1)
    assert agent.runner.stats.passes > passes
    assert api.writes[before:] == []


def test_allocated_to_follows_the_kubelet_without_any_api_event(tmp_path: Path) -> None:
    from nodeagent.deviceplugin.podresources import DeviceAllocation

    host = SimHost(tmp_path)
    host.pci(NIC, native="e1000e", group=1)
    api = FakeKube()
    api.put(apiclient.NODES, {"metadata": {"name": NODE}})
    api.put(apiclient.PCIDEVICECLAIMS, pci_claim(NODE, NIC))
    allocs: list[DeviceAllocation] = []
    agent = build_agent(
        host, api, NODE, resync_s=3600.0, allocations_poll_s=0.05, pod_resources=lambda: list(allocs)
    ).start()
    try:
        assert _until(lambda: _enabled(api))
        rn = f"intel.com/{names.pcidevice_name(NODE, NIC)}"
        allocs.append(DeviceAllocation("vms", "virt-launcher-x", "compute", rn, NIC))

        def allocated() -> object:
            c = api.peek("pcideviceclaims", names.pcidevice_name(NODE, NIC))
            return (c or {}).get("status", {}).get("allocatedTo")

        assert _until(lambda: allocated() == [{"pod": "vms/virt-launcher-x", "container": "compute"}])
        allocs.clear()
        assert _until(lambda: allocated() == []), agent.runner.stats
    finally:
        agent.stop()
