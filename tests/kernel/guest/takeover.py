"""Guest script for tests/kernel/test_takeover.py: a NIC bound the upstream way, then `pcidevices-agent takeover`.

Upstream binds with `vfio-pci/new_id`; the id then stays with vfio-pci. The second e1000e NIC (same ids) shows it:
an explicit bind to vfio-pci succeeds while the dynamic id is registered and fails once it is removed. Emits one
JSON object of observations; the host-side tests judge them.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from typing import Any

from nodeagent.__main__ import main as agent
from tests.support.guest import PCI, emit, steps, wait_until
from tests.support.guest import pci_attr as attr
from tests.support.guest import pci_driver as driver

DRIVERS = "/sys/bus/pci/drivers"
out: dict[str, Any] = {"errors": {}}
step = steps(out)


def write(path: str, value: str) -> str:
    """Write like a shell `echo value > path` would; return "ok" or the errno name."""
    try:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)
        return "ok"
    except OSError as e:
        return os.strerror(e.errno or 0)


def by_id(vendor: str, device: str) -> list[str]:
    return sorted(a for a in os.listdir(PCI) if attr(a, "vendor") == vendor and attr(a, "device") == device)


def try_vfio_bind(address: str) -> dict[str, Any]:
    """Unbind from e1000e, ask vfio-pci to bind it (no driver_override), note the result, give it back to e1000e."""
    seen: dict[str, Any] = {"unbind": write(f"{DRIVERS}/e1000e/unbind", address)}
    seen["vfio_bind"] = write(f"{DRIVERS}/vfio-pci/bind", address)
    seen["driver"] = driver(address)
    if driver(address) == "vfio-pci":
        write(f"{DRIVERS}/vfio-pci/unbind", address)
    write("/sys/bus/pci/drivers_probe", address)
    wait_until(lambda: driver(address) == "e1000e", 10)
    seen["restored"] = driver(address)
    return seen


def takeover(*args: str) -> dict[str, Any]:
    stdout, stderr = io.StringIO(), io.StringIO()
    rc = agent(["takeover", "--node-name", "guest", *args], out=stdout, err=stderr)
    return {"rc": rc, "out": stdout.getvalue(), "err": stderr.getvalue()}


wait_until(lambda: len(by_id("0x8086", "0x10d3")) == 2, 30)
nics = by_id("0x8086", "0x10d3")
out["nics"] = nics
wait_until(lambda: all(driver(a) == "e1000e" for a in nics), 30)
nic, other = nics
subprocess.run(["modprobe", "vfio-pci"], check=False)


@step("upstream_bind")
def _upstream_bind() -> None:
    # upstream's binder: unbind, new_id (vfio-pci probes the now unbound device), bind (EBUSY/ENODEV when it has it)
    out["upstream"] = {
        "unbind": write(f"{DRIVERS}/e1000e/unbind", nic),
        "new_id": write(f"{DRIVERS}/vfio-pci/new_id", "8086 10d3"),
    }
    out["upstream"]["bind"] = write(f"{DRIVERS}/vfio-pci/bind", nic)
    wait_until(lambda: driver(nic) == "vfio-pci", 10)
    out["upstream"]["driver"] = driver(nic)
    out["upstream"]["override"] = attr(nic, "driver_override")
    out["other_before"] = driver(other)


@step("grab_before")
def _grab_before() -> None:
    out["grab_before"] = try_vfio_bind(other)


@step("dry_run")
def _dry_run() -> None:
    out["dry_run"] = takeover("--claimed", nic, "--dry-run")


@step("takeover")
def _takeover() -> None:
    out["takeover"] = takeover("--claimed", nic)
    out["nic_after"] = driver(nic)
    group = os.path.basename(os.readlink(f"{PCI}/{nic}/iommu_group"))
    out["dev_vfio_after"] = os.path.exists(f"/dev/vfio/{group}")


@step("grab_after")
def _grab_after() -> None:
    out["grab_after"] = try_vfio_bind(other)


@step("second_run")
def _second_run() -> None:
    out["second_run"] = takeover("--claimed", nic)
    out["nic_after_second"] = driver(nic)


emit(out)
sys.exit(1 if out["errors"] else 0)
