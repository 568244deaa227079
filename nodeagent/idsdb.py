"""The pci.ids and usb.ids names databases, and lspci's way of naming a device from them.

Descriptions must read exactly as `lspci -vmm` prints them (upstream builds its descriptions the same way, fallbacks
included), so the lookups here reproduce lspci's rules: subclass name, else `<class name> [ccss]`, else
`Class ccss`; `Vendor vvvv` and `Device dddd` for unknown ids.

Only the class tables stay in memory. A node has a handful of distinct devices, so a vendor's or device's name is read
from the file the first time it is asked for and cached; keeping the whole text and an index of its ~6,000
vendors cost the agent 4.3 MiB for names it never shows.
"""

from __future__ import annotations

import functools
import gzip
import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

PCI_IDS_PATHS = ("/usr/share/misc/pci.ids", "/usr/share/hwdata/pci.ids", "/usr/share/pci.ids")
USB_IDS_PATHS = ("/usr/share/misc/usb.ids", "/usr/share/hwdata/usb.ids", "/usr/share/usb.ids")

_ITEM = re.compile(r"^\t([0-9a-f]{2,4})  (.*)$", re.M)
_VENDOR_START = re.compile(r"^[0-9a-f]{4}  ", re.M)
_SECTION = re.compile(r"^[A-Z]{1,4} ", re.M)
_HEX4 = re.compile(r"[0-9a-f]{4}")


@dataclass
class IdsDatabase:
    """One ids file (pci.ids or usb.ids): vendors, their devices, and device classes.

    Mutable only as a lookup cache; build it with `IdsDatabase.parse(text)` or `load_ids(paths)`. `read` gives the
    file's text again when a name not yet cached is asked for.
    """

    read: Callable[[], str]
    source: str = ""
    _vendors: dict[str, str | None] = field(default_factory=dict, repr=False)
    _devices: dict[tuple[str, str], str | None] = field(default_factory=dict, repr=False)
    _classes: dict[str, str] = field(default_factory=dict, repr=False)
    _subclasses: dict[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def parse(cls, text: str, source: str = "", read: Callable[[], str] | None = None) -> IdsDatabase:
        """The database of `text`; `read` (default: keep `text`) gives the text again for vendor lookups."""
        db = cls(read or (lambda: text), source)
        db._parse_classes(text[_vendors_end(text) :])
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

    def _lookup(self, vid: str, did: str | None) -> None:
        """Fill the caches for vendor `vid` (and its device `did`) from the file; nothing when it cannot be read."""
        try:
            text = self.read()
        except OSError as e:
            log.warning("cannot read names database", extra={"path": self.source, "error": str(e)})
            return  # not cached: the next lookup tries again
        vendor, block = _find_vendor(text, vid)
        self._vendors[vid] = vendor
        if did is not None:
            m = re.compile(rf"^\t{did}  (.*)$", re.M).search(text, *block) if vendor is not None else None
            self._devices[(vid, did)] = m.group(1).strip() if m else None

    def vendor(self, vendor_id: str) -> str | None:
        vid = vendor_id.lower()
        if vid not in self._vendors and _HEX4.fullmatch(vid):
            self._lookup(vid, None)
        return self._vendors.get(vid)

    def device(self, vendor_id: str, device_id: str) -> str | None:
        key = (vendor_id.lower(), device_id.lower())
        if key not in self._devices and _HEX4.fullmatch(key[0]) and _HEX4.fullmatch(key[1]):
            self._lookup(*key)
        return self._devices.get(key)

    def names(self, vendor_id: str, device_id: str) -> tuple[str | None, str | None]:
        """(vendor name, device name): a new device's lookup fills its vendor too, so asking for both here reads the
        file once where vendor() then device() would read it twice."""
        device = self.device(vendor_id, device_id)
        return self.vendor(vendor_id), device

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


def _vendors_end(text: str) -> int:
    section = _SECTION.search(text)
    return section.start() if section else len(text)


def _find_vendor(text: str, vid: str) -> tuple[str | None, tuple[int, int]]:
    """Vendor `vid`'s name and the span of its device block in `text`; None when the vendor section lacks it."""
    end = _vendors_end(text)
    m = re.compile(rf"^{vid}  (.*)$", re.M).search(text, 0, end)
    if m is None:
        return None, (0, 0)
    following = _VENDOR_START.search(text, m.end(), end)
    return m.group(1).strip(), (m.end(), following.start() if following else end)


def load_ids(paths: Sequence[str]) -> IdsDatabase:
    """The first readable file of `paths`; an empty database (every name falls back to ids) when none is."""
    for path in paths:
        if os.path.exists(path):
            try:
                return IdsDatabase.parse(_read_text(path), source=path, read=functools.partial(_read_text, path))
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
