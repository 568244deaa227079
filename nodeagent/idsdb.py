"""The pci.ids and usb.ids names databases, and lspci's way of naming a device from them.

Descriptions must read exactly as `lspci -vmm` prints them (upstream builds its descriptions the same way, fallbacks
included), so the lookups here reproduce lspci's rules: subclass name, else `<class name> [ccss]`, else
`Class ccss`; `Vendor vvvv` and `Device dddd` for unknown ids. Loading is cheap: vendor lines are indexed with one
regular-expression pass and a vendor's device block is parsed the first time it is asked for.
"""

from __future__ import annotations

import gzip
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

PCI_IDS_PATHS = ("/usr/share/misc/pci.ids", "/usr/share/hwdata/pci.ids", "/usr/share/pci.ids")
USB_IDS_PATHS = ("/usr/share/misc/usb.ids", "/usr/share/hwdata/usb.ids", "/usr/share/usb.ids")

_VENDOR = re.compile(r"^([0-9a-f]{4})  (.*)$", re.M)
_ITEM = re.compile(r"^\t([0-9a-f]{2,4})  (.*)$", re.M)
_SECTION = re.compile(r"^[A-Z]{1,4} ", re.M)


@dataclass
class IdsDatabase:
    """One ids file (pci.ids or usb.ids): vendors, their devices, and device classes.

    Mutable only as a lookup cache; build it with `IdsDatabase.parse(text)` or `load_ids(paths)`.
    """

    text: str
    source: str = ""
    _vendors: dict[str, tuple[str, int, int]] = field(default_factory=dict, repr=False)
    _devices: dict[str, dict[str, str]] = field(default_factory=dict, repr=False)
    _classes: dict[str, str] = field(default_factory=dict, repr=False)
    _subclasses: dict[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def parse(cls, text: str, source: str = "") -> IdsDatabase:
        db = cls(text, source)
        section = _SECTION.search(text)
        vendors_end = section.start() if section else len(text)
        matches = list(_VENDOR.finditer(text, 0, vendors_end))
        for i, m in enumerate(matches):
            end = matches[i + 1].start() if i + 1 < len(matches) else vendors_end
            db._vendors[m.group(1)] = (m.group(2).strip(), m.end(), end)
        db._parse_classes(text[vendors_end:])
        return db

    def _parse_classes(self, text: str) -> None:
        current: str | None = None
        for line in text.split("\n"):
            if line.startswith("C "):
                cls_id, _, name = line[2:].partition("  ")
                current = cls_id.strip()
                self._classes[current] = name.strip()
            elif line and not line[0].isspace() and not line.startswith("#"):
                current = None  # another section (usb.ids: AT, HID, R, ...)
            elif current is not None and line.startswith("\t") and not line.startswith("\t\t"):
                sub_id, _, name = line[1:].partition("  ")
                self._subclasses[current + sub_id.strip()] = name.strip()

    def vendor(self, vendor_id: str) -> str | None:
        entry = self._vendors.get(vendor_id.lower())
        return entry[0] if entry else None

    def device(self, vendor_id: str, device_id: str) -> str | None:
        vid = vendor_id.lower()
        devices = self._devices.get(vid)
        if devices is None:
            entry = self._vendors.get(vid)
            if entry is None:
                return None
            devices = {m.group(1): m.group(2).strip() for m in _ITEM.finditer(self.text, entry[1], entry[2])}
            self._devices[vid] = devices
        return devices.get(device_id.lower())

    def class_name(self, class_id: str) -> str | None:
        """Name of a two-digit class (`02`), None when unknown."""
        return self._classes.get(class_id.lower())

    def subclass_name(self, class_id: str, subclass_id: str) -> str | None:
        return self._subclasses.get(class_id.lower() + subclass_id.lower())

    # -- lspci's naming ----------------------------------------------------------------------------------------

    def lspci_class(self, class_code: str) -> str:
        """`Ethernet controller`, `Network controller [0277]` or `Class fe01`, as `lspci -vmm` prints Class."""
        cls, sub = class_code[:2].lower(), class_code[2:4].lower()
        name = self.subclass_name(cls, sub)
        if name is not None:
            return name
        cls_name = self.class_name(cls)
        if cls_name is not None:
            return f"{cls_name} [{cls}{sub}]"
        return f"Class {cls}{sub}"

    def lspci_vendor(self, vendor_id: str) -> str:
        return self.vendor(vendor_id) or f"Vendor {vendor_id.lower()}"

    def lspci_device(self, vendor_id: str, device_id: str) -> str:
        return self.device(vendor_id, device_id) or f"Device {device_id.lower()}"


def _read_text(path: str) -> str:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data: bytes = f.read()
    return data.decode("utf-8", "replace")


def load_ids(paths: Sequence[str]) -> IdsDatabase:
    """The first readable file of `paths`; an empty database (every name falls back to ids) when none is."""
    for path in paths:
        if os.path.exists(path):
            try:
                return IdsDatabase.parse(_read_text(path), source=path)
            except OSError as e:
                log.warning("cannot read names database", extra={"path": path, "error": str(e)})
    log.warning("no names database found; descriptions will show ids", extra={"paths": list(paths)})
    return IdsDatabase.parse("", source="")


@dataclass(frozen=True)
class NamesDatabases:
    """pci.ids and usb.ids together, loaded once per process and passed to discovery."""

    pci: IdsDatabase
    usb: IdsDatabase

    @classmethod
    def load(cls, pci_ids: str | None = None, usb_ids: str | None = None) -> NamesDatabases:
        return cls(
            pci=load_ids([pci_ids] if pci_ids else PCI_IDS_PATHS),
            usb=load_ids([usb_ids] if usb_ids else USB_IDS_PATHS),
        )
