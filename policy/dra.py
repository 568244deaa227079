"""Dynamic Resource Allocation (`resource.k8s.io/v1`): our drivers, the attributes we publish, and slim views of
the DRA objects the rules read (ResourceClaim and ResourceClaimTemplate specs, DeviceClasses).

A PCIDeviceClaim still reserves a device for its owner; one created with `spec.offer: DRA` is offered through DRA
only (never also through a device plugin). The node agent publishes such devices in ResourceSlices of its node, one
device per function, under the attribute names below, and prepares them for pods through CDI.

CEL is not evaluated here. What the rules need from a selector is whether it *pins* devices: a top-level
conjunction (`a && b && ...`, no `||` or `?:` at the top) in which some term compares one of our identifying
attributes with a string literal. Whatever else the expression says can only narrow the match further, so the
devices a pinned request can resolve to are at most those the pin names. Every other request is *broad*: the
mutating webhook narrows it to the requester's own devices with `owner_selector`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from policy import names, records
from policy.objects import MalformedObject, as_mapping

GROUP = "resource.k8s.io"
VERSION = "v1"
PCI_DRIVER = f"pci.{names.GROUP}"
USB_DRIVER = f"usb.{names.GROUP}"
DRIVERS = (PCI_DRIVER, USB_DRIVER)

# PCIDeviceClaim/USBDeviceClaim spec.offer: how the claimed device is offered (fixed at creation, like the spec)
OFFER_FIELD = "offer"
OFFER_DEVICE_PLUGIN = "DevicePlugin"
OFFER_DRA = "DRA"
OFFERS = (OFFER_DEVICE_PLUGIN, OFFER_DRA)

# Attributes of every published device (unqualified: they live in the driver's own domain, so a selector reads
# `device.attributes["pci.devices.harvesterhci.io"].vendorID`)
ATTR_OWNER = "owner"  # the owner of the PCIDeviceClaim/USBDeviceClaim (its requested-by annotation)
ATTR_NODE = "node"
ATTR_PCI_DEVICE = "pciDevice"  # the PCIDevice object's name, e.g. node1-00003b000
ATTR_USB_DEVICE = "usbDevice"
ATTR_PCI_ADDRESS = "pciAddress"
ATTR_VENDOR_ID = "vendorID"
ATTR_DEVICE_ID = "deviceID"
ATTR_PRODUCT_ID = "productID"
ATTR_CLASS_ID = "classID"
ATTR_IOMMU_GROUP = "iommuGroup"
ATTR_NUMA_NODE = "numaNode"  # -1 when the kernel reports none, so `numaNode == 0` never fails on a missing value
ATTR_BUS = "bus"
ATTR_DEVNUM = "devnum"
ATTR_CONTROLLER = "controllerAddress"  # USB: the PCI address of the host controller
# Standard attributes (resource.kubernetes.io, the same meaning for every driver)
ATTR_PCIE_ROOT = "resource.kubernetes.io/pcieRoot"  # "pci<domain>:<bus>" of the root complex
ATTR_PCI_BUS_ID = "resource.kubernetes.io/pciBusID"  # the full address, read by KubeVirt's DRA support

# Attributes that identify devices: a request that compares one of these with a literal is pinned to the devices
# that carry that value (per driver; `node` only narrows a pin, it identifies nothing alone).
PINS: Mapping[str, tuple[str, ...]] = {
    PCI_DRIVER: (ATTR_PCI_DEVICE, ATTR_PCI_ADDRESS),
    USB_DRIVER: (ATTR_USB_DEVICE,),
}

SLICE_DEVICE_LIMIT = 128  # devices per ResourceSlice (resource.k8s.io/v1)
CEL_EXPRESSION_LIMIT = 10 * 1024


def offer_of(spec: Mapping[str, Any]) -> str:
    """The offer a claim's spec asks for ("" means the device plugin, upstream's only path)."""
    value = spec.get(OFFER_FIELD)
    return value if isinstance(value, str) else ""


def is_dra(spec: Mapping[str, Any]) -> bool:
    return offer_of(spec) == OFFER_DRA


# -- names in ResourceSlices and CDI ------------------------------------------------------------------------------


def pci_device_name(address: str) -> str:
    """A function's device name in its node's pool: `pci-0000-3b-00-0` (a DNS label)."""
    names.pci_address(address)
    return "pci-" + address.replace(":", "-").replace(".", "-")


def usb_device_name(bus: int, devnum: int) -> str:
    return f"usb-{bus:03d}-{devnum:03d}"


def slice_name(node: str, driver: str, index: int) -> str:
    """`<node>-pcidevices-<i>` (`usbdevices` for USB); a hash stands in for node names too long for a name."""
    kind = "pcidevices" if driver == PCI_DRIVER else "usbdevices"
    name = f"{node}-{kind}-{index}"
    if len(name) <= 253:
        return name
    digest = hashlib.sha256(node.encode()).hexdigest()[:16]
    return f"{node[:200].rstrip('.-')}-{digest}-{kind}-{index}"


def pcie_root(resolved_path: str) -> str | None:
    """`pci0000:00` from a device's resolved sysfs path (`/sys/devices/pci0000:00/0000:00:1c.0/0000:03:00.0`)."""
    for part in resolved_path.split("/"):
        if re.fullmatch(r"pci[0-9a-f]{4,8}:[0-9a-f]{2}", part):
            return part
    return None


# -- CEL -----------------------------------------------------------------------------------------------------------


def cel_string(value: str) -> str:
    """A CEL string literal for any value (JSON's escapes are CEL's; non-ASCII becomes \\u escapes)."""
    return json.dumps(value, ensure_ascii=True)


def attribute(driver: str, name: str) -> str:
    return f"device.attributes[{cel_string(driver)}].{name}"


def owner_selector(username: str, drivers: Sequence[str] = DRIVERS) -> str:
    """The selector the mutating webhook adds to every broad request that may reach our devices: devices of these
    drivers match only when their owner is the requester; other drivers' devices are left alone."""
    owner = cel_string(username)
    return " && ".join(
        f"(device.driver != {cel_string(d)} || {attribute(d, ATTR_OWNER)} == {owner})" for d in sorted(drivers)
    )


def pin_selector(driver: str, attr: str, value: str) -> str:
    """The selector that names one device exactly (used in messages and examples)."""
    return f"{attribute(driver, attr)} == {cel_string(value)}"


_TOKEN = re.compile(
    r"""\s*(?:
    (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
    |(?P<op>&&|\|\||==|!=|<=|>=|[()\[\]{}?:.,!<>+\-*/%])
    |(?P<word>[A-Za-z_][A-Za-z0-9_]*)
    |(?P<number>[0-9][0-9A-Za-z_.]*)
    )""",
    re.VERBOSE,
)


@dataclass(frozen=True, slots=True)
class Pins:
    """What a conjunction of selectors pins: the driver (`device.driver == "..."`), and (driver, attribute) ->
    value for our identifying attributes. `conjunctive` is False when some selector is not a top-level
    conjunction (then nothing in it counts)."""

    drivers: frozenset[str] = frozenset()
    values: Mapping[tuple[str, str], frozenset[str]] = field(default_factory=dict)
    conjunctive: bool = True

    def value(self, driver: str, attr: str) -> str | None | bool:
        """The one value pinned for (driver, attr); None when not pinned; False when two terms disagree."""
        found = self.values.get((driver, attr))
        if not found:
            return None
        return next(iter(found)) if len(found) == 1 else False

    def merged(self, other: Pins) -> Pins:
        values = {k: set(v) for k, v in self.values.items()}
        for k, v in other.values.items():
            values.setdefault(k, set()).update(v)
        return Pins(
            self.drivers | other.drivers,
            {k: frozenset(v) for k, v in values.items()},
            self.conjunctive and other.conjunctive,
        )


def _tokens(expression: str) -> list[tuple[str, str]] | None:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(expression):
        if expression[pos:].strip() == "":
            break
        m = _TOKEN.match(expression, pos)
        if m is None or m.end() == pos:
            return None  # raw strings, triple quotes, bytes: nothing this reader trusts
        kind = m.lastgroup or ""
        if kind == "string" and out and out[-1][0] in ("word", "string"):
            return None  # a prefixed (raw, bytes) or triple-quoted string: CEL would read it differently
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


def _literal(token: tuple[str, str]) -> str | None:
    kind, text = token
    if kind != "string" or "\\" in text:
        return None  # escapes: not worth interpreting, such a term pins nothing
    return text[1:-1]


def _operand(tokens: Sequence[tuple[str, str]]) -> tuple[str, str] | str | None:
    """`device.driver` -> "driver"; `device.attributes["d"].a` or `device.attributes["d"]["a"]` -> (d, a)."""
    texts = [t for _, t in tokens]
    if texts == ["device", ".", "driver"]:
        return "driver"
    if len(texts) >= 7 and texts[:4] == ["device", ".", "attributes", "["] and texts[5] == "]":
        driver = _literal(tokens[4])
        rest = texts[6:]
        if driver is None:
            return None
        if len(rest) == 2 and rest[0] == "." and tokens[7][0] == "word":
            return (driver, rest[1])
        if len(rest) == 3 and rest[0] == "[" and rest[2] == "]":
            name = _literal(tokens[7])
            return (driver, name) if name is not None else None
    return None


def _term(tokens: Sequence[tuple[str, str]]) -> tuple[tuple[str, str] | str, str] | None:
    """A conjunct `operand == "literal"` (either side) -> (operand, literal)."""
    eq = [i for i, (_, t) in enumerate(tokens) if t == "=="]
    if len(eq) != 1:
        return None
    left, right = tokens[: eq[0]], tokens[eq[0] + 1 :]
    for a, b in ((left, right), (right, left)):
        if len(b) == 1:
            value = _literal(b[0])
            operand = _operand(a)
            if value is not None and operand is not None:
                return operand, value
    return None


def pins(expression: str) -> Pins:
    """What one CEL selector pins (see the module docstring)."""
    tokens = _tokens(expression)
    if tokens is None:
        return Pins(conjunctive=False)
    parts: list[list[tuple[str, str]]] = [[]]
    depth = 0
    for tok in tokens:
        text = tok[1]
        if tok[0] == "op" and text in "([{":
            depth += 1
        elif tok[0] == "op" and text in ")]}":
            depth -= 1
            if depth < 0:
                return Pins(conjunctive=False)
        elif depth == 0 and tok[0] == "op" and text in ("||", "?", ":"):
            return Pins(conjunctive=False)
        if depth == 0 and text == "&&":
            parts.append([])
        else:
            parts[-1].append(tok)
    if depth != 0:
        return Pins(conjunctive=False)
    drivers: set[str] = set()
    values: dict[tuple[str, str], set[str]] = {}
    for part in parts:
        while len(part) >= 2 and part[0][1] == "(" and part[-1][1] == ")" and _balanced(part[1:-1]):
            part = part[1:-1]
        found = _term(part)
        if found is None:
            continue
        operand, value = found
        if operand == "driver":
            drivers.add(value)
        elif isinstance(operand, tuple) and operand[1] in (*PINS.get(operand[0], ()), ATTR_NODE):
            values.setdefault(operand, set()).add(value)
    return Pins(frozenset(drivers), {k: frozenset(v) for k, v in values.items()})


def _balanced(tokens: Sequence[tuple[str, str]]) -> bool:
    depth = 0
    for kind, text in tokens:
        if kind == "op" and text in "([{":
            depth += 1
        elif kind == "op" and text in ")]}":
            depth -= 1
            if depth < 0:
                return False
    return depth == 0


def all_pins(expressions: Sequence[str]) -> Pins:
    """The conjunction of several selectors (a request's and its class's are ANDed)."""
    out = Pins()
    for e in expressions:
        p = pins(e)
        if p.conjunctive:
            out = out.merged(p)
    return out


# -- views --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeviceRequest:
    """One request (or one `firstAvailable` alternative) of a ResourceClaim spec."""

    name: str  # "<request>" or "<request>/<subrequest>"
    pointer: str  # JSON pointer of the object holding `selectors`, relative to the claim spec
    device_class: str
    selectors: tuple[str, ...]
    has_selectors: bool  # the `selectors` list exists (a patch appends to it, or adds it)
    admin_access: bool
    all_devices: bool  # allocationMode: All


def _selectors(m: Mapping[str, Any], where: str) -> tuple[tuple[str, ...], bool]:
    raw = m.get("selectors")
    if raw is None:
        return (), False
    if not isinstance(raw, list):
        raise MalformedObject(f"{where}.selectors must be a list")
    out = []
    for i, s in enumerate(raw):
        cel = as_mapping(as_mapping(s, f"{where}.selectors[{i}]").get("cel"), f"{where}.selectors[{i}].cel")
        expression = cel.get("expression")
        if expression is None:
            continue
        if not isinstance(expression, str):
            raise MalformedObject(f"{where}.selectors[{i}].cel.expression must be a string")
        out.append(expression)
    return tuple(out), True


def _exact(m: Mapping[str, Any], name: str, pointer: str, where: str) -> DeviceRequest:
    cls = m.get("deviceClassName")
    if cls is not None and not isinstance(cls, str):
        raise MalformedObject(f"{where}.deviceClassName must be a string")
    admin = m.get("adminAccess")
    if admin is not None and not isinstance(admin, bool):
        raise MalformedObject(f"{where}.adminAccess must be a boolean")
    selectors, present = _selectors(m, where)
    return DeviceRequest(
        name=name,
        pointer=pointer,
        device_class=cls or "",
        selectors=selectors,
        has_selectors=present,
        admin_access=bool(admin),
        all_devices=m.get("allocationMode") == "All",
    )


def claim_requests(spec: object, where: str = "spec") -> tuple[DeviceRequest, ...]:
    """Every request and `firstAvailable` alternative of a ResourceClaimSpec (v1); MalformedObject on wrong types."""
    devices = as_mapping(as_mapping(spec, where).get("devices"), f"{where}.devices")
    raw = devices.get("requests")
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise MalformedObject(f"{where}.devices.requests must be a list")
    out: list[DeviceRequest] = []
    for i, r in enumerate(raw):
        rw = f"{where}.devices.requests[{i}]"
        req = as_mapping(r, rw)
        name = req.get("name")
        if not isinstance(name, str):
            raise MalformedObject(f"{rw}.name must be a string")
        exactly = req.get("exactly")
        first = req.get("firstAvailable")
        if exactly is not None:
            out.append(_exact(as_mapping(exactly, f"{rw}.exactly"), name, f"/devices/requests/{i}/exactly", rw))
        if first is not None:
            if not isinstance(first, list):
                raise MalformedObject(f"{rw}.firstAvailable must be a list")
            for j, sub in enumerate(first):
                sw = f"{rw}.firstAvailable[{j}]"
                sm = as_mapping(sub, sw)
                sub_name = sm.get("name")
                if not isinstance(sub_name, str):
                    raise MalformedObject(f"{sw}.name must be a string")
                out.append(_exact(sm, f"{name}/{sub_name}", f"/devices/requests/{i}/firstAvailable/{j}", sw))
    return tuple(out)


def spec_digest(spec: object) -> str:
    """A stable digest of a claim spec (a claim made from a template carries the template's spec unchanged)."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class DeviceClass:
    """The slim view of a DeviceClass: its selectors and what they pin (`drivers` empty: any driver)."""

    name: str
    selectors: tuple[str, ...]
    pins: Pins

    @property
    def key(self) -> str:
        return self.name

    @classmethod
    def from_dict(cls, obj: object) -> DeviceClass:
        o = as_mapping(obj, "object")
        meta = as_mapping(o.get("metadata"), "metadata")
        name = meta.get("name")
        if not isinstance(name, str) or not name:
            raise MalformedObject("metadata.name must be a non-empty string")
        name = name.rpartition("/")[2]  # the webhook's watch keys cluster-scoped objects as "/<name>"
        selectors, _ = _selectors(as_mapping(o.get("spec"), "spec"), "spec")
        return cls(name, selectors, all_pins(selectors))


@dataclass(frozen=True, slots=True)
class ClaimTemplate:
    """The slim view of a ResourceClaimTemplate: the admission record its claims carry and the digest of their spec."""

    namespace: str
    name: str
    record: str | None
    digest: str

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @classmethod
    def from_dict(cls, obj: object) -> ClaimTemplate:
        o = as_mapping(obj, "object")
        meta = as_mapping(o.get("metadata"), "metadata")
        raw = meta.get("name")
        if not isinstance(raw, str) or not raw:
            raise MalformedObject("metadata.name must be a non-empty string")
        namespace = meta.get("namespace")
        ns, _, name = raw.rpartition("/")
        if not ns:
            ns = namespace if isinstance(namespace, str) else ""
        template = as_mapping(as_mapping(o.get("spec"), "spec"), "spec")
        inner_meta = as_mapping(template.get("metadata"), "spec.metadata")
        annotations = as_mapping(inner_meta.get("annotations"), "spec.metadata.annotations")
        record = annotations.get(records.ANNOTATION)
        return cls(ns, name, record if isinstance(record, str) else None, spec_digest(template.get("spec") or {}))
