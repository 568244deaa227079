from __future__ import annotations

from typing import Any

from tests.support import reference


def _ours(replay: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {o["status"]["address"]: o["status"] for o in replay["discovery"]["pciDevices"]}


def _listed(replay: dict[str, Any]) -> dict[str, dict[str, str]]:
    """lspci's functions minus bridges, judged by lspci's own dump of config byte 0x0e."""
    headers = reference.parse_header_types(replay["lspci_config"])
    numeric = reference.parse_vmm(replay["lspci_numeric"])
    assert set(headers) == set(numeric)
    return {a: r for a, r in numeric.items() if headers[a] & 0x7F not in (1, 2)}


def test_discovery_lists_every_function_lspci_lists_except_bridges(replay: dict[str, Any]) -> None:
    listed = _listed(replay)
    ours = _ours(replay)
    assert len(listed) > 150
    assert set(ours) == set(listed)
    headers = reference.parse_header_types(replay["lspci_config"])
    assert sorted(replay["bridges"]) == sorted(a for a, h in headers.items() if h & 0x7F in (1, 2))


def test_ids_class_revision_subsystem_driver_and_numa_agree_with_lspci(replay: dict[str, Any]) -> None:
    ours = _ours(replay)
    for address, rec in _listed(replay).items():
        status = ours[address]
        assert status["vendorId"] == rec["Vendor"], address
        assert status["deviceId"] == rec["Device"], address
        assert status["classId"] == rec["Class"], address
        assert status["revision"] == rec.get("Rev", "00"), address
        assert status["subsystemVendorId"] == rec.get("SVendor", "0000"), address
        assert status["subsystemDeviceId"] == rec.get("SDevice", "0000"), address
        assert status["kernelDriverInUse"] == rec.get("Driver", ""), address
        assert status.get("numaNode") == (int(rec["NUMANode"]) if "NUMANode" in rec else None), address


def test_descriptions_are_the_three_names_lspci_prints(replay: dict[str, Any]) -> None:
    names = reference.parse_vmm(replay["lspci_names"])
    ours = _ours(replay)
    for address in _listed(replay):
        rec = names[address]
        assert ours[address]["description"] == f"{rec['Class']}: {rec['Vendor']} {rec['Device']}", address


def test_the_recording_has_no_iommu_groups_and_nothing_fails(replay: dict[str, Any]) -> None:
    for status in _ours(replay).values():
        assert status["iommuGroup"] == "" and status["iommuGroupMembers"] == []


def test_recorded_server_flags_its_lpc_and_smbus_functions(replay: dict[str, Any]) -> None:
    critical = {a for a, s in _ours(replay).items() if s["hostCritical"]}
    by_class = {a for a, s in _ours(replay).items() if s["classId"] in ("0601", "0c05")}
    assert by_class and critical >= by_class


def test_usb_devices_agree_with_lsusb(replay: dict[str, Any]) -> None:
    lsusb = [d for d in reference.parse_lsusb(replay["lsusb"]) if d["devnum"] != 1]  # devnum 1: root hubs
    ours = replay["discovery"]["usbDevices"]
    assert len(lsusb) >= 3
    expected = sorted((d["bus"], d["devnum"], d["vendor"], d["product"]) for d in lsusb)
    got = sorted((o["status"]["busNum"], o["status"]["devNum"], o["status"]["vendorID"], o["status"]["productID"])
                 for o in ours)
    assert got == expected
    for obj in ours:
        s = obj["status"]
        assert s["devicePath"] == f"/dev/bus/usb/{s['busNum']:03d}/{s['devNum']:03d}"
        assert obj["metadata"]["name"] == f"replay-{s['vendorID']}-{s['productID']}-{s['busNum']:03d}{s['devNum']:03d}"
        assert s["pciAddress"] in _ours(replay)
        assert _ours(replay)[s["pciAddress"]]["classId"] == "0c03"  # a USB host controller
