"""Names of things: PCI addresses, object names, label and annotation keys.

Upstream's naming rules (docs/upstream.md) are the API contract the Harvester UI depends on, so they live in one
place and are used by the agent, the webhook and the tests alike.
"""

from __future__ import annotations

import hashlib
import re

GROUP = "devices.harvesterhci.io"
VERSION = "v1beta1"
API_VERSION = f"{GROUP}/{VERSION}"

LABEL_NODENAME = "nodename"
ANNOTATION_REQUESTED_BY = f"{GROUP}/requested-by"

# What the takeover (takeover/) leaves on adopted objects, read by the rules and the agent. Claims adopted from
# upstream carry ANNOTATION_ADOPTED = ADOPTED_FROM and keep the pooled resource names their VMs already use; an owner
# the takeover could not map is LEGACY_PREFIX + spec.userName; adopted VMs record ADOPTED_REQUESTER (nobody's `use`,
# only the names the VM already used upstream).
ANNOTATION_ADOPTED = f"{GROUP}/adopted-from"
ADOPTED_FROM = "harvester/pcidevices"
LEGACY_PREFIX = "legacy:"
ADOPTED_REQUESTER = "pcidevices-takeover"

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


# -- resource names -----------------------------------------------------------------------------------------------

# The kubelet socket `/var/lib/kubelet/device-plugins/kubevirt-<vendor>-<product>.sock` must fit in sun_path (108).
RESOURCE_NAME_BUDGET = 60
# A DNS label, the longest name part Kubernetes accepts in an extended resource name.
NAME_PART_LIMIT = 63
USB_RESOURCE_VENDOR = "kubevirt.io"
UNKNOWN_VENDOR_PART = "unknown.com"

_BRACKETED = re.compile(r"\[([^\]]*)\]")
_NON_ALNUM = re.compile(r"[^A-Za-z0-9]")
_WHITESPACE = re.compile(r"\s+")
_NOT_RESOURCE_CHAR = re.compile(r"[^A-Za-z0-9_.]")


def vendor_part(vendor_name: str | None) -> str:
    """Upstream's vendor part: `[...]` text cut at `/`, else the first word; alphanumerics, lower-case, `.com`.

    An unknown vendor (no pci.ids entry) gives `unknown.com`, as upstream's names database does.
    """
    if not vendor_name or not vendor_name.strip():
        return UNKNOWN_VENDOR_PART
    bracketed = _BRACKETED.search(vendor_name)
    word = bracketed.group(1).split("/")[0] if bracketed else vendor_name.split()[0]
    cleaned = _NON_ALNUM.sub("", word).lower()
    return f"{cleaned}.com" if cleaned else UNKNOWN_VENDOR_PART


def product_part(device_name: str | None, device_id: str) -> str:
    """Upstream's product part; an unknown product, or one that sanitises to nothing, is the device id."""
    if not device_name:
        return device_id
    text = device_name.strip().upper().replace("/", "_").replace(".", "_")
    text = _NOT_RESOURCE_CHAR.sub("", _WHITESPACE.sub("_", text)).rstrip("_.-")
    return text or device_id


def pci_resource_name(vendor_name: str | None, device_name: str | None, device_id: str) -> str:
    """The pooled resourceName upstream derives from pci.ids names, e.g. `intel.com/ETHERNET_CONNECTION_11_I219LM`.

    vendor_name/device_name are the pci.ids names (None when the id is unknown). When the socket path would be too
    long, `VIRTUAL_FUNCTION` becomes `VF`, and if that is not enough the product is the device id.
    """
    vendor = vendor_part(vendor_name)
    product = product_part(device_name, device_id)
    if len(vendor) + len(product) > RESOURCE_NAME_BUDGET:
        product = product.replace("VIRTUAL_FUNCTION", "VF")
        if len(vendor) + len(product) > RESOURCE_NAME_BUDGET:
            product = device_id
    return f"{vendor}/{product}"


def shorten_name_part(part: str, limit: int = NAME_PART_LIMIT) -> str:
    """`part` unchanged when it fits, else its head and a hash of the whole, exactly `limit` characters.

    Deterministic, so every agent, the webhook and the tests compute the same name for the same device.
    """
    if len(part) <= limit:
        return part
    digest = hashlib.sha256(part.encode()).hexdigest()[:10]
    return f"{part[: limit - len(digest) - 1].rstrip('-.')}-{digest}"


def pci_device_resource_name(vendor_name: str | None, node: str, address: str) -> str:
    """Per-device resourceName `<vendor part>/<PCIDevice name>` (e.g. `nvidia.com/node1-000001000`)."""
    return f"{vendor_part(vendor_name)}/{shorten_name_part(pcidevice_name(node, address))}"


def usb_resource_name(usbdevice: str) -> str:
    """USB resourceName `kubevirt.io/<USBDevice name>`, shortened like PCI names when too long."""
    return f"{USB_RESOURCE_VENDOR}/{shorten_name_part(usbdevice)}"


# The last segments of a per-device name part: a PCI address without ':' and '.' (4-8 digit domain, bus, slot, and
# a function 0-7), or a USB device's `vvvv-pppp-BBBDDD`; and the hash a shortened part ends with.
_PCI_NAME_SUFFIX = re.compile(r"[0-9a-f]{8,12}[0-7]")
_USB_NAME_SUFFIX = re.compile(r"[0-9a-f]{4}-[0-9a-f]{4}-[0-9]{6}")
_SHORTENED = re.compile(r"-[0-9a-f]{10}")


def name_part(resource_name: str) -> str:
    """What follows the first '/' of an extended-resource name ("" when there is none)."""
    return resource_name.partition("/")[2]


def per_device_node_candidates(part: str) -> tuple[str, ...]:
    """The node names a per-device name part could belong to, longest first; () when it has no per-device shape.

    A part is `<node>-<address digits>` (PCI) or `<node>-<vvvv>-<pppp>-<BBBDDD>` (USB), or such a part shortened to
    63 characters with a hash (`shorten_name_part`), whose head keeps a prefix of the node name. For a shortened
    part every prefix ending before a '-' is a candidate, and so is the head itself (a node name cut short); the
    caller keeps those it knows. Anyone can compute the name a device will be offered under from the node's name
    and the address, so such names are ours as soon as the node is known (DESIGN §3, issue 21).
    """
    head, _, last = part.rpartition("-")
    if head and _PCI_NAME_SUFFIX.fullmatch(last):
        return (head,)
    usb = part.split("-")
    if len(usb) >= 4 and _USB_NAME_SUFFIX.fullmatch("-".join(usb[-3:])):
        return ("-".join(usb[:-3]),)
    if len(part) == NAME_PART_LIMIT and _SHORTENED.fullmatch(part[-11:]):
        cut = part[:-11]
        out = [cut]
        while "-" in cut:
            cut = cut.rsplit("-", 1)[0]
            out.append(cut)
        return tuple(c for c in out if c)
    return ()


def shortened_node_prefix(node: str) -> str:
    """The head a shortened per-device part of a device on `node` starts with, when the node name alone fills it."""
    return (node + "-")[: NAME_PART_LIMIT - 11].rstrip("-.")


def is_pooled_shape(resource_name: str) -> bool:
    """A name as `pci_resource_name` makes them: `<vendor>.com/<PRODUCT>`; its product part never has a '-'
    (`product_part` keeps only letters, digits, `_` and `.`), which every per-device name has."""
    vendor, _, product = resource_name.partition("/")
    return bool(vendor) and bool(product) and "-" not in product and "/" not in product


def per_device_name_from(pooled: str, device_name: str) -> str:
    """The per-device name a PCI device whose model's pooled name is `pooled` is offered under."""
    vendor = pooled.split("/", 1)[0] if "/" in pooled else UNKNOWN_VENDOR_PART
    return f"{vendor}/{shorten_name_part(device_name)}"


def pci_may_carry(device_name: str, pooled: str, resource_name: str) -> bool:
    """Whether a PCI device may be offered under `resource_name`: its own per-device name, or its model's pooled
    name. An agent chooses neither for another node's device (A10: names are node-bound), so the cluster view never
    joins two nodes' devices under a name one agent wrote."""
    if not resource_name:
        return True
    if pooled:
        return resource_name in (pooled, per_device_name_from(pooled, device_name))
    own = resource_name.partition("/")[2] == shorten_name_part(device_name)
    return own or is_pooled_shape(resource_name)


def usb_may_carry(device_name: str, resource_name: str) -> bool:
    return not resource_name or resource_name == usb_resource_name(device_name)


def resource_env_var(prefix: str, resource_name: str) -> str:
    """KubeVirt's variable for a resource: `PCI_RESOURCE_` + upper-case name with `/` and `.` as `_`."""
    return f"{prefix}_{resource_name.upper().replace('/', '_').replace('.', '_')}"


def pci_resource_env_var(resource_name: str) -> str:
    return resource_env_var("PCI_RESOURCE", resource_name)


def usb_resource_env_var(resource_name: str) -> str:
    return resource_env_var("USB_RESOURCE", resource_name)


# -- descriptions -------------------------------------------------------------------------------------------------


def pci_description(class_name: str, vendor_name: str, device_name: str) -> str:
    """`<Class>: <Vendor> <Device>` from exactly the three names `lspci -vmm` prints (fallbacks included)."""
    return f"{class_name}: {vendor_name} {device_name}"


USB_CLASS_NAMES: dict[int, str] = {
    0x01: "Audio",
    0x02: "Communications",
    0x03: "HID",
    0x05: "Physical",
    0x06: "Image",
    0x07: "Printer",
    0x08: "Mass Storage",
    0x09: "Hub",
    0x0A: "CDC-Data",
    0x0B: "Smart Card",
    0x0D: "Content Security",
    0x0E: "Video",
    0x0F: "Personal Healthcare",
    0x10: "Audio/Video",
    0x11: "Billboard",
    0x12: "USB Type-C Bridge",
    0xDC: "Diagnostic",
    0xE0: "Wireless Controller",
    0xEF: "Miscellaneous",
    0xFE: "Application Specific",
    0xFF: "Vendor Specific",
}


def usb_class_type(device_class: int, first_interface_class: int | None = None) -> str:
    """Upstream's classType: the device class's name; class 00 means "see the first interface"."""
    cls = device_class
    if cls == 0 and first_interface_class is not None:
        cls = first_interface_class
    return USB_CLASS_NAMES.get(cls, f"Unknown (0x{cls:02x})")


def usb_description(
    vendor_id: str,
    product_id: str,
    vendor_name: str | None,
    product_name: str | None,
    sysfs_product: str | None = None,
) -> str:
    """`<product> (<vendor>)`, `Unknown (<vendor>)` or `Unknown vvvv:pppp`, then ` [<product string>]`."""
    if vendor_name and product_name:
        text = f"{product_name} ({vendor_name})"
    elif vendor_name:
        text = f"Unknown ({vendor_name})"
    else:
        text = f"Unknown {vendor_id}:{product_id}"
    if sysfs_product:
        text += f" [{sysfs_product}]"
    return text
