"""Our CRDs in a real API server: installation, kubectl ergonomics, field round trips, validation, compatibility."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from policy import names
from tests.support.controlplane import ControlPlane

REPO = Path(__file__).resolve().parents[2]
API = "devices.harvesterhci.io/v1beta1"
KINDS = {
    "PCIDevice": "pcidevices",
    "PCIDeviceClaim": "pcideviceclaims",
    "USBDevice": "usbdevices",
    "USBDeviceClaim": "usbdeviceclaims",
}
OWNER_ANNOTATION = "devices.harvesterhci.io/requested-by"
CONDITION = {
    "type": "Ready",
    "status": "True",
    "observedGeneration": 1,
    "lastTransitionTime": "2026-01-02T03:04:05Z",
    "reason": "Bound",
    "message": "bound to vfio-pci",
}


# ---------------------------------------------------------------------------------------------------------------------
# helpers


def _crd(plural: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((REPO / "crds" / f"devices.harvesterhci.io_{plural}.yaml").read_text())
    return data


def _schema_paths(schema: dict[str, Any], prefix: str = "") -> set[str]:
    """Every leaf field path of a schema, with `[]` for list items (e.g. status.iommuGroupMembers[].bridge)."""
    if schema.get("type") == "object" and "properties" in schema:
        paths: set[str] = set()
        for name, sub in schema["properties"].items():
            paths |= _schema_paths(sub, f"{prefix}.{name}" if prefix else name)
        return paths
    if schema.get("type") == "array":
        return _schema_paths(schema["items"], prefix + "[]")
    return {prefix}


def _value_paths(value: Any, prefix: str = "") -> set[str]:
    if isinstance(value, dict) and value:
        paths: set[str] = set()
        for name, sub in value.items():
            paths |= _value_paths(sub, f"{prefix}.{name}" if prefix else name)
        return paths
    if isinstance(value, list):
        return set().union(*(_value_paths(v, prefix + "[]") for v in value)) if value else {prefix + "[]"}
    return {prefix}


def _apply(cp: ControlPlane, obj: dict[str, Any], *, check: bool = True) -> Any:
    return cp.kubectl("apply", "-f", "-", input=json.dumps(obj), check=check)


def _create_with_status(cp: ControlPlane, obj: dict[str, Any]) -> dict[str, Any]:
    """Create `obj` and then write its status through the status subresource (create ignores status)."""
    body = {k: v for k, v in obj.items() if k != "status"}
    cp.kubectl("create", "-f", "-", input=json.dumps(body))
    if "status" in obj:
        cp.kubectl(
            "patch", KINDS[obj["kind"]], obj["metadata"]["name"], "--subresource=status", "--type=merge",
            "-p", json.dumps({"status": obj["status"]}),
        )  # fmt: skip
    return _get(cp, obj["kind"], obj["metadata"]["name"])


def _get(cp: ControlPlane, kind: str, name: str) -> dict[str, Any]:
    got: dict[str, Any] = json.loads(cp.kubectl("get", KINDS[kind], name, "-o", "json").stdout)
    return got


def _uid(cp: ControlPlane, kind: str, name: str) -> str:
    return cp.kubectl("get", KINDS[kind], name, "-o", "jsonpath={.metadata.uid}").stdout


def _owner_ref(kind: str, name: str, uid: str) -> dict[str, str]:
    return {"apiVersion": API, "kind": kind, "name": name, "uid": uid}


# ---------------------------------------------------------------------------------------------------------------------
# objects with every field we define


def full_pcidevice(node: str) -> dict[str, Any]:
    name = f"{node}-00003b000"
    return {
        "apiVersion": API,
        "kind": "PCIDevice",
        "metadata": {"name": name, "labels": {"nodename": node}},
        "spec": {},
        "status": {
            "address": "0000:3b:00.0",
            "vendorId": "10de",
            "deviceId": "1eb8",
            "classId": "0302",
            "iommuGroup": "45",
            "nodeName": node,
            "resourceName": f"nvidia.com/{name}",
            "pooledResourceName": "nvidia.com/TU104GL_TESLA_T4",
            "description": "3D controller: NVIDIA Corporation TU104GL [Tesla T4]",
            "kernelDriverInUse": "vfio-pci",
            "subsystemVendorId": "10de",
            "subsystemDeviceId": "12a2",
            "revision": "a1",
            "numaNode": 1,
            "resetMethods": ["flr", "bus"],
            "iommuGroupMembers": [
                {"address": "0000:3a:00.0", "bridge": True},
                {"address": "0000:3b:00.0", "bridge": False},
            ],
            "hostCritical": True,
            "hostCriticalReasons": ["block device nvme0n1 holds /", "carries the default route"],
            "absent": False,
            "observeOnly": False,
            "conditions": [CONDITION],
        },
    }


def full_pcideviceclaim(node: str, owner_uid: str) -> dict[str, Any]:
    name = f"{node}-00003b000"
    return {
        "apiVersion": API,
        "kind": "PCIDeviceClaim",
        "metadata": {
            "name": name,
            "annotations": {OWNER_ANNOTATION: "tenant-a"},
            "ownerReferences": [_owner_ref("PCIDevice", name, owner_uid)],
        },
        "spec": {"address": "0000:3b:00.0", "nodeName": node, "userName": "admin", "disableResourcePooling": True,
                 "offer": "DevicePlugin"},
        "status": {
            "kernelDriverToUnbind": "nvidia",
            "passthroughEnabled": True,
            "conditions": [CONDITION],
            "allocatedTo": [{"pod": "vms/virt-launcher-gpu-vm-abcde", "container": "compute", "vmi": "vms/gpu-vm",
                             "resourceClaim": "vms/gpu-claim"}],
        },
    }


def full_usbdevice(node: str) -> dict[str, Any]:
    name = f"{node}-0951-1666-002004"
    return {
        "apiVersion": API,
        "kind": "USBDevice",
        "metadata": {"name": name, "labels": {"nodename": node}},
        "status": {
            "vendorID": "0951",
            "productID": "1666",
            "nodeName": node,
            "resourceName": f"kubevirt.io/{name}",
            "devicePath": "/dev/bus/usb/002/004",
            "description": "DataTraveler 100 G3/G4/SE9 G2/50 Kyson (Kingston Technology) [DataTraveler 3.0]",
            "pciAddress": "0000:00:14.0",
            "classType": "Mass Storage",
            "enabled": True,
            "status": "orphaned",
            "message": "device went away while claimed",
            "busNum": 2,
            "devNum": 4,
            "portPath": "2-1.4",
            "serial": "E0D55EA574B4F4B1B8D1",
            "absent": True,
            "observeOnly": True,
            "conditions": [CONDITION],
        },
    }


def full_usbdeviceclaim(node: str, owner_uid: str) -> dict[str, Any]:
    name = f"{node}-0951-1666-002004"
    return {
        "apiVersion": API,
        "kind": "USBDeviceClaim",
        "metadata": {
            "name": name,
            "annotations": {OWNER_ANNOTATION: "tenant-a"},
            "ownerReferences": [_owner_ref("USBDevice", name, owner_uid)],
        },
        "spec": {"userName": "admin", "nodeName": node, "pciAddress": "0000:00:14.0", "offer": "DevicePlugin"},
        "status": {
            "nodeName": node,
            "pciAddress": "0000:00:14.0",
            "conditions": [CONDITION],
            "allocatedTo": [{"pod": "vms/virt-launcher-usb-vm-fghij", "container": "compute", "vmi": "vms/usb-vm",
                             "resourceClaim": "vms/usb-claim"}],
        },
    }


@pytest.fixture
def node(installed_crds: str, unique: str) -> Iterator[str]:
    """A node name unique to the test, so its device objects never collide with another test's."""
    yield f"node-{unique}"


# ---------------------------------------------------------------------------------------------------------------------
# installation and kubectl ergonomics


def test_the_crds_install_with_kubectl_apply_from_the_crds_folder(
    control_plane: ControlPlane, installed_crds: str
) -> None:
    for plural in KINDS.values():
        assert f"customresourcedefinition.apiextensions.k8s.io/{plural}.devices.harvesterhci.io" in installed_crds
        established = control_plane.kubectl(
            "get", "crd", f"{plural}.devices.harvesterhci.io",
            "-o", "jsonpath={.status.conditions[?(@.type=='Established')].status}",
        ).stdout  # fmt: skip
        assert established == "True"
    assert sorted(p.name for p in (REPO / "crds").glob("*.yaml")) == sorted(
        f"devices.harvesterhci.io_{plural}.yaml" for plural in KINDS.values()
    )


def test_kubectl_get_pd_shows_the_device_columns_and_wide_adds_the_extras(
    control_plane: ControlPlane, node: str
) -> None:
    device = _create_with_status(control_plane, full_pcidevice(node))
    name = device["metadata"]["name"]

    table = control_plane.kubectl("get", "pd", name).stdout.splitlines()
    assert table[0].split() == [
        "NAME", "NODE", "ADDRESS", "VENDOR", "DEVICE", "DRIVER", "IOMMU", "CRITICAL", "DESCRIPTION", "AGE"
    ]  # fmt: skip
    row = table[1].split()
    assert row[:8] == [name, node, "0000:3b:00.0", "10de", "1eb8", "vfio-pci", "45", "true"]
    assert "3D controller: NVIDIA Corporation TU104GL [Tesla T4]" in table[1]

    wide = control_plane.kubectl("get", "pd", name, "-o", "wide").stdout.splitlines()
    assert wide[0].split()[-5:] == ["AGE", "CLASS", "NUMA", "RESOURCE", "ABSENT"]
    assert wide[1].split()[-4:] == ["0302", "1", f"nvidia.com/{name}", "false"]


def test_kubectl_get_pdc_shows_owner_and_passthrough(control_plane: ControlPlane, node: str) -> None:
    device = _create_with_status(control_plane, full_pcidevice(node))
    claim = full_pcideviceclaim(node, device["metadata"]["uid"])
    _create_with_status(control_plane, claim)

    table = control_plane.kubectl("get", "pdc", claim["metadata"]["name"], "-o", "wide").stdout.splitlines()
    assert table[0].split() == [
        "NAME", "NODE", "ADDRESS", "OWNER", "PASSTHROUGH", "AGE", "USER", "ORIGINAL-DRIVER", "DEDICATED"
    ]  # fmt: skip
    row = table[1].split()
    assert row[:5] == [claim["metadata"]["name"], node, "0000:3b:00.0", "tenant-a", "true"]
    assert row[-3:] == ["admin", "nvidia", "true"]


def test_kubectl_get_usbd_and_usbdc_show_their_columns(control_plane: ControlPlane, node: str) -> None:
    device = _create_with_status(control_plane, full_usbdevice(node))
    name = device["metadata"]["name"]
    _create_with_status(control_plane, full_usbdeviceclaim(node, device["metadata"]["uid"]))

    usbd = control_plane.kubectl("get", "usbd", name, "-o", "wide").stdout.splitlines()
    assert usbd[0].split() == [
        "NAME", "NODE", "VENDOR", "PRODUCT", "PATH", "ENABLED", "DESCRIPTION", "AGE",
        "CONTROLLER", "PORT", "CLASS", "RESOURCE", "ABSENT",
    ]  # fmt: skip
    assert usbd[1].split()[:6] == [name, node, "0951", "1666", "/dev/bus/usb/002/004", "true"]
    usbdc = control_plane.kubectl("get", "usbdc", name).stdout.splitlines()
    assert usbdc[0].split() == ["NAME", "NODE", "OWNER", "USER", "AGE"]
    assert usbdc[1].split()[:4] == [name, node, "tenant-a", "admin"]


def test_kubectl_get_devices_lists_all_four_kinds(control_plane: ControlPlane, node: str) -> None:
    pd = _create_with_status(control_plane, full_pcidevice(node))
    usbd = _create_with_status(control_plane, full_usbdevice(node))
    _create_with_status(control_plane, full_pcideviceclaim(node, pd["metadata"]["uid"]))
    _create_with_status(control_plane, full_usbdeviceclaim(node, usbd["metadata"]["uid"]))

    names = control_plane.kubectl("get", "devices", "-o", "name").stdout.split()
    for kind, name in [
        ("pcidevice", pd["metadata"]["name"]),
        ("pcideviceclaim", pd["metadata"]["name"]),
        ("usbdevice", usbd["metadata"]["name"]),
        ("usbdeviceclaim", usbd["metadata"]["name"]),
    ]:
        assert f"{kind}.devices.harvesterhci.io/{name}" in names


def test_kubectl_explain_shows_the_descriptions(control_plane: ControlPlane, installed_crds: str) -> None:
    spec = control_plane.kubectl("explain", "pcideviceclaim.spec").stdout
    assert "Immutable after creation" in spec
    for field in ("address", "nodeName", "userName", "disableResourcePooling"):
        assert field in spec
    assert "The Harvester UI always sends it (false)" in " ".join(spec.split())

    critical = " ".join(control_plane.kubectl("explain", "pcidevice.status.hostCritical").stdout.split())
    assert "FIELD: hostCritical <boolean>" in critical
    assert "True when the host needs this device" in critical

    members = " ".join(control_plane.kubectl("explain", "pcidevice.status.iommuGroupMembers").stdout.split())
    assert "bridge <boolean>" in members and "address <string>" in members


# ---------------------------------------------------------------------------------------------------------------------
# every field survives the API server


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_field_of_every_kind_is_stored_unchanged(control_plane: ControlPlane, node: str, kind: str) -> None:
    if kind == "PCIDeviceClaim":
        owner = _create_with_status(control_plane, full_pcidevice(node))
        sent = full_pcideviceclaim(node, owner["metadata"]["uid"])
    elif kind == "USBDeviceClaim":
        owner = _create_with_status(control_plane, full_usbdevice(node))
        sent = full_usbdeviceclaim(node, owner["metadata"]["uid"])
    else:
        sent = {"PCIDevice": full_pcidevice, "USBDevice": full_usbdevice}[kind](node)

    schema = _crd(KINDS[kind])["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    declared = {p for p in _schema_paths(schema) if p.startswith(("spec", "status"))}
    covered = _value_paths({k: sent[k] for k in ("spec", "status") if k in sent})
    assert declared - covered == set(), "the sample object misses fields the schema declares"

    stored = _create_with_status(control_plane, sent)
    assert stored.get("spec", {}) == sent.get("spec", {})
    assert stored["status"] == sent["status"]
    sent_owner = sent["metadata"].get("annotations", {}).get(OWNER_ANNOTATION)
    assert stored["metadata"].get("annotations", {}).get(OWNER_ANNOTATION) == sent_owner


# ---------------------------------------------------------------------------------------------------------------------
# upstream compatibility


def test_objects_shaped_like_upstreams_are_accepted_unchanged(control_plane: ControlPlane, node: str) -> None:
    pd_name = f"{node}-0000001f6"
    pcidevice = {
        "apiVersion": API,
        "kind": "PCIDevice",
        "metadata": {"name": pd_name, "labels": {"nodename": node}},
        "spec": {},
        "status": {
            "address": "0000:00:1f.6",
            "vendorId": "8086",
            "deviceId": "15bc",
            "classId": "0200",
            "iommuGroup": "",
            "nodeName": node,
            "resourceName": "intel.com/ETHERNET_CONNECTION_7_I219V",
            "description": "Ethernet controller: Intel Corporation Ethernet Connection (7) I219-V",
            "kernelDriverInUse": "e1000e",
        },
    }
    stored = _create_with_status(control_plane, pcidevice)
    assert stored["status"] == pcidevice["status"]

    # Exactly what the Harvester UI posts when "Enable Passthrough" is pressed.
    pci_claim = {
        "apiVersion": API,
        "kind": "PCIDeviceClaim",
        "metadata": {"name": pd_name, "ownerReferences": [_owner_ref("PCIDevice", pd_name, stored["metadata"]["uid"])]},
        "spec": {"address": "0000:00:1f.6", "nodeName": node, "userName": "admin", "disableResourcePooling": False},
    }
    control_plane.kubectl("create", "-f", "-", input=json.dumps(pci_claim))
    assert _get(control_plane, "PCIDeviceClaim", pd_name)["spec"] == pci_claim["spec"]

    usb_name = f"{node}-0951-1666-002004"
    usbdevice = {
        "apiVersion": API,
        "kind": "USBDevice",
        "metadata": {"name": usb_name, "labels": {"nodename": node}},
        "status": {
            "vendorID": "0951",
            "productID": "1666",
            "nodeName": node,
            "resourceName": f"kubevirt.io/{usb_name}",
            "devicePath": "/dev/bus/usb/002/004",
            "description": "DataTraveler 100 G3/G4/SE9 G2/50 Kyson (Kingston Technology)",
            "pciAddress": "0000:00:14.0",
            "classType": "Mass Storage",
            "enabled": False,
            "status": "",
            "message": "",
        },
    }
    stored_usb = _create_with_status(control_plane, usbdevice)
    assert stored_usb["status"] == usbdevice["status"]

    # The UI puts pciAddress and nodeName into USB claims; upstream's schema prunes them, ours keeps them.
    usb_claim = {
        "apiVersion": API,
        "kind": "USBDeviceClaim",
        "metadata": {
            "name": usb_name,
            "ownerReferences": [_owner_ref("USBDevice", usb_name, stored_usb["metadata"]["uid"])],
        },
        "spec": {"userName": "admin", "pciAddress": "0000:00:14.0", "nodeName": node},
    }
    created = control_plane.kubectl("create", "-f", "-", input=json.dumps(usb_claim))
    assert "unknown field" not in created.stderr
    assert _get(control_plane, "USBDeviceClaim", usb_name)["spec"] == usb_claim["spec"]


# ---------------------------------------------------------------------------------------------------------------------
# validation


def _claim(node: str, **spec: Any) -> dict[str, Any]:
    body = {"address": "0000:3b:00.0", "nodeName": node, "userName": "admin", **spec}
    return {"apiVersion": API, "kind": "PCIDeviceClaim", "metadata": {"name": f"{node}-00003b000"}, "spec": body}


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"address": "../../x"}, "spec.address"),
        ({"address": "0000:3B:00.0"}, "spec.address"),
        ({"address": "0000:3b:00.8"}, "spec.address"),
        ({"address": "000:3b:00.0"}, "spec.address"),
        ({"nodeName": "Node_1"}, "spec.nodeName"),
        ({"nodeName": "../etc"}, "spec.nodeName"),
    ],
    ids=[
        "forbid a path as address",
        "forbid an upper-case address",
        "forbid function 8",
        "forbid a 3-digit domain",
        "forbid an upper-case node name",
        "forbid a path as node name",
    ],
)
def test_the_schema_rejects_a_bad_claim_with_a_readable_message(
    control_plane: ControlPlane, node: str, spec: dict[str, str], field: str
) -> None:
    result = _apply(control_plane, _claim(node, **spec), check=False)
    assert result.returncode == 1
    assert "is invalid" in result.stderr
    assert f'{field}: Invalid value: "{next(iter(spec.values()))}"' in result.stderr
    assert "should match" in result.stderr
    got = control_plane.kubectl("get", "pdc", f"{node}-00003b000", check=False)
    assert "NotFound" in got.stderr


def test_the_schema_accepts_an_eight_digit_pci_domain(control_plane: ControlPlane, node: str) -> None:
    result = _apply(control_plane, _claim(node, address="10000:e1:00.0"), check=False)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("status", "field"),
    [
        ({"vendorId": "10DE"}, "status.vendorId"),
        ({"deviceId": "1eb"}, "status.deviceId"),
        ({"subsystemVendorId": "10De"}, "status.subsystemVendorId"),
        ({"address": "../../sys/bus"}, "status.address"),
        ({"nodeName": "UPPER"}, "status.nodeName"),
        ({"iommuGroup": "4a"}, "status.iommuGroup"),
        (
            {"iommuGroupMembers": [{"address": "0000:3b:00.0/../..", "bridge": False}]},
            "status.iommuGroupMembers[0].address",
        ),
    ],
    ids=[
        "forbid an upper-case vendor id",
        "forbid a 3-digit device id",
        "forbid a mixed-case subsystem id",
        "forbid a path as status address",
        "forbid an upper-case node name",
        "forbid a non-decimal iommu group",
        "forbid a path as group member",
    ],
)
def test_device_status_is_validated_too(
    control_plane: ControlPlane, node: str, status: dict[str, Any], field: str
) -> None:
    device = full_pcidevice(node)
    _create_with_status(control_plane, device)
    bad = copy.deepcopy(device["status"]) | status
    result = control_plane.kubectl(
        "patch", "pd", device["metadata"]["name"], "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": bad}), check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert f"{field}: Invalid value" in result.stderr


@pytest.mark.parametrize("kind", ["PCIDeviceClaim", "USBDeviceClaim"])
def test_a_claim_spec_is_immutable_but_metadata_and_status_may_change(
    control_plane: ControlPlane, node: str, kind: str
) -> None:
    if kind == "PCIDeviceClaim":
        owner = _create_with_status(control_plane, full_pcidevice(node))
        claim = full_pcideviceclaim(node, owner["metadata"]["uid"])
    else:
        owner = _create_with_status(control_plane, full_usbdevice(node))
        claim = full_usbdeviceclaim(node, owner["metadata"]["uid"])
    _create_with_status(control_plane, claim)
    name, plural = claim["metadata"]["name"], KINDS[kind]

    changed = control_plane.kubectl(
        "patch", plural, name, "--type=merge", "-p", json.dumps({"spec": {"userName": "mallory"}}), check=False
    )
    assert changed.returncode == 1
    assert "spec is immutable" in changed.stderr
    assert _get(control_plane, kind, name)["spec"]["userName"] == "admin"

    control_plane.kubectl("label", plural, name, "team=gpu")
    control_plane.kubectl(
        "patch", plural, name, "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": {"conditions": []}}),
    )  # fmt: skip
    after = _get(control_plane, kind, name)
    assert after["metadata"]["labels"]["team"] == "gpu"
    assert after["status"]["conditions"] == []


# ---------------------------------------------------------------------------------------------------------------------
# test-only CRDs of the objects we touch


def test_kubevirt_and_harvester_objects_of_real_shape_are_stored_unchanged(
    control_plane: ControlPlane, installed_crds: str, unique: str
) -> None:
    ns = f"vms-{unique}"
    control_plane.kubectl("create", "namespace", ns)
    kubevirt = {
        "apiVersion": "kubevirt.io/v1",
        "kind": "KubeVirt",
        "metadata": {"name": "kubevirt", "namespace": ns},
        "spec": {
            "configuration": {
                "developerConfiguration": {"featureGates": ["HostDevices", "GPU"]},
                "permittedHostDevices": {
                    "pciHostDevices": [
                        {"pciVendorSelector": "10de:1eb8", "resourceName": "nvidia.com/node1-00003b000",
                         "externalResourceProvider": True},
                    ],
                    "usb": [{"resourceName": "kubevirt.io/node1-0951-1666-002004",
                             "selectors": [{"vendor": "0951", "product": "1666"}], "externalResourceProvider": True}],
                },
            },
        },
    }  # fmt: skip
    vm = {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": {"name": "gpu-vm", "namespace": ns},
        "spec": {
            "runStrategy": "Halted",
            "template": {
                "metadata": {"labels": {"app": "gpu-vm"}},
                "spec": {
                    "domain": {
                        "devices": {
                            "hostDevices": [{"name": "nic", "deviceName": "intel.com/node1-0000001f6"}],
                            "gpus": [{"name": "gpu1", "deviceName": "nvidia.com/node1-00003b000"}],
                        },
                        "resources": {"requests": {"memory": "1Gi"}},
                    },
                },
            },
        },
    }
    addon = {
        "apiVersion": "harvesterhci.io/v1beta1",
        "kind": "Addon",
        "metadata": {"name": "pcidevices-controller", "namespace": ns},
        "spec": {
            "repo": "http://harvester-cluster-repo.cattle-system.svc/charts",
            "chart": "harvester-pcidevices-controller",
            "version": "0.5.0",
            "enabled": True,
            "valuesContent": "image:\n  tag: v0.5.0\n",
        },
    }
    for obj in (kubevirt, vm, addon):
        _apply(control_plane, obj)
        kind = obj["kind"].lower() + "." + obj["apiVersion"].split("/")[0]
        stored = json.loads(control_plane.kubectl("get", kind, obj["metadata"]["name"], "-n", ns, "-o", "json").stdout)
        assert stored["spec"] == obj["spec"]

    for resource in (
        "virtualmachineinstances.kubevirt.io",
        "virtualmachineinstancereplicasets.kubevirt.io",
        "virtualmachinepools.pool.kubevirt.io",
        "virtualmachineinstancetypes.instancetype.kubevirt.io",
        "virtualmachineclusterinstancetypes.instancetype.kubevirt.io",
    ):
        assert control_plane.kubectl("get", resource, "-A").returncode == 0


@pytest.mark.parametrize(
    ("status", "field"),
    [
        ({"vendorID": "0951X"}, "status.vendorID"),
        ({"productID": "ABCD"}, "status.productID"),
        ({"devicePath": "/dev/../etc/shadow"}, "status.devicePath"),
        ({"pciAddress": "0000:00:14"}, "status.pciAddress"),
        ({"portPath": "1-2/../3"}, "status.portPath"),
        ({"busNum": 0}, "status.busNum"),
    ],
    ids=[
        "forbid a 5-digit vendor id",
        "forbid an upper-case product id",
        "forbid a device path outside /dev/bus/usb",
        "forbid a truncated controller address",
        "forbid a path as port path",
        "forbid bus number 0",
    ],
)
def test_usb_device_status_is_validated(
    control_plane: ControlPlane, node: str, status: dict[str, Any], field: str
) -> None:
    device = full_usbdevice(node)
    _create_with_status(control_plane, device)
    result = control_plane.kubectl(
        "patch", "usbd", device["metadata"]["name"], "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": status}), check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert f"{field}: Invalid value" in result.stderr


def test_a_usb_claim_with_a_bad_informational_address_is_rejected(control_plane: ControlPlane, node: str) -> None:
    claim = {
        "apiVersion": API,
        "kind": "USBDeviceClaim",
        "metadata": {"name": f"{node}-0951-1666-002004"},
        "spec": {"userName": "admin", "pciAddress": "../../x", "nodeName": node},
    }
    result = _apply(control_plane, claim, check=False)
    assert result.returncode == 1
    assert 'spec.pciAddress: Invalid value: "../../x"' in result.stderr


def _patterns(schema: Any) -> set[str]:
    if isinstance(schema, dict):
        found = {schema["pattern"]} if isinstance(schema.get("pattern"), str) else set()
        return found.union(*(_patterns(v) for v in schema.values()))
    if isinstance(schema, list):
        return set().union(*(_patterns(v) for v in schema))
    return set()


def test_the_crd_address_pattern_and_owner_column_follow_policy_names() -> None:
    # The schema is the first line of defence (A11); it must agree with the pattern the webhook and agent use.
    for plural in ("pcidevices", "pcideviceclaims"):
        address_patterns = {p for p in _patterns(_crd(plural)) if p.startswith("^[0-9a-f]{4,8}")}
        assert address_patterns == {names.PCI_ADDRESS_PATTERN}

    for plural in ("pcideviceclaims", "usbdeviceclaims"):
        columns = _crd(plural)["spec"]["versions"][0]["additionalPrinterColumns"]
        owner = next(c for c in columns if c["name"] == "Owner")
        assert owner["jsonPath"] == ".metadata.annotations." + names.ANNOTATION_REQUESTED_BY.replace(".", "\\.")
