"""Observe mode on a simulated host: devices are discovered and published, claims are refused with a reason, and
not one write reaches the host (sysfs attribute, device-node owner, module load) — none is even attempted."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

import apiclient
from nodeagent.errors import SysfsError
from nodeagent.host.binding import BindingRecord, Outcome, SysfsWrite
from nodeagent.host.guard import HostWriteGuard
from nodeagent.settings import LABEL_OBSERVE_ONLY, AgentSettings
from nodeagent.wiring import Agent
from policy import names
from policy.objects import FINALIZER_AGENT
from tests.support.agent_env import build_agent, kubevirt_cr, pci_claim, usb_claim
from tests.support.fake_kube import FakeKube
from tests.support.simhost import SimHost

NODE = "node1"
NIC, GPU = "0000:00:02.0", "0000:00:04.0"
XHCI = "0000:00:14.0"
NS = "harvester-system"
USB = names.usbdevice_name(NODE, "0951", "1666", 1, 4)


@pytest.fixture
def host(tmp_path: Path) -> SimHost:
    h = SimHost(tmp_path)
    h.pci(NIC, native="e1000e", group=1)
    h.pci(GPU, native="nouveau", group=3, vendor="10de", device="1eb8", cls="030200")
    h.pci(XHCI, native="xhci_hcd", group=7, cls="0c0330")
    h.tree.usb("1-2", vendor="0951", product="1666", devnum=4, controller=XHCI, serial="ABC")
    return h


@pytest.fixture
def api() -> FakeKube:
    k = FakeKube()
    k.put(apiclient.NODES, {"metadata": {"name": NODE}})
    k.put(apiclient.KUBEVIRTS, kubevirt_cr(), namespace=NS)
    return k


@pytest.fixture
def owned() -> list[tuple[str, int, int]]:
    return []


def _agent(host: SimHost, api: FakeKube, owned: list[tuple[str, int, int]], **kw: Any) -> Agent:
    return build_agent(host, api, NODE, chown=lambda p, u, g: owned.append((p, u, g)), **kw)


def _label(api: FakeKube, value: str | None) -> None:
    node = api.peek("nodes", NODE)
    assert node is not None
    labels = dict(node["metadata"].get("labels") or {})
    if value is None:
        labels.pop(LABEL_OBSERVE_ONLY, None)
    else:
        labels[LABEL_OBSERVE_ONLY] = value
    api.put(apiclient.NODES, {"metadata": {"name": NODE, "labels": labels}})


def _cond(obj: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    assert obj is not None
    return next(c for c in obj["status"]["conditions"] if c["type"] == type_)


def _assert_host_untouched(host: SimHost, agent: Agent, owned: list[tuple[str, int, int]]) -> None:
    assert host.sim.writes == []
    assert host.sim.modprobes == []
    assert owned == []
    assert agent.host_writes.attempts() == 0
    assert host.sim.driver(NIC) == "e1000e" and host.sim.driver(GPU) == "nouveau"


def test_observe_mode_publishes_devices_refuses_claims_and_writes_nothing_to_the_host(
    host: SimHost, api: FakeKube, owned: list[tuple[str, int, int]]
) -> None:
    agent = _agent(host, api, owned, observe_only=True)
    agent.node_pass()
    api.put(apiclient.PCIDEVICECLAIMS, pci_claim(NODE, NIC))
    api.put(apiclient.USBDEVICECLAIMS, usb_claim(USB))
    for _ in range(3):
        agent.node_pass()
    _assert_host_untouched(host, agent, owned)

    devices = api.objects("pcidevices")
    assert {d["metadata"]["name"] for d in devices} >= {names.pcidevice_name(NODE, a) for a in (NIC, GPU, XHCI)}
    assert all(d["status"]["observeOnly"] is True for d in devices)
    usb = api.peek("usbdevices", USB)
    assert usb is not None and usb["status"]["observeOnly"] is True and usb["status"]["enabled"] is False

    claim = api.peek("pcideviceclaims", names.pcidevice_name(NODE, NIC))
    bound = _cond(claim, "Bound")
    assert (bound["status"], bound["reason"]) == ("False", "ObserveOnly")
    assert claim is not None and not claim["status"].get("passthroughEnabled")
    assert FINALIZER_AGENT not in (claim["metadata"].get("finalizers") or [])
    ready = _cond(api.peek("usbdeviceclaims", USB), "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "ObserveOnly")
    reasons = [e["reason"] for e in api.objects("events") if e["involvedObject"]["kind"].endswith("Claim")]
    assert reasons.count("ObserveOnly") == 2  # one Event per claim, not one per pass
    permitted = api.peek("kubevirts", "kubevirt", NS)["spec"]["configuration"]["permittedHostDevices"]  # type: ignore[index]
    assert not permitted.get("pciHostDevices") and not permitted.get("usb")

    before = len(api.writes)
    agent.node_pass()
    assert api.writes[before:] == []  # an idle observing agent makes no API writes either
    metrics = generate_latest(agent.registry).decode()
    assert 'pcidevices_agent_host_writes{kind="sysfs",result="written"} 0.0' in metrics
    assert 'pcidevices_agent_host_writes{kind="sysfs",result="refused"} 0.0' in metrics
    assert "pcidevices_agent_observe_only 1.0" in metrics


def test_the_node_label_switches_observe_mode_on_and_off(
    host: SimHost, api: FakeKube, owned: list[tuple[str, int, int]]
) -> None:
    _label(api, "true")
    agent = _agent(host, api, owned)
    api.put(apiclient.PCIDEVICECLAIMS, pci_claim(NODE, NIC))
    agent.node_pass()
    agent.node_pass()
    _assert_host_untouched(host, agent, owned)
    assert _cond(api.peek("pcideviceclaims", names.pcidevice_name(NODE, NIC)), "Bound")["reason"] == "ObserveOnly"

    _label(api, None)
    agent.node_pass()
    assert host.sim.driver(NIC) == "vfio-pci"
    claim = api.peek("pcideviceclaims", names.pcidevice_name(NODE, NIC))
    assert _cond(claim, "Bound")["status"] == "True"
    agent.node_pass()
    device = api.peek("pcidevices", names.pcidevice_name(NODE, NIC))
    assert device is not None and "observeOnly" not in device["status"]


def test_a_claim_deleted_in_observe_mode_keeps_its_bound_device_and_finalizer(
    host: SimHost, api: FakeKube, owned: list[tuple[str, int, int]]
) -> None:
    agent = _agent(host, api, owned)
    api.put(apiclient.PCIDEVICECLAIMS, pci_claim(NODE, NIC))
    agent.node_pass()
    agent.node_pass()
    assert host.sim.driver(NIC) == "vfio-pci"
    writes = list(host.sim.writes)
    _label(api, "true")
    api.remove(apiclient.PCIDEVICECLAIMS, names.pcidevice_name(NODE, NIC))
    agent.node_pass()
    agent.node_pass()
    assert host.sim.writes == writes and host.sim.driver(NIC) == "vfio-pci"
    claim = api.peek("pcideviceclaims", names.pcidevice_name(NODE, NIC))
    assert claim is not None and FINALIZER_AGENT in claim["metadata"]["finalizers"]
    assert _cond(claim, "Bound")["reason"] == "ObserveOnly"

    _label(api, "false")
    agent.node_pass()
    assert api.peek("pcideviceclaims", names.pcidevice_name(NODE, NIC)) is None
    assert host.sim.driver(NIC) == "e1000e"


def test_a_claim_deleted_in_observe_mode_before_any_bind_goes_at_once(
    host: SimHost, api: FakeKube, owned: list[tuple[str, int, int]]
) -> None:
    claim = pci_claim(NODE, NIC)
    claim["metadata"]["finalizers"] = [FINALIZER_AGENT]
    api.put(apiclient.PCIDEVICECLAIMS, claim)
    api.remove(apiclient.PCIDEVICECLAIMS, names.pcidevice_name(NODE, NIC))
    agent = _agent(host, api, owned, observe_only=True)
    agent.node_pass()
    assert api.peek("pcideviceclaims", names.pcidevice_name(NODE, NIC)) is None
    _assert_host_untouched(host, agent, owned)


def test_the_guard_refuses_a_write_that_gets_past_the_reconcilers(
    host: SimHost, api: FakeKube, owned: list[tuple[str, int, int]]
) -> None:
    agent = _agent(host, api, owned, observe_only=True)
    agent.node_pass()
    result = agent.binder.bind(BindingRecord(NIC, "e1000e"))
    assert result.outcome != Outcome.BOUND and "observe mode: refused" in result.message
    with pytest.raises(SysfsError) as caught:
        agent.binder.apply(NIC, [SysfsWrite(f"/sys/bus/pci/devices/{NIC}/driver_override", "vfio-pci")])
    assert caught.value.errno == errno.EROFS
    assert host.sim.writes == [] and host.sim.driver(NIC) == "e1000e"
    assert sum(n for (_, result), n in agent.host_writes.counts.items() if result == "refused") >= 1
    assert sum(n for (_, result), n in agent.host_writes.counts.items() if result == "written") == 0


def test_the_guard_counts_writes_outside_observe_mode() -> None:
    observing = [False]
    guard = HostWriteGuard(lambda: observing[0])
    guard.check("sysfs", "/sys/bus/pci/drivers/vfio-pci/bind")
    observing[0] = True
    with pytest.raises(SysfsError):
        guard.check("chown", "/dev/bus/usb/001/004")
    assert guard.counts[("sysfs", "written")] == 1 and guard.counts[("chown", "refused")] == 1
    assert guard.attempts() == 2


@pytest.mark.parametrize(
    ("value", "expected"), [("true", True), ("TRUE", True), ("1", True), ("false", False), ("", False)]
)
def test_observe_only_setting_from_the_environment(value: str, expected: bool) -> None:
    assert AgentSettings.from_env({"NODE_NAME": NODE, "OBSERVE_ONLY": value}).observe_only is expected


def test_an_unknown_observe_only_value_is_refused() -> None:
    with pytest.raises(ValueError, match="OBSERVE_ONLY"):
        AgentSettings.from_env({"NODE_NAME": NODE, "OBSERVE_ONLY": "maybe"})
