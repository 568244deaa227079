"""The agent's pure decisions around offering a name (issue 21): what the cluster asks for, who is foreign to a claim's
owner, when the gate runs, the Offered and Allocation conditions, and which unexpected holders are new."""

from __future__ import annotations

from typing import Any

import pytest

from nodeagent.reconcile import plan
from policy import hostdevices, names
from tests.support import vms

RN = "intel.com/node1-000000040"
OTHER = "nvidia.com/node1-000000050"
POOLED = "intel.com/82599ES_10GIGABIT_SFI_SFP_NETWORK_CONNECTION"


def _launcher(vmi: dict[str, Any], name: str, resources: tuple[str, ...] = (RN,), **kw: Any) -> dict[str, Any]:
    return vms.pod(name, vmi["metadata"]["namespace"], resources, owner=vmi, **kw)


# -- what the cluster asks for ------------------------------------------------------------------------------------


def test_every_container_kind_and_pod_level_resources_are_read() -> None:
    pod = vms.pod("p", "ns-m")
    pod["spec"]["initContainers"] = [{"name": "i", "resources": {"limits": {RN: "1"}}}]
    pod["spec"]["ephemeralContainers"] = [{"name": "e", "resources": {"requests": {OTHER: "1"}}}]
    pod["spec"]["resources"] = {"limits": {POOLED: "2"}}
    found = plan.build_requests([pod], [])
    assert set(found.by_name) >= {RN, OTHER, POOLED}
    assert found.by_name[RN] == (plan.Request("pod", "ns-m", "p"),)


def test_finished_and_deleting_pods_and_deleting_workloads_ask_for_nothing() -> None:
    done = vms.pod("done", "ns-m", (RN,))
    done["status"] = {"phase": "Succeeded"}
    failed = vms.pod("failed", "ns-m", (RN,))
    failed["status"] = {"phase": "Failed"}
    going = vms.pod("going", "ns-m", (RN,))
    going["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    vm = vms.vm("vm", "ns-m", [("nic", RN)])
    vm["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    pending = vms.pod("pending", "ns-m", (RN,))
    pending["status"] = {"phase": "Pending"}
    found = plan.build_requests([done, failed, going, pending], [vm])
    assert found.by_name[RN] == (plan.Request("pod", "ns-m", "pending"),)


@pytest.mark.parametrize(
    ("obj", "kind"),
    [
        (vms.vm("w", "ns-m", [("nic", RN)]), "virtualmachine"),
        (vms.vm("w", "ns-m", gpus=[("gpu", RN)]), "virtualmachine"),
        (vms.vmi("w", "ns-m", [("nic", RN)]), "virtualmachineinstance"),
        (vms.pool("w", "ns-m", [("nic", RN)]), "virtualmachinepool"),
        (vms.replicaset("w", "ns-m", gpus=[("gpu", RN)]), "virtualmachineinstancereplicaset"),
    ],
    ids=["vm hostDevices", "vm gpus", "vmi", "pool", "replica set"],
)
def test_every_workload_kind_names_its_devices(obj: dict[str, Any], kind: str) -> None:
    assert plan.build_requests([], [obj]).by_name[RN] == (plan.Request(kind, "ns-m", "w"),)


def test_domain_resources_name_a_device_too() -> None:
    vm = vms.vm("w", "ns-m")
    vm["spec"]["template"]["spec"]["domain"]["resources"] = {"limits": {RN: "1"}}
    assert plan.build_requests([], [vm]).by_name[RN] == (plan.Request("virtualmachine", "ns-m", "w"),)


def test_a_vm_names_the_devices_of_its_instancetype() -> None:
    it = vms.instancetype("big", "ns-m", [("nic", RN)])
    cluster_it = vms.instancetype("huge", "", gpus=[("gpu", OTHER)])
    vm = vms.recorded(vms.vm("w", "ns-m", instancetype=("VirtualMachineInstancetype", "big")), "mallory")
    vm2 = vms.vm("w2", "ns-m", instancetype=("virtualmachineclusterinstancetype", "huge"))
    found = plan.build_requests([], [vm, vm2], [it, cluster_it])
    assert found.by_name[RN] == (plan.Request("virtualmachine", "ns-m", "w", "mallory"),)
    assert found.by_name[OTHER] == (plan.Request("virtualmachine", "ns-m", "w2"),)


def test_a_recorded_vmi_is_indexed_by_uid_and_a_pods_own_annotation_is_not_a_record() -> None:
    vmi = vms.recorded(vms.vmi("v", "ns-a", [("nic", RN)]), "alice")
    pod = vms.recorded(vms.pod("plain", "ns-m", (RN,)), "alice")  # users may annotate pods as they like
    found = plan.build_requests([pod], [vmi])
    assert found.vmis == {vmi["metadata"]["uid"]: plan.RecordedVmi("ns-a", "alice", frozenset({RN}))}
    assert found.by_name[RN] == (
        plan.Request("pod", "ns-m", "plain"),
        plan.Request("virtualmachineinstance", "ns-a", "v", "alice"),
    )


def test_only_a_controller_reference_to_a_kubevirt_vmi_makes_a_launcher_pod() -> None:
    vmi = vms.vmi("v", "ns-a")
    pod = vms.pod("virt-launcher-v", "ns-a", owner=vmi)
    assert plan.launcher_uid(pod) == vmi["metadata"]["uid"]
    pod["metadata"]["ownerReferences"][0]["controller"] = False
    assert plan.launcher_uid(pod) == ""
    pod["metadata"]["ownerReferences"][0].update(controller=True, apiVersion="evil.io/v1")
    assert plan.launcher_uid(pod) == ""


# -- who is foreign to the claim's owner --------------------------------------------------------------------------

ALICE_VMI = vms.recorded(vms.vmi("alice-vm", "ns-a", [("nic", RN)]), "alice")
MALLORY_VMI = vms.recorded(vms.vmi("mallory-vm", "ns-m", [("nic", OTHER)]), "mallory")


@pytest.mark.parametrize(
    ("obj", "foreign"),
    [
        (vms.recorded(vms.vm("own", "ns-a", [("nic", RN)]), "alice"), False),
        (ALICE_VMI, False),
        (_launcher(ALICE_VMI, "virt-launcher-alice-vm-x"), False),
        (vms.recorded(vms.vm("theirs", "ns-m", [("nic", RN)]), "mallory"), True),
        (vms.vm("unrecorded", "ns-a", [("nic", RN)]), True),
        (vms.pod("plain", "ns-a", (RN,)), True),
        (_launcher(MALLORY_VMI, "virt-launcher-mallory-vm-x"), True),
        (vms.recorded(vms.pod("annotated", "ns-a", (RN,)), "alice"), True),
    ],
    ids=[
        "the owner's recorded vm",
        "the owner's recorded vmi",
        "the launcher pod of the owner's vmi",
        "another requester's vm",
        "a vm the webhook never judged",
        "a plain pod",
        "the launcher pod of another requester's vmi",
        "a pod that annotates itself with the owner's record",
    ],
)
def test_what_is_foreign_to_the_owner(obj: dict[str, Any], foreign: bool) -> None:
    pods = [obj] if obj["kind"] == "Pod" else []
    found = plan.build_requests(pods, [o for o in (obj, ALICE_VMI, MALLORY_VMI) if o["kind"] != "Pod"])
    requests = [r for r in found.by_name[RN] if r.name == obj["metadata"]["name"]]
    assert bool(plan.foreign_requests(RN, requests, "alice", found.vmis)) is foreign


def test_a_pod_that_names_the_owners_vmi_from_another_namespace_or_for_another_device_is_foreign() -> None:
    vmi = vms.recorded(vms.vmi("v", "ns-a", [("nic", OTHER)]), "alice")
    found = plan.build_requests([], [vmi])
    same_ns = plan.Request("pod", "ns-a", "p", None, vmi["metadata"]["uid"])
    other_ns = plan.Request("pod", "ns-m", "p", None, vmi["metadata"]["uid"])
    assert plan.foreign_requests(OTHER, [same_ns], "alice", found.vmis) == ()
    assert plan.foreign_requests(OTHER, [other_ns], "alice", found.vmis) == (other_ns,)
    assert plan.foreign_requests(RN, [same_ns], "alice", found.vmis) == (same_ns,)  # the VMI does not name RN


# -- the Offered condition ----------------------------------------------------------------------------------------


def test_nothing_foreign_offers_the_name() -> None:
    found = plan.build_requests([], [vms.recorded(vms.vm("own", "ns-a", [("nic", RN)]), "alice")])
    assert plan.offer_condition(RN, "alice", found) == plan.Condition("Offered", True, "Offered", f"offered as {RN}")


def test_a_foreign_request_holds_the_offer_with_the_objects_and_the_fix() -> None:
    found = plan.build_requests([vms.pod("sneaky", "ns-m", (RN,))], [vms.vmi("v", "ns-m", [("nic", RN)])])
    c = plan.offer_condition(RN, "alice", found)
    assert (c.type, c.status, c.reason) == ("Offered", False, "ForeignRequests")
    assert "pod ns-m/sneaky, virtualmachineinstance ns-m/v" in c.message
    assert RN in c.message and "alice" in c.message
    assert "delete them or remove the device from them" in c.message
    assert "the agent offers the device once none is left" in c.message


def test_a_long_list_of_foreign_objects_is_cut_after_five() -> None:
    found = plan.build_requests([vms.pod(f"p{i}", "ns-m", (RN,)) for i in range(8)], [])
    c = plan.offer_condition(RN, "alice", found)
    assert "pod ns-m/p0, pod ns-m/p1, pod ns-m/p2, pod ns-m/p3, pod ns-m/p4 and 3 more" in c.message
    assert "p5" not in c.message


def test_a_kind_the_agent_may_not_list_holds_every_offer() -> None:
    c = plan.offer_condition(RN, "alice", plan.ClusterRequests(unreadable=("pods",)))
    assert (c.status, c.reason) == (False, "RequestsUnreadable") and "pods" in c.message


# -- when the gate runs -------------------------------------------------------------------------------------------


def _status(offered: str | None = None, enabled: bool = False) -> dict[str, Any]:
    st: dict[str, Any] = {"passthroughEnabled": enabled} if enabled else {}
    if offered is not None:
        st["conditions"] = plan.set_conditions([], [plan.Condition("Offered", offered == "True", "x")], "t")
    return st


@pytest.mark.parametrize(
    ("status", "adopted", "on_device", "enabled", "offered"),
    [
        (_status(), False, False, False, False),
        (_status("True"), False, True, False, True),
        (_status("False"), False, True, False, False),
        (_status("True"), False, False, False, False),
        (_status(enabled=True), False, True, True, True),
        (_status(), True, False, False, True),
    ],
    ids=[
        "a new claim is gated",
        "an offered claim is not gated again",
        "a held claim is gated again",
        "an offered claim whose name changed is gated for the new one",
        "a claim an earlier agent enabled under the name counts as offered (upgrade)",
        "a claim the takeover adopted counts as offered",
    ],
)
def test_when_a_claim_was_already_offered(
    status: dict[str, Any], adopted: bool, on_device: bool, enabled: bool, offered: bool
) -> None:
    got = plan.already_offered(status, adopted=adopted, name_on_device=on_device, enabled_before=enabled)
    assert got is offered


def test_a_pooled_name_another_live_claim_offers_is_not_a_first_offer() -> None:
    def claim(name: str, **status: Any) -> dict[str, Any]:
        return {"metadata": {"name": name}, "status": status}

    on_node2 = claim("node2-000000040", passthroughEnabled=True)
    devices = {"node1-000000040": POOLED, "node2-000000040": POOLED}
    assert plan.offered_by_others(POOLED, "node1-000000040", [on_node2], devices)
    assert not plan.offered_by_others(POOLED, "node1-000000040", [claim("node2-000000040")], devices)
    going = claim("node2-000000040", passthroughEnabled=True)
    going["metadata"]["deletionTimestamp"] = "t"
    assert not plan.offered_by_others(POOLED, "node1-000000040", [going], devices)
    assert not plan.offered_by_others(POOLED, "node1-000000040", [claim("node1-000000040", passthroughEnabled=True)],
                                      devices)  # fmt: skip
    held = claim("node2-000000040", conditions=[{"type": "Offered", "status": "False"}])
    assert not plan.offered_by_others(POOLED, "node1-000000040", [held], devices)


# -- the allocation audit -----------------------------------------------------------------------------------------


def test_nothing_allocated_means_no_allocation_condition() -> None:
    assert plan.allocation_condition(RN, []) is None
    assert plan.allocation_condition(RN, [plan.Holding("ns-a/gone", None)]) is None


def test_admitted_launcher_pods_are_expected() -> None:
    c = plan.allocation_condition(RN, [plan.Holding("ns-a/virt-launcher-a", True)])
    assert c is not None and (c.type, c.status, c.reason) == ("Allocation", True, "Expected")
    assert "pod ns-a/virt-launcher-a" in c.message


def test_any_other_holder_is_unexpected_and_named() -> None:
    c = plan.allocation_condition(
        RN, [plan.Holding("ns-a/virt-launcher-a", True), plan.Holding("ns-m/sneaky", False)]
    )
    assert c is not None and (c.status, c.reason) == (False, "Unexpected")
    assert "pod ns-m/sneaky" in c.message and "virt-launcher-a" not in c.message and RN in c.message


def test_admitted_launcher_needs_the_uid_the_record_and_the_name() -> None:
    vmi = vms.recorded(vms.vmi("v", "ns-a", [("nic", RN)]), "bob")
    view = hostdevices.Workload.from_dict(vmi)
    uid = vmi["metadata"]["uid"]
    assert plan.admitted_launcher(view, uid, RN)
    assert not plan.admitted_launcher(view, "another-uid", RN)
    assert not plan.admitted_launcher(view, uid, OTHER)
    assert not plan.admitted_launcher(hostdevices.Workload.from_dict(vms.vmi("v", "ns-a", [("nic", RN)])), uid, RN)
    assert not plan.admitted_launcher(None, uid, RN)


def test_each_unexpected_holder_is_announced_once_and_not_again_after_a_restart() -> None:
    assert plan.new_offenders(("ns-m/a",), None, None) == ("ns-m/a",)
    assert plan.new_offenders(("ns-m/a", "ns-m/b"), {"ns-m/a"}, None) == ("ns-m/b",)
    bad = plan.allocation_condition(RN, [plan.Holding("ns-m/a", False)])
    assert bad is not None
    previous = plan.set_conditions([], [bad], "t")[0]
    assert plan.new_offenders(("ns-m/a", "ns-m/a-2"), None, previous) == ("ns-m/a-2",)


# -- names --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("node", ["node1", "n" * 70, "a-very-long-node-name.example.com"])
@pytest.mark.parametrize(
    ("vendor", "device"), [("Intel Corporation", "X"), ("NVIDIA Corporation", "TU104GL [Tesla T4]"), (None, None)]
)
def test_the_agents_per_device_name_is_the_one_policy_computes(
    node: str, vendor: str | None, device: str | None
) -> None:
    address = "0000:3b:00.0"
    pooled = names.pci_resource_name(vendor, device, "1eb8")
    got = plan.effective_resource_name(pooled, names.pcidevice_name(node, address), mode="perDevice")
    assert got == names.pci_device_resource_name(vendor, node, address)
