"""ClusterIndex: every index agrees with a plain recomputation after any sequence of watch events (Hypothesis
state machine), and readers never see a half-applied event."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from policy import names
from policy.objects import PCIDevice, USBDevice
from policy.snapshot import ClusterIndex
from tests.support.objects import (
    NODE1,
    NODE1A,
    TENANT_A,
    TENANT_B,
    changed,
    node,
    pciclaim,
    pcidevice,
    usbclaim,
    usbdevice,
)

ADDRESSES = ["0000:3b:00.0", "0000:00:14.0"]
GROUPS = ["45", "46", ""]
RESOURCES = ["nvidia.com/A", "nvidia.com/B"]


def pci(node_name: str, address: str, group: str, resource: str) -> dict[str, Any]:
    return pcidevice(node_name, address, iommu_group=group or None, resource_name=resource)


class IndexMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.index = ClusterIndex()
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}

    def _put(self, kind: str, obj: dict[str, Any]) -> None:
        assert self.index.upsert(kind, obj)
        self.objects[(kind, obj["metadata"]["name"])] = obj

    @rule(
        n=st.sampled_from([NODE1, NODE1A]),
        a=st.sampled_from(ADDRESSES),
        g=st.sampled_from(GROUPS),
        r=st.sampled_from(RESOURCES),
    )
    def put_pcidevice(self, n: str, a: str, g: str, r: str) -> None:
        self._put("PCIDevice", pci(n, a, g, r))

    @rule(
        n=st.sampled_from([NODE1, NODE1A]),
        dev=st.integers(1, 3),
        a=st.sampled_from(ADDRESSES),
        r=st.sampled_from(RESOURCES),
    )
    def put_usbdevice(self, n: str, dev: int, a: str, r: str) -> None:
        self._put("USBDevice", usbdevice(n, bus=1, dev=dev, pci_address=a, resource_name=r))

    @rule(n=st.sampled_from([NODE1, NODE1A]), a=st.sampled_from(ADDRESSES), owner=st.sampled_from([TENANT_A, TENANT_B]))
    def put_pciclaim(self, n: str, a: str, owner: str) -> None:
        self._put("PCIDeviceClaim", pciclaim(pci(n, a, "45", "x"), owner=owner))

    @rule(n=st.sampled_from([NODE1, NODE1A]), dev=st.integers(1, 3), owner=st.sampled_from([TENANT_A, TENANT_B]))
    def put_usbclaim(self, n: str, dev: int, owner: str) -> None:
        self._put("USBDeviceClaim", usbclaim(usbdevice(n, bus=1, dev=dev), owner=owner))

    @rule(n=st.sampled_from([NODE1, NODE1A]))
    def put_node(self, n: str) -> None:
        self._put("Node", node(n))

    @rule(data=st.data())
    def delete_one(self, data: st.DataObject) -> None:
        if not self.objects:
            return
        kind, name = data.draw(st.sampled_from(sorted(self.objects)))
        self.index.delete(kind, name)
        del self.objects[(kind, name)]

    @rule(kind=st.sampled_from(["PCIDevice", "PCIDeviceClaim", "USBDevice", "USBDeviceClaim", "Node"]))
    def relist(self, kind: str) -> None:
        kept = [o for (k, _), o in self.objects.items() if k == kind]
        assert self.index.replace(kind, kept) == 0

    @invariant()
    def indexes_agree_with_a_scan(self) -> None:
        objs = self.objects
        pcis = [PCIDevice.from_dict(o) for (k, _), o in objs.items() if k == "PCIDevice"]
        usbs = [USBDevice.from_dict(o) for (k, _), o in objs.items() if k == "USBDevice"]
        pci_claims = {n for (k, n) in objs if k == "PCIDeviceClaim"}
        usb_claims = {n for (k, n) in objs if k == "USBDeviceClaim"}
        for n in (NODE1, NODE1A):
            assert self.index.node_exists(n) == (("Node", n) in objs)
            for a in ADDRESSES:
                found = self.index.pcidevice_by_address(n, a)
                expected = [d for d in pcis if (d.node_name, d.address) == (n, a)]
                assert (found is None) == (not expected) and (found is None or found == expected[0])
                assert sorted(d.name for d in self.index.usbdevices_behind_controller(n, a)) == sorted(
                    d.name for d in usbs if (d.node_name, d.pci_address) == (n, a)
                )
            for g in GROUPS[:2]:
                assert sorted(d.name for d in self.index.pcidevices_in_group(n, g)) == sorted(
                    d.name for d in pcis if (d.node_name, d.iommu_group) == (n, g)
                )
        def carries(d: PCIDevice | USBDevice, r: str) -> bool:
            """The device is offered under r, a name it may carry (names are node-bound)."""
            if d.resource_name != r:
                return False
            if isinstance(d, PCIDevice):
                return names.pci_may_carry(d.name, d.pooled_resource_name, r)
            return names.usb_may_carry(d.name, r)

        for r in RESOURCES:
            all_with = sorted(d.name for d in [*pcis, *usbs] if carries(d, r))
            assert sorted(d.name for d in self.index.devices_with_resource(r)) == all_with
            claimed = sorted(
                d.name
                for d in [*pcis, *usbs]
                if carries(d, r) and d.name in (pci_claims if isinstance(d, PCIDevice) else usb_claims)
            )
            assert sorted(d.name for d in self.index.claimed_devices_with_resource(r)) == claimed
        for owner in (TENANT_A, TENANT_B):
            expected_claims = sorted(
                n
                for (k, n), o in objs.items()
                if k.endswith("Claim")
                and o["metadata"]["annotations"] == {"devices.harvesterhci.io/requested-by": owner}
            )
            assert sorted(c.name for c in self.index.claims_of_owner(owner)) == expected_claims


IndexMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=30, deadline=None)
test_index_agrees_with_a_scan_after_any_events = IndexMachine.TestCase


def test_malformed_objects_are_skipped_and_forget_their_old_version() -> None:
    gpu = pcidevice(NODE1, "0000:3b:00.0")
    index = ClusterIndex.from_objects([gpu])
    assert not index.upsert("PCIDevice", changed(gpu, "status.address", 7))
    assert index.pcidevice(gpu["metadata"]["name"]) is None
    assert index.replace("PCIDevice", [gpu, {"metadata": {"name": 5}}]) == 1
    assert index.counts()["PCIDevice"] == 1


def test_readers_never_see_a_device_half_moved_between_resource_names() -> None:
    """A device flips between two resource names while readers ask; it is always under exactly one of them."""
    a = pcidevice(NODE1, "0000:3b:00.0", resource_name="nvidia.com/A")
    b = changed(a, "status.resourceName", "nvidia.com/B")
    index = ClusterIndex.from_objects([a, pciclaim(a)])
    stop = threading.Event()
    errors: list[str] = []

    def writer() -> None:
        while not stop.is_set():
            index.upsert("PCIDevice", b)
            index.upsert("PCIDevice", a)

    def reader() -> None:
        for _ in range(3000):
            with index._lock:  # one consistent moment across two lookups
                total = len(index.claimed_devices_with_resource("nvidia.com/A")) + len(
                    index.claimed_devices_with_resource("nvidia.com/B")
                )
            if total != 1:
                errors.append(f"seen under {total} names")

    t = threading.Thread(target=writer)
    t.start()
    try:
        reader()
    finally:
        stop.set()
        t.join(timeout=10)
    assert errors == []


def test_a_relist_reindexes_only_what_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    devices = [pcidevice(NODE1, f"0000:{i:02x}:00.0", iommu_group=str(i)) for i in range(50)]
    index = ClusterIndex.from_objects(devices)
    added: list[str] = []
    real_add = index._add
    monkeypatch.setattr(index, "_add", lambda kind, view: (added.append(view.name), real_add(kind, view)))
    moved = changed(devices[7], "status.iommuGroup", "99")
    assert index.replace("PCIDevice", [*devices[:7], moved, *devices[8:40]], batch=4) == 0
    assert added == [moved["metadata"]["name"]]
    assert index.counts()["PCIDevice"] == 40
    assert [d.name for d in index.pcidevices_in_group(NODE1, "99")] == [moved["metadata"]["name"]]
    assert index.pcidevices_in_group(NODE1, "45") == []


def test_a_device_named_like_another_nodes_device_is_not_offered_under_that_name() -> None:
    """Names are node-bound: an agent that names its device like another node's joins no pool with it."""
    theirs = pcidevice("node1", "0000:3b:00.0", resource_name="nvidia.com/node1-00003b000")
    forged = pcidevice("node1-a", "0000:3b:00.0", resource_name="nvidia.com/node1-00003b000")
    pooled = pcidevice("node1-a", "0000:5e:00.0", resource_name="nvidia.com/TU104GL_TESLA_T4")
    index = ClusterIndex.from_objects([theirs, forged, pooled])
    assert [d.name for d in index.devices_with_resource("nvidia.com/node1-00003b000")] == ["node1-00003b000"]
    assert [d.name for d in index.devices_with_resource("nvidia.com/TU104GL_TESLA_T4")] == ["node1-a-00005e000"]
