"""Guest script for tests/kernel/test_deviceplugin.py: the real device plugins against a real kernel's vfio.

Runs inside the qemu guest: binds NICs with the real VfioBinder, serves them with the real PluginManager and
SysfsProbe on SysfsRoot("/"), and talks to tests/support/fake_kubelet.py's kubelet over unix sockets in a short
temporary directory, the way the kubelet would. It reports what it saw as one JSON object; the host-side tests
judge it. Each step is guarded so one failure still reports the rest.
"""

from __future__ import annotations

import os
import stat
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import grpc
from prometheus_client import CollectorRegistry

from nodeagent.deviceplugin import health, manager, metrics, model, podresources, registration, usbowner
from nodeagent.host.binding import BindingRecord, VfioBinder
from nodeagent.host.modules import Modprobe
from nodeagent.idsdb import NamesDatabases
from nodeagent.sysfs import pci, usb
from nodeagent.sysfs.root import SysfsRoot
from policy import names
from tests.support.fake_kubelet import Advertised, FakeKubelet, PodDevices
from tests.support.guest import PCI, emit, group_viable, steps, wait_until
from tests.support.guest import pci_by_id as by_id
from tests.support.guest import pci_driver as driver
from tests.support.guest import pci_group as kernel_group

NODE = "guest"
WAIT_S = 30.0  # TCG is slow; every wait below normally ends in well under a second
out: dict[str, Any] = {"errors": {}}


step = steps(out)


def listed(devices: Sequence[Advertised] | None) -> list[list[Any]] | None:
    return None if devices is None else [[d.id, d.health, list(d.numa_nodes)] for d in devices]


def healths(want: dict[str, str]):  # type: ignore[no-untyped-def]
    return lambda devices: {d.id: d.health for d in devices} == want


def answer(resp: Any) -> list[dict[str, Any]]:
    return [
        {
            "envs": dict(c.envs),
            "devices": [[d.container_path, d.host_path, d.permissions] for d in c.devices],
        }
        for c in resp.container_responses
    ]


def refused(fn) -> dict[str, str] | None:  # type: ignore[no-untyped-def]
    """The gRPC status a call failed with, or None when it succeeded."""
    try:
        fn()
    except grpc.RpcError as e:
        return {"code": e.code().name, "details": e.details() or ""}
    return None


def node_facts(path: str) -> dict[str, Any]:
    """What devtmpfs holds at `path`: a character device and its major:minor, or nothing."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return {"exists": False}
    return {
        "exists": True,
        "char": stat.S_ISCHR(st.st_mode),
        "dev": f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}",
    }


def read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


wait_until(lambda: len(by_id("0x8086", "0x10d3")) == 2 and len(by_id("0x8086", "0x100e")) == 2, 30)
e1000e = by_id("0x8086", "0x10d3")
legs = by_id("0x8086", "0x100e")
out["devices"] = {"e1000e": e1000e, "e1000": legs}
wait_until(lambda: all(driver(a) for a in e1000e + legs), 30)
out["drivers_before"] = {a: driver(a) for a in e1000e + legs}

sysroot = SysfsRoot("/")
ids = NamesDatabases.load()
binder = VfioBinder(sysroot, Modprobe(), write_timeout=5.0, verify_timeout=5.0)
nic = e1000e[0]


def model_device(address: str) -> model.PciDevice:
    """The plugin's device as the agent builds it: iommu group and NUMA node from sysfs."""
    fn = pci.read_function(sysroot, address)
    assert fn.iommu_group is not None, f"{address} has no iommu group"
    return model.PciDevice(address, int(fn.iommu_group), fn.numa_node)


# Per-device name for the e1000e (the default policy), the pooled upstream name for the two e1000 of one group.
vendor = ids.pci.vendor("8086")
nic_resource = model.PciResource(names.pci_device_resource_name(vendor, NODE, nic), (model_device(nic),))
pool_resource = model.PciResource(
    names.pci_resource_name(vendor, ids.pci.device("8086", "100e"), "100e"), tuple(model_device(a) for a in legs)
)
# The USB stick (mass storage): one plugin for one claimed USB device.
wait_until(lambda: any(u.first_interface_class == 8 for u in usb.scan_usb(sysroot)), 30)
stick = next(u for u in usb.scan_usb(sysroot) if u.first_interface_class == 8)
usb_resource = model.UsbResource(
    names.usb_resource_name(names.usbdevice_name(NODE, stick.vendor_id, stick.product_id, stick.bus, stick.devnum)),
    model.UsbDevice(stick.bus, stick.devnum),
)
NIC, POOL, USB = nic_resource.name, pool_resource.name, usb_resource.name
out["resources"] = {"nic": NIC, "pool": POOL, "usb": USB}
out["stick"] = {"port": stick.port_path, "bus": stick.bus, "devnum": stick.devnum, "path": stick.device_path}
out["model"] = {d.address: [d.iommu_group, d.numa_node] for d in (*nic_resource.devices, *pool_resource.devices)}

kubelet = FakeKubelet().start()
registry = CollectorRegistry()
plugins = manager.PluginManager(
    plugin_dir=kubelet.plugin_dir,
    probe=health.SysfsProbe(sysroot),
    counters=metrics.PluginMetrics(registry),
    clock=time.monotonic,
    tick_s=0.05,
    health_interval_s=1.0,  # the periodic probe; bind steps below call refresh() as the agent does after a bind
    register_timeout_s=10.0,
)
stop = threading.Event()
supervisor = threading.Thread(target=plugins.run, args=(stop,), name="plugin-manager")
supervisor.start()


def pods_holding(address: str) -> list[str]:
    """The binder's view of the kubelet (PodResources), as the agent wires it."""
    index = podresources.index_allocations(podresources.list_allocations(kubelet.pod_resources_socket), [NIC, POOL])
    return sorted({f"{h.namespace}/{h.pod}" for (_, dev), hs in index.items() if dev == address for h in hs})


pod_binder = VfioBinder(sysroot, Modprobe(), pods=pods_holding, write_timeout=5.0, verify_timeout=5.0)


@step("register")
def _register() -> None:
    t = time.monotonic()
    plugins.set_desired([nic_resource])
    req = kubelet.registration(NIC, timeout=WAIT_S)
    first = kubelet.wait_devices(NIC, lambda d: len(d) == 1, timeout=WAIT_S)
    out["register"] = {
        "version": req.version,
        "endpoint": req.endpoint,
        "resource_name": req.resource_name,
        "preferred_available": req.options.get_preferred_allocation_available,
        "socket_path": os.path.join(kubelet.plugin_dir, req.endpoint),
        "socket_is_socket": stat.S_ISSOCK(os.stat(os.path.join(kubelet.plugin_dir, req.endpoint)).st_mode),
        "elapsed": round(time.monotonic() - t, 3),
        "first_list": listed(first),
        "driver": driver(nic),
        "allocate_unbound": refused(lambda: kubelet.allocate(NIC, [nic])),
    }


@step("bind")
def _bind() -> None:
    r = binder.bind(BindingRecord(nic, driver(nic)))
    plugins.refresh()
    t = time.monotonic()
    got = kubelet.wait_devices(NIC, healths({nic: "Healthy"}), timeout=WAIT_S)
    out["bind"] = {
        "outcome": str(r.outcome),
        "result_group": r.iommu_group,
        "driver": driver(nic),
        "list": listed(got),
        "healthy_after_s": round(time.monotonic() - t, 3),
        "lists_seen": len(kubelet.lists(NIC)),
        "kernel_viable": group_viable(kernel_group(nic)),  # the kernel's verdict on what we call Healthy
    }


@step("allocate")
def _allocate() -> None:
    group = kernel_group(nic)
    cdevs = sorted(os.listdir(f"{PCI}/{nic}/vfio-dev")) if os.path.isdir(f"{PCI}/{nic}/vfio-dev") else []
    resp = answer(kubelet.allocate(NIC, [nic]))
    out["allocate"] = {
        "kernel_group": group,
        "preferred": kubelet.preferred(NIC, [nic], [], 1),
        "preferred_must": kubelet.preferred(NIC, [nic], [nic], 1),
        "answer": resp,
        "nodes": {p: node_facts(p) for c in resp for _, p, _ in c["devices"]},
        "kernel_group_dev": read(f"/sys/class/vfio/{group}/dev"),
        "vfio_misc_dev": read("/sys/class/misc/vfio/dev"),
        "iommu_node": os.path.exists("/dev/iommu"),
        "vfio_dev_cdevs": cdevs,
        "devices_dir": sorted(os.listdir("/dev/vfio/devices")) if os.path.isdir("/dev/vfio/devices") else None,
        "unknown": refused(lambda: kubelet.allocate(NIC, ["0000:ff:1f.7"])),
    }


@step("in_use")
def _in_use() -> None:
    """The kubelet says a pod holds the device: release writes nothing; the device stays served and healthy."""
    kubelet.set_pod_resources([PodDevices("vms", "virt-launcher-vm1-x", "compute", NIC, (nic,))])
    r = pod_binder.release(BindingRecord(nic, "e1000e"))
    plugins.refresh()
    time.sleep(1.5)  # longer than one health interval: the device must stay Healthy
    out["in_use"] = {
        "outcome": str(r.outcome),
        "pods": list(r.pods),
        "message": r.message,
        "driver": driver(nic),
        "list": listed(kubelet.devices(NIC)),
    }
    kubelet.set_pod_resources([])


@step("group")
def _group() -> None:
    """Two e1000 of one IOMMU group in one pooled resource: healthy only while both are on vfio-pci."""
    a, b = legs
    plugins.set_desired([nic_resource, pool_resource])
    kubelet.registration(POOL, timeout=WAIT_S)
    g: dict[str, Any] = {"kernel_groups": [kernel_group(a), kernel_group(b)]}
    g["initial"] = listed(kubelet.wait_devices(POOL, lambda d: len(d) == 2, timeout=WAIT_S))
    g["bind_a"] = str(binder.bind(BindingRecord(a, driver(a))).outcome)
    plugins.refresh()
    time.sleep(1.5)  # a full health interval: one bound leg must not make anything Healthy
    g["one_bound"] = listed(kubelet.devices(POOL))
    g["one_bound_viable"] = group_viable(kernel_group(a))
    g["bind_b"] = str(binder.bind(BindingRecord(b, driver(b))).outcome)
    plugins.refresh()
    g["both_bound"] = listed(kubelet.wait_devices(POOL, healths({a: "Healthy", b: "Healthy"}), timeout=WAIT_S))
    g["both_bound_viable"] = group_viable(kernel_group(a))
    g["preferred_one_must"] = kubelet.preferred(POOL, [a, b], [b], 2)
    g["preferred_none"] = kubelet.preferred(POOL, [b, a], [], 2)
    g["allocate"] = answer(kubelet.allocate(POOL, [a, b]))
    g["release_b"] = str(binder.release(BindingRecord(b, "e1000")).outcome)
    t = time.monotonic()  # no refresh(): the periodic probe must notice the incomplete group by itself
    g["after_release_b"] = listed(kubelet.wait_devices(POOL, healths({a: "Unhealthy", b: "Unhealthy"}), timeout=WAIT_S))
    g["unhealthy_after_s"] = round(time.monotonic() - t, 3)
    g["allocate_incomplete"] = refused(lambda: kubelet.allocate(POOL, [a]))
    g["release_a"] = str(binder.release(BindingRecord(a, "e1000")).outcome)
    g["drivers_after"] = [driver(a), driver(b)]
    out["group"] = g


@step("release")
def _release() -> None:
    r = binder.release(BindingRecord(nic, "e1000e"))
    t = time.monotonic()  # no refresh(): the periodic probe must notice
    got = kubelet.wait_devices(NIC, healths({nic: "Unhealthy"}), timeout=WAIT_S)
    out["release"] = {
        "outcome": str(r.outcome),
        "driver": driver(nic),
        "group_node": os.path.exists(f"/dev/vfio/{kernel_group(nic)}"),
        "list": listed(got),
        "unhealthy_after_s": round(time.monotonic() - t, 3),
        "allocate": refused(lambda: kubelet.allocate(NIC, [nic])),
    }


@step("usb")
def _usb() -> None:
    """A claimed USB device: owned by qemu, Healthy while the kernel's node exists, gone after a real disconnect."""
    u: dict[str, Any] = {"owner_changed": usbowner.apply_usb_owner(sysroot, usb_resource.device)}
    st = os.stat(stick.device_path)
    u["owner"] = [st.st_uid, st.st_gid]
    u["owner_changed_again"] = usbowner.apply_usb_owner(sysroot, usb_resource.device)
    plugins.set_desired([nic_resource, pool_resource, usb_resource])
    kubelet.registration(USB, timeout=WAIT_S)
    u["list"] = listed(kubelet.wait_devices(USB, lambda d: len(d) == 1, timeout=WAIT_S))
    resp = answer(kubelet.allocate(USB, [usb_resource.device.id]))
    u["answer"] = resp
    u["node"] = node_facts(stick.device_path)
    u["sysfs_dev"] = read(f"/sys/bus/usb/devices/{stick.port_path}/dev")
    with open(f"/sys/bus/usb/devices/{stick.port_path}/remove", "w") as f:  # a logical unplug, in the guest only
        f.write("1")
    t = time.monotonic()  # no refresh(): the periodic probe must notice
    u["after_remove"] = listed(kubelet.wait_devices(USB, healths({usb_resource.device.id: "Unhealthy"}), WAIT_S))
    u["unhealthy_after_s"] = round(time.monotonic() - t, 3)
    u["node_after_remove"] = os.path.exists(stick.device_path)
    u["allocate_removed"] = refused(lambda: kubelet.allocate(USB, [usb_resource.device.id]))
    out["usb"] = u


@step("metrics")
def _metrics() -> None:
    def sample(name: str, resource: str) -> float | None:
        return registry.get_sample_value(f"pcidevices_deviceplugin_{name}_total", {"resource": resource})

    out["metrics"] = {
        r: {n: sample(n, r) for n in ("registrations", "allocated_devices", "allocation_failures", "health_changes")}
        for r in (NIC, POOL, USB)
    }


@step("stop")
def _stop() -> None:
    sockets = {r: s.socket_path for r, s in plugins.status().items()}
    plugins.set_desired([])
    ended = wait_until(lambda: all(kubelet.stream_ended(r) for r in sockets), WAIT_S)
    gone = wait_until(lambda: not any(os.path.exists(p) for p in sockets.values()), WAIT_S)
    stop.set()
    plugins.wake()
    supervisor.join(WAIT_S)
    out["stop"] = {
        "plugins": sorted(sockets),
        "streams_ended": ended,
        "sockets_gone": gone,
        "supervisor_alive": supervisor.is_alive(),
        "left_in_dir": sorted(n for n in os.listdir(kubelet.plugin_dir) if n.startswith(registration.SOCKET_PREFIX)),
    }


if supervisor.is_alive():  # a failed step above must not leave the guest waiting on the thread
    stop.set()
    plugins.wake()
    supervisor.join(WAIT_S)
kubelet.stop()
out["drivers_after"] = {a: driver(a) for a in e1000e + legs}
emit(out)
sys.exit(1 if out["errors"] else 0)
