"""VMs, VMIs, pools, replica sets and pods behind a real kube-apiserver, the webhook over TLS (rules A7, A9, A9v,
A12): the Harvester UI's flows as tenants, virt-controller and a restore controller make them with kubectl.

The webhook is the one tests/cluster/test_webhook.py runs (`python -m webhook serve`, configurations rendered from
the chart, so the CEL matchConditions are the API server's own), with reads of the KubeVirt kinds granted as the
chart grants them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from policy import messages
from policy.dispatch import MUTATING_RULES, VALIDATING_RULES
from tests.cluster.test_webhook import (  # noqa: F401  (webhook: the module-scoped webhook fixture)
    Webhook,
    render_webhook_configurations,
    webhook,
)
from tests.support import vmcluster as vc
from tests.support import vms
from tests.support.controlplane import ControlPlane, KubeUser

VM_DENIED = 'admission webhook "vms.validate.devices.harvesterhci.io" denied the request: '


@pytest.fixture(scope="module")
def kubevirt_reads(control_plane: ControlPlane, installed_crds: str) -> None:
    control_plane.kubectl("create", "namespace", vc.NS, check=False)
    vc.apply(control_plane, vc.webhook_kubevirt_reads())


@pytest.fixture(scope="module")
def wh(kubevirt_reads: None, webhook: Webhook) -> Webhook:  # noqa: F811
    return webhook


@dataclass
class Lab:
    cp: ControlPlane
    node: str
    ns_a: str
    ns_b: str
    tenant_a: KubeUser  # owns gpu+audio and gpu3+audio3; `use` through a RoleBinding in ns_a only
    tenant_b: KubeUser  # owns gpu2+audio2; `use` on those in ns_b only
    virt_controller: KubeUser
    restore: KubeUser
    devices: dict[str, dict[str, Any]]

    def entry(self, key: str) -> tuple[str, str]:
        return vms.entry(self.devices[key])

    def resource(self, key: str) -> str:
        return str(self.devices[key]["status"]["resourceName"])


def _roles(u: str, lab_devices: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    group = "devices.harvesterhci.io"
    workloads = {
        "apiGroups": ["kubevirt.io", "pool.kubevirt.io", "instancetype.kubevirt.io", ""],
        "resources": [*vc.KUBEVIRT_KINDS, "virtualmachinepools", "virtualmachineinstancetypes", "pods"],
        "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"],
    }
    claims = {"apiGroups": [group], "resources": ["pcideviceclaims"], "verbs": ["get", "list", "create", "delete"]}
    names_b = [lab_devices[k]["metadata"]["name"] for k in ("gpu2", "audio2")]
    names_3 = [lab_devices[k]["metadata"]["name"] for k in ("gpu3", "audio3")]
    return [
        vc.cluster_role(f"{u}-vm-editor", [workloads, claims]),
        vc.cluster_role(f"{u}-claimer", [{"apiGroups": [group], "resources": ["pcidevices"], "verbs": ["claim"]}]),
        vc.cluster_role(f"{u}-use", [{"apiGroups": [group], "resources": ["pcidevices"], "verbs": ["use"]}]),
        vc.cluster_role(f"{u}-use-b", [{"apiGroups": [group], "resources": ["pcidevices"], "verbs": ["use"],
                                        "resourceNames": names_b}]),
        vc.cluster_role(f"{u}-use-3", [{"apiGroups": [group], "resources": ["pcidevices"], "verbs": ["use"],
                                        "resourceNames": names_3}]),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def lab(wh: Webhook) -> Iterator[Lab]:
    cp = wh.cp
    u = "v" + os.urandom(3).hex()
    node = f"{u}-node-1"
    agent = cp.mint_node_token(node, namespace=vc.NS)
    members = {
        "gpu": ("0000:3b:00.0", "45", ["0000:3b:00.0", "0000:3b:00.1"]),
        "audio": ("0000:3b:00.1", "45", ["0000:3b:00.0", "0000:3b:00.1"]),
        "gpu2": ("0000:5e:00.0", "46", ["0000:5e:00.0", "0000:5e:00.1"]),
        "audio2": ("0000:5e:00.1", "46", ["0000:5e:00.0", "0000:5e:00.1"]),
        "gpu3": ("0000:86:00.0", "47", ["0000:86:00.0", "0000:86:00.1"]),
        "audio3": ("0000:86:00.1", "47", ["0000:86:00.0", "0000:86:00.1"]),
    }
    devices = {k: vc.pci_device(node, a, g, m) for k, (a, g, m) in members.items()}
    uids = {k: vc.report(cp, agent, d) for k, d in devices.items()}
    ns_a, ns_b = f"{u}-ns-a", f"{u}-ns-b"
    for ns in (ns_a, ns_b):
        cp.kubectl("create", "namespace", ns)
    ta, tb = f"{u}-tenant-a", f"{u}-tenant-b"
    vcu, restore = vms.VIRT_CONTROLLER, vms.RESTORE
    vc.apply(cp, _roles(u, devices) + [
        vc.bind(ta, f"{u}-vm-editor"), vc.bind(tb, f"{u}-vm-editor"), vc.bind(vcu, f"{u}-vm-editor"),
        vc.bind(restore, f"{u}-vm-editor"), vc.bind(ta, f"{u}-claimer"), vc.bind(tb, f"{u}-claimer"),
        vc.bind(ta, f"{u}-use", ns_a), vc.bind(tb, f"{u}-use-b", ns_b), vc.bind(tb, f"{u}-use-3", ns_b),
    ])  # fmt: skip
    lab = Lab(cp, node, ns_a, ns_b, cp.mint_user(ta), cp.mint_user(tb), cp.mint_user(vcu),
              cp.mint_user(restore), devices)  # fmt: skip
    vc.until(lambda: False, timeout=1)  # the webhook's view follows its watches
    for key, owner in (("gpu", lab.tenant_a), ("audio", lab.tenant_a), ("gpu2", lab.tenant_b),
                       ("audio2", lab.tenant_b), ("gpu3", lab.tenant_a), ("audio3", lab.tenant_a)):  # fmt: skip
        r = vc.create(cp, vc.ui_claim(devices[key], uids[key]), owner)
        assert r.returncode == 0, r.stderr
    vc.until(lambda: False, timeout=1)
    yield lab


def _vm_body(lab: Lab, name: str, namespace: str, keys: list[str]) -> dict[str, Any]:
    return vms.vm(name, namespace, host=[lab.entry(k) for k in keys])


def _gpu_vm(lab: Lab) -> dict[str, Any]:
    """tenant-a's VM with the GPU and its audio sibling in ns-a (made by the first test, or here when run alone)."""
    vm_obj = vc.get(lab.cp, "vm", "gpu-vm", lab.ns_a)
    if vm_obj is None:
        r = vc.create(lab.cp, _vm_body(lab, "gpu-vm", lab.ns_a, ["gpu", "audio"]), lab.tenant_a)
        assert r.returncode == 0, r.stderr
        vc.until(lambda: False, timeout=1)
        vm_obj = vc.get(lab.cp, "vm", "gpu-vm", lab.ns_a)
    assert vm_obj is not None
    return vm_obj


def test_attaching_the_gpu_to_a_vm_adds_its_claimed_audio_sibling(lab: Lab) -> None:
    r = vc.create(lab.cp, _vm_body(lab, "gpu-vm", lab.ns_a, ["gpu"]), lab.tenant_a)
    assert r.returncode == 0, r.stderr
    stored = vc.get(lab.cp, "vm", "gpu-vm", lab.ns_a)
    assert stored is not None
    entries = stored["spec"]["template"]["spec"]["domain"]["devices"]["hostDevices"]
    assert sorted(e["deviceName"] for e in entries) == sorted([lab.resource("gpu"), lab.resource("audio")])


def test_use_granted_by_a_rolebinding_counts_in_its_namespace_only(lab: Lab) -> None:
    r = vc.create(lab.cp, _vm_body(lab, "gpu-vm-b", lab.ns_b, ["gpu3", "audio3"]), lab.tenant_a)
    assert r.returncode != 0
    assert VM_DENIED + 'virtualmachine "gpu-vm-b" can only use devices its requester may use in namespace ' in r.stderr
    assert f"user {messages.shown(lab.tenant_a.name)} lacks the verb use" in r.stderr


def test_attaching_someone_elses_device_is_denied(lab: Lab) -> None:
    r = vc.create(lab.cp, _vm_body(lab, "steal", lab.ns_b, ["gpu", "audio"]), lab.tenant_b)
    assert r.returncode != 0 and "lacks the verb use on pcidevices" in r.stderr
    mine = vc.create(lab.cp, _vm_body(lab, "mine", lab.ns_b, ["gpu2", "audio2"]), lab.tenant_b, "--dry-run=server")
    assert mine.returncode == 0, mine.stderr


def test_a_vm_of_another_requester_naming_a_device_is_denied_and_the_claim_stays_while_a_vm_names_it(
    lab: Lab,
) -> None:
    cp = lab.cp
    r = vc.create(cp, _vm_body(lab, "taken", lab.ns_a, ["gpu3", "audio3"]), lab.tenant_a)
    assert r.returncode == 0, r.stderr
    vc.until(lambda: False, timeout=1)
    # tenant-b may use gpu3 in ns-b, but tenant-a's VM names it: one requester at a time
    second = vc.create(cp, _vm_body(lab, "second", lab.ns_b, ["gpu3", "audio3"]), lab.tenant_b)
    assert second.returncode != 0 and f'is named by virtualmachine "{lab.ns_a}/taken"' in second.stderr
    assert f"(requested by {messages.shown(lab.tenant_a.name)})" in second.stderr
    # a second VM of the same requester (a clone beside the original) is hers to make
    clone = vc.create(cp, _vm_body(lab, "taken-clone", lab.ns_a, ["gpu3", "audio3"]), lab.tenant_a, "--dry-run=server")
    assert clone.returncode == 0, clone.stderr
    gpu3 = lab.devices["gpu3"]["metadata"]["name"]
    busy = cp.kubectl("delete", "pcideviceclaim", gpu3, user=lab.tenant_a, check=False)
    assert busy.returncode != 0 and "can only be deleted while no VM or VMI names" in busy.stderr
    cp.kubectl("delete", "vm", "taken", "-n", lab.ns_a, "--wait=true")
    assert vc.until(lambda: cp.kubectl("delete", "pcideviceclaim", gpu3, "--dry-run=server", user=lab.tenant_a,
                                       check=False).returncode == 0, timeout=10)  # fmt: skip


def test_a_direct_vmi_without_use_is_denied(lab: Lab) -> None:
    body = vms.vmi("direct", lab.ns_b, host=[lab.entry("gpu"), lab.entry("audio")])
    r = vc.create(lab.cp, body, lab.tenant_b)
    assert r.returncode != 0
    assert 'virtualmachineinstance "direct" can only use devices its requester may use' in r.stderr


def test_a_vmi_of_virt_controller_is_judged_for_the_requester_recorded_on_its_vm(lab: Lab) -> None:
    cp = lab.cp
    vm_obj = _gpu_vm(lab)
    assert "devices.harvesterhci.io/requester" in vm_obj["metadata"]["annotations"]
    same = vms.vmi("gpu-vm", lab.ns_a, host=[lab.entry("audio"), lab.entry("gpu")], owner=vm_obj)
    ok = vc.create_once_visible(cp, same, lab.virt_controller, "--dry-run=server")
    assert ok.returncode == 0, ok.stderr
    # tenant-b's VM may use gpu2; a VMI of it that also carries tenant-a's GPU is refused for tenant-b
    r = vc.create(cp, _vm_body(lab, "b-vm", lab.ns_b, ["gpu2", "audio2"]), lab.tenant_b)
    assert r.returncode == 0, r.stderr
    b_vm = vc.until(lambda: vc.get(cp, "vm", "b-vm", lab.ns_b))
    more = vms.vmi("b-vm", lab.ns_b, host=[lab.entry(k) for k in ("gpu2", "audio2", "gpu", "audio")], owner=b_vm)
    r = vc.create_once_visible(cp, more, lab.virt_controller, "--dry-run=server")
    assert r.returncode != 0 and f"user {messages.shown(lab.tenant_b.name)} lacks the verb use" in r.stderr, r.stderr
    cp.kubectl("delete", "vm", "b-vm", "-n", lab.ns_b)


def test_a_pool_or_replica_set_naming_someone_elses_device_is_denied(lab: Lab) -> None:
    for body, kind in (
        (vms.pool("p", lab.ns_b, host=[lab.entry("gpu"), lab.entry("audio")]), "virtualmachinepool"),
        (
            vms.replicaset("r", lab.ns_b, host=[lab.entry("gpu"), lab.entry("audio")]),
            "virtualmachineinstancereplicaset",
        ),
    ):
        r = vc.create(lab.cp, body, lab.tenant_b)
        assert r.returncode != 0 and f"{kind} " in r.stderr and "lacks the verb use" in r.stderr, r.stderr


def test_a_plain_pod_asking_for_a_claimed_device_is_denied(lab: Lab) -> None:
    r = vc.create(lab.cp, vms.pod("sneaky", lab.ns_a, resources=[lab.resource("gpu")]), lab.tenant_a)
    assert r.returncode != 0
    assert 'admission webhook "pods.validate.devices.harvesterhci.io" denied the request: pod "sneaky"' in r.stderr


def test_a_restore_controller_identity_attaches_without_use(lab: Lab) -> None:
    r = vc.create(lab.cp, _vm_body(lab, "restored", lab.ns_b, ["gpu2", "audio2"]), lab.restore, "--dry-run=server")
    assert r.returncode == 0, r.stderr


def test_starting_an_ordinary_vm_never_reaches_the_webhook(lab: Lab, wh: Webhook) -> None:
    cp = lab.cp

    def seen() -> float:
        return sum(wh.metric("pcidevices_webhook_admissions_total", f'resource="{r}"')
                   for r in ("virtualmachines", "virtualmachineinstances", "pods"))  # fmt: skip

    _gpu_vm(lab)
    before = seen()
    plain = vms.vm("plain", lab.ns_a)
    assert vc.create(cp, plain, lab.tenant_a).returncode == 0
    stored = vc.get(cp, "vm", "plain", lab.ns_a)
    assert stored is not None
    vmi = vc.create_once_visible(cp, vms.vmi("plain", lab.ns_a, owner=stored), lab.virt_controller)
    assert vmi.returncode == 0, vmi.stderr
    launcher = vms.pod("virt-launcher-plain", lab.ns_a, owner=vc.get(cp, "vmi", "plain", lab.ns_a))
    r = vc.create(cp, launcher, lab.virt_controller)
    assert r.returncode == 0, r.stderr
    relabel = cp.kubectl("label", "vm", "gpu-vm", "-n", lab.ns_a, "touched=yes", "--overwrite", user=lab.tenant_b,
                         check=False)  # fmt: skip
    assert relabel.returncode == 0, relabel.stderr  # an update that leaves the devices alone: not even judged
    assert seen() == before
    # the counter moves for what must reach the webhook: a VM naming a device, a pod asking for one
    vc.create(cp, _vm_body(lab, "counted", lab.ns_a, ["gpu", "audio"]), lab.tenant_a, "--dry-run=server")
    vc.create(cp, vms.pod("counted", lab.ns_a, resources=[lab.resource("gpu")]), lab.tenant_a, "--dry-run=server")
    assert seen() == before + 3  # the VM: mutated and validated; the pod: validated


def test_the_pod_entry_takes_its_failure_policy_from_the_values_and_the_others_fail_closed(
    control_plane: ControlPlane,
) -> None:
    rendered = render_webhook_configurations(control_plane, **{"webhook.podFailurePolicy": "Ignore"})
    hooks = {h["name"]: h for doc in yaml.safe_load_all(rendered) if doc for h in doc["webhooks"]}
    assert hooks["pods.validate.devices.harvesterhci.io"]["failurePolicy"] == "Ignore"
    part2 = [n for n in hooks if n.split(".")[0] in ("vms", "pools", "vmis", "instancetypes", "copies")]
    assert len(part2) == 9 and all(hooks[n]["failurePolicy"] == "Fail" for n in part2)
    assert all(hooks[n]["matchConditions"] for n in part2)


def test_the_chart_sends_exactly_the_part_2_rules_the_policy_judges(control_plane: ControlPlane) -> None:
    rendered = render_webhook_configurations(control_plane)
    sent: dict[str, set[tuple[str, str, str]]] = {"ValidatingWebhookConfiguration": set(),
                                                  "MutatingWebhookConfiguration": set()}  # fmt: skip
    for doc in yaml.safe_load_all(rendered):
        for hook in (doc or {}).get("webhooks", []):
            for rule in hook["rules"]:
                for g in rule["apiGroups"]:
                    for r in rule["resources"]:
                        sent[doc["kind"]].update((g, r, op) for op in rule["operations"])
    for kind, rules in (("ValidatingWebhookConfiguration", VALIDATING_RULES), ("MutatingWebhookConfiguration",
                                                                             MUTATING_RULES)):  # fmt: skip
        judged = {(g, r, op) for g, r, ops in rules for op in ops}
        part2 = {t for t in judged if t[0] != "devices.harvesterhci.io" and t[1] != "kubevirts"}
        assert part2 and part2 <= sent[kind], part2 - sent[kind]
        sent_part2 = {t for t in sent[kind] if t[0] != "devices.harvesterhci.io" and t[1] != "kubevirts"}
        assert sent_part2 <= judged, sent_part2 - judged
