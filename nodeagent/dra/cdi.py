"""CDI specs for prepared claims: what a container gets for each device (pure), written where the runtime reads them.

One spec file per claim and driver, `<cdi dir>/devices.harvesterhci.io-<pci|usb>-<claim uid>.json`, kind
`devices.harvesterhci.io/pci` (or `/usb`), one CDI device per allocated device named `<claim uid>-<device name>`
(so two claims never share a CDI name). Spec-level edits hold what every PCI container needs once (/dev/vfio/vfio,
and /dev/iommu when the iommufd cdevs exist); each device adds its own nodes (/dev/vfio/<group>, its
/dev/vfio/devices/vfioN cdev; /dev/bus/usb/BBB/DDD) and the variable KubeVirt reads
(PCI_RESOURCE_<NAME>=<address>, USB_RESOURCE_<NAME>=<bus>:<devnum>, docs/deviceplugin.md). The runtime fills in
type and numbers from the host's device nodes. Files are written to a temporary name the runtime ignores and renamed
into place, so it never reads half a spec. The spec's annotations say which claim it is for, which is also how a
restarted agent knows what is prepared.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nodeagent.dra.model import PublishedDevice
from policy import dra, names

log = logging.getLogger(__name__)

CDI_VERSION = "0.6.0"
VENDOR = names.GROUP
PERMISSIONS = "rwm"
ANNOTATION_CLAIM = f"{names.GROUP}/claim"  # "<namespace>/<name>"
ANNOTATION_DEVICES = f"{names.GROUP}/devices"  # object names of the prepared devices, comma-separated
ANNOTATION_PODS = f"{names.GROUP}/pods"  # "<namespace>/<pod>" the claim was reserved for when prepared
_UID = re.compile(r"^[0-9a-zA-Z-]{1,64}$")


def kind(driver: str) -> str:
    return f"{VENDOR}/{'pci' if driver == dra.PCI_DRIVER else 'usb'}"


def cdi_name(claim_uid: str, device: str) -> str:
    return f"{claim_uid}-{device}"


def device_id(driver: str, claim_uid: str, device: str) -> str:
    """The fully qualified CDI name the kubelet passes to the runtime."""
    return f"{kind(driver)}={cdi_name(claim_uid, device)}"


def _node(path: str) -> dict[str, Any]:
    return {"path": path, "hostPath": path, "permissions": PERMISSIONS}


def device_edits(d: PublishedDevice, iommufd: bool) -> dict[str, Any]:
    if d.usb is not None:
        bus, devnum = d.usb
        path = f"/dev/bus/usb/{bus:03d}/{devnum:03d}"
        return {"deviceNodes": [_node(path)], "env": [f"{names.usb_resource_env_var(d.resource_name)}={bus}:{devnum}"]}
    nodes = [_node(f"/dev/vfio/{d.iommu_group}")]
    if iommufd and d.vfio_cdev:
        nodes.append(_node(f"/dev/vfio/devices/{d.vfio_cdev}"))
    return {"deviceNodes": nodes, "env": [f"{names.pci_resource_env_var(d.resource_name)}={d.address}"]}


def build_spec(
    driver: str,
    claim_uid: str,
    claim: str,
    devices: Sequence[PublishedDevice],
    *,
    iommufd: bool = False,
    pods: Sequence[str] = (),
) -> dict[str, Any]:
    """The CDI spec that hands `devices` to the containers of claim `claim` (`<namespace>/<name>`)."""
    if not _UID.match(claim_uid):
        raise ValueError(f"claim uid {claim_uid!r} is not a uid")
    spec: dict[str, Any] = {
        "cdiVersion": CDI_VERSION,
        "kind": kind(driver),
        "annotations": {
            ANNOTATION_CLAIM: claim,
            ANNOTATION_DEVICES: ",".join(sorted(d.object_name for d in devices)),
            ANNOTATION_PODS: ",".join(sorted(pods)),
        },
        "devices": [
            {"name": cdi_name(claim_uid, d.name), "containerEdits": device_edits(d, iommufd)}
            for d in sorted(devices, key=lambda d: d.name)
        ],
    }
    if driver == dra.PCI_DRIVER:
        shared = [_node("/dev/vfio/vfio")]
        if iommufd and any(d.vfio_cdev for d in devices):
            shared.append(_node("/dev/iommu"))
        spec["containerEdits"] = {"deviceNodes": shared}
    return spec


@dataclass(frozen=True)
class PreparedClaim:
    """What a spec file on disk says: for which claim, which devices (object names), reserved for which pods."""

    uid: str
    driver: str
    claim: str
    devices: tuple[str, ...]
    pods: tuple[str, ...]


class CdiStore:
    """The CDI folder: one file per prepared claim and driver; the only writer of our files there."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def path(self, driver: str, claim_uid: str) -> str:
        if not _UID.match(claim_uid):
            raise ValueError(f"claim uid {claim_uid!r} is not a uid")
        return os.path.join(self.directory, f"{kind(driver).replace('/', '-')}-{claim_uid}.json")

    def write(self, driver: str, claim_uid: str, spec: Mapping[str, Any]) -> bool:
        """Write the spec unless the file already says exactly this; True when it was written."""
        path = self.path(driver, claim_uid)
        data = json.dumps(spec, indent=2, sort_keys=True) + "\n"
        try:
            with open(path) as f:
                if f.read() == data:
                    return False
        except FileNotFoundError:
            pass
        os.makedirs(self.directory, exist_ok=True)
        tmp = os.path.join(self.directory, f".{os.path.basename(path)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, data.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        return True

    def remove(self, driver: str, claim_uid: str) -> bool:
        try:
            os.unlink(self.path(driver, claim_uid))
            return True
        except FileNotFoundError:
            return False

    def prepared(self, driver: str) -> dict[str, PreparedClaim]:
        """The claims this driver has specs for, by uid (a file that cannot be read is skipped and logged)."""
        prefix = kind(driver).replace("/", "-") + "-"
        out: dict[str, PreparedClaim] = {}
        try:
            entries = os.listdir(self.directory)
        except FileNotFoundError:
            return out
        for entry in sorted(entries):
            if not (entry.startswith(prefix) and entry.endswith(".json")):
                continue
            uid = entry[len(prefix) : -len(".json")]
            try:
                with open(os.path.join(self.directory, entry)) as f:
                    spec = json.load(f)
                notes = spec.get("annotations") or {}
                out[uid] = PreparedClaim(
                    uid=uid,
                    driver=driver,
                    claim=str(notes.get(ANNOTATION_CLAIM, "")),
                    devices=tuple(x for x in str(notes.get(ANNOTATION_DEVICES, "")).split(",") if x),
                    pods=tuple(x for x in str(notes.get(ANNOTATION_PODS, "")).split(",") if x),
                )
            except (OSError, ValueError, AttributeError):
                log.warning("unreadable CDI spec skipped", extra={"file": entry})
        return out
