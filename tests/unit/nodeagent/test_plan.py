"""The agent's pure decisions: device-object diffs, resource names, conditions, node-side re-check, KubeVirt permits."""

from __future__ import annotations

from typing import Any

import pytest

from nodeagent.reconcile import plan
from policy import names

NODE = "node1"
OWNER = plan.node_owner_reference(NODE, "uid-1")


def _dev(name: str, **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {names.LABEL_NODENAME: NODE}, "ownerReferences": [OWNER]},
        "status": {
            "address": "0000:01:00.0",
            "kernelDriverInUse": "e1000e",
            "conditions": plan.set_conditions([], [plan.PRESENT], "t0"),
            **status,
        },
    }


def _plan(
    desired: dict[str, Any], existing: dict[str, Any], claimed: frozenset[str] = frozenset()
) -> list[plan.DeviceAction]:
    return plan.plan_devices(
        desired, existing, claimed, node=NODE, owner=OWNER, owned_keys=plan.PCI_STATUS_KEYS
    )


def test_matching_objects_plan_nothing() -> None:
    d = _dev("a")
    assert _plan({"a": d}, {"a": d}) == []


def test_a_new_device_is_created_with_the_node_owner() -> None:
    d = _dev("a")
    d["metadata"].pop("ownerReferences")
    (action,) = _plan({"a": d}, {})
    assert isinstance(action, plan.Create)
    assert action.obj["metadata"]["ownerReferences"] == [OWNER]


def test_a_changed_driver_is_patched_and_reported_as_a_driver_change() -> None:
    (action,) = _plan({"a": _dev("a", kernelDriverInUse="vfio-pci")}, {"a": _dev("a")})
    assert isinstance(action, plan.Patch)
    assert action.status == {"kernelDriverInUse": "vfio-pci"}
    assert action.driver_changed == ("e1000e", "vfio-pci")
    assert action.metadata is None


def test_status_keys_we_own_are_dropped_and_others_kept() -> None:
    have = _dev("a", numaNode=0, futureField=1)
    (action,) = _plan({"a": _dev("a")}, {"a": have})
    assert isinstance(action, plan.Patch)
    assert action.status == {"numaNode": None}


def test_conditions_set_by_others_are_kept_beside_present() -> None:
    foreign = {"type": "Healthy", "status": "True", "reason": "X", "message": "", "lastTransitionTime": "t"}
    have = _dev("a", conditions=[foreign])
    (action,) = _plan({"a": _dev("a")}, {"a": have})
    assert isinstance(action, plan.Patch) and action.status is not None
    assert [c["type"] for c in action.status["conditions"]] == ["Healthy", "Present"]


def test_a_missing_nodename_label_is_added_by_merge_without_touching_other_labels() -> None:
    have = _dev("a")
    have["metadata"]["labels"] = {"team": "gpu"}
    (action,) = _plan({"a": _dev("a")}, {"a": have})
    assert isinstance(action, plan.Patch)
    assert action.metadata == {"labels": {names.LABEL_NODENAME: NODE}}


def test_a_foreign_owner_reference_is_kept_when_ours_is_added() -> None:
    have = _dev("a")
    other = {"apiVersion": "x/v1", "kind": "Thing", "name": "t", "uid": "u"}
    have["metadata"]["ownerReferences"] = [other]
    have["metadata"]["resourceVersion"] = "7"
    (action,) = _plan({"a": _dev("a")}, {"a": have})
    assert isinstance(action, plan.Patch) and action.metadata is not None
    assert action.metadata["ownerReferences"] == [other, OWNER]
    assert action.metadata["resourceVersion"] == "7"


def test_a_gone_unclaimed_device_is_deleted() -> None:
    assert _plan({}, {"a": _dev("a")}) == [plan.Delete("a")]


def test_a_gone_claimed_device_is_marked_absent_once() -> None:
    (action,) = _plan({}, {"a": _dev("a")}, {"a"})
    assert isinstance(action, plan.Patch) and action.became_absent and action.status is not None
    assert action.status["absent"] is True
    (present,) = action.status["conditions"]
    assert (present["type"], present["status"], present["reason"]) == ("Present", "False", "Vanished")
    assert _plan({}, {"a": _dev("a", absent=True, conditions=action.status["conditions"])}, {"a"}) == []


def test_a_gone_claimed_usb_device_is_orphaned_as_upstream_marks_it() -> None:
    (action,) = plan.plan_devices(
        {}, {"u": _dev("u")}, {"u"}, node=NODE, owner=OWNER, owned_keys=plan.USB_STATUS_KEYS, usb=True
    )
    assert isinstance(action, plan.Patch) and action.status is not None
    assert action.status["status"] == "orphaned" and action.status["absent"] is True


def test_a_device_that_returns_clears_absent() -> None:
    (action,) = _plan({"a": _dev("a")}, {"a": _dev("a", absent=True)}, {"a"})
    assert isinstance(action, plan.Patch) and action.status == {"absent": None}


@pytest.mark.parametrize(
    ("mode", "disable", "adopted", "expected"),
    [
        ("perDevice", False, False, "nvidia.com/node1-000001000"),
        ("pooled", False, False, "nvidia.com/TU104GL_TESLA_T4"),
        ("pooled", True, False, "nvidia.com/node1-000001000"),
        ("perDevice", False, True, "nvidia.com/TU104GL_TESLA_T4"),
    ],
)
def test_effective_resource_name_follows_mode_opt_out_and_adoption(
    mode: plan.ResourceNameMode, disable: bool, adopted: bool, expected: str
) -> None:
    got = plan.effective_resource_name(
        "nvidia.com/TU104GL_TESLA_T4", "node1-000001000", mode=mode, disable_pooling=disable, adopted=adopted
    )
    assert got == expected


def test_a_per_device_name_for_a_long_node_name_is_a_dns_label() -> None:
    name = names.pcidevice_name("n" * 70, "0000:01:00.0")
    got = plan.effective_resource_name("intel.com/X", name, mode="perDevice")
    assert len(got.split("/")[1]) == 63
    assert got == plan.effective_resource_name("intel.com/X", name, mode="perDevice")


def test_set_conditions_keeps_the_transition_time_while_the_status_holds() -> None:
    first = plan.set_conditions([], [plan.Condition("Bound", True, "BoundToVfio", "ok")], "t1")
    again = plan.set_conditions(first, [plan.Condition("Bound", True, "BoundToVfio", "ok")], "t2")
    assert again == first
    flipped = plan.set_conditions(first, [plan.Condition("Bound", False, "Refused", "no")], "t3")
    assert flipped[0]["lastTransitionTime"] == "t3" and flipped[0]["status"] == "False"


def test_finalizers_are_added_and_removed_keeping_foreign_ones() -> None:
    assert plan.finalizers_with({"finalizers": ["x"]}, True) == ["x", plan.FINALIZER]
    assert plan.finalizers_with({"finalizers": ["x", plan.FINALIZER]}, True) is None
    assert plan.finalizers_with({"finalizers": ["x", plan.FINALIZER]}, False) == ["x"]


@pytest.mark.parametrize(
    ("peer", "fragment"),
    [
        (plan.GroupPeer("0000:01:00.1", False, True, host_critical=("mounted /",)), "host-critical: mounted /"),
        (plan.GroupPeer("0000:01:00.1", False, True, claim_owner="bob"), "another owner (bob)"),
        (plan.GroupPeer("0000:01:00.1", False, False), "not a known PCI device"),
        (plan.GroupPeer("0000:01:00.1", False, True, usb_claimed=True), "USB controller"),
    ],
)
def test_the_node_side_recheck_refuses_unsafe_groups(peer: plan.GroupPeer, fragment: str) -> None:
    me = plan.GroupPeer("0000:01:00.0", False, True, claim_owner="alice")
    why = plan.recheck_group("0000:01:00.0", "alice", [me, peer])
    assert why is not None and fragment in why and "0000:01:00.1" in why


def test_the_node_side_recheck_allows_same_owner_siblings_and_unknown_bridges() -> None:
    peers = [
        plan.GroupPeer("0000:01:00.0", False, True, claim_owner="alice"),
        plan.GroupPeer("0000:01:00.1", False, True, claim_owner="alice"),
        plan.GroupPeer("0000:00:01.0", True, False),
    ]
    assert plan.recheck_group("0000:01:00.0", "alice", peers) is None


def _kv(pci: list[dict[str, Any]], usb: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    p: dict[str, Any] = {"pciHostDevices": pci}
    if usb is not None:
        p["usb"] = usb
    return {"metadata": {"name": "kubevirt"}, "spec": {"configuration": {"permittedHostDevices": p}}}


FOREIGN = {"pciVendorSelector": "15b3:101e", "resourceName": "nvidia.com/MLX_VF", "externalResourceProvider": True}


def test_permits_add_wanted_entries_and_keep_foreign_ones() -> None:
    p = plan.plan_permits(
        _kv([FOREIGN]), {plan.PciPermit("intel.com/n1", "8086:10fb")}, set(), ours={"intel.com/n1"}, needed=set()
    )
    assert p.pci == [FOREIGN, plan.PciPermit("intel.com/n1", "8086:10fb").entry()]
    assert p.usb is None and p.added == ("intel.com/n1",)


def test_permits_change_nothing_when_in_step() -> None:
    entry = plan.PciPermit("intel.com/n1", "8086:10fb")
    p = plan.plan_permits(_kv([FOREIGN, entry.entry()]), {entry}, set(), ours={"intel.com/n1"}, needed=set())
    assert (p.pci, p.usb) == (None, None)


def test_permits_remove_our_unneeded_entries_but_not_needed_or_foreign_ones() -> None:
    mine = plan.PciPermit("intel.com/n1", "8086:10fb").entry()
    pooled = plan.PciPermit("intel.com/POOL", "8086:10fb").entry()
    p = plan.plan_permits(
        _kv([FOREIGN, mine, pooled]),
        set(),
        set(),
        ours={"intel.com/n1", "intel.com/POOL"},
        needed={"intel.com/POOL"},
    )
    assert p.pci == [FOREIGN, pooled] and p.removed == ("intel.com/n1",)


def test_usb_permits_carry_vendor_and_product_selectors() -> None:
    u = plan.UsbPermit("kubevirt.io/node1-0951-1666-001004", "0951", "1666")
    p = plan.plan_permits(_kv([]), set(), {u}, ours={u.resource_name}, needed=set())
    assert p.usb == [
        {
            "resourceName": u.resource_name,
            "selectors": [{"vendor": "0951", "product": "1666"}],
            "externalResourceProvider": True,
        }
    ]


def test_the_host_devices_gate_is_read_from_developer_configuration() -> None:
    kv = {"spec": {"configuration": {"developerConfiguration": {"featureGates": ["HostDevices"]}}}}
    assert plan.host_devices_gate(kv)
    assert not plan.host_devices_gate({"spec": {}})
