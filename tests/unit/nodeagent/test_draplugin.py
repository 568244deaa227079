"""The DRA kubelet plugin over real gRPC on unix sockets: registration as the kubelet's plugin watcher does it,
NodePrepareResources writing CDI specs through the last gate, NodeUnprepareResources removing them, and the
supervisor serving again when a socket vanishes."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from nodeagent.deviceplugin import draplugin
from nodeagent.dra import cdi, model
from nodeagent.dra.driver import DraDriver
from policy import dra, names, records
from policy.records import Requester
from policy.review import UserInfo
from tests.support.fake_dra_kubelet import FakeDraKubelet

NODE = "node1"
NS = "team-a"
ALICE = Requester.of(UserInfo("alice", "uid-a", ("system:authenticated",)))
GPU, AUDIO, NIC = "0000:3b:00.0", "0000:3b:00.1", "0000:5e:00.0"


def _pci(address: str, group: int, functions: tuple[str, ...], cdev: str | None = None) -> model.PublishedDevice:
    obj = names.pcidevice_name(NODE, address)
    return model.build_pci(
        node=NODE, object_name=obj, owner="alice", address=address, vendor_id="8086", device_id="10d3",
        class_id="0200", iommu_group=group, numa_node=None, pcie_root="pci0000:00",
        resource_name=f"intel.com/{obj}", group_functions=functions, vfio_cdev=cdev,
    )  # fmt: skip


PUBLISHED = [_pci(GPU, 45, (GPU, AUDIO)), _pci(AUDIO, 45, (GPU, AUDIO)), _pci(NIC, 60, (NIC,), cdev="vfio2")]


def claim(
    name: str, *devices: str, record: str | None = ALICE.encode(), admin: bool = False, uid: str | None = None
) -> dict[str, Any]:
    meta: dict[str, Any] = {"namespace": NS, "name": name, "uid": uid or str(uuid.uuid4())}
    if record is not None:
        meta["annotations"] = {records.ANNOTATION: record}
    results = [
        {"request": f"r{i}", "driver": dra.PCI_DRIVER, "pool": NODE, "device": d, **({"adminAccess": True} if admin
                                                                                      else {})}
        for i, d in enumerate(devices)
    ]  # fmt: skip
    return {
        "metadata": meta,
        "status": {
            "allocation": {"devices": {"results": results}},
            "reservedFor": [{"resource": "pods", "name": f"{name}-pod", "uid": "p"}],
        },
    }


class Env:
    def __init__(self, base: str) -> None:
        self.base = base
        self.claims: dict[tuple[str, str], dict[str, Any]] = {}
        self.allowed = {("alice", names.pcidevice_name(NODE, a)) for a in (GPU, AUDIO, NIC)}
        self.iommufd = False
        self.store = cdi.CdiStore(os.path.join(base, "cdi"))
        self.driver = DraDriver(
            dra.PCI_DRIVER, NODE, self.store,
            get_claim=lambda ns, n: self.claims.get((ns, n)),
            may_use=lambda r, d, ns: ns == NS and (r.username, d.object_name) in self.allowed,
            iommufd=lambda: self.iommufd,
        )  # fmt: skip
        self.driver.publish(PUBLISHED)
        self.server = draplugin.DraPluginServer(
            self.driver,
            plugin_dir=os.path.join(base, "plugins", dra.PCI_DRIVER),
            registry_dir=os.path.join(base, "plugins_registry"),
        )
        self.kubelet = FakeDraKubelet()

    def add(self, c: dict[str, Any]) -> tuple[str, str, str]:
        m = c["metadata"]
        self.claims[(m["namespace"], m["name"])] = c
        return m["namespace"], m["uid"], m["name"]


def _spec(env: Env, uid: str) -> dict[str, Any]:
    with open(env.store.path(dra.PCI_DRIVER, uid)) as f:
        return json.load(f)  # type: ignore[no-any-return]


@pytest.fixture
def env() -> Iterator[Env]:
    base = tempfile.mkdtemp(prefix="dra")  # short: sun_path holds 108 bytes
    e = Env(base)
    e.server.serve()
    e.kubelet.register(e.server.registration)
    try:
        yield e
    finally:
        e.server.stop()
        shutil.rmtree(base, ignore_errors=True)


def test_the_kubelet_registers_the_driver_for_the_v1_service(env: Env) -> None:
    reg = env.kubelet.plugins[dra.PCI_DRIVER]
    assert reg.endpoint == env.server.endpoint and reg.service == "v1.DRAPlugin"
    assert env.server.registered and env.server.registration_error == ""
    assert os.path.basename(env.server.registration) == f"{dra.PCI_DRIVER}-reg.sock"


def test_prepare_writes_a_cdi_spec_with_the_vfio_nodes_and_kubevirts_variable(env: Env) -> None:
    ref = env.add(claim("nic", dra.pci_device_name(NIC)))
    resp = env.kubelet.prepare(dra.PCI_DRIVER, [ref])
    entry = resp.claims[ref[1]]
    assert entry.error == ""
    [d] = entry.devices
    assert (d.pool_name, d.device_name, list(d.request_names)) == (NODE, "pci-0000-5e-00-0", ["r0"])
    assert list(d.cdi_device_ids) == [f"devices.harvesterhci.io/pci={ref[1]}-pci-0000-5e-00-0"]
    spec = _spec(env, ref[1])
    assert spec["cdiVersion"] == "0.6.0" and spec["kind"] == "devices.harvesterhci.io/pci"
    assert [n["path"] for n in spec["containerEdits"]["deviceNodes"]] == ["/dev/vfio/vfio"]
    [dev] = spec["devices"]
    assert dev["name"] == f"{ref[1]}-pci-0000-5e-00-0"
    assert [n["path"] for n in dev["containerEdits"]["deviceNodes"]] == ["/dev/vfio/60"]
    obj = names.pcidevice_name(NODE, NIC)
    assert dev["containerEdits"]["env"] == [f"{names.pci_resource_env_var(f'intel.com/{obj}')}={NIC}"]
    assert spec["annotations"][cdi.ANNOTATION_CLAIM] == f"{NS}/nic"
    assert env.driver.holders() == {obj: [cdi.PreparedClaim(ref[1], dra.PCI_DRIVER, f"{NS}/nic", (obj,),
                                                            (f"{NS}/nic-pod",))]}  # fmt: skip


def test_prepare_gives_the_iommufd_nodes_when_they_exist(env: Env) -> None:
    env.iommufd = True
    ref = env.add(claim("nic", dra.pci_device_name(NIC)))
    assert env.kubelet.prepare(dra.PCI_DRIVER, [ref]).claims[ref[1]].error == ""
    spec = _spec(env, ref[1])
    assert [n["path"] for n in spec["containerEdits"]["deviceNodes"]] == ["/dev/vfio/vfio", "/dev/iommu"]
    assert [n["path"] for n in spec["devices"][0]["containerEdits"]["deviceNodes"]] == [
        "/dev/vfio/60", "/dev/vfio/devices/vfio2"]  # fmt: skip


def test_prepare_is_idempotent_and_unprepare_removes_the_spec(env: Env) -> None:
    ref = env.add(claim("g", dra.pci_device_name(GPU), dra.pci_device_name(AUDIO)))
    for _ in range(2):
        assert env.kubelet.prepare(dra.PCI_DRIVER, [ref]).claims[ref[1]].error == ""
    assert env.driver.prepared_count == 1
    path = env.store.path(dra.PCI_DRIVER, ref[1])
    assert os.path.exists(path) and not [f for f in os.listdir(env.store.directory) if f.startswith(".")]
    for _ in range(2):
        assert env.kubelet.unprepare(dra.PCI_DRIVER, [ref]).claims[ref[1]].error == ""
    assert not os.path.exists(path) and env.driver.holders() == {}


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: claim("part", dra.pci_device_name(GPU)), f"but not {AUDIO} of the same IOMMU group 45"),
        (lambda: claim("rec", dra.pci_device_name(NIC), record=None), "carries no devices.harvesterhci.io/requester"),
        (lambda: claim("forged", dra.pci_device_name(NIC), record="{not json"), "carries no"),
        (lambda: claim("bob", dra.pci_device_name(NIC), record=Requester("bob").encode()),
         "bob, who lacks the verb use"),
        (lambda: claim("gone", "pci-0000-99-00-0"), "which node node1 does not offer through DRA now"),
        (lambda: claim("adm", dra.pci_device_name(NIC), admin=True), "with adminAccess"),
        (lambda: claim("other"), "has no device of driver pci.devices.harvesterhci.io allocated on node node1"),
    ],
)
def test_the_last_gate_refuses_what_the_webhook_would_have(env: Env, make: Any, message: str) -> None:
    ref = env.add(make())
    entry = env.kubelet.prepare(dra.PCI_DRIVER, [ref]).claims[ref[1]]
    assert message in entry.error
    assert not entry.devices and not os.path.exists(env.store.path(dra.PCI_DRIVER, ref[1]))


def test_a_device_that_is_not_usable_now_is_not_prepared(env: Env) -> None:
    env.driver._unusable = lambda d: "/dev/vfio/60 does not exist" if d.address == NIC else None
    ref = env.add(claim("nic", dra.pci_device_name(NIC)))
    assert "cannot be handed out now: /dev/vfio/60 does not exist" in env.kubelet.prepare(
        dra.PCI_DRIVER, [ref]).claims[ref[1]].error  # fmt: skip


def test_a_claim_made_again_under_the_same_name_is_not_prepared_for_the_old_uid(env: Env) -> None:
    ref = env.add(claim("re", dra.pci_device_name(NIC)))
    stale = (ref[0], str(uuid.uuid4()), ref[2])
    assert "was deleted and made again" in env.kubelet.prepare(dra.PCI_DRIVER, [stale]).claims[stale[1]].error


def test_each_claim_of_a_request_gets_its_own_answer(env: Env) -> None:
    good, bad = env.add(claim("a", dra.pci_device_name(NIC))), env.add(claim("b", dra.pci_device_name(GPU)))
    resp = env.kubelet.prepare(dra.PCI_DRIVER, [good, bad])
    assert resp.claims[good[1]].error == "" and resp.claims[bad[1]].error
    missing = (NS, str(uuid.uuid4()), "nope")
    assert "does not exist" in env.kubelet.prepare(dra.PCI_DRIVER, [missing]).claims[missing[1]].error


def test_the_supervisor_serves_again_when_a_socket_vanishes(env: Env) -> None:
    now = [0.0]
    sup = draplugin.DraPlugins([env.server], clock=lambda: now[0])
    sup.step()
    assert not env.server.needs_serve()
    os.unlink(env.server.registration)
    assert env.server.needs_serve()
    sup.step()
    assert os.path.exists(env.server.registration) and not env.server.registered
    env.kubelet.register(env.server.registration)
    ref = env.add(claim("after", dra.pci_device_name(NIC)))
    assert env.kubelet.prepare(dra.PCI_DRIVER, [ref]).claims[ref[1]].error == ""


def test_stopping_removes_the_registration_socket_first(env: Env) -> None:
    env.server.stop()
    assert not os.path.exists(env.server.registration) and not os.path.exists(env.server.endpoint)


def test_a_usb_device_gets_its_node_and_kubevirts_variable() -> None:
    usb = model.build_usb(node=NODE, object_name="node1-0951-1666-002004", owner="alice", vendor_id="0951",
                          product_id="1666", bus=2, devnum=4, controller="0000:00:14.0",
                          resource_name="kubevirt.io/node1-0951-1666-002004")  # fmt: skip
    uid = str(uuid.uuid4())
    spec = cdi.build_spec(dra.USB_DRIVER, uid, f"{NS}/stick", [usb])
    assert spec["kind"] == "devices.harvesterhci.io/usb" and "containerEdits" not in spec
    [dev] = spec["devices"]
    assert dev["name"] == f"{uid}-usb-002-004"
    assert [n["path"] for n in dev["containerEdits"]["deviceNodes"]] == ["/dev/bus/usb/002/004"]
    assert dev["containerEdits"]["env"] == [f"{names.usb_resource_env_var(usb.resource_name)}=2:4"]
    assert usb.attributes["controllerAddress"] == {"string": "0000:00:14.0"}
    assert cdi.device_id(dra.USB_DRIVER, uid, usb.name) == f"devices.harvesterhci.io/usb={uid}-usb-002-004"


def test_cdi_specs_refuse_anything_but_a_uid_as_a_file_name(tmp_path: Any) -> None:
    store = cdi.CdiStore(str(tmp_path))
    for bad in ("../../etc/x", "a/b", "", "x" * 65):
        with pytest.raises(ValueError):
            store.path(dra.PCI_DRIVER, bad)
