"""Device-plugin health and USB ownership read through SysfsRoot, on synthetic trees and the simulated kernel."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from nodeagent.deviceplugin import allocate, health, manager, metrics, model, usbowner
from nodeagent.errors import SysfsError
from tests.support.fake_kubelet import FakeKubelet
from tests.support.simkernel import SimKernel
from tests.support.sysfs_tree import SysfsTree

GPU = "0000:3b:00.0"
AUDIO = "0000:3b:00.1"
BRIDGE = "0000:3a:00.0"
RES = "nvidia.com/node1-00003b000"


def to_vfio(root, address: str) -> None:
    """What the binder does (driver_override, unbind, bind), through the simulated kernel."""
    root.write_attr(f"/sys/bus/pci/devices/{address}/driver_override", "vfio-pci")
    driver = root.try_link_name(f"/sys/bus/pci/devices/{address}/driver")
    if driver:
        root.write_attr(f"/sys/bus/pci/drivers/{driver}/unbind", address)
    root.write_attr("/sys/bus/pci/drivers/vfio-pci/bind", address)


def release(root, address: str) -> None:
    root.write_attr("/sys/bus/pci/drivers/vfio-pci/unbind", address)
    root.write_attr(f"/sys/bus/pci/devices/{address}/driver_override", "\n")
    root.write_attr("/sys/bus/pci/drivers_probe", address)


def test_health_follows_bind_release_and_group_completeness_up_to_the_kubelet(tmp_path: Path):
    sim = SimKernel(tmp_path)
    sim.add_device(GPU, native="nvidia", group=45)
    sim.add_device(AUDIO, native="snd_hda_intel", group=45)
    sim.add_device(BRIDGE, native="pcieport", group=45, bridge=True)
    sim.load_modules(["vfio-pci"])
    root = sim.root()
    probe = health.SysfsProbe(root)
    gpu = model.PciDevice(GPU, 45, 0)
    with FakeKubelet() as kubelet:
        m = manager.PluginManager(
            plugin_dir=kubelet.plugin_dir,
            probe=probe,
            counters=metrics.PluginMetrics(CollectorRegistry()),
            clock=time.monotonic,
            sleep=time.sleep,
        )
        try:
            m.set_desired([model.PciResource(RES, (gpu,))])
            m.step()
            assert kubelet.wait_devices(RES, lambda d: len(d) == 1)[0].health == "Unhealthy"  # still on nvidia
            assert "bound to nvidia" in health.scan_snapshot(model.PciResource(RES, (gpu,)), probe).states[0].reason

            to_vfio(root, GPU)
            m.refresh()
            m.step()
            kubelet.wait_devices(RES, lambda d: d[0].health == "Unhealthy")  # the audio sibling is not bound
            state = health.scan_snapshot(model.PciResource(RES, (gpu,)), probe).states[0]
            assert state.reason == f"iommu group 45 incomplete: {AUDIO} not on vfio-pci"  # the bridge is exempt

            to_vfio(root, AUDIO)
            m.refresh()
            m.step()
            kubelet.wait_devices(RES, lambda d: d[0].health == "Healthy")
            (resp,) = kubelet.allocate(RES, [GPU]).container_responses
            assert [d.host_path for d in resp.devices] == ["/dev/vfio/vfio", "/dev/vfio/45"]
            assert sim.vfio_node(45)

            release(root, AUDIO)
            m.refresh()
            m.step()
            kubelet.wait_devices(RES, lambda d: d[0].health == "Unhealthy")

            release(root, GPU)
            m.refresh()
            m.step()
            assert not sim.vfio_node(45)
            reason = health.scan_snapshot(model.PciResource(RES, (gpu,)), probe).states[0].reason
            assert reason == "bound to nvidia, not vfio-pci"
        finally:
            m.close()


def test_probe_reads_bridges_from_config_and_the_iommufd_cdev(tmp_path: Path):
    tree = SysfsTree(tmp_path)
    tree.pci(BRIDGE, cls="060400", header_type=1, driver="pcieport", iommu_group=45, secondary_bus=0x3B)
    tree.pci(GPU, driver="vfio-pci", iommu_group=45, numa_node=1)
    (tree.dev / "vfio").mkdir()
    (tree.dev / "vfio" / "45").write_text("")
    (tree.dev / "iommu").write_text("")
    (tree.pci_path(GPU) / "vfio-dev" / "vfio3").mkdir(parents=True)
    probe = health.SysfsProbe(tree.root())
    gpu = model.PciDevice(GPU, 45, 1)
    # sysfs names the cdev but the kernel made no /dev/vfio/devices node: no such path goes to a pod
    assert probe.pci_facts(gpu).vfio_cdev is None
    (tree.dev / "vfio" / "devices").mkdir()
    (tree.dev / "vfio" / "devices" / "vfio3").write_text("")
    facts = probe.pci_facts(gpu)
    assert facts.members == (
        health.GroupMember(BRIDGE, True, "pcieport"),
        health.GroupMember(GPU, False, "vfio-pci"),
    )
    assert facts.vfio_cdev == "vfio3"
    snap = health.scan_snapshot(model.PciResource(RES, (gpu,)), probe)
    assert isinstance(snap, model.PciSnapshot) and snap.iommufd and snap.states[0].healthy
    got = allocate.build_allocation(snap, [GPU])
    paths = [d.host_path for d in got.devices]
    assert paths == ["/dev/vfio/vfio", "/dev/vfio/45", "/dev/iommu", "/dev/vfio/devices/vfio3"]


def test_usb_health_follows_the_device_node(tmp_path: Path):
    tree = SysfsTree(tmp_path)
    tree.pci("0000:00:14.0", cls="0c0330", driver="xhci_hcd")
    tree.usb("1-2", vendor="0951", product="1666", devnum=5, controller="0000:00:14.0")
    probe = health.SysfsProbe(tree.root())
    dev = model.UsbDevice(1, 5)
    res = model.UsbResource("kubevirt.io/node1-0951-1666-001005", dev)
    assert health.scan_snapshot(res, probe) == model.UsbSnapshot(res.name, model.UsbState(dev, True, ""))
    (tree.dev / "bus/usb/001/005").unlink()  # unplugged
    snap = health.scan_snapshot(res, probe)
    assert isinstance(snap, model.UsbSnapshot)
    assert not snap.state.healthy and snap.state.reason == "/dev/bus/usb/001/005 does not exist"


def test_usb_owner_is_set_for_qemu_once_on_the_fake_tree(tmp_path: Path):
    tree = SysfsTree(tmp_path)
    tree.pci("0000:00:14.0", cls="0c0330", driver="xhci_hcd")
    tree.usb("2-1", vendor="0951", product="1666", devnum=4, controller="0000:00:14.0")
    node = tree.dev / "bus/usb/002/004"
    calls: list[tuple[str, int, int]] = []
    dev = model.UsbDevice(2, 4)
    assert usbowner.apply_usb_owner(tree.root(), dev, chown=lambda p, u, g: calls.append((p, u, g))) is True
    assert calls == [(str(node), 107, 107)]  # the fake tree's node, never the host's /dev
    st = os.stat(node)
    calls.clear()
    assert usbowner.apply_usb_owner(tree.root(), dev, uid=st.st_uid, gid=st.st_gid, chown=calls.append) is False
    assert calls == []
    with pytest.raises(SysfsError, match="cannot own /dev/bus/usb/002/009"):
        usbowner.apply_usb_owner(tree.root(), model.UsbDevice(2, 9), chown=calls.append)


def test_group_member_names_that_are_not_pci_addresses_are_ignored(tmp_path: Path):
    tree = SysfsTree(tmp_path)
    tree.pci(GPU, driver="vfio-pci", iommu_group=7)
    (tree.sys / "kernel/iommu_groups/7/devices/../../evil").mkdir(parents=True, exist_ok=True)
    (tree.sys / "kernel/iommu_groups/7/devices/not-an-address").mkdir()
    facts = health.SysfsProbe(tree.root()).pci_facts(model.PciDevice(GPU, 7))
    assert [m.address for m in facts.members] == [GPU]
