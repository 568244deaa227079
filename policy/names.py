"""Names of things: PCI addresses, object names, label and annotation keys.

Upstream's naming rules (docs/upstream.md) are the API contract the Harvester UI depends on, so they live in one
place and are used by the agent, the webhook and the tests alike.
"""

from __future__ import annotations

import re

GROUP = "devices.harvesterhci.io"
VERSION = "v1beta1"
API_VERSION = f"{GROUP}/{VERSION}"

LABEL_NODENAME = "nodename"
ANNOTATION_REQUESTED_BY = f"{GROUP}/requested-by"

# 4- to 8-digit domains: Intel VMD puts devices into domains such as 10000.
PCI_ADDRESS_PATTERN = r"^[0-9a-f]{4,8}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$"
_PCI_ADDRESS = re.compile(PCI_ADDRESS_PATTERN)


class InvalidName(ValueError):
    """A value that must never become part of a path or an object name."""


def is_pci_address(value: object) -> bool:
    return isinstance(value, str) and _PCI_ADDRESS.fullmatch(value) is not None


def pci_address(value: object) -> str:
    """Return value if it is a valid PCI address; raise InvalidName otherwise."""
    if not is_pci_address(value):
        raise InvalidName(f"{value!r} is not a PCI address (expected e.g. 0000:3b:00.0)")
    assert isinstance(value, str)
    return value


def pcidevice_name(node: str, address: str) -> str:
    """Upstream's object name: `<node>-<address without ':' and '.'>` (titan, 0000:00:1f.6 -> titan-0000001f6)."""
    return f"{node}-{pci_address(address).replace(':', '').replace('.', '')}"


def usbdevice_name(node: str, vendor_id: str, product_id: str, bus: int, device: int) -> str:
    """Upstream's object name: `<node>-<vvvv>-<pppp>-<BBB><DDD>` (e.g. jacknode-0951-1666-002004)."""
    return f"{node}-{vendor_id}-{product_id}-{bus:03d}{device:03d}"
