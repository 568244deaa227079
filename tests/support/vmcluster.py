"""Cluster-tier helpers of part 2: device objects reported by a node's agent, UI-shaped claims, RBAC for tenants,
virt-controller, a restore controller and the cluster controller, and the controller processes themselves."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from policy import names
from policy.settings import CONTROLLER
from tests.support.controlplane import ControlPlane, KubeUser

REPO = Path(__file__).resolve().parents[2]
NS = "harvester-system"
API = names.API_VERSION
KUBEVIRT_KINDS = [
    "virtualmachines",
    "virtualmachineinstances",
    "virtualmachineinstancereplicasets",
]


def until(check: Callable[[], Any], timeout: float = 30.0, interval: float = 0.3) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            return value
        time.sleep(interval)


def apply(cp: ControlPlane, objs: Sequence[dict[str, Any]], user: KubeUser | None = None) -> None:
    cp.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objs)}),
               user=user)  # fmt: skip


def create(
    cp: ControlPlane, obj: dict[str, Any], user: KubeUser | None, *extra: str
) -> subprocess.CompletedProcess[str]:
    return cp.kubectl("create", *extra, "-f", "-", input=json.dumps(obj), user=user, check=False)


def create_once_visible(
    cp: ControlPlane, obj: dict[str, Any], user: KubeUser | None, *extra: str, timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    """Create as a controller would: retry while the webhook's watch-fed view has not yet seen the owner."""
    deadline = time.monotonic() + timeout
    while True:
        r = create(cp, obj, user, *extra)
        if r.returncode == 0 or "retry once the owner is visible" not in r.stderr or time.monotonic() > deadline:
            return r
        time.sleep(0.3)


def get(cp: ControlPlane, kind: str, name: str, namespace: str = "") -> dict[str, Any] | None:
    args = ["get", kind, name, "-o", "json"] + (["-n", namespace] if namespace else [])
    r = cp.kubectl(*args, check=False)
    return json.loads(r.stdout) if r.returncode == 0 else None


def cluster_role(name: str, rules: list[dict[str, Any]]) -> dict[str, Any]:
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": name},
            "rules": rules}  # fmt: skip


def bind(user: str, role: str, namespace: str = "") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": f"{role}-{user}".replace(":", "-")[:250]}
    if namespace:
        meta["namespace"] = namespace
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding" if namespace else "ClusterRoleBinding",
        "metadata": meta,
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
    }


def webhook_kubevirt_reads() -> list[dict[str, Any]]:
    """What the chart grants the webhook for part 2: reads of the KubeVirt kinds its view holds."""
    return [
        cluster_role("pcidevices-webhook-kubevirt", [
            {"apiGroups": ["kubevirt.io"], "resources": KUBEVIRT_KINDS, "verbs": ["get", "list", "watch"]},
            {"apiGroups": ["pool.kubevirt.io"], "resources": ["virtualmachinepools"],
             "verbs": ["get", "list", "watch"]},
            {"apiGroups": ["instancetype.kubevirt.io"],
             "resources": ["virtualmachineinstancetypes", "virtualmachineclusterinstancetypes"],
             "verbs": ["get", "list", "watch"]},
            {"apiGroups": ["snapshot.kubevirt.io"],
             "resources": ["virtualmachinerestores", "virtualmachinesnapshots", "virtualmachinesnapshotcontents"],
             "verbs": ["get", "list", "watch"]},
            {"apiGroups": ["clone.kubevirt.io"], "resources": ["virtualmachineclones"],
             "verbs": ["get", "list", "watch"]},
        ]),
        # the webhook runs as its ServiceAccount (tests/cluster/test_webhook.py), as in a pod
        bind(f"system:serviceaccount:{NS}:pcidevices-webhook", "pcidevices-webhook-kubevirt"),
        # its device holds (webhook/holds.py): Leases in its own namespace, as the chart's Role grants
        cluster_role("pcidevices-webhook-holds", [
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update"]},
        ]),
        bind(f"system:serviceaccount:{NS}:pcidevices-webhook", "pcidevices-webhook-holds", NS),
    ]  # fmt: skip


def controller_rbac() -> list[dict[str, Any]]:
    """The chart's controller grants, for the controller's username (a client certificate here)."""
    return [
        cluster_role("pcidevices-controller-test", [
            {"apiGroups": [names.GROUP], "resources": ["pcideviceclaims", "usbdeviceclaims"],
             "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]},
            {"apiGroups": [names.GROUP], "resources": ["pcidevices", "usbdevices"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update"]},
            {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
        ]),
        bind(CONTROLLER, "pcidevices-controller-test"),  # the chart: events in "default" only (a Role there)
    ]  # fmt: skip


def pci_device(node: str, address: str, group: str, members: Sequence[str], **status: Any) -> dict[str, Any]:
    name = names.pcidevice_name(node, address)
    st = {
        "address": address,
        "vendorId": "10de",
        "deviceId": "1eb8",
        "classId": "0302",
        "iommuGroup": group,
        "iommuGroupMembers": [{"address": a, "bridge": False} for a in members],
        "nodeName": node,
        "resourceName": f"nvidia.com/{name}",
        "description": "3D controller: NVIDIA Corporation TU104GL [Tesla T4]",
        "kernelDriverInUse": "nvidia",
    }
    st.update(status)
    return {"apiVersion": API, "kind": "PCIDevice",
            "metadata": {"name": name, "labels": {names.LABEL_NODENAME: node}}, "status": st}  # fmt: skip


def report(cp: ControlPlane, agent: KubeUser, device: dict[str, Any]) -> str:
    """The node's agent creates its device object and writes its status; returns the uid."""
    body = {k: v for k, v in device.items() if k != "status"}
    cp.kubectl("create", "-f", "-", input=json.dumps(body), user=agent)
    cp.kubectl("patch", "pcidevices", device["metadata"]["name"], "--subresource=status", "--type=merge",
               "-p", json.dumps({"status": device["status"]}), user=agent)  # fmt: skip
    return cp.kubectl("get", "pcidevices", device["metadata"]["name"], "-o", "jsonpath={.metadata.uid}").stdout


def ui_claim(device: dict[str, Any], uid: str, user_name: str = "admin") -> dict[str, Any]:
    """As the Harvester UI sends a PCIDeviceClaim: named like the device, an ownerReference, a display userName."""
    name = device["metadata"]["name"]
    return {
        "apiVersion": API,
        "kind": "PCIDeviceClaim",
        "metadata": {"name": name,
                     "ownerReferences": [{"apiVersion": API, "kind": "PCIDevice", "name": name, "uid": uid}]},
        "spec": {"address": device["status"]["address"], "nodeName": device["status"]["nodeName"],
                 "userName": user_name, "disableResourcePooling": False},
    }  # fmt: skip


@dataclass
class ControllerReplicas:
    """`python -m webhook.controller` processes sharing one Lease."""

    cp: ControlPlane
    workdir: Path
    user: KubeUser
    lease: str
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, identity: str, **env: str) -> None:
        full = {
            **os.environ,
            "POD_NAMESPACE": NS,
            "POD_NAME": identity,
            "PCIDEVICES_CONTROLLER_KUBECONFIG": str(self.user.kubeconfig),
            "PCIDEVICES_CONTROLLER_LEASE_NAME": self.lease,
            "PCIDEVICES_CONTROLLER_GRACE_S": "2",
            "PCIDEVICES_CONTROLLER_RESYNC_S": "0.5",
            "PCIDEVICES_CONTROLLER_LEASE_DURATION_S": "3",
            "PCIDEVICES_CONTROLLER_LOG_JSON": "false",
            **env,
        }
        with (self.workdir / f"{identity}.log").open("wb") as out:
            self.procs[identity] = subprocess.Popen(
                [sys.executable, "-m", "webhook.controller"], cwd=REPO, env=full, stdout=out, stderr=out,
                start_new_session=True,
            )  # fmt: skip

    def holder(self) -> str:
        lease = get(self.cp, "lease", self.lease, NS)
        return str(((lease or {}).get("spec") or {}).get("holderIdentity") or "")

    def kill(self, identity: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.pop(identity)
        os.killpg(proc.pid, sig)
        proc.wait(20)

    def log(self, identity: str) -> str:
        return (self.workdir / f"{identity}.log").read_text(errors="replace")[-3000:]

    def stop_all(self) -> None:
        for identity in list(self.procs):
            try:
                self.kill(identity, signal.SIGTERM)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
