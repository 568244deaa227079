"""Taking over an upstream installation against a real kube-apiserver (`pcidevices-takeover`, then our webhook).

The API server is seeded the way upstream leaves it: devices, claims sent as the Harvester UI sends them by users
whose spec.userName is not their Kubernetes username, with upstream's finalizers and no owner annotation; Rancher
User objects; a VM naming a pooled deviceName; duplicated permits; upstream's webhook configurations and Secrets;
Node and VMI finalizers; nodes.devices objects; an Addon whose spec.chart a ValidatingAdmissionPolicy keeps fixed.
The seeding happens before our webhook starts (upstream had its own); the releases go through ours.

The takeover reads and repairs the whole cluster: every KubeVirt CR wherever it lives, every claim, VMI and Node, our
CRDs, upstream's webhook configurations. So this module has an API server of its own: on the session's shared one it
would also patch other modules' KubeVirt CRs (test_agent's, whose namespaces the namespace controller deletes some
seconds after each test, so one could vanish between the takeover's plan and its patch; test_crds's) and count
their objects in its before/after comparisons.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from nodeagent.reconcile.pcideviceclaims import is_adopted
from nodeagent.reconcile.plan import effective_resource_name
from policy import names
from policy.names import ANNOTATION_ADOPTED
from policy.objects import FINALIZER_AGENT
from policy.settings import MIGRATION
from takeover.plan import (
    UPSTREAM_NODE_FINALIZER,
    UPSTREAM_PCI_FINALIZER,
    UPSTREAM_USB_FINALIZER,
    UPSTREAM_VMI_FINALIZER,
)
from tests.cluster import test_webhook
from tests.support.controlplane import Binaries, ControlPlane, KubeUser
from tests.support.sysfs_tree import SysfsTree

REPO = Path(__file__).resolve().parents[2]
CRDS = (REPO / "crds", REPO / "tests" / "fixtures" / "crds")
NS = "harvester-system"
API = names.API_VERSION
OWNER = names.ANNOTATION_REQUESTED_BY
DENIED = test_webhook.DENIED
webhook = test_webhook.webhook  # the module-scoped webhook process, requested only after seeding

POOLED = "intel.com/82574L_GIGABIT_NETWORK_CONNECTION"  # upstream's shared name, named by the VM
CHART_ADDON = "pcidevices-controller"


def _apply(cp: ControlPlane, docs: list[dict[str, Any]], user: KubeUser | None = None) -> None:
    cp.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}), user=user)


def _create(cp: ControlPlane, doc: dict[str, Any], user: KubeUser | None = None) -> None:
    cp.kubectl("create", "-f", "-", input=json.dumps(doc), user=user)


def _get(cp: ControlPlane, *args: str) -> dict[str, Any]:
    r = cp.kubectl("get", *args, "-o", "json", check=False)
    return json.loads(r.stdout) if r.returncode == 0 else {}


def _status(cp: ControlPlane, plural: str, name: str, status: dict[str, Any]) -> None:
    cp.kubectl("patch", plural, name, "--subresource=status", "--type=merge", "-p", json.dumps({"status": status}))


@dataclass
class Upstream:
    cp: ControlPlane
    unique: str
    node: str
    kv_ns: str
    claims: dict[str, str]  # role -> claim name
    usb_claim: str
    owner_a: KubeUser  # Rancher user u-...a, spec.userName "admin-<unique>"
    creator_b: KubeUser  # made a claim with spec.userName "bob-<unique>" (no Rancher User)
    ops: KubeUser  # holds `claim` on the devices: may release legacy claims
    stranger: KubeUser  # may delete claim objects but holds no verb
    runs: dict[str, subprocess.CompletedProcess[str]] = field(default_factory=dict)
    versions: dict[str, dict[str, str]] = field(default_factory=dict)

    def takeover(self, *args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "takeover", "--kubeconfig", str(self.cp.admin_kubeconfig)]
        argv += ["--as", MIGRATION, *args]
        return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)

    def resource_versions(self) -> dict[str, str]:
        """resourceVersion of every seeded object (a change anywhere shows)."""
        out: dict[str, str] = {}
        for what in (
            ("pcideviceclaims",),
            ("usbdeviceclaims",),
            ("nodes.v1.",),
            ("nodes.devices.harvesterhci.io",),
            ("virtualmachineinstances", "-A"),
            ("kubevirts", "-A"),
            ("addons", "-A"),
            ("validatingwebhookconfigurations",),
            ("mutatingwebhookconfigurations",),
            ("secrets", "-n", NS),
            ("crd",),
        ):
            for item in _get(self.cp, *what).get("items", []):
                meta = item["metadata"]
                out[f"{what[0]}/{meta.get('namespace', '')}/{meta['name']}"] = meta["resourceVersion"]
        return out


def _rbac(unique: str, subjects: dict[str, str]) -> list[dict[str, Any]]:
    def role(name: str, verbs: list[str]) -> dict[str, Any]:
        return {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": name},
            "rules": [
                {
                    "apiGroups": [names.GROUP],
                    "resources": ["pcideviceclaims", "usbdeviceclaims"],
                    "verbs": ["get", "list", "watch", "create", "delete"],
                },
                {"apiGroups": [names.GROUP], "resources": ["pcidevices", "usbdevices"], "verbs": ["get", *verbs]},
            ],
        }

    def bind(user: str, role_name: str, kind: str = "User", namespace: str | None = None) -> dict[str, Any]:
        subject: dict[str, Any] = {"kind": kind, "name": user}
        if namespace:
            subject["namespace"] = namespace
        else:
            subject["apiGroup"] = "rbac.authorization.k8s.io"
        return {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": f"{unique}-{user.rsplit(':', 1)[-1]}-{role_name}"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role_name},
            "subjects": [subject],
        }

    docs = [role(f"{unique}-claimer", ["claim", "use"]), role(f"{unique}-plain", [])]
    docs += [bind(user, f"{unique}-{r}") for user, r in subjects.items()]
    docs.append(bind("pcidevices-takeover", "cluster-admin", kind="ServiceAccount", namespace=NS))
    return docs


def _pci_device(node: str, address: str, device_id: str, resource: str) -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "PCIDevice",
        "metadata": {"name": names.pcidevice_name(node, address), "labels": {names.LABEL_NODENAME: node}},
        "status": {
            "address": address,
            "vendorId": "8086",
            "deviceId": device_id,
            "classId": "0200",
            "iommuGroup": address[5:7].lstrip("0") or "0",
            "nodeName": node,
            "resourceName": resource,
            "description": "Ethernet controller: Intel Corporation NIC",
            "kernelDriverInUse": "vfio-pci",
        },
    }


def _ui_pci_claim(node: str, address: str, user_name: str, uid: str) -> dict[str, Any]:
    """The Harvester UI's request body, plus the finalizer upstream's controller added."""
    name = names.pcidevice_name(node, address)
    return {
        "apiVersion": API,
        "kind": "PCIDeviceClaim",
        "metadata": {
            "name": name,
            "ownerReferences": [{"apiVersion": API, "kind": "PCIDevice", "name": name, "uid": uid}],
            "finalizers": [UPSTREAM_PCI_FINALIZER],
        },
        "spec": {"address": address, "nodeName": node, "userName": user_name},
    }


def _seed(cp: ControlPlane, unique: str) -> Upstream:
    node = f"{unique}-node-1"
    kv_ns = f"{unique}-kv"
    owner_a = cp.mint_user(f"u-{unique}a")
    creator_b = cp.mint_user(f"u-{unique}b")
    ops = cp.mint_user(f"{unique}-ops")
    stranger = cp.mint_user(f"{unique}-stranger")
    cp.kubectl("create", "namespace", NS, check=False)
    cp.kubectl("create", "namespace", kv_ns)
    _apply(
        cp,
        _rbac(
            unique,
            {owner_a.name: "claimer", creator_b.name: "claimer", ops.name: "claimer", stranger.name: "plain"},
        ),
    )
    vm_editor = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "vm-editor", "namespace": kv_ns},
        "rules": [{"apiGroups": ["kubevirt.io"], "resources": ["virtualmachines"], "verbs": ["get", "create"]}],
    }
    vm_binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "vm-editor", "namespace": kv_ns},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "vm-editor"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": owner_a.name}],
    }
    _apply(cp, [vm_editor, vm_binding])
    # Rancher Users: the UI writes `username` into spec.userName; Kubernetes knows the user as metadata.name
    _apply(
        cp,
        [
            {
                "apiVersion": "management.cattle.io/v3",
                "kind": "User",
                "metadata": {"name": owner_a.name},
                "username": f"admin-{unique}",
                "displayName": "Default Admin",
                "principalIds": [f"local://{owner_a.name}"],
            }
        ],
    )
    _create(
        cp, {"apiVersion": "v1", "kind": "Node", "metadata": {"name": node, "finalizers": [UPSTREAM_NODE_FINALIZER]}}
    )
    _create(cp, {"apiVersion": API, "kind": "Node", "metadata": {"name": node}})  # nodes.devices.harvesterhci.io
    devices = {
        "mapped": ("0000:01:00.0", "10d3", "intel.com/82574L_ONE"),
        "legacy": ("0000:02:00.0", "10d4", "intel.com/82574L_TWO"),
        "pooled": ("0000:03:00.0", "10d5", POOLED),
        "pooled2": ("0000:05:00.0", "10d5", POOLED),  # a pool of two identical NICs; vm1 needs one
    }
    users = {
        "mapped": (owner_a, f"admin-{unique}"),
        "legacy": (creator_b, f"bob-{unique}"),
        "pooled": (owner_a, f"admin-{unique}"),
        "pooled2": (owner_a, f"admin-{unique}"),
    }
    claims: dict[str, str] = {}
    for role, (address, device_id, resource) in devices.items():
        dev = _pci_device(node, address, device_id, resource)
        name = dev["metadata"]["name"]
        _create(cp, {k: v for k, v in dev.items() if k != "status"})
        _status(cp, "pcidevices", name, dev["status"])
        uid = _get(cp, "pcidevices", name)["metadata"]["uid"]
        user, user_name = users[role]
        _create(cp, _ui_pci_claim(node, address, user_name, uid), user=user)
        _status(cp, "pcideviceclaims", name, {"passthroughEnabled": True, "kernelDriverToUnbind": "e1000e"})
        claims[role] = name
    usb_claim = names.usbdevice_name(node, "0951", "1666", 2, 4)
    _create(
        cp,
        {
            "apiVersion": API,
            "kind": "USBDeviceClaim",
            "metadata": {"name": usb_claim, "finalizers": [UPSTREAM_USB_FINALIZER]},
            "spec": {"userName": f"admin-{unique}"},
        },
        user=owner_a,
    )
    vm = {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": {"name": "vm1", "namespace": kv_ns},
        "spec": {
            "runStrategy": "Halted",
            "template": {"spec": {"domain": {"devices": {"hostDevices": [{"name": "nic", "deviceName": POOLED}]}}}},
        },
    }
    vmi = {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstance",
        "metadata": {"name": "vm1", "namespace": kv_ns, "finalizers": [UPSTREAM_VMI_FINALIZER]},
        "spec": {"domain": {"devices": {"hostDevices": [{"name": "nic", "deviceName": POOLED}]}}},
    }
    kubevirt = {
        "apiVersion": "kubevirt.io/v1",
        "kind": "KubeVirt",
        "metadata": {"name": "kubevirt", "namespace": kv_ns},
        "spec": {
            "configuration": {
                "permittedHostDevices": {
                    "pciHostDevices": [
                        {"pciVendorSelector": "8086:10d5", "resourceName": POOLED, "externalResourceProvider": True},
                        {"pciVendorSelector": "8086:10d5", "resourceName": POOLED},  # upstream's slice shift
                        {"pciVendorSelector": "8086:10d3", "resourceName": "intel.com/82574L_ONE"},
                    ]
                }
            }
        },
    }
    for doc in (vm, vmi, kubevirt):
        _create(cp, doc)
    hook = {
        "name": "pcidevices.harvesterhci.io",
        "clientConfig": {"service": {"namespace": NS, "name": "pcidevices-webhook", "port": 8443,
                                     "path": "/v1/webhook/validation"}},
        "rules": [{"apiGroups": ["devices.harvesterhci.io"], "apiVersions": ["v1beta1"], "operations": ["CREATE"],
                   "resources": ["nonexistent"], "scope": "*"}],
        "failurePolicy": "Ignore",
        "sideEffects": "None",
        "admissionReviewVersions": ["v1"],
    }  # fmt: skip
    for kind, name in (
        ("ValidatingWebhookConfiguration", "pcidevices-validator"),
        ("MutatingWebhookConfiguration", "pcidevices-mutator"),
    ):
        cp.kubectl("delete", kind.lower(), name, "--ignore-not-found")
        _create(
            cp,
            {
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": kind,
                "metadata": {"name": name},
                "webhooks": [hook],
            },
        )
    for name in ("pcidevices-webhook-ca", "pcidevices-webhook-tls"):
        cp.kubectl("delete", "secret", name, "-n", NS, "--ignore-not-found")
        _create(
            cp,
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": NS}, "data": {"x": "eA=="}},
        )
    # Harvester forbids changing the Addon's spec.chart: a ValidatingAdmissionPolicy plays that part here
    _apply(cp, [
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
         "metadata": {"name": f"{unique}-addon-chart"},
         "spec": {"failurePolicy": "Fail",
                  "matchConstraints": {"resourceRules": [{"apiGroups": ["harvesterhci.io"], "apiVersions": ["*"],
                                                          "operations": ["UPDATE"], "resources": ["addons"]}]},
                  "validations": [{"expression": "object.spec.chart == oldObject.spec.chart",
                                   "message": "spec.chart of an Addon cannot change"}]}},
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
         "metadata": {"name": f"{unique}-addon-chart"},
         "spec": {"policyName": f"{unique}-addon-chart", "validationActions": ["Deny"]}},
    ])  # fmt: skip
    cp.kubectl("delete", "addon", CHART_ADDON, "-n", NS, "--ignore-not-found")
    _create(cp, {
        "apiVersion": "harvesterhci.io/v1beta1", "kind": "Addon",
        "metadata": {"name": CHART_ADDON, "namespace": NS},
        "spec": {"repo": "http://harvester-cluster-repo.cattle-system.svc/charts", "version": "0.3.6",
                 "chart": "harvester-pcidevices-controller", "enabled": True, "valuesContent": ""},
    })  # fmt: skip
    return Upstream(cp, unique, node, kv_ns, claims, usb_claim, owner_a, creator_b, ops, stranger)


def _chart_rejected(cp: ControlPlane) -> bool:
    """The stand-in policy really forbids changing spec.chart (waits for the policy to become active)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        r = cp.kubectl("patch", "addon", CHART_ADDON, "-n", NS, "--type=merge", "-p", '{"spec":{"chart":"other"}}',
                       "--dry-run=server", check=False)  # fmt: skip
        if r.returncode != 0 and "cannot change" in r.stderr:
            return True
        time.sleep(0.5)
    return False


@pytest.fixture(scope="module")
def control_plane(binaries: Binaries, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """This module's own etcd + kube-apiserver (it replaces the session's for every fixture here, the webhook's too):
    the cluster holds only the seeded upstream installation, so the takeover meets nothing another module left."""
    with ControlPlane(binaries, tmp_path_factory.mktemp("takeover-controlplane")) as cp:
        yield cp


@pytest.fixture(scope="module")
def installed_crds(control_plane: ControlPlane) -> str:
    return control_plane.install_crds(*CRDS)


@pytest.fixture(scope="module")
def upstream(control_plane: ControlPlane, installed_crds: str, request: pytest.FixtureRequest) -> Iterator[Upstream]:
    """Seeded, then: a refused run (vGPU enabled), a dry run, the real run and a second run; our webhook afterwards."""
    cp = control_plane
    site = _seed(cp, "k" + __import__("os").urandom(3).hex())
    assert _chart_rejected(cp)
    vgpu = {"apiVersion": API, "kind": "VGPUDevice", "metadata": {"name": f"{site.node}-000004000"},
            "spec": {"address": "0000:04:00.0", "nodeName": site.node, "enabled": True,
                     "vGPUTypeName": "GRID T4-1Q"}}  # fmt: skip
    _create(cp, vgpu)
    site.versions["seeded"] = site.resource_versions()
    site.runs["refused"] = site.takeover()
    site.versions["after-refused"] = site.resource_versions()
    cp.kubectl("delete", "vgpudevice", vgpu["metadata"]["name"])
    site.versions["before-dry"] = site.resource_versions()
    site.runs["dry"] = site.takeover(
        "--dry-run", "--addon-repo", "https://charts.example.test", "--addon-version", "0.1.0"
    )
    site.versions["after-dry"] = site.resource_versions()
    site.runs["real"] = site.takeover("--addon-repo", "https://charts.example.test", "--addon-version", "0.1.0")
    site.versions["after-real"] = site.resource_versions()
    site.runs["second"] = site.takeover("--addon-repo", "https://charts.example.test", "--addon-version", "0.1.0")
    site.versions["after-second"] = site.resource_versions()
    request.getfixturevalue("webhook")
    time.sleep(1.0)  # the webhook's view follows watches
    yield site  # nothing to clean up: the control plane goes with the module


def test_with_a_vgpu_enabled_the_takeover_refuses_and_changes_nothing(upstream: Upstream) -> None:
    r = upstream.runs["refused"]
    assert r.returncode == 1, r.stdout + r.stderr
    assert "refused (nothing was changed)" in r.stdout and "vGPU" in r.stdout
    assert upstream.versions["after-refused"] == upstream.versions["seeded"]


def test_dry_run_prints_the_plan_and_changes_nothing(upstream: Upstream) -> None:
    r = upstream.runs["dry"]
    assert r.returncode == 0, r.stdout + r.stderr
    assert "would change" in r.stdout and UPSTREAM_PCI_FINALIZER in r.stdout
    assert upstream.versions["after-dry"] == upstream.versions["before-dry"]


def test_the_real_run_changes_and_a_second_run_changes_nothing(upstream: Upstream) -> None:
    r = upstream.runs["real"]
    assert r.returncode == 0, r.stdout + r.stderr
    assert ", 0 failed" in r.stdout and "failed " not in r.stdout
    # the cluster is this module's alone: the one KubeVirt CR repaired is the seeded one
    kubevirts = [line.split()[1] for line in r.stdout.splitlines() if line.strip().startswith("patch kubevirts/")]
    assert kubevirts == [f"kubevirts/{upstream.kv_ns}/kubevirt:"], r.stdout
    second = upstream.runs["second"]
    assert second.returncode == 0 and "nothing to change" in second.stdout, second.stdout + second.stderr
    assert upstream.versions["after-second"] == upstream.versions["after-real"]


def test_claims_are_adopted_with_owners_from_rancher_users_or_legacy_and_our_finalizer(upstream: Upstream) -> None:
    cp = upstream.cp
    mapped = _get(cp, "pcideviceclaims", upstream.claims["mapped"])
    legacy = _get(cp, "pcideviceclaims", upstream.claims["legacy"])
    usb = _get(cp, "usbdeviceclaims", upstream.usb_claim)
    assert mapped["metadata"]["annotations"][OWNER] == upstream.owner_a.name
    assert legacy["metadata"]["annotations"][OWNER] == f"legacy:bob-{upstream.unique}"
    assert usb["metadata"]["annotations"][OWNER] == upstream.owner_a.name
    for claim in (mapped, legacy, usb):
        assert claim["metadata"]["finalizers"] == [FINALIZER_AGENT]
        assert claim["metadata"]["annotations"][ANNOTATION_ADOPTED]
    assert mapped["spec"]["userName"] == f"admin-{upstream.unique}"
    assert mapped["status"]["passthroughEnabled"] is True


def test_the_vms_pooled_device_name_stays_permitted_and_the_agent_keeps_serving_it(upstream: Upstream) -> None:
    cp = upstream.cp
    kv = _get(cp, "kubevirt", "kubevirt", "-n", upstream.kv_ns)
    pci = kv["spec"]["configuration"]["permittedHostDevices"]["pciHostDevices"]
    assert [e for e in pci if e["resourceName"] == POOLED] == [
        {"pciVendorSelector": "8086:10d5", "resourceName": POOLED, "externalResourceProvider": True}
    ]
    assert {
        "pciVendorSelector": "8086:10d3",
        "resourceName": "intel.com/82574L_ONE",
        "externalResourceProvider": True,
    } in pci
    names_ = [e["resourceName"] for e in pci]
    assert len(names_) == len(set(names_))
    # the agent offers an adopted claim's device under its pooled name whatever its owner (its VM already uses it)
    claim = _get(cp, "pcideviceclaims", upstream.claims["pooled"])
    assert claim["metadata"]["annotations"][OWNER] == upstream.owner_a.name  # a real user, not legacy:
    offered = effective_resource_name(POOLED, claim["metadata"]["name"], mode="perDevice", adopted=is_adopted(claim))
    assert offered == POOLED


def test_upstream_webhooks_secrets_and_node_objects_are_gone(upstream: Upstream) -> None:
    cp = upstream.cp
    assert not _get(cp, "validatingwebhookconfiguration", "pcidevices-validator")
    assert not _get(cp, "mutatingwebhookconfiguration", "pcidevices-mutator")
    assert not _get(cp, "secret", "pcidevices-webhook-ca", "-n", NS)
    assert not _get(cp, "secret", "pcidevices-webhook-tls", "-n", NS)
    assert not _get(cp, "nodes.devices.harvesterhci.io", upstream.node)


def test_our_crds_carry_helm_ownership_metadata(upstream: Upstream) -> None:
    for plural in ("pcidevices", "pcideviceclaims", "usbdevices", "usbdeviceclaims"):
        meta = _get(upstream.cp, "crd", f"{plural}.{names.GROUP}")["metadata"]
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "Helm"
        assert meta["annotations"]["meta.helm.sh/release-name"] == "pcidevices-controller"
        assert meta["annotations"]["meta.helm.sh/release-namespace"] == NS


def test_the_addon_points_at_our_chart_by_repo_and_version_with_its_chart_unchanged(upstream: Upstream) -> None:
    spec = _get(upstream.cp, "addon", CHART_ADDON, "-n", NS)["spec"]
    assert spec["chart"] == "harvester-pcidevices-controller"
    assert spec["repo"] == "https://charts.example.test" and spec["version"] == "0.1.0"
    assert spec["enabled"] is True


def test_nodes_and_vmis_can_be_deleted(upstream: Upstream) -> None:
    cp = upstream.cp
    cp.kubectl("delete", "vmi", "vm1", "-n", upstream.kv_ns, "--timeout=30s")
    cp.kubectl("delete", "node", upstream.node, "--timeout=30s")
    assert not _get(cp, "vmi", "vm1", "-n", upstream.kv_ns)
    assert not _get(cp, "node", upstream.node)


def test_the_owner_may_still_give_a_vm_the_pooled_device_name_through_our_webhook(upstream: Upstream) -> None:
    vm = {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": {"name": "vm2", "namespace": upstream.kv_ns},
        "spec": {
            "runStrategy": "Halted",
            "template": {"spec": {"domain": {"devices": {"hostDevices": [{"name": "nic", "deviceName": POOLED}]}}}},
        },
    }
    r = upstream.cp.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(vm), user=upstream.owner_a,
                            check=False)  # fmt: skip
    assert r.returncode == 0, r.stderr
    # the webhook did judge it: three devices of a pool of two are refused
    entries = [{"name": f"nic{i}", "deviceName": POOLED} for i in range(3)]
    vm["spec"]["template"]["spec"]["domain"]["devices"]["hostDevices"] = entries
    r = upstream.cp.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(vm), user=upstream.owner_a,
                            check=False)  # fmt: skip
    assert r.returncode != 0 and "denied the request" in r.stderr, r.stderr


def test_the_agent_step_derives_upstream_ids_from_this_nodes_claims_in_the_api(
    upstream: Upstream, tmp_path: Path
) -> None:
    tree = SysfsTree(tmp_path / "host")
    for address, device in (
        ("0000:01:00.0", "10d3"),
        ("0000:03:00.0", "10d5"),
        ("0000:05:00.0", "10d5"),
        ("0000:09:00.0", "10d3"),
    ):  # the last is bound the same way but nobody claimed it
        path = tree.pci(address, vendor="8086", device=device, driver="vfio-pci", iommu_group=int(address[5:7], 16))
        (path / "driver_override").write_text("(null)\n")
    remove_id = tree.sys / "bus/pci/drivers/vfio-pci/remove_id"
    remove_id.write_text("")
    argv = [sys.executable, "-m", "nodeagent", "takeover", "--root", str(tree.base), "--node-name", upstream.node,
            "--kubeconfig", str(upstream.cp.admin_kubeconfig)]  # fmt: skip
    r = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert remove_id.read_text() == "8086 10d5"
    assert "kept 8086 10d3: unclaimed devices bound the same way: 0000:09:00.0" in r.stdout


def test_each_claims_real_owner_can_release_it_through_our_webhook(upstream: Upstream) -> None:
    cp = upstream.cp
    mapped, legacy = upstream.claims["mapped"], upstream.claims["legacy"]
    denied = cp.kubectl("delete", "pcideviceclaim", mapped, "--wait=false", user=upstream.stranger, check=False)
    assert denied.returncode != 0 and DENIED in denied.stderr
    # the creator of the legacy claim is not its recorded owner; a holder of `claim` on the device is enough
    r = cp.kubectl("delete", "pcideviceclaim", mapped, "--wait=false", user=upstream.owner_a, check=False)
    assert r.returncode == 0, r.stderr
    r = cp.kubectl("delete", "pcideviceclaim", legacy, "--wait=false", user=upstream.ops, check=False)
    assert r.returncode == 0, r.stderr
    for name in (mapped, legacy):  # our finalizer holds them until the node's agent has released the device
        assert _get(cp, "pcideviceclaims", name)["metadata"].get("deletionTimestamp")
