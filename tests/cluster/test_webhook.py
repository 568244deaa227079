"""The admission webhook behind a real kube-apiserver: kubectl as tenants, admins and node agents.

The webhook runs as production runs it (`python -m webhook serve`: gunicorn, TLS, watch-fed view, SAR checks, its
own CA and serving certificate in a Secret, caBundle patched into the configurations), reached by the API server at
https://127.0.0.1:<port>. The configurations come from the chart's template, rendered with helm.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509

from policy import messages, names
from tests.support.controlplane import ControlPlane, KubeUser

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "harvester-pcidevices-controller"
NS = "harvester-system"
API = names.API_VERSION
OWNER = names.ANNOTATION_REQUESTED_BY
VALIDATING = "pcidevices-validating"
MUTATING = "pcidevices-mutating"
DENIED = 'admission webhook "validate.devices.harvesterhci.io" denied the request: '
KUBEVIRT_DENIED = 'admission webhook "kubevirt.validate.devices.harvesterhci.io" denied the request: '
RACE_CONFIGURATION = "pcidevices-race-absent"  # never created: the racing keepers find nothing to patch
OVERLAP_S = 4  # certificate overlap in this module (production: 10 minutes)


# -- rendering the configurations (one place, so the source can switch) ----------------------------------------------


def render_webhook_configurations(cp: ControlPlane, **values: str) -> str:
    """The chart's webhook configurations as YAML, rendered by helm with `values` (--set key=value)."""
    sets = [arg for k, v in values.items() for arg in ("--set", f"{k}={v}")]
    out = cp.helm(
        "template", "pcidevices", str(CHART), "--namespace", NS,
        "--show-only", "templates/webhookconfigurations.yaml", *sets,
    ).stdout  # fmt: skip
    return out


# -- the webhook process ---------------------------------------------------------------------------------------------

RBAC = [
    {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": "pcidevices-webhook"},
        "rules": [
            {"apiGroups": ["authorization.k8s.io"], "resources": ["subjectaccessreviews"], "verbs": ["create"]},
            {
                "apiGroups": [names.GROUP],
                "resources": ["pcidevices", "pcideviceclaims", "usbdevices", "usbdeviceclaims"],
                "verbs": ["get", "list", "watch"],
            },
            {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]},
            {
                "apiGroups": ["admissionregistration.k8s.io"],
                "resources": ["validatingwebhookconfigurations", "mutatingwebhookconfigurations"],
                "resourceNames": [VALIDATING, MUTATING, RACE_CONFIGURATION],
                "verbs": ["get", "patch"],
            },
        ],
    },
    {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": "pcidevices-webhook"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "pcidevices-webhook"},
        "subjects": [{"kind": "ServiceAccount", "name": "pcidevices-webhook", "namespace": NS}],
    },
    {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "pcidevices-webhook", "namespace": NS},
        "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "create", "update"]}],
    },
    {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "pcidevices-webhook", "namespace": NS},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pcidevices-webhook"},
        "subjects": [{"kind": "ServiceAccount", "name": "pcidevices-webhook", "namespace": NS}],
    },
    # The agent's ordinary RBAC (the webhook restricts it further to its own node).
    {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": "pcidevices-agent"},
        "rules": [
            {
                "apiGroups": [names.GROUP],
                "resources": [
                    "pcidevices",
                    "usbdevices",
                    "pcidevices/status",
                    "usbdevices/status",
                    "pcideviceclaims",
                    "usbdeviceclaims",
                    "pcideviceclaims/status",
                    "usbdeviceclaims/status",
                ],
                "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"],
            },
            {"apiGroups": ["kubevirt.io"], "resources": ["kubevirts"], "verbs": ["get", "update", "patch"]},
        ],
    },
    {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": "pcidevices-agent"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "pcidevices-agent"},
        "subjects": [{"kind": "ServiceAccount", "name": "pcidevices-agent", "namespace": NS}],
    },
]


@dataclass
class Webhook:
    cp: ControlPlane
    proc: subprocess.Popen[bytes]
    port: int
    workdir: Path
    env: dict[str, str]

    def log_tail(self) -> str:
        return (self.workdir / "webhook.log").read_text(errors="replace")[-4000:]

    def served_issuer(self) -> x509.Name:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as raw:
            with ctx.wrap_socket(raw) as tls:
                der = tls.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der).issuer

    def ca_bundles(self) -> list[list[x509.Certificate]]:
        bundles = []
        for kind, name in (("validatingwebhookconfiguration", VALIDATING), ("mutatingwebhookconfiguration", MUTATING)):
            doc = json.loads(self.cp.kubectl("get", kind, name, "-o", "json").stdout)
            for hook in doc["webhooks"]:
                pem = base64.b64decode(hook["clientConfig"].get("caBundle", ""))
                bundles.append(x509.load_pem_x509_certificates(pem) if pem else [])
        return bundles

    def metric(self, name: str, fragment: str) -> float:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        import http.client

        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=ctx, timeout=5)
        try:
            conn.request("GET", "/metrics")
            text = conn.getresponse().read().decode()
        finally:
            conn.close()
        return sum(
            float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name) and fragment in line
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _apply(cp: ControlPlane, obj: Any, user: KubeUser | None = None, check: bool = True) -> Any:
    docs = obj if isinstance(obj, list) else [obj]
    return cp.kubectl(
        "apply",
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}),
        user=user,
        check=check,
    )


@pytest.fixture(scope="module")
def webhook(control_plane: ControlPlane, installed_crds: str) -> Iterator[Webhook]:
    with serve_webhook(control_plane) as wh:
        yield wh


@contextlib.contextmanager
def serve_webhook(cp: ControlPlane, **extra_env: str) -> Iterator[Webhook]:
    """The webhook as its ServiceAccount behind the chart's configurations (URL mode), `extra_env` on top (e.g. a
    policy setting); its configurations are removed when it stops."""
    cp.kubectl("create", "namespace", NS, check=False)
    _apply(cp, RBAC)
    # The webhook runs as its ServiceAccount with a token, as in a pod (bearer auth on every call it makes).
    cp.kubectl("create", "serviceaccount", "pcidevices-webhook", "-n", NS, check=False)
    token = cp.kubectl("create", "token", "pcidevices-webhook", "-n", NS, "--duration=2h").stdout.strip()
    kubeconfig = yaml.safe_load(cp.admin_kubeconfig.read_text())
    kubeconfig["users"][0]["user"] = {"token": token}
    workdir = Path(tempfile.mkdtemp(prefix="whcluster"))
    identity_kubeconfig = workdir / "webhook.kubeconfig"
    identity_kubeconfig.write_text(yaml.safe_dump(kubeconfig))
    port = _free_port()
    cp.kubectl(
        "apply", "-f", "-", input=render_webhook_configurations(cp, **{"webhook.url": f"https://127.0.0.1:{port}"})
    )
    env = {
        **os.environ,
        "PCIDEVICES_WEBHOOK_BIND": f"127.0.0.1:{port}",
        "PCIDEVICES_WEBHOOK_KUBECONFIG": str(identity_kubeconfig),
        "PCIDEVICES_WEBHOOK_NAMESPACE": NS,
        "PCIDEVICES_WEBHOOK_EXTRA_IP_ADDRESSES": "127.0.0.1",
        "PCIDEVICES_WEBHOOK_CERT_DIR": str(workdir / "certs"),
        "PCIDEVICES_WEBHOOK_VALIDATING_CONFIGURATION": VALIDATING,
        "PCIDEVICES_WEBHOOK_MUTATING_CONFIGURATION": MUTATING,
        "PCIDEVICES_WEBHOOK_OVERLAP_S": str(OVERLAP_S),
        "PCIDEVICES_WEBHOOK_CERT_CHECK_INTERVAL_S": "1",
        "PCIDEVICES_WEBHOOK_SAR_TTL_S": "1",
        "PROMETHEUS_MULTIPROC_DIR": str(workdir / "metrics"),
        **extra_env,
    }
    log = workdir / "webhook.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "webhook", "serve"], cwd=REPO, env=env, stdout=out, stderr=out,
            start_new_session=True,
        )  # fmt: skip
    wh = Webhook(cp, proc, port, workdir, env)
    try:
        _wait_until_admitting(wh)
        yield wh
    finally:
        # Configurations with failurePolicy Fail must not outlive the webhook: other tests share the API server.
        for kind, name in (("validatingwebhookconfiguration", VALIDATING), ("mutatingwebhookconfiguration", MUTATING)):
            cp.kubectl("delete", kind, name, "--ignore-not-found", check=False)
        os.killpg(proc.pid, 15)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
        kept = os.environ.get("PCIDEVICES_KEEP_WEBHOOK_LOG")  # a directory: keep the log for a post-mortem
        if kept:
            shutil.copy(log, Path(kept) / f"webhook-{proc.pid}.log")
        shutil.rmtree(workdir, ignore_errors=True)


def _wait_until_admitting(wh: Webhook) -> None:
    """Until the API server reaches the webhook over TLS with the patched caBundle (a probe review is answered)."""
    probe = _pci_claim("probe-node", "0000:00:01.0", user_name="probe")
    deadline = time.monotonic() + 90
    last = ""
    while time.monotonic() < deadline:
        if wh.proc.poll() is not None:
            pytest.fail(f"webhook exited:\n{wh.log_tail()}")
        r = wh.cp.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(probe), check=False)
        last = r.stderr
        if DENIED in r.stderr:
            return
        time.sleep(0.5)
    pytest.fail(f"the API server never got an answer from the webhook: {last}\n{wh.log_tail()}")


# -- objects ---------------------------------------------------------------------------------------------------------


def _device_name(node: str, address: str) -> str:
    return names.pcidevice_name(node, address)


def _pci_device(node: str, address: str, **status: Any) -> dict[str, Any]:
    st = {
        "address": address,
        "vendorId": "10de",
        "deviceId": "1eb8",
        "classId": "0302",
        "iommuGroup": "7",
        "nodeName": node,
        "resourceName": f"nvidia.com/{_device_name(node, address)}",
        "description": "3D controller: NVIDIA Corporation TU104GL [Tesla T4]",
        "kernelDriverInUse": "nvidia",
    }
    st.update(status)
    return {
        "apiVersion": API,
        "kind": "PCIDevice",
        "metadata": {"name": _device_name(node, address), "labels": {names.LABEL_NODENAME: node}},
        "status": st,
    }


def _usb_device(node: str, controller: str, bus: int = 1, dev: int = 3) -> dict[str, Any]:
    name = names.usbdevice_name(node, "0951", "1666", bus, dev)
    return {
        "apiVersion": API,
        "kind": "USBDevice",
        "metadata": {"name": name, "labels": {names.LABEL_NODENAME: node}},
        "status": {
            "vendorID": "0951",
            "productID": "1666",
            "nodeName": node,
            "resourceName": f"kubevirt.io/{name}",
            "devicePath": f"/dev/bus/usb/{bus:03d}/{dev:03d}",
            "busNum": bus,
            "devNum": dev,
            "description": "DataTraveler 100 G3/G4/SE9 G2/50 Kyson (Kingston Technology)",
            "pciAddress": controller,
            "classType": "Mass Storage",
            "enabled": False,
        },
    }


def _pci_claim(node: str, address: str, *, user_name: str = "admin", uid: str | None = None) -> dict[str, Any]:
    """As the Harvester UI sends it: named like the device, ownerReference with apiVersion/kind/name/uid only."""
    name = _device_name(node, address)
    claim: dict[str, Any] = {
        "apiVersion": API,
        "kind": "PCIDeviceClaim",
        "metadata": {"name": name},
        "spec": {"address": address, "nodeName": node, "userName": user_name, "disableResourcePooling": False},
    }
    if uid:
        claim["metadata"]["ownerReferences"] = [{"apiVersion": API, "kind": "PCIDevice", "name": name, "uid": uid}]
    return claim


def _usb_claim(name: str, uid: str | None = None) -> dict[str, Any]:
    claim: dict[str, Any] = {
        "apiVersion": API,
        "kind": "USBDeviceClaim",
        "metadata": {"name": name},
        "spec": {"userName": "admin"},
    }
    if uid:
        claim["metadata"]["ownerReferences"] = [{"apiVersion": API, "kind": "USBDevice", "name": name, "uid": uid}]
    return claim


@dataclass
class Site:
    """Two nodes with their agents, and tenants with and without the custom verbs."""

    node1: str
    node2: str
    agent1: KubeUser
    agent2: KubeUser
    tenant_a: KubeUser  # claim + release on everything
    tenant_b: KubeUser  # may create claim objects but holds no custom verb
    tenant_c: KubeUser  # release only


def _tenant_roles(unique: str) -> list[dict[str, Any]]:
    def role(name: str, rules: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": name},
            "rules": rules,
        }

    def bind(user: str, role_name: str) -> dict[str, Any]:
        return {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": f"{user}-{role_name}"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role_name},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
        }

    claims = {
        "apiGroups": [names.GROUP],
        "resources": ["pcideviceclaims", "usbdeviceclaims"],
        "verbs": ["get", "list", "watch", "create", "delete", "update", "patch"],
    }
    devices = {
        "apiGroups": [names.GROUP],
        "resources": ["pcidevices", "usbdevices"],
        "verbs": ["get", "list", "watch", "update", "patch"],
    }
    return [
        role(
            f"{unique}-claimer",
            [
                claims,
                devices,
                {
                    "apiGroups": [names.GROUP],
                    "resources": ["pcidevices", "usbdevices"],
                    "verbs": ["claim", "release", "use"],
                },
            ],
        ),
        role(f"{unique}-plain", [claims, devices]),
        role(
            f"{unique}-releaser",
            [
                claims,
                devices,
                {"apiGroups": [names.GROUP], "resources": ["pcidevices", "usbdevices"], "verbs": ["release"]},
            ],
        ),
        bind(f"{unique}-tenant-a", f"{unique}-claimer"),
        bind(f"{unique}-tenant-b", f"{unique}-plain"),
        bind(f"{unique}-tenant-c", f"{unique}-releaser"),
    ]


@pytest.fixture(scope="module")
def site(webhook: Webhook) -> Site:
    cp = webhook.cp
    unique = "s" + os.urandom(3).hex()
    _apply(cp, _tenant_roles(unique))
    node1, node2 = f"{unique}-node-1", f"{unique}-node-2"  # names with '-', as real ones have
    return Site(
        node1=node1,
        node2=node2,
        agent1=cp.mint_node_token(node1, namespace=NS),
        agent2=cp.mint_node_token(node2, namespace=NS),
        tenant_a=cp.mint_user(f"{unique}-tenant-a", groups=("tenants",)),
        tenant_b=cp.mint_user(f"{unique}-tenant-b", groups=("tenants",)),
        tenant_c=cp.mint_user(f"{unique}-tenant-c", groups=("tenants",)),
    )


def _report(cp: ControlPlane, agent: KubeUser, device: dict[str, Any]) -> str:
    """The node agent creates its device object and writes its status; returns the object's uid."""
    body = {k: v for k, v in device.items() if k != "status"}
    cp.kubectl("create", "-f", "-", input=json.dumps(body), user=agent)
    plural = {"PCIDevice": "pcidevices", "USBDevice": "usbdevices"}[device["kind"]]
    cp.kubectl(
        "patch", plural, device["metadata"]["name"], "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": device["status"]}), user=agent,
    )  # fmt: skip
    uid: str = cp.kubectl("get", plural, device["metadata"]["name"], "-o", "jsonpath={.metadata.uid}").stdout
    return uid


def _settle() -> None:
    time.sleep(1.0)  # the webhook's view follows watches; a second is ample on a loopback API server


def _create(
    cp: ControlPlane, obj: dict[str, Any], user: KubeUser | None, *extra: str
) -> subprocess.CompletedProcess[str]:
    return cp.kubectl("create", *extra, "-f", "-", input=json.dumps(obj), user=user, check=False)


def _denied(result: subprocess.CompletedProcess[str], message: str) -> None:
    assert result.returncode != 0, result.stdout
    assert DENIED + message in result.stderr, result.stderr


def _q(value: str) -> str:
    return messages.shown(value)


# -- claims ----------------------------------------------------------------------------------------------------------


def test_a_ui_shaped_claim_by_a_holder_of_claim_is_accepted_and_gets_its_owner(webhook: Webhook, site: Site) -> None:
    cp = webhook.cp
    address = "0000:3b:00.0"
    uid = _report(cp, site.agent1, _pci_device(site.node1, address, iommuGroup="31"))
    _settle()
    claim = _pci_claim(site.node1, address, uid=uid, user_name="admin")  # display name differs from the user
    result = _create(cp, claim, site.tenant_a)
    assert result.returncode == 0, result.stderr
    got = json.loads(cp.kubectl("get", "pcideviceclaim", claim["metadata"]["name"], "-o", "json").stdout)
    assert got["metadata"]["annotations"][OWNER] == site.tenant_a.name
    assert got["metadata"]["labels"][names.LABEL_NODENAME] == site.node1
    assert got["spec"]["userName"] == "admin"
    # The UI re-sends CREATE for a device its owner already claimed: every check passes, the API server says so.
    again = _create(cp, claim, site.tenant_a)
    assert again.returncode != 0
    assert "AlreadyExists" in again.stderr and "denied the request" not in again.stderr


def test_a_claim_without_the_claim_verb_is_rejected_and_kubectl_shows_why(webhook: Webhook, site: Site) -> None:
    cp = webhook.cp
    address = "0000:3c:00.0"
    _report(cp, site.agent1, _pci_device(site.node1, address, iommuGroup="32"))
    _settle()
    name = _device_name(site.node1, address)
    result = _create(cp, _pci_claim(site.node1, address), site.tenant_b)
    _denied(
        result,
        messages.CLAIM_PERMISSION.format(
            kind="pcideviceclaim", name=_q(name), device_kind="pcidevice", device_resource="pcidevices",
            user=_q(site.tenant_b.name),
        ),
    )  # fmt: skip
    assert cp.kubectl("get", "pcideviceclaim", name, check=False).returncode != 0


def test_server_side_dry_run_admits_but_writes_nothing(webhook: Webhook, site: Site) -> None:
    cp = webhook.cp
    address = "0000:3d:00.0"
    _report(cp, site.agent1, _pci_device(site.node1, address, iommuGroup="33"))
    _settle()
    name = _device_name(site.node1, address)
    result = cp.kubectl(
        "apply",
        "--dry-run=server",
        "-f",
        "-",
        input=json.dumps(_pci_claim(site.node1, address)),
        user=site.tenant_a,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "server dry run" in result.stdout
    assert cp.kubectl("get", "pcideviceclaim", name, check=False).returncode != 0
    denied = cp.kubectl(
        "apply",
        "--dry-run=server",
        "-f",
        "-",
        input=json.dumps(_pci_claim(site.node1, address)),
        user=site.tenant_b,
        check=False,
    )
    assert DENIED in denied.stderr


def test_a_claim_of_a_missing_device_is_rejected(webhook: Webhook, site: Site) -> None:
    address = "0000:99:00.0"
    name = _device_name(site.node1, address)
    result = _create(webhook.cp, _pci_claim(site.node1, address), site.tenant_a)
    _denied(
        result,
        messages.DEVICE_MISSING.format(
            kind="pcideviceclaim", name=_q(name), device_kind="pcidevice", device_resource="pcidevices"
        ),
    )


def test_a_claim_whose_spec_does_not_match_the_device_is_rejected(webhook: Webhook, site: Site) -> None:
    cp = webhook.cp
    address = "0000:3e:00.0"
    _report(cp, site.agent1, _pci_device(site.node1, address, iommuGroup="34"))
    _settle()
    claim = _pci_claim(site.node1, address)
    claim["spec"]["nodeName"] = site.node2
    name = _device_name(site.node1, address)
    _denied(
        _create(cp, claim, site.tenant_a),
        messages.DEVICE_FIELD_MISMATCH.format(
            kind="pcideviceclaim",
            name=_q(name),
            field="spec.nodeName",
            value=_q(site.node2),
            device_kind="pcidevice",
            actual=_q(site.node1),
        ),
    )


def test_a_device_without_an_iommu_group_cannot_be_claimed_and_the_message_says_how_to_enable_it(
    webhook: Webhook, site: Site
) -> None:
    cp = webhook.cp
    address = "0000:3f:00.0"
    _report(cp, site.agent1, _pci_device(site.node1, address, iommuGroup=""))
    _settle()
    result = _create(cp, _pci_claim(site.node1, address), site.tenant_a)
    _denied(result, messages.NO_IOMMU.format(name=_q(_device_name(site.node1, address)), node=_q(site.node1)))
    assert "intel_iommu=on" in result.stderr


def test_an_iommu_group_goes_to_one_owner_and_unclaimed_siblings_are_a_kubectl_warning(
    webhook: Webhook, site: Site
) -> None:
    cp = webhook.cp
    gpu, audio = "0000:40:00.0", "0000:40:00.1"
    members = [{"address": gpu, "bridge": False}, {"address": audio, "bridge": False}]
    _report(cp, site.agent1, _pci_device(site.node1, gpu, iommuGroup="40", iommuGroupMembers=members))
    _report(
        cp,
        site.agent1,
        _pci_device(site.node1, audio, iommuGroup="40", iommuGroupMembers=members, classId="0403", deviceId="10f8"),
    )
    _settle()
    first = _create(cp, _pci_claim(site.node1, gpu), site.tenant_a)
    assert first.returncode == 0, first.stderr
    warning = messages.WARN_SIBLINGS.format(
        name=_q(_device_name(site.node1, gpu)), group=_q("40"), node=_q(site.node1),
        siblings=messages.listed([_device_name(site.node1, audio)]), owner=_q(site.tenant_a.name),
    )  # fmt: skip
    assert "Warning: " + warning in first.stderr
    _settle()
    # Nobody else may take the sibling, not even a cluster-admin: the group already has an owner.
    other = _create(cp, _pci_claim(site.node1, audio), None)
    _denied(
        other,
        messages.GROUP_OWNED_MEMBER.format(
            name=_q(_device_name(site.node1, audio)),
            group=_q("40"),
            member=_q(_device_name(site.node1, gpu)),
            other=_q(site.tenant_a.name),
        ),
    )


def test_usb_and_pci_claims_of_one_controller_exclude_each_other(webhook: Webhook, site: Site) -> None:
    cp = webhook.cp
    controller = "0000:00:14.0"
    _report(
        cp,
        site.agent1,
        _pci_device(site.node1, controller, iommuGroup="5", classId="0c03", vendorId="8086", deviceId="a36d"),
    )
    usb = _usb_device(site.node1, controller)
    usb_uid = _report(cp, site.agent1, usb)
    _settle()
    usb_name = usb["metadata"]["name"]
    # A UI-made USB claim carries only spec.userName: accepted.
    made = _create(cp, _usb_claim(usb_name, usb_uid), site.tenant_a)
    assert made.returncode == 0, made.stderr
    _settle()
    pci = _create(cp, _pci_claim(site.node1, controller), site.tenant_a)
    _denied(
        pci,
        messages.USB_BEHIND_CONTROLLER.format(
            name=_q(_device_name(site.node1, controller)), claims=messages.listed([usb_name])
        ),
    )
    # Release the USB device, claim the controller; now the USB device cannot be claimed (A5).
    assert cp.kubectl("delete", "usbdeviceclaim", usb_name, user=site.tenant_a, check=False).returncode == 0
    _settle()
    assert _create(cp, _pci_claim(site.node1, controller), site.tenant_a).returncode == 0
    _settle()
    again = _create(cp, _usb_claim(usb_name), site.tenant_a)
    _denied(
        again,
        messages.USB_CONTROLLER_CLAIMED.format(
            name=_q(usb_name), controller=_q(_device_name(site.node1, controller)), other=_q(site.tenant_a.name)
        ),
    )


def test_owner_and_owner_references_of_a_claim_are_immutable(webhook: Webhook, site: Site) -> None:
    cp = webhook.cp
    address = "0000:41:00.0"
    uid = _report(cp, site.agent1, _pci_device(site.node1, address, iommuGroup="41"))
    _settle()
    name = _device_name(site.node1, address)
    assert _create(cp, _pci_claim(site.node1, address, uid=uid), site.tenant_a).returncode == 0
    result = cp.kubectl(
        "annotate",
        "--overwrite",
        "pcideviceclaim",
        name,
        f"{OWNER}={site.tenant_b.name}",
        user=site.tenant_a,
        check=False,
    )
    _denied(
        result,
        messages.OWNER_IMMUTABLE.format(
            kind="pcideviceclaim",
            name=_q(name),
            annotation=OWNER,
            old=_q(site.tenant_a.name),
            new=_q(site.tenant_b.name),
        ),
    )
    refs = cp.kubectl(
        "patch",
        "pcideviceclaim",
        name,
        "--type=json",
        "-p",
        json.dumps([{"op": "remove", "path": "/metadata/ownerReferences"}]),
        user=site.tenant_a,
        check=False,
    )
    _denied(refs, messages.OWNER_REFERENCES_IMMUTABLE.format(kind="pcideviceclaim", name=_q(name)))


def test_only_the_owner_or_a_release_holder_may_delete_a_claim(webhook: Webhook, site: Site) -> None:
    cp = webhook.cp
    a1, a2 = "0000:42:00.0", "0000:43:00.0"
    _report(cp, site.agent1, _pci_device(site.node1, a1, iommuGroup="42"))
    _report(cp, site.agent1, _pci_device(site.node1, a2, iommuGroup="43"))
    _settle()
    n1, n2 = _device_name(site.node1, a1), _device_name(site.node1, a2)
    assert _create(cp, _pci_claim(site.node1, a1), site.tenant_a).returncode == 0
    assert _create(cp, _pci_claim(site.node1, a2), site.tenant_a).returncode == 0
    _settle()
    refused = cp.kubectl("delete", "pcideviceclaim", n1, user=site.tenant_b, check=False)
    _denied(
        refused,
        messages.RELEASE_PERMISSION.format(
            kind="pcideviceclaim",
            name=_q(n1),
            owner=_q(site.tenant_a.name),
            user=_q(site.tenant_b.name),
            device_resource="pcidevices",
        ),
    )
    assert cp.kubectl("delete", "pcideviceclaim", n1, user=site.tenant_c, check=False).returncode == 0
    assert cp.kubectl("delete", "pcideviceclaim", n2, user=site.tenant_a, check=False).returncode == 0


# -- device objects --------------------------------------------------------------------------------------------------


def test_a_claimed_device_object_cannot_be_deleted_and_users_cannot_change_device_objects(
    webhook: Webhook, site: Site
) -> None:
    cp = webhook.cp
    address = "0000:44:00.0"
    _report(cp, site.agent1, _pci_device(site.node1, address, iommuGroup="44"))
    _settle()
    name = _device_name(site.node1, address)
    changed = cp.kubectl("label", "pcidevice", name, "team=red", user=site.tenant_a, check=False)
    _denied(
        changed,
        messages.DEVICE_WRITER.format(
            kind="pcidevice", name=_q(name), verb="changed", user=_q(site.tenant_a.name), claim_kind="pcideviceclaim"
        ),
    )
    assert _create(cp, _pci_claim(site.node1, address), site.tenant_a).returncode == 0
    _settle()
    deleted = cp.kubectl("delete", "pcidevice", name, check=False)  # even a cluster-admin
    _denied(
        deleted,
        messages.DEVICE_DELETE_CLAIMED.format(
            kind="pcidevice",
            name=_q(name),
            node=_q(site.node1),
            claim_kind="pcideviceclaim",
            owner=_q(site.tenant_a.name),
        ),
    )


def test_a_node_agent_cannot_create_change_or_delete_another_nodes_objects(webhook: Webhook, site: Site) -> None:
    cp = webhook.cp
    address = "0000:45:00.0"
    theirs = _pci_device(site.node2, address, iommuGroup="45")
    name = theirs["metadata"]["name"]
    body = {k: v for k, v in theirs.items() if k != "status"}
    created = _create(cp, body, site.agent1)
    assert created.returncode != 0 and DENIED in created.stderr, created.stderr
    assert site.node1 in created.stderr and name in created.stderr
    # node2's own agent may; then node1's agent can neither change nor delete it.
    _report(cp, site.agent2, theirs)
    _settle()
    status = cp.kubectl(
        "patch",
        "pcidevices",
        name,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": {"kernelDriverInUse": "vfio-pci"}}),
        user=site.agent1,
        check=False,
    )
    assert status.returncode != 0 and DENIED in status.stderr, status.stderr
    gone = cp.kubectl("delete", "pcidevice", name, user=site.agent1, check=False)
    assert gone.returncode != 0 and DENIED in gone.stderr, gone.stderr
    # The agent of node "<x>-node" cannot write node "<x>-node-1"'s objects though their names share a prefix.
    prefix_node = site.node1.rsplit("-", 1)[0]
    prefix_agent = cp.mint_node_token(prefix_node, namespace=NS)
    sneaky = _pci_device(site.node1, "0000:45:00.0")
    sneaky["metadata"]["labels"][names.LABEL_NODENAME] = prefix_node
    sneaky_result = _create(cp, {k: v for k, v in sneaky.items() if k != "status"}, prefix_agent)
    assert sneaky_result.returncode != 0 and DENIED in sneaky_result.stderr, sneaky_result.stderr
    assert cp.kubectl("delete", "pcidevice", name, user=site.agent2, check=False).returncode == 0


def test_an_agent_token_not_bound_to_a_node_is_denied(webhook: Webhook, site: Site) -> None:
    cp = webhook.cp
    token = cp.kubectl("create", "token", "pcidevices-agent", "-n", NS, "--duration=1h").stdout.strip()
    path = webhook.workdir / "unbound.kubeconfig"
    doc = yaml.safe_load(site.agent1.kubeconfig.read_text())
    doc["users"][0]["user"] = {"token": token}
    path.write_text(yaml.safe_dump(doc))
    unbound = KubeUser(name=site.agent1.name, groups=site.agent1.groups, kubeconfig=path, token=token)
    device = _pci_device(site.node1, "0000:46:00.0")
    result = _create(cp, {k: v for k, v in device.items() if k != "status"}, unbound)
    assert result.returncode != 0 and DENIED in result.stderr, result.stderr
    assert "authentication.kubernetes.io/node-name" in result.stderr


def test_kubevirt_updates_reach_the_webhook_only_when_a_node_agent_makes_them(webhook: Webhook, site: Site) -> None:
    cp = webhook.cp
    kv = {
        "apiVersion": "kubevirt.io/v1",
        "kind": "KubeVirt",
        "metadata": {"name": "kubevirt", "namespace": NS},
        "spec": {"configuration": {"permittedHostDevices": {"pciHostDevices": [], "usb": []}}},
    }
    _apply(cp, kv)
    before = webhook.metric("pcidevices_webhook_admissions_total", 'resource="kubevirts"')
    cp.kubectl("label", "kubevirt", "kubevirt", "-n", NS, "--overwrite", f"touched={int(time.time())}")
    assert webhook.metric("pcidevices_webhook_admissions_total", 'resource="kubevirts"') == before
    other = cp.kubectl(
        "label", "kubevirt", "kubevirt", "-n", NS, "--overwrite", "agent=was-here", user=site.agent1, check=False
    )
    assert other.returncode != 0 and KUBEVIRT_DENIED in other.stderr, other.stderr
    assert webhook.metric("pcidevices_webhook_admissions_total", 'resource="kubevirts"') > before


# -- certificates ----------------------------------------------------------------------------------------------------


def test_a_ca_rotation_while_claims_are_applied_fails_none_of_them(webhook: Webhook, site: Site) -> None:
    cp = webhook.cp
    addresses = [f"0000:5{i}:00.0" for i in range(4)]
    for i, address in enumerate(addresses):
        _report(cp, site.agent1, _pci_device(site.node1, address, iommuGroup=str(50 + i)))
    _settle()
    old_issuer = webhook.served_issuer()
    failures: list[str] = []
    done = threading.Event()
    rounds = 0

    def churn() -> None:
        nonlocal rounds
        while not done.is_set():
            for address in addresses:
                name = _device_name(site.node1, address)
                made = _create(cp, _pci_claim(site.node1, address), site.tenant_a)
                if made.returncode != 0:
                    failures.append(made.stderr)
                gone = cp.kubectl("delete", "pcideviceclaim", name, user=site.tenant_a, check=False)
                if gone.returncode != 0:
                    failures.append(gone.stderr)
            rounds += 1

    worker = threading.Thread(target=churn)
    worker.start()
    try:
        rotate = subprocess.run(
            [sys.executable, "-m", "webhook", "certs", "--once", "--rotate-ca"],
            cwd=REPO,
            env=webhook.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert rotate.returncode == 0, rotate.stderr
        bundles = webhook.ca_bundles()
        assert all(len(b) == 2 for b in bundles), "old and new CA are both trusted during the overlap"
        new_ca = bundles[0][0]
        deadline = time.monotonic() + 60
        while webhook.served_issuer() != new_ca.subject:  # the keeper re-issues after the overlap; workers reload
            assert time.monotonic() < deadline, webhook.log_tail()
            time.sleep(0.5)
        while any(len(b) != 1 for b in webhook.ca_bundles()):  # and drops the old CA one overlap later
            assert time.monotonic() < deadline, webhook.log_tail()
            time.sleep(0.5)
        time.sleep(2)  # keep applying claims for a while on the new certificate alone
    finally:
        done.set()
        worker.join(120)
    assert webhook.served_issuer() != old_issuer
    assert webhook.ca_bundles()[0] == [new_ca]
    assert rounds >= 2
    assert failures == []


def test_two_replicas_starting_together_end_up_with_one_certificate(webhook: Webhook) -> None:
    secret = "pcidevices-webhook-certs-race-" + os.urandom(3).hex()
    runs = []
    for i in range(2):
        env = {
            **webhook.env,
            "PCIDEVICES_WEBHOOK_SECRET_NAME": secret,
            "PCIDEVICES_WEBHOOK_CERT_DIR": str(webhook.workdir / f"race-{i}"),
            "PCIDEVICES_WEBHOOK_VALIDATING_CONFIGURATION": RACE_CONFIGURATION,
            "PCIDEVICES_WEBHOOK_MUTATING_CONFIGURATION": RACE_CONFIGURATION,
        }
        runs.append(
            subprocess.Popen(
                [sys.executable, "-m", "webhook", "certs", "--once"],
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
        )
    outputs = [p.communicate(timeout=60)[0].decode(errors="replace") for p in runs]
    assert [p.returncode for p in runs] == [0, 0], "\n".join(o[-600:] for o in outputs)
    files = [(webhook.workdir / f"race-{i}" / "tls.crt").read_bytes() for i in range(2)]
    assert files[0] == files[1]
    data = json.loads(webhook.cp.kubectl("get", "secret", secret, "-n", NS, "-o", "json").stdout)["data"]
    assert base64.b64decode(data["tls.crt"]) == files[0]


def test_a_cluster_role_with_resource_names_grants_claim_on_exactly_those_devices(webhook: Webhook, site: Site) -> None:
    cp = webhook.cp
    granted, other = "0000:47:00.0", "0000:48:00.0"
    _report(cp, site.agent1, _pci_device(site.node1, granted, iommuGroup="47"))
    _report(cp, site.agent1, _pci_device(site.node1, other, iommuGroup="48"))
    user = site.tenant_b.name + "-single"
    role = f"{user}-one-device"
    _apply(cp, [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": role},
         "rules": [{"apiGroups": [names.GROUP], "resources": ["pcideviceclaims"], "verbs": ["create", "get"]},
                   {"apiGroups": [names.GROUP], "resources": ["pcidevices"], "verbs": ["claim"],
                    "resourceNames": [_device_name(site.node1, granted)]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": role},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
         "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]},
    ])  # fmt: skip
    single = cp.mint_user(user)
    _settle()
    assert _create(cp, _pci_claim(site.node1, granted), single).returncode == 0
    refused = _create(cp, _pci_claim(site.node1, other), single)
    name = _device_name(site.node1, other)
    _denied(
        refused,
        messages.CLAIM_PERMISSION.format(
            kind="pcideviceclaim", name=_q(name), device_kind="pcidevice", device_resource="pcidevices", user=_q(user)
        ),
    )


def test_a_host_critical_device_cannot_be_claimed(webhook: Webhook, site: Site) -> None:
    cp = webhook.cp
    address = "0000:49:00.0"
    _report(
        cp,
        site.agent1,
        _pci_device(
            site.node1,
            address,
            iommuGroup="49",
            classId="0200",
            hostCritical=True,
            hostCriticalReasons=["carries the default route (eno1)"],
        ),
    )
    _settle()
    result = _create(cp, _pci_claim(site.node1, address), site.tenant_a)
    _denied(
        result,
        messages.HOST_CRITICAL.format(
            name=_q(_device_name(site.node1, address)), reasons="carries the default route (eno1)"
        ),
    )


def test_only_the_nodes_agent_removes_the_agent_finalizer_of_a_claim(webhook: Webhook, site: Site) -> None:
    cp = webhook.cp
    address = "0000:4a:00.0"
    _report(cp, site.agent1, _pci_device(site.node1, address, iommuGroup="74"))
    _settle()
    name = _device_name(site.node1, address)
    assert _create(cp, _pci_claim(site.node1, address), site.tenant_a).returncode == 0
    add = [{"op": "add", "path": "/metadata/finalizers", "value": [f"{names.GROUP}/agent"]}]
    remove = [{"op": "remove", "path": "/metadata/finalizers"}]
    assert (
        cp.kubectl(
            "patch", "pcideviceclaim", name, "--type=json", "-p", json.dumps(add), user=site.agent1, check=False
        ).returncode
        == 0
    )
    by_owner = cp.kubectl(
        "patch", "pcideviceclaim", name, "--type=json", "-p", json.dumps(remove), user=site.tenant_a, check=False
    )
    _denied(
        by_owner,
        messages.FINALIZER_REMOVAL.format(
            kind="pcideviceclaim",
            name=_q(name),
            finalizer=f"{names.GROUP}/agent",
            node=_q(site.node1),
            user=_q(site.tenant_a.name),
        ),
    )
    by_other_agent = cp.kubectl(
        "patch", "pcideviceclaim", name, "--type=json", "-p", json.dumps(remove), user=site.agent2, check=False
    )
    assert by_other_agent.returncode != 0 and DENIED in by_other_agent.stderr, by_other_agent.stderr
    assert (
        cp.kubectl(
            "patch", "pcideviceclaim", name, "--type=json", "-p", json.dumps(remove), user=site.agent1, check=False
        ).returncode
        == 0
    )
    assert cp.kubectl("delete", "pcideviceclaim", name, user=site.tenant_a, check=False).returncode == 0


def test_a_usb_claim_of_a_missing_device_is_rejected(webhook: Webhook, site: Site) -> None:
    name = names.usbdevice_name(site.node1, "dead", "beef", 9, 9)
    result = _create(webhook.cp, _usb_claim(name), site.tenant_a)
    _denied(
        result,
        messages.DEVICE_MISSING.format(
            kind="usbdeviceclaim", name=_q(name), device_kind="usbdevice", device_resource="usbdevices"
        ),
    )


def test_a_claim_with_a_malformed_address_is_rejected_before_anything_is_stored(webhook: Webhook, site: Site) -> None:
    claim = _pci_claim(site.node1, "0000:4b:00.0")
    claim["spec"]["address"] = "0000:4b:00.0/../../x"
    result = _create(webhook.cp, claim, site.tenant_a)
    assert result.returncode != 0
    assert "0000:4b:00.0/../../x" in result.stderr or "spec.address" in result.stderr, result.stderr
    assert webhook.cp.kubectl("get", "pcideviceclaim", claim["metadata"]["name"], check=False).returncode != 0
