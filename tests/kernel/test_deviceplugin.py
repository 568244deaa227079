"""The device plugins against a real kernel's vfio in qemu (one guest boot for the whole module).

The guest script tests/kernel/guest/deviceplugin.py binds with the real binder, serves with the real plugin manager
and health probe, and plays the kubelet with tests/support/fake_kubelet.py; these tests judge what it reported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from policy import names
from tests.support import qemu

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def guest(guest_image: qemu.GuestImage) -> dict[str, Any]:
    run = qemu.run_guest(guest_image, REPO, "tests/kernel/guest/deviceplugin.py", guest_timeout=300, boot_allowance=240)
    result = run.result()
    assert result, f"the guest reported nothing ({run.verdict}, {run.seconds:.0f}s):\n{qemu.tail(run.output)}"
    result["_verdict"] = run.verdict
    result["_output"] = run.output
    result["_seconds"] = run.seconds
    return result


def entry(address: str, health: str) -> list[Any]:
    """An advertised device as the fake kubelet saw it: no NUMA topology in the guest (numa_node -1, omitted)."""
    return [address, health, []]


def test_the_guest_run_passes_without_a_failed_step(guest: dict[str, Any]) -> None:
    assert guest["errors"] == {}, "\n".join(guest["errors"].values())
    assert guest["_verdict"] == "PASS", qemu.tail(guest["_output"])


def test_the_plugin_registers_with_the_kubelet_and_lists_an_unbound_device_as_unhealthy(
    guest: dict[str, Any],
) -> None:
    nic = guest["devices"]["e1000e"][0]
    reg = guest["register"]
    assert guest["resources"]["nic"] == names.pci_device_resource_name("Intel Corporation", "guest", nic)
    assert (reg["version"], reg["resource_name"], reg["preferred_available"]) == (
        "v1beta1",
        guest["resources"]["nic"],
        True,
    )
    assert reg["socket_is_socket"] and len(reg["socket_path"].encode()) < 108
    assert reg["driver"] == "e1000e"
    assert reg["first_list"] == [entry(nic, "Unhealthy")]
    assert reg["allocate_unbound"]["code"] == "UNAVAILABLE"
    assert "bound to e1000e, not vfio-pci" in reg["allocate_unbound"]["details"]


def test_after_a_real_bind_the_plugin_reports_the_device_healthy(guest: dict[str, Any]) -> None:
    nic = guest["devices"]["e1000e"][0]
    bind = guest["bind"]
    assert (bind["outcome"], bind["driver"]) == ("Bound", "vfio-pci")
    assert bind["list"] == [entry(nic, "Healthy")]
    assert bind["kernel_viable"] is True
    assert guest["model"][nic] == [int(bind["result_group"]), None]


def test_allocate_names_the_vfio_nodes_the_kernel_created_and_the_address(guest: dict[str, Any]) -> None:
    nic = guest["devices"]["e1000e"][0]
    a = guest["allocate"]
    group = a["kernel_group"]
    assert a["preferred"] == [nic] and a["preferred_must"] == [nic]
    (container,) = a["answer"]
    assert container["envs"] == {names.pci_resource_env_var(guest["resources"]["nic"]): nic}
    paths = [d[1] for d in container["devices"]]
    assert paths[:2] == ["/dev/vfio/vfio", f"/dev/vfio/{group}"]
    assert all(d[0] == d[1] and d[2] == "mrw" for d in container["devices"])
    # The group node is the character device the kernel made for this device's iommu group, not just a name.
    group_node = a["nodes"][f"/dev/vfio/{group}"]
    assert group_node == {"exists": True, "char": True, "dev": a["kernel_group_dev"]}
    assert a["nodes"]["/dev/vfio/vfio"] == {"exists": True, "char": True, "dev": a["vfio_misc_dev"]}


def test_allocate_adds_the_iommufd_nodes_exactly_when_the_guest_kernel_made_them(guest: dict[str, Any]) -> None:
    a = guest["allocate"]
    paths = [d[1] for d in a["answer"][0]["devices"]]
    made = [c for c in a["vfio_dev_cdevs"] if c in (a["devices_dir"] or [])]  # sysfs entry AND devtmpfs node
    if a["iommu_node"] and made:
        assert paths[2:] == ["/dev/iommu", *(f"/dev/vfio/devices/{c}" for c in made)]
        assert all(a["nodes"][p]["exists"] and a["nodes"][p]["char"] for p in paths)
    else:  # Debian's 6.1: sysfs has vfio-dev/vfioN but there is no iommufd and no /dev/vfio/devices node
        assert paths == ["/dev/vfio/vfio", f"/dev/vfio/{a['kernel_group']}"]


def test_allocate_refuses_an_id_the_plugin_does_not_serve(guest: dict[str, Any]) -> None:
    unknown = guest["allocate"]["unknown"]
    assert unknown["code"] == "NOT_FOUND"
    assert "0000:ff:1f.7" in unknown["details"]


def test_a_device_the_kubelet_gave_to_a_pod_is_not_released_and_stays_healthy(guest: dict[str, Any]) -> None:
    nic = guest["devices"]["e1000e"][0]
    held = guest["in_use"]
    assert (held["outcome"], held["pods"], held["driver"]) == ("InUse", ["vms/virt-launcher-vm1-x"], "vfio-pci")
    assert "vms/virt-launcher-vm1-x" in held["message"]
    assert held["list"] == [entry(nic, "Healthy")]


def test_a_pooled_group_is_healthy_only_while_every_member_is_bound(guest: dict[str, Any]) -> None:
    a, b = guest["devices"]["e1000"]
    g = guest["group"]
    assert g["kernel_groups"][0] == g["kernel_groups"][1]
    assert g["initial"] == [entry(a, "Unhealthy"), entry(b, "Unhealthy")]
    assert (g["bind_a"], g["bind_b"]) == ("Bound", "Bound")
    # the plugin's verdict agrees with the kernel's (VFIO_GROUP_GET_STATUS viability) both ways
    assert g["one_bound"] == [entry(a, "Unhealthy"), entry(b, "Unhealthy")] and g["one_bound_viable"] is False
    assert g["both_bound"] == [entry(a, "Healthy"), entry(b, "Healthy")] and g["both_bound_viable"] is True
    assert g["after_release_b"] == [entry(a, "Unhealthy"), entry(b, "Unhealthy")]
    assert g["allocate_incomplete"]["code"] == "UNAVAILABLE"
    assert f"iommu group {g['kernel_groups'][0]} incomplete: {b}" in g["allocate_incomplete"]["details"]
    assert (g["release_a"], g["release_b"], g["drivers_after"]) == ("Released", "Released", ["e1000", "e1000"])


def test_a_pooled_group_is_preferred_and_allocated_whole_with_one_group_node(guest: dict[str, Any]) -> None:
    a, b = guest["devices"]["e1000"]
    g = guest["group"]
    group = g["kernel_groups"][0]
    assert g["preferred_one_must"] == [a, b] and g["preferred_none"] == [a, b]
    (container,) = g["allocate"]
    assert container["envs"] == {names.pci_resource_env_var(guest["resources"]["pool"]): f"{a},{b}"}
    assert [d[1] for d in container["devices"]][:2] == ["/dev/vfio/vfio", f"/dev/vfio/{group}"]
    assert [d[1] for d in container["devices"]].count(f"/dev/vfio/{group}") == 1


def test_after_release_the_device_goes_unhealthy_and_allocate_fails(guest: dict[str, Any]) -> None:
    nic = guest["devices"]["e1000e"][0]
    r = guest["release"]
    assert (r["outcome"], r["driver"], r["group_node"]) == ("Released", "e1000e", False)
    assert r["list"] == [entry(nic, "Unhealthy")]
    assert r["allocate"]["code"] == "UNAVAILABLE"
    # the reason is the last probe's: "bound to e1000e" or, when it ran mid-release, "bound to no driver"
    assert f"({nic}: bound to " in r["allocate"]["details"] and ", not vfio-pci)" in r["allocate"]["details"]
    assert guest["drivers_after"] == guest["drivers_before"]


def test_the_periodic_probe_notices_a_kernel_change_within_a_few_intervals(guest: dict[str, Any]) -> None:
    # health_interval_s is 1.0 in the guest; TCG makes every step slower, so allow a generous margin.
    assert guest["release"]["unhealthy_after_s"] < 10
    assert guest["group"]["unhealthy_after_s"] < 10


def test_a_usb_plugin_hands_out_the_kernels_node_owned_by_qemu_until_the_device_is_unplugged(
    guest: dict[str, Any],
) -> None:
    u, stick = guest["usb"], guest["stick"]
    device_id = f"usb-{stick['bus']:03d}-{stick['devnum']:03d}"
    assert (u["owner_changed"], u["owner"], u["owner_changed_again"]) == (True, [107, 107], False)
    assert u["list"] == [[device_id, "Healthy", []]]
    (container,) = u["answer"]
    assert container["envs"] == {
        names.usb_resource_env_var(guest["resources"]["usb"]): f"{stick['bus']}:{stick['devnum']}"
    }
    assert container["devices"] == [[stick["path"], stick["path"], "mrw"]]
    assert u["node"] == {"exists": True, "char": True, "dev": u["sysfs_dev"]}
    assert u["after_remove"] == [[device_id, "Unhealthy", []]] and u["node_after_remove"] is False
    assert u["allocate_removed"]["code"] == "UNAVAILABLE"
    assert f"{stick['path']} does not exist" in u["allocate_removed"]["details"]
    assert u["unhealthy_after_s"] < 10


def test_metrics_count_registrations_allocations_refusals_and_health_changes(guest: dict[str, Any]) -> None:
    m = guest["metrics"]
    nic, pool = m[guest["resources"]["nic"]], m[guest["resources"]["pool"]]
    assert nic == {"registrations": 1, "allocated_devices": 1, "allocation_failures": 3, "health_changes": 2}
    assert pool == {"registrations": 1, "allocated_devices": 2, "allocation_failures": 1, "health_changes": 4}
    assert m[guest["resources"]["usb"]] == {
        "registrations": 1,
        "allocated_devices": 1,
        "allocation_failures": 1,
        "health_changes": 1,
    }


def test_stopping_the_plugins_ends_the_streams_and_removes_the_sockets(guest: dict[str, Any]) -> None:
    s = guest["stop"]
    assert s["plugins"] == sorted(guest["resources"].values())
    assert (s["streams_ended"], s["sockets_gone"], s["supervisor_alive"], s["left_in_dir"]) == (True, True, False, [])
