"""The offering gate and the allocation audit (issue 21) on a simulated host against the in-memory API: a name waited
for by someone else is not offered until nothing foreign asks for it; the kubelet's allocations are checked against
what the webhook admitted."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

import apiclient
from nodeagent import wiring
from nodeagent.idsdb import NamesDatabases
from nodeagent.reconcile import allocations
from nodeagent.reconcile.cycle import HELD_RECHECK_S
from nodeagent.settings import AgentSettings
from nodeagent.wiring import Agent
from policy import names
from policy.names import ADOPTED_FROM, ANNOTATION_ADOPTED
from tests.support import vms
from tests.support.agent_env import NOW, build_agent, kubevirt_cr, pci_claim, usb_claim
from tests.support.fake_kube import FakeKube
from tests.support.fake_kubelet import FakeKubelet, PodDevices
from tests.support.simhost import SimHost

NODE = "node1"
NIC, XHCI = "0000:00:02.0", "0000:00:14.0"
NS = "harvester-system"
NIC_NAME = names.pcidevice_name(NODE, NIC)
RN = f"intel.com/{NIC_NAME}"
POOLED = "intel.com/82599ES_10GIGABIT_SFI_SFP_NETWORK_CONNECTION"
GATE_KINDS = ("pods", "virtualmachines", "virtualmachineinstances", "virtualmachinepools")


@pytest.fixture
def host(tmp_path: Path) -> SimHost:
    h = SimHost(tmp_path)
    h.pci(NIC, native="e1000e", group=1)
    return h


@pytest.fixture
def api() -> FakeKube:
    k = FakeKube()
    k.put(apiclient.NODES, {"metadata": {"name": NODE}})
    k.put(apiclient.KUBEVIRTS, kubevirt_cr(), namespace=NS)
    return k


def _agent(host: SimHost, api: FakeKube, **kw: Any) -> Agent:
    return build_agent(host, api, NODE, **kw)


def _put(api: FakeKube, obj: dict[str, Any]) -> None:
    res = {
        "Pod": apiclient.PODS,
        "VirtualMachine": apiclient.VIRTUALMACHINES,
        "VirtualMachineInstance": apiclient.VIRTUALMACHINEINSTANCES,
        "VirtualMachinePool": apiclient.VIRTUALMACHINEPOOLS,
    }[obj["kind"]]
    api.put(res, obj, namespace=obj["metadata"]["namespace"])


def _claim(api: FakeKube, plural: str = "pcideviceclaims", name: str = NIC_NAME) -> dict[str, Any]:
    obj = api.peek(plural, name)
    assert obj is not None
    return obj


def _cond(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in (obj.get("status") or {}).get("conditions", []) if c["type"] == type_), None)


def _permitted(api: FakeKube, key: str = "pciHostDevices") -> list[str]:
    cr = api.peek("kubevirts", "kubevirt", NS)
    assert cr is not None
    return [e["resourceName"] for e in cr["spec"]["configuration"]["permittedHostDevices"].get(key) or []]


def _events(api: FakeKube, reason: str) -> list[dict[str, Any]]:
    return [e for e in api.objects("events") if e["reason"] == reason]


def _device_resource(api: FakeKube) -> str:
    obj = api.peek("pcidevices", NIC_NAME)
    assert obj is not None
    return str(obj["status"]["resourceName"])


def _lists(api: FakeKube, since: int) -> set[str]:
    return {c.plural for c in api.calls[since:] if c.verb == "list"}


def _sneaky_pod(resource: str = RN) -> dict[str, Any]:
    return vms.pod("sneaky", "ns-m", (resource,))


def _domain_resources_vm() -> dict[str, Any]:
    vm = vms.recorded(vms.vm("quiet", "ns-m"), "mallory")
    vm["spec"]["template"]["spec"]["domain"]["resources"] = {"limits": {RN: "1"}}
    return vm


@pytest.mark.parametrize(
    ("foreign", "named"),
    [
        (_sneaky_pod(), "pod ns-m/sneaky"),
        (vms.recorded(vms.vm("theirs", "ns-m", [("nic", RN)]), "mallory"), "virtualmachine ns-m/theirs"),
        (vms.vmi("direct", "ns-m", gpus=[("gpu", RN)]), "virtualmachineinstance ns-m/direct"),
        (vms.pool("many", "ns-m", [("nic", RN)]), "virtualmachinepool ns-m/many"),
        (_domain_resources_vm(), "virtualmachine ns-m/quiet"),
    ],
    ids=["a plain pod", "another requester's vm", "an unrecorded vmi", "a pool", "a vm asking through resources"],
)
def test_something_foreign_waiting_for_the_name_keeps_the_device_from_being_offered(
    host: SimHost, api: FakeKube, foreign: dict[str, Any], named: str
) -> None:
    _put(api, foreign)
    api.put(apiclient.PCIDEVICECLAIMS, pci_claim(NODE, NIC))
    agent = _agent(host, api)
    agent.node_pass()
    claim = _claim(api)
    assert host.sim.driver(NIC) == "vfio-pci"  # binding went ahead; only the offer waits
    assert _cond(claim, "Bound")["status"] == "True"  # type: ignore[index]
    offered = _cond(claim, "Offered")
    assert offered is not None and (offered["status"], offered["reason"]) == ("False", "ForeignRequests")
    assert named in offered["message"] and "delete them or remove the device from them" in offered["message"]
    assert not claim["status"].get("passthroughEnabled")
    assert _device_resource(api) == POOLED  # the per-device name was never written
    assert not [c for c in api.writes if c.plural == "pcidevices" and RN in str(c.body)]
    assert RN not in _permitted(api)
    assert agent.node_pass.report.enabled_pci == () and agent.node_pass.report.held == (NIC_NAME,)
    (event,) = _events(api, "ForeignRequests")
    assert event["type"] == "Warning" and named in event["message"]
    agent.node_pass()
    assert len(_events(api, "ForeignRequests")) == 1  # one Event, not one per pass


def test_once_the_foreign_pod_is_gone_the_device_is_offered(host: SimHost, api: FakeKube) -> None:
    _put(api, _sneaky_pod())
    api.put(apiclient.PCIDEVICECLAIMS, pci_claim(NODE, NIC))
    agent = _agent(host, api)
    agent.node_pass()
    api.remove(apiclient.PODS, "sneaky", namespace="ns-m")
    agent.node_pass()
    claim = _claim(api)
    offered = _cond(claim, "Offered")
    assert offered is not None and (offered["status"], offered["reason"]) == ("True", "Offered")
    assert RN in offered["message"]
    assert claim["status"]["passthroughEnabled"] is True
    assert _device_resource(api) == RN
    assert RN in _permitted(api)
    assert agent.node_pass.report.enabled_pci == (NIC_NAME,) and agent.node_pass.report.held == ()


def test_the_owners_own_recorded_vm_and_its_launcher_pod_do_not_block(host: SimHost, api: FakeKube) -> None:
    vm = vms.recorded(vms.vm("mine", "ns-a", [("nic", RN)]), "alice")
    vmi = vms.recorded(vms.vmi("mine", "ns-a", [("nic", RN)], owner=vm), "alice")
    for obj in (vm, vmi, vms.pod("virt-launcher-mine-x", "ns-a", (RN,), owner=vmi)):
        _put(api, obj)
    api.put(apiclient.PCIDEVICECLAIMS, pci_claim(NODE, NIC))
    _agent(host, api).node_pass()
    claim = _claim(api)
    assert claim["status"]["passthroughEnabled"] is True
    assert _cond(claim, "Offered")["status"] == "True"  # type: ignore[index]
    assert RN in _permitted(api)
    assert _events(api, "ForeignRequests") == []


def test_a_pooled_name_another_nodes_claim_offers_is_not_gated(host: SimHost, api: FakeKube) -> None:
    _put(api, vms.recorded(vms.vm("tenant", "ns-b", [("nic", POOLED)]), "bob"))  # bob's pooled VM
    other = "node2-000000020"
    api.put(
        apiclient.PCIDEVICES,
        {"metadata": {"name": other, "labels": {names.LABEL_NODENAME: "node2"}}, "status": {"resourceName": POOLED}},
    )
    node2_claim = pci_claim("node2", NIC, owner="bob")
    node2_claim["status"] = {"passthroughEnabled": True}
    api.put(apiclient.PCIDEVICECLAIMS, node2_claim)
    api.put(apiclient.PCIDEVICECLAIMS, pci_claim(NODE, NIC))
    _agent(host, api, resource_names="pooled").node_pass()
    claim = _claim(api)
    assert claim["status"]["passthroughEnabled"] is True
    assert _cond(claim, "Offered")["status"] == "True"  # type: ignore[index]


def test_a_pooled_name_offered_nowhere_is_gated(host: SimHost, api: FakeKube) -> None:
    _put(api, _sneaky_pod(POOLED))
    api.put(apiclient.PCIDEVICECLAIMS, pci_claim(NODE, NIC))
    _agent(host, api, resource_names="pooled").node_pass()
    offered = _cond(_claim(api), "Offered")
    assert offered is not None and offered["reason"] == "ForeignRequests" and POOLED in offered["message"]
    assert POOLED not in _permitted(api)


def test_an_idle_agent_lists_nothing_the_gate_reads_and_writes_nothing(host: SimHost, api: FakeKube) -> None:
    api.put(apiclient.PCIDEVICECLAIMS, pci_claim(NODE, NIC))
    agent = _agent(host, api)
    agent.node_pass()
    agent.node_pass()
    calls, writes = len(api.calls), len(api.writes)
    for _ in range(3):
        agent.node_pass()
    assert api.writes[writes:] == []
    assert not _lists(api, calls) & set(GATE_KINDS)
    assert agent.runner.step() == agent.settings.resync_s


def test_a_held_claim_is_looked_at_again_soon(host: SimHost, api: FakeKube) -> None:
    _put(api, _sneaky_pod())
    api.put(apiclient.PCIDEVICECLAIMS, pci_claim(NODE, NIC))
    agent = _agent(host, api)
    assert agent.runner.step() == HELD_RECHECK_S
    calls = len(api.calls)
    agent.runner.step()
    assert set(GATE_KINDS) <= _lists(api, calls)  # a held claim is gated on every pass
    assert len(_events(api, "ForeignRequests")) == 1


def test_adopted_and_upgraded_claims_count_as_offered(host: SimHost, api: FakeKube) -> None:
    api.put(apiclient.PCIDEVICECLAIMS, pci_claim(NODE, NIC))
    agent = _agent(host, api)
    agent.node_pass()
    # As an agent before the gate left it: enabled, with the per-device name, but no Offered condition.
    claim = _claim(api)
    claim["status"]["conditions"] = [c for c in claim["status"]["conditions"] if c["type"] != "Offered"]
    api.put(apiclient.PCIDEVICECLAIMS, claim)
    _put(api, _sneaky_pod())
    calls = len(api.calls)
    agent.node_pass()
    assert _cond(_claim(api), "Offered")["status"] == "True"  # type: ignore[index]
    assert "pods" not in _lists(api, calls)
    assert RN in _permitted(api)

    adopted = pci_claim(NODE, NIC)
    adopted["metadata"]["annotations"][ANNOTATION_ADOPTED] = ADOPTED_FROM
    api.remove(apiclient.PCIDEVICECLAIMS, NIC_NAME)
    agent.node_pass()
    _put(api, _sneaky_pod(POOLED))
    api.put(apiclient.PCIDEVICECLAIMS, adopted)
    agent.node_pass()
    assert _claim(api)["status"]["passthroughEnabled"] is True
    assert _device_resource(api) == POOLED and POOLED in _permitted(api)


def test_a_kind_the_agent_may_not_list_holds_the_offer(host: SimHost, api: FakeKube) -> None:
    api.fail_next("list", "pods", apiclient.KubeError("403: forbidden", status=403))
    api.put(apiclient.PCIDEVICECLAIMS, pci_claim(NODE, NIC))
    agent = _agent(host, api)
    agent.node_pass()
    offered = _cond(_claim(api), "Offered")
    assert offered is not None and (offered["status"], offered["reason"]) == ("False", "RequestsUnreadable")
    agent.node_pass()
    assert _claim(api)["status"]["passthroughEnabled"] is True


def test_a_usb_claim_is_gated_the_same_way(host: SimHost, api: FakeKube) -> None:
    host.pci(XHCI, native="xhci_hcd", group=7, cls="0c0330")
    host.tree.usb("1-2", vendor="0951", product="1666", devnum=4, controller=XHCI)
    usb_name = names.usbdevice_name(NODE, "0951", "1666", 1, 4)
    usb_rn = names.usb_resource_name(usb_name)
    _put(api, _sneaky_pod(usb_rn))
    agent = _agent(host, api)
    agent.node_pass()
    api.put(apiclient.USBDEVICECLAIMS, usb_claim(usb_name))
    agent.node_pass()
    claim = _claim(api, "usbdeviceclaims", usb_name)
    offered = _cond(claim, "Offered")
    assert offered is not None and offered["reason"] == "ForeignRequests" and "pod ns-m/sneaky" in offered["message"]
    assert _cond(claim, "Ready")["status"] == "False"  # type: ignore[index]
    assert claim["status"]["nodeName"] == NODE  # the UI's fields are written all the same
    assert api.peek("usbdevices", usb_name)["status"]["enabled"] is False  # type: ignore[index]
    assert _permitted(api, "usb") == [] and agent.node_pass.report.enabled_usb == ()
    api.remove(apiclient.PODS, "sneaky", namespace="ns-m")
    agent.node_pass()
    claim = _claim(api, "usbdeviceclaims", usb_name)
    assert _cond(claim, "Offered")["status"] == "True" and _cond(claim, "Ready")["status"] == "True"  # type: ignore[index]
    assert api.peek("usbdevices", usb_name)["status"]["enabled"] is True  # type: ignore[index]
    assert _permitted(api, "usb") == [usb_rn]
    writes = len(api.writes)
    agent.node_pass()
    agent.node_pass()
    assert api.writes[writes:] == []


def test_the_device_plugin_starts_only_once_the_gate_lets_the_name_out(tmp_path: Path) -> None:
    host = SimHost(tmp_path)
    host.pci(NIC, native="e1000e", group=1)
    api = FakeKube()
    api.put(apiclient.NODES, {"metadata": {"name": NODE}})
    api.put(apiclient.KUBEVIRTS, kubevirt_cr(), namespace=NS)
    _put(api, _sneaky_pod())
    with FakeKubelet() as kubelet:
        settings = AgentSettings(node_name=NODE, udev=False, kubelet_dir=kubelet.base, resync_s=3600.0)
        agent = wiring.build(
            settings,
            api,
            root=host.root(),
            db=NamesDatabases.load(None, None),
            load_modules=host.sim.load_modules,
            serve_health=False,
            now=lambda: NOW,
        ).start()
        try:
            api.put(apiclient.PCIDEVICECLAIMS, pci_claim(NODE, NIC))
            deadline = time.monotonic() + 10
            while _cond(_claim(api), "Offered") is None and time.monotonic() < deadline:
                time.sleep(0.02)
            assert _cond(_claim(api), "Offered")["status"] == "False"  # type: ignore[index]
            time.sleep(0.3)
            assert kubelet.registered() == []
            api.remove(apiclient.PODS, "sneaky", namespace="ns-m")
            agent.runner.nudge()  # what the 30 s re-check does
            assert kubelet.registration(RN, timeout=10).resource_name == RN
        finally:
            agent.stop(timeout=2)


# -- the allocation audit -----------------------------------------------------------------------------------------


def _unexpected_metric(agent: Agent, resource: str = RN) -> float | None:
    return agent.registry.get_sample_value("pcidevices_agent_unexpected_allocations", {"resource": resource})


def test_an_allocation_to_a_plain_pod_raises_a_condition_an_event_and_the_metric(
    host: SimHost, api: FakeKube
) -> None:
    with FakeKubelet() as kubelet:
        agent = _agent(host, api, pod_resources=allocations.socket_lister(kubelet.pod_resources_socket))
        api.put(apiclient.PCIDEVICECLAIMS, pci_claim(NODE, NIC))
        agent.node_pass()
        assert _cond(_claim(api), "Allocation") is None  # nothing allocated: no condition
        assert _unexpected_metric(agent) == 0.0
        _put(api, vms.pod("sneaky", "ns-m", (RN,)))
        kubelet.set_pod_resources([PodDevices("ns-m", "sneaky", "main", RN, (NIC,))])
        agent.node_pass()
        allocation = _cond(_claim(api), "Allocation")
        assert allocation is not None and (allocation["status"], allocation["reason"]) == ("False", "Unexpected")
        assert "pod ns-m/sneaky" in allocation["message"]
        (event,) = _events(api, "UnexpectedAllocation")
        assert event["type"] == "Warning" and "ns-m/sneaky" in event["message"]
        assert _unexpected_metric(agent) == 1.0
        agent.node_pass()
        assert len(_events(api, "UnexpectedAllocation")) == 1  # once per offender

        vmi = vms.recorded(vms.vmi("mine", "ns-a", [("nic", RN)]), "alice")
        _put(api, vmi)
        _put(api, vms.pod("virt-launcher-mine-x", "ns-a", (RN,), owner=vmi))
        kubelet.set_pod_resources([PodDevices("ns-a", "virt-launcher-mine-x", "compute", RN, (NIC,))])
        agent.node_pass()
        allocation = _cond(_claim(api), "Allocation")
        assert allocation is not None and (allocation["status"], allocation["reason"]) == ("True", "Expected")
        assert _claim(api)["status"]["allocatedTo"] == [
            {"pod": "ns-a/virt-launcher-mine-x", "container": "compute", "vmi": "ns-a/mine"}
        ]
        assert _unexpected_metric(agent) == 0.0
        writes = len(api.writes)
        agent.node_pass()
        assert api.writes[writes:] == []
        kubelet.set_pod_resources([])
        agent.node_pass()
        assert _cond(_claim(api), "Allocation") is None


def test_a_launcher_pod_of_a_vmi_the_webhook_never_admitted_is_unexpected(host: SimHost, api: FakeKube) -> None:
    allocs: list[Any] = []
    agent = _agent(host, api, pod_resources=lambda: allocs)
    api.put(apiclient.PCIDEVICECLAIMS, pci_claim(NODE, NIC))
    agent.node_pass()
    vmi = vms.vmi("unjudged", "ns-m", [("nic", RN)])  # no admission record
    _put(api, vmi)
    _put(api, vms.pod("virt-launcher-unjudged-x", "ns-m", (RN,), owner=vmi))
    from nodeagent.deviceplugin.podresources import DeviceAllocation

    allocs.append(DeviceAllocation("ns-m", "virt-launcher-unjudged-x", "compute", RN, NIC))
    agent.node_pass()
    allocation = _cond(_claim(api), "Allocation")
    assert allocation is not None and allocation["reason"] == "Unexpected"
    assert "ns-m/virt-launcher-unjudged-x" in allocation["message"]


def test_a_claim_offered_under_one_name_is_gated_again_for_a_new_one(host: SimHost, api: FakeKube) -> None:
    api.put(apiclient.PCIDEVICECLAIMS, pci_claim(NODE, NIC))
    _agent(host, api).node_pass()
    assert _cond(_claim(api), "Permitted") is not None
    _put(api, _sneaky_pod(POOLED))
    _agent(host, api, resource_names="pooled").node_pass()  # the cluster switched to pooled names
    claim = _claim(api)
    offered = _cond(claim, "Offered")
    assert offered is not None and offered["reason"] == "ForeignRequests" and POOLED in offered["message"]
    assert _cond(claim, "Permitted") is None and not claim["status"]["passthroughEnabled"]
    assert _device_resource(api) == POOLED and POOLED not in _permitted(api)
    assert RN not in _permitted(api)  # the old name is withdrawn with the offer
