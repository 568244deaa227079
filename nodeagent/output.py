"""Renders discovery results for people (kubectl-style tables) and programs (JSON, YAML)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import yaml

Column = tuple[str, Callable[[Mapping[str, Any]], object]]


def _s(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    status: Mapping[str, Any] = obj.get("status", {})
    return status


def _critical(obj: Mapping[str, Any]) -> str:
    if _s(obj).get("hostCritical"):
        return "yes"
    return "warn" if _s(obj).get("hostWarnings") else ""


PCI_COLUMNS: list[Column] = [
    ("NAME", lambda o: o["metadata"]["name"]),
    ("ADDRESS", lambda o: _s(o)["address"]),
    ("VENDOR ID", lambda o: _s(o)["vendorId"]),
    ("DEVICE ID", lambda o: _s(o)["deviceId"]),
    ("NODE NAME", lambda o: _s(o)["nodeName"]),
    ("DESCRIPTION", lambda o: _s(o)["description"]),
    ("KERNEL DRIVER IN USE", lambda o: _s(o)["kernelDriverInUse"]),
    ("HOST CRITICAL", _critical),
]
PCI_WIDE: list[Column] = [
    ("IOMMU GROUP", lambda o: _s(o)["iommuGroup"]),
    ("NUMA", lambda o: _s(o).get("numaNode", "")),
    ("RESOURCE NAME", lambda o: _s(o)["resourceName"]),
    ("REASONS", lambda o: "; ".join([*_s(o)["hostCriticalReasons"], *_s(o).get("hostWarnings", [])])),
]
USB_COLUMNS: list[Column] = [
    ("NAME", lambda o: o["metadata"]["name"]),
    ("VENDOR ID", lambda o: _s(o)["vendorID"]),
    ("PRODUCT ID", lambda o: _s(o)["productID"]),
    ("NODE NAME", lambda o: _s(o)["nodeName"]),
    ("DEVICE PATH", lambda o: _s(o)["devicePath"]),
    ("DESCRIPTION", lambda o: _s(o)["description"]),
]
USB_WIDE: list[Column] = [
    ("PCI ADDRESS", lambda o: _s(o)["pciAddress"]),
    ("CLASS", lambda o: _s(o)["classType"]),
    ("PORT", lambda o: _s(o)["portPath"]),
    ("SERIAL", lambda o: _s(o).get("serial", "")),
    ("RESOURCE NAME", lambda o: _s(o)["resourceName"]),
]


def table(objects: Sequence[Mapping[str, Any]], columns: Sequence[Column]) -> str:
    """Left-aligned columns separated by three spaces, as `kubectl get` prints them."""
    rows = [[h for h, _ in columns]] + [[str(get(o)) for _, get in columns] for o in objects]
    widths = [max(len(r[i]) for r in rows) for i in range(len(columns))]
    lines = ["   ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines) + "\n"


def render(doc: Mapping[str, Any], fmt: str) -> str:
    """`doc` is `{"pciDevices": [...], "usbDevices": [...]}`; fmt is table, wide, yaml or json."""
    if fmt == "json":
        return json.dumps(doc, indent=2) + "\n"
    if fmt == "yaml":
        return yaml.safe_dump(dict(doc), sort_keys=False, allow_unicode=True)
    wide = fmt == "wide"
    pci = table(doc["pciDevices"], PCI_COLUMNS + (PCI_WIDE if wide else []))
    usb = table(doc["usbDevices"], USB_COLUMNS + (USB_WIDE if wide else [])) if doc["usbDevices"] else ""
    return pci + ("\n" + usb if usb else "")
