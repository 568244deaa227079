"""The binder and discovery against a real Linux kernel in qemu (one guest boot for the whole module).

The guest script tests/kernel/guest/binding.py acts and reports what it saw; these tests judge it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from nodeagent.sysfs import pci
from tests.support import qemu

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def guest(guest_image: qemu.GuestImage) -> dict[str, Any]:
    run = qemu.run_guest(guest_image, REPO, "tests/kernel/guest/binding.py", guest_timeout=240, boot_allowance=240)
    result = run.result()
    assert result, f"the guest reported nothing ({run.verdict}, {run.seconds:.0f}s):\n{qemu.tail(run.output)}"
    result["_verdict"] = run.verdict
    result["_output"] = run.output
    return result


def vmm_blocks(text: str) -> dict[str, dict[str, str]]:
    """`lspci -vmm` output as {slot: {field: value}}."""
    blocks: dict[str, dict[str, str]] = {}
    for chunk in text.strip().split("\n\n"):
        fields = dict(line.split(":\t", 1) for line in chunk.splitlines() if ":\t" in line)
        if "Slot" in fields:
            blocks[fields["Slot"]] = fields
    return blocks


def test_the_guest_run_passes_without_a_failed_step(guest: dict[str, Any]) -> None:
    assert guest["errors"] == {}, "\n".join(guest["errors"].values())
    assert guest["_verdict"] == "PASS", qemu.tail(guest["_output"])


def test_binding_moves_a_nic_to_vfio_pci_with_driver_override_unbind_and_bind(guest: dict[str, Any]) -> None:
    nic = guest["devices"]["e1000e"][0]
    bind = guest["bind"]
    assert guest["record"] == [nic, "e1000e"]
    assert (bind["outcome"], bind["kernel_driver"], bind["dev_node"]) == ("Bound", "vfio-pci", True)
    assert bind["writes"] == [
        [f"/sys/bus/pci/devices/{nic}/driver_override", "vfio-pci"],
        ["/sys/bus/pci/drivers/e1000e/unbind", nic],
        ["/sys/bus/pci/drivers/vfio-pci/bind", nic],
    ]
    assert (guest["bind_again"]["outcome"], guest["bind_again"]["writes"]) == ("Bound", [])


def test_release_writes_nothing_while_a_process_holds_a_real_vfio_device_fd(guest: dict[str, Any]) -> None:
    held = guest["release_in_use"]
    pid = guest["holder"]["pid"]
    assert guest["holder"]["said"].startswith("held ")
    assert (held["outcome"], held["writes"], held["kernel_driver"]) == ("InUse", [], "vfio-pci")
    assert [pid, "vfio-holder", f"/dev/vfio/{guest['bind']['group']}"] in held["holders"]
    assert f"vfio-holder (pid {pid})" in held["message"]


def test_a_forced_unbind_stays_pending_until_the_holder_closes_and_the_agent_keeps_serving(
    guest: dict[str, Any],
) -> None:
    nic = guest["devices"]["e1000e"][0]
    forced = guest["forced"]
    assert (forced["outcome"], forced["pending"]) == ("UnbindPending", True)
    assert forced["writes"] == [["/sys/bus/pci/drivers/vfio-pci/unbind", nic]]
    assert guest["holder"]["pid"] in [h[0] for h in forced["holders"]]
    assert (guest["meanwhile_bind"], guest["meanwhile_release"], guest["meanwhile_driver"]) == (
        "Bound",
        "Released",
        "e1000e",
    )
    for again in (guest["again_while_pending"], guest["restarted_while_pending"]):
        assert (again["outcome"], again["writes"]) == ("UnbindPending", [])
    assert guest["pending_cleared"] is True
    release = guest["release"]
    assert (release["outcome"], release["kernel_driver"], release["dev_node"]) == ("Released", "e1000e", False)
    assert release["override"] == "(null)"


def test_a_two_nic_group_behind_a_pci_bridge_is_complete_only_with_both_bound(guest: dict[str, Any]) -> None:
    legs = guest["devices"]["e1000"]
    group = guest["group"]
    assert (group["bind_one"], group["bind_two"]) == ("Bound", "Bound")
    assert group["one"] == {"complete": False, "missing": [legs[1]], "viable": False}
    assert group["both"] == {"complete": True, "missing": [], "viable": True}
    assert group["bridges"] == group["others"] and len(group["others"]) == 1
    assert group["bridge_driver_after"] == group["bridge_driver_before"]
    assert (group["release"], group["drivers_after"]) == (["Released", "Released"], ["e1000", "e1000"])


def test_a_mounted_disks_controller_is_host_critical_and_binding_it_is_refused(guest: dict[str, Any]) -> None:
    nvme = guest["devices"]["nvme"][0]
    flagged = {p["address"]: p for p in guest["pci"] if p["hostCritical"]}
    assert nvme in flagged
    assert any("/mnt/data" in r for r in flagged[nvme]["hostCriticalReasons"])
    refused = guest["critical_bind"]
    assert (refused["outcome"], refused["writes"], refused["kernel_driver"]) == ("Refused", [], "nvme")
    assert guest["no_driverless"] == []


def test_discovery_agrees_with_lspci(guest: dict[str, Any]) -> None:
    # The guest imports the repository over 9p, so it scans with the accelerator built here (same CPython ABI).
    assert guest["scan_accelerated"] == (pci.ACCELERATOR is not None)
    assert guest["scan_paths_agree"]  # the C and the Python path read a real kernel's sysfs alike
    ids, names = vmm_blocks(guest["lspci_ids"]), vmm_blocks(guest["lspci_names"])
    endpoints = {slot for slot, f in ids.items() if f["Class"] != "0604"}
    found = {p["address"]: p for p in guest["pci"]}
    assert set(found) == endpoints and len(endpoints) >= 10
    for slot in sorted(endpoints):
        p, n = found[slot], names[slot]
        assert (p["vendorId"], p["deviceId"]) == (ids[slot]["Vendor"], ids[slot]["Device"]), slot
        assert p["kernelDriverInUse"] == ids[slot].get("Driver", ""), slot
        assert p["description"] == f"{n['Class']}: {n['Vendor']} {n['Device']}", slot


def test_discovery_agrees_with_lsusb_including_two_devices_with_equal_ids(guest: dict[str, Any]) -> None:
    listed = set()
    for line in guest["lsusb"].splitlines():
        words = line.split()
        bus, dev, vid_pid = int(words[1]), int(words[3].rstrip(":")), words[5]
        if not vid_pid.startswith("1d6b:"):  # root hubs are not USB devices to claim
            listed.add((bus, dev, vid_pid))
    found = {(u["busNum"], u["devNum"], f"{u['vendorID']}:{u['productID']}") for u in guest["usb"]}
    assert found == listed
    twins = [u for u in guest["usb"] if (u["vendorID"], u["productID"]) == ("0627", "0001")]
    assert len(twins) == 2 and len({u["devicePath"] for u in twins}) == 2
    xhci = {p["address"] for p in guest["pci"] if p["description"].startswith("USB controller")}
    assert {u["pciAddress"] for u in guest["usb"]} == xhci


def test_the_guest_has_the_agents_python_dependencies(guest: dict[str, Any]) -> None:
    imports = guest["imports"]
    assert imports["python"].startswith("3.11.")
    assert all(imports[m] for m in ("grpc", "protobuf", "pyudev", "yaml"))


def test_a_binder_killed_after_any_write_converges_on_the_real_kernel(guest: dict[str, Any]) -> None:
    runs = guest["crashes"]
    assert len(runs) == 12
    for action, k, then, crashed, _, outcome, final in runs:
        where = f"{action} killed after write {k}, then {then}"
        assert crashed, where
        assert (outcome, final) == (("Bound", "vfio-pci") if then == "bind" else ("Released", "e1000e")), where
    assert None in [r[4] for r in runs], "no crash left the device driverless in between"
    assert guest["crashes_final_driver"] == "e1000e"
