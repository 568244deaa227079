"""Guest script for tests/kernel/test_binding.py: the real binder and discovery against a real kernel.

Runs inside the qemu guest (standard device set, tests/support/qemu.py), acts, and emits one JSON object of
observations; the host-side tests make the assertions. Each step is guarded so one failure still reports the rest.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

from nodeagent.discovery import discover
from nodeagent.host.binding import BindingRecord, Result, VfioBinder
from nodeagent.host.groups import group_status
from nodeagent.host.modules import Modprobe
from nodeagent.idsdb import NamesDatabases
from nodeagent.sysfs import pci
from nodeagent.sysfs.root import SysfsRoot
from tests.support.guest import CountingRoot, Crash, CrashingRoot, emit, group_viable, steps, wait_until
from tests.support.guest import pci_attr as attr
from tests.support.guest import pci_by_id as by_id
from tests.support.guest import pci_driver as driver
from tests.support.guest import pci_group as group

out: dict[str, Any] = {"errors": {}}


step = steps(out)


def summary(r: Result, root: CountingRoot, before: int) -> dict[str, Any]:
    return {
        "outcome": str(r.outcome),
        "driver": r.driver,
        "group": r.iommu_group,
        "holders": [[h.pid, h.comm, h.path] for h in r.holders],
        "message": r.message,
        "writes": root.writes[before:],
    }


wait_until(lambda: len(by_id("0x8086", "0x10d3")) == 2 and len(by_id("0x8086", "0x100e")) == 2, 30)
e1000e = by_id("0x8086", "0x10d3")
legs = by_id("0x8086", "0x100e")
nvme = by_id("0x1b36", "0x0010")
out["devices"] = {"e1000e": e1000e, "e1000": legs, "nvme": nvme}
wait_until(lambda: all(driver(a) for a in e1000e + legs), 30)
subprocess.run(["modprobe", "-a", "sd_mod", "ext4"], check=False)

root = CountingRoot("/")
binder = VfioBinder(root, Modprobe(), write_timeout=2.0, verify_timeout=3.0)
nic, other = e1000e
record = BindingRecord(nic, driver(nic))


@step("bind")
def _bind() -> None:
    out["record"] = [record.address, record.original_driver]
    n = len(root.writes)
    t = time.monotonic()
    r = binder.bind(record)
    out["bind"] = summary(r, root, n) | {"elapsed": round(time.monotonic() - t, 3)}
    out["bind"]["dev_node"] = os.path.exists(f"/dev/vfio/{group(nic)}")
    out["bind"]["kernel_driver"] = driver(nic)
    n = len(root.writes)
    out["bind_again"] = summary(binder.bind(record), root, n)


holder: subprocess.Popen[str] | None = None


@step("in_use")
def _in_use() -> None:
    global holder
    holder = subprocess.Popen(
        [sys.executable, "-m", "tests.support.guest", "hold", nic],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None
    out["holder"] = {"pid": holder.pid, "said": holder.stdout.readline().strip()}
    n = len(root.writes)
    out["release_in_use"] = summary(binder.release(record), root, n)
    out["release_in_use"]["kernel_driver"] = driver(nic)


@step("forced")
def _forced() -> None:
    n = len(root.writes)
    t = time.monotonic()
    r = binder.release(record, force=True)
    out["forced"] = summary(r, root, n) | {"elapsed": round(time.monotonic() - t, 3), "pending": binder.pending(nic)}
    out["forced"]["dev_node"] = os.path.exists(f"/dev/vfio/{group(nic)}")
    # the binder keeps serving: another device binds and releases meanwhile
    rec2 = BindingRecord(other, driver(other))
    out["meanwhile_bind"] = str(binder.bind(rec2).outcome)
    out["meanwhile_release"] = str(binder.release(rec2).outcome)
    out["meanwhile_driver"] = driver(other)
    n = len(root.writes)
    out["again_while_pending"] = summary(binder.release(record), root, n)
    # a restarted agent (fresh binder, nothing in memory) must see it as pending and write nothing
    fresh_root = CountingRoot("/")
    fresh = VfioBinder(fresh_root, Modprobe(), write_timeout=2.0)
    out["restarted_while_pending"] = summary(fresh.release(record), fresh_root, 0)


@step("holder_exits")
def _holder_exits() -> None:
    assert holder is not None and holder.stdin is not None
    holder.stdin.close()
    holder.wait(timeout=30)
    t = time.monotonic()
    out["pending_cleared"] = wait_until(lambda: not binder.pending(nic), 30)
    out["pending_cleared_after"] = round(time.monotonic() - t, 3)
    n = len(root.writes)
    r = binder.release(record)
    out["release"] = summary(r, root, n)
    out["release"]["kernel_driver"] = driver(nic)
    out["release"]["dev_node"] = os.path.exists(f"/dev/vfio/{group(nic)}")
    out["release"]["override"] = attr(nic, "driver_override")


@step("group")
def _group() -> None:
    g = group(legs[0])
    sysroot = SysfsRoot("/")
    bridge = [m for m in os.listdir(f"/sys/kernel/iommu_groups/{g}/devices") if m not in legs]
    out["group"] = {"id": g, "others": bridge, "bridge_driver_before": [driver(b) for b in bridge]}
    recs = [BindingRecord(a, driver(a)) for a in legs]
    out["group"]["bind_one"] = str(binder.bind(recs[0]).outcome)
    one = group_status(sysroot, g)
    out["group"]["one"] = {"complete": one.complete, "missing": list(one.missing), "viable": group_viable(g)}
    out["group"]["bind_two"] = str(binder.bind(recs[1]).outcome)
    both = group_status(sysroot, g)
    out["group"]["both"] = {"complete": both.complete, "missing": list(both.missing), "viable": group_viable(g)}
    out["group"]["bridges"] = [m.address for m in both.members if m.bridge]
    out["group"]["bridge_driver_after"] = [driver(b) for b in bridge]
    out["group"]["release"] = [str(binder.release(r).outcome) for r in recs]
    out["group"]["drivers_after"] = [driver(a) for a in legs]


@step("discovery")
def _discovery() -> None:
    disk = [b for b in os.listdir("/sys/block") if b.startswith("nvme")]
    out["disk"] = disk
    os.makedirs("/mnt/data", exist_ok=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", f"/dev/{disk[0]}"], check=True)
    subprocess.run(["mount", f"/dev/{disk[0]}", "/mnt/data"], check=True)
    inv = discover(SysfsRoot("/"), NamesDatabases.load(), "guest")
    out["scan_accelerated"] = pci.ACCELERATOR is not None
    python_path = pci.scan_pci(SysfsRoot("/"), accelerated=False)
    out["scan_paths_agree"] = pci.scan_pci(SysfsRoot("/")) == python_path and len(python_path) > 0
    out["pci"] = [
        {k: d["status"].get(k) for k in ("address", "vendorId", "deviceId", "kernelDriverInUse", "iommuGroup",
                                          "description", "hostCritical", "hostCriticalReasons")}
        for d in inv.pci_devices
    ]  # fmt: skip
    out["usb"] = [
        {k: d["status"].get(k) for k in ("vendorID", "productID", "busNum", "devNum", "devicePath", "pciAddress")}
        for d in inv.usb_devices
    ]
    out["lspci_ids"] = subprocess.run(["lspci", "-D", "-vmm", "-nk"], capture_output=True, text=True).stdout
    out["lspci_names"] = subprocess.run(["lspci", "-D", "-vmm"], capture_output=True, text=True).stdout
    out["lsusb"] = subprocess.run(["lsusb"], capture_output=True, text=True).stdout
    reasons = {p["address"]: p["hostCriticalReasons"] or [] for p in out["pci"]}
    guarded = VfioBinder(root, Modprobe(), host_critical=lambda a: "; ".join(reasons.get(a, [])) or None)
    n = len(root.writes)
    out["critical_bind"] = summary(guarded.bind(BindingRecord(nvme[0], driver(nvme[0]))), root, n)
    out["critical_bind"]["kernel_driver"] = driver(nvme[0])


@step("crashes")
def _crashes() -> None:
    """Kill the binder after each write of a bind and of a release; a fresh binder must converge."""
    rec = BindingRecord(other, driver(other))
    runs = []
    for action, then in (("bind", "bind"), ("bind", "release"), ("release", "release"), ("release", "bind")):
        for k in (1, 2, 3):
            if action == "release":
                VfioBinder(SysfsRoot("/"), Modprobe()).bind(rec)
            crashing = VfioBinder(CrashingRoot(k), Modprobe(), write_timeout=2.0)
            try:
                getattr(crashing, action)(rec)
                crashed = False
            except Crash:
                crashed = True
            after_crash = driver(other)
            r = getattr(VfioBinder(SysfsRoot("/"), Modprobe(), write_timeout=2.0), then)(rec)
            runs.append([action, k, then, crashed, after_crash, str(r.outcome), driver(other)])
            if then == "bind":
                VfioBinder(SysfsRoot("/"), Modprobe()).release(rec)
    out["crashes"] = runs
    out["crashes_final_driver"] = driver(other)


@step("imports")
def _imports() -> None:
    import google.protobuf
    import grpc
    import pyudev
    import yaml

    out["imports"] = {
        "grpc": grpc.__version__,
        "protobuf": google.protobuf.__version__,
        "pyudev": pyudev.__version__,
        "yaml": yaml.__version__,
        "python": sys.version.split()[0],
    }


out["no_driverless"] = sorted(a for a in e1000e + legs + nvme if driver(a) is None)
emit(out)
sys.exit(1 if out["errors"] else 0)
