"""ResourceSlices of a node: the shape resource.k8s.io/v1 wants, zero writes when nothing changed, a new pool
generation in every slice when something did, 128 devices per slice, and no slice once the last claim goes."""

from __future__ import annotations

import copy
from typing import Any

from nodeagent.dra import model, slices
from policy import dra, names

NODE = "node1"


def nic(i: int, owner: str = "alice", numa: int | None = 0) -> model.PublishedDevice:
    address = f"0000:{i // 8:02x}:00.{i % 8}"
    obj = names.pcidevice_name(NODE, address)
    return model.build_pci(
        node=NODE, object_name=obj, owner=owner, address=address, vendor_id="8086", device_id="10d3",
        class_id="0200", iommu_group=i, numa_node=numa, pcie_root="pci0000:00", resource_name=f"intel.com/{obj}",
    )  # fmt: skip


class Store:
    """An in-memory SliceStore that records writes and, like the API server, bumps resourceVersion."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.writes: list[tuple[str, str]] = []
        self.rv = 0

    def list(self, node: str, driver: str) -> list[dict[str, Any]]:
        return [copy.deepcopy(o) for o in self.objects.values()
                if o["spec"]["nodeName"] == node and o["spec"]["driver"] == driver]  # fmt: skip

    def _put(self, body: dict[str, Any]) -> dict[str, Any]:
        self.rv += 1
        obj = copy.deepcopy(body)
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self.objects[obj["metadata"]["name"]] = obj
        return obj

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        self.writes.append(("create", body["metadata"]["name"]))
        assert body["metadata"]["name"] not in self.objects
        return self._put(body)

    def update(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        self.writes.append(("update", name))
        assert body["metadata"]["resourceVersion"] == self.objects[name]["metadata"]["resourceVersion"]
        return self._put(body)

    def delete(self, name: str) -> None:
        self.writes.append(("delete", name))
        del self.objects[name]


def test_a_slice_lists_each_device_with_its_attributes_in_the_drivers_domain() -> None:
    [s] = slices.build_slices(NODE, dra.PCI_DRIVER, [nic(1)], 1)
    assert s["apiVersion"] == "resource.k8s.io/v1" and s["kind"] == "ResourceSlice"
    assert s["metadata"]["name"] == "node1-pcidevices-0" and s["metadata"]["labels"]["nodename"] == NODE
    assert s["spec"]["driver"] == dra.PCI_DRIVER and s["spec"]["nodeName"] == NODE
    assert s["spec"]["pool"] == {"name": NODE, "generation": 1, "resourceSliceCount": 1}
    [d] = s["spec"]["devices"]
    assert d["name"] == "pci-0000-00-00-1"
    attrs = d["attributes"]
    assert attrs["vendorID"] == {"string": "8086"} and attrs["iommuGroup"] == {"int": 1}
    assert attrs["numaNode"] == {"int": 0} and attrs["owner"] == {"string": "alice"}
    assert attrs["pciAddress"] == attrs["resource.kubernetes.io/pciBusID"] == {"string": "0000:00:00.1"}
    assert attrs["resource.kubernetes.io/pcieRoot"] == {"string": "pci0000:00"}
    assert attrs["pciDevice"] == {"string": "node1-000000001"} and attrs["node"] == {"string": NODE}
    assert len(attrs) <= 32  # attributes and capacities together


def test_a_device_without_a_numa_node_publishes_minus_one() -> None:
    assert nic(1, numa=None).attributes["numaNode"] == {"int": -1}


def test_nothing_is_written_while_the_slices_already_say_the_same() -> None:
    store = Store()
    slices.publish(store, NODE, dra.PCI_DRIVER, [nic(1), nic(2)])
    assert store.writes == [("create", "node1-pcidevices-0")]
    for _ in range(3):
        assert slices.publish(store, NODE, dra.PCI_DRIVER, [nic(2), nic(1)]) == []
    assert len(store.writes) == 1


def test_a_change_writes_the_next_pool_generation() -> None:
    store = Store()
    slices.publish(store, NODE, dra.PCI_DRIVER, [nic(1)])
    slices.publish(store, NODE, dra.PCI_DRIVER, [nic(1, owner="bob")])
    [s] = store.objects.values()
    assert s["spec"]["pool"]["generation"] == 2 and s["spec"]["devices"][0]["attributes"]["owner"]["string"] == "bob"


def test_big_pools_span_slices_of_128_and_shrink_again() -> None:
    store = Store()
    slices.publish(store, NODE, dra.PCI_DRIVER, [nic(i) for i in range(300)])
    assert sorted(store.objects) == [f"node1-pcidevices-{i}" for i in range(3)]
    assert [len(o["spec"]["devices"]) for _, o in sorted(store.objects.items())] == [128, 128, 44]
    assert {o["spec"]["pool"]["resourceSliceCount"] for o in store.objects.values()} == {3}
    slices.publish(store, NODE, dra.PCI_DRIVER, [nic(i) for i in range(10)])
    assert list(store.objects) == ["node1-pcidevices-0"]
    assert store.objects["node1-pcidevices-0"]["spec"]["pool"] == {"name": NODE, "generation": 2,
                                                                   "resourceSliceCount": 1}  # fmt: skip


def test_the_last_claim_going_removes_the_slices() -> None:
    store = Store()
    slices.publish(store, NODE, dra.PCI_DRIVER, [nic(1)])
    slices.publish(store, NODE, dra.PCI_DRIVER, [])
    assert store.objects == {} and store.writes[-1] == ("delete", "node1-pcidevices-0")
    assert slices.publish(store, NODE, dra.PCI_DRIVER, []) == []


def test_slices_deleted_under_the_agent_are_written_again() -> None:
    store = Store()
    slices.publish(store, NODE, dra.PCI_DRIVER, [nic(1)])
    store.objects.clear()  # the kubelet wiped them while the plugin was away
    assert [a.verb for a in slices.publish(store, NODE, dra.PCI_DRIVER, [nic(1)])] == ["create"]


def test_each_driver_has_its_own_pool() -> None:
    usb = model.build_usb(node=NODE, object_name="node1-0951-1666-002004", owner="alice", vendor_id="0951",
                          product_id="1666", bus=2, devnum=4, controller="0000:00:14.0",
                          resource_name="kubevirt.io/node1-0951-1666-002004")  # fmt: skip
    store = Store()
    slices.publish(store, NODE, dra.PCI_DRIVER, [nic(1), usb])
    slices.publish(store, NODE, dra.USB_DRIVER, [nic(1), usb])
    assert sorted(store.objects) == ["node1-pcidevices-0", "node1-usbdevices-0"]
    entry = store.objects["node1-usbdevices-0"]["spec"]["devices"][0]
    assert entry["name"] == "usb-002-004" and entry["attributes"]["usbDevice"] == {"string": "node1-0951-1666-002004"}


def _node(tmp: str) -> tuple[Any, Store, Any]:
    from nodeagent.dra import cdi
    from nodeagent.dra.driver import DraDriver
    from nodeagent.dra.node import DraNode, drivers_of

    store = Store()
    cdis = cdi.CdiStore(tmp)
    drivers = drivers_of(*(DraDriver(d, NODE, cdis, get_claim=lambda ns, n: None, may_use=lambda r, d, ns: True)
                           for d in dra.DRIVERS))  # fmt: skip
    return DraNode(NODE, drivers, store, pcie_root=lambda a: "pci0000:00"), store, cdis


def test_the_node_publishes_tables_and_slices_together_and_withdraws_leaving_devices(tmp_path: Any) -> None:
    node, store, _ = _node(str(tmp_path))
    devices = [nic(1), nic(2)]
    assert node.publish(devices) == 1
    assert sorted(node.drivers[dra.PCI_DRIVER].published()) == ["pci-0000-00-00-1", "pci-0000-00-00-2"]
    assert node.publish(devices) == 0
    node.withdraw({devices[0].object_name})
    assert sorted(node.drivers[dra.PCI_DRIVER].published()) == ["pci-0000-00-00-2"]
    [s] = store.objects.values()
    assert [d["name"] for d in s["spec"]["devices"]] == ["pci-0000-00-00-2"]


def test_prepared_claims_hold_their_devices(tmp_path: Any) -> None:
    from nodeagent.dra import cdi

    node, _, cdis = _node(str(tmp_path))
    d = nic(1)
    cdis.write(dra.PCI_DRIVER, "0c7a1a2e-0000-4000-8000-000000000001",
               cdi.build_spec(dra.PCI_DRIVER, "0c7a1a2e-0000-4000-8000-000000000001", "team-a/c", [d],
                              pods=["team-a/p"]))  # fmt: skip
    assert node.holders(d.object_name) == [{"pod": "team-a/p", "resourceClaim": "team-a/c"}]
    assert node.pods_of(d.object_name) == ("resourceclaim team-a/c",)
    assert node.pods_of("node1-000000002") == ()
