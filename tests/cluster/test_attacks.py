"""Issues 21 and 22 replayed as an attacker would, against a real kube-apiserver calling the webhook over TLS.

mallory may create VMs, VMIs, pods, restores, clones, snapshot contents and instancetypes in her own namespace and
holds no pcidevices role. alice claims devices and may use them in her namespace. virt-controller is simulated by
its ServiceAccount's username (what the policy trusts), the node's agent by a token bound to the node. Every door
the issues list is tried; at the end mallory holds nothing the kubelet would hand a device to, while alice's claim,
VM, restore and clone (with her device) are accepted.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest

from policy import hostdevices, names
from tests.cluster.test_webhook import Webhook, webhook  # noqa: F401  (the module-scoped webhook fixture)
from tests.support import vmcluster as vc
from tests.support import vms
from tests.support.controlplane import ControlPlane, KubeUser

VENDOR = "intel.com"
POOLED_NIC = "intel.com/82599ES_10_GIGABIT_SFI_SFP_NETWORK_CONNECTION"
GROUP = names.GROUP


@dataclass
class Site:
    cp: ControlPlane
    u: str
    node: str
    agent: KubeUser
    ns_alice: str
    ns_mal: str
    alice: KubeUser
    mallory: KubeUser
    bob: KubeUser
    vcu: KubeUser
    racers: list[tuple[KubeUser, str]]  # (user, namespace): each may use `race` in its namespace
    devices: dict[str, dict[str, Any]]
    uids: dict[str, str]

    def name(self, key: str) -> str:
        return str(self.devices[key]["metadata"]["name"])

    def per_device(self, key: str) -> str:
        return f"{VENDOR}/{self.name(key)}"

    def claim(self, key: str) -> subprocess.CompletedProcess[str]:
        """alice claims the device; the agent then offers it under its per-device name, as it does once bound."""
        r = vc.create(self.cp, vc.ui_claim(self.devices[key], self.uids[key]), self.alice)
        if r.returncode == 0:
            status = json.dumps({"status": {"resourceName": self.per_device(key)}})
            self.cp.kubectl("patch", "pcidevices", self.name(key), "--subresource=status", "--type=merge", "-p",
                            status, user=self.agent)  # fmt: skip
            vc.until(lambda: False, timeout=1)  # the webhook's view follows its watches
        return r


def _nic(node: str, address: str, group: str) -> dict[str, Any]:
    """An unclaimed 10G NIC as the agent reports it: offered under nothing yet, its pooled name known."""
    return vc.pci_device(node, address, group, [address], vendorId="8086", deviceId="10fb", classId="0200",
                         resourceName=POOLED_NIC, pooledResourceName=POOLED_NIC,
                         description="Ethernet controller: Intel Corporation 82599ES 10-Gigabit SFI/SFP+ Network "
                                     "Connection", kernelDriverInUse="ixgbe")  # fmt: skip


def _rbac(s: str, racers: list[tuple[str, str]], race_device: str) -> list[dict[str, Any]]:
    editor = {
        "apiGroups": ["kubevirt.io", "pool.kubevirt.io", "instancetype.kubevirt.io", "snapshot.kubevirt.io",
                      "clone.kubevirt.io", ""],
        "resources": [*vc.KUBEVIRT_KINDS, "virtualmachinepools", "virtualmachineinstancetypes",
                      "virtualmachinerestores", "virtualmachinesnapshots", "virtualmachinesnapshotcontents",
                      "virtualmachineclones", "pods"],
        "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"],
    }  # fmt: skip
    claims = {"apiGroups": [GROUP], "resources": ["pcideviceclaims"], "verbs": ["get", "list", "create", "delete"]}
    return [
        vc.cluster_role(f"{s}-editor", [editor]),
        vc.cluster_role(f"{s}-claimer", [claims, {"apiGroups": [GROUP], "resources": ["pcidevices"],
                                                  "verbs": ["claim"]}]),
        vc.cluster_role(f"{s}-use", [{"apiGroups": [GROUP], "resources": ["pcidevices"], "verbs": ["use"]}]),
        vc.cluster_role(f"{s}-use-race", [{"apiGroups": [GROUP], "resources": ["pcidevices"], "verbs": ["use"],
                                           "resourceNames": [race_device]}]),
        *(vc.bind(user, f"{s}-editor", ns) for user, ns in racers),
        *(vc.bind(user, f"{s}-use-race", ns) for user, ns in racers),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def kubevirt_reads(control_plane: ControlPlane, installed_crds: str) -> None:
    """The webhook's reads of the KubeVirt kinds, granted before it starts (as the chart grants them)."""
    control_plane.kubectl("create", "namespace", vc.NS, check=False)
    vc.apply(control_plane, vc.webhook_kubevirt_reads())


@pytest.fixture(scope="module")
def site(kubevirt_reads: None, webhook: Webhook) -> Iterator[Site]:  # noqa: F811
    cp = webhook.cp
    u = "x" + os.urandom(3).hex()
    node = f"{u}-node"
    agent = cp.mint_node_token(node, namespace=vc.NS)
    devices = {
        "nic": _nic(node, "0000:40:00.0", "40"),
        "race": _nic(node, "0000:42:00.0", "42"),
        "mine": _nic(node, "0000:43:00.0", "43"),
    }
    uids = {k: vc.report(cp, agent, d) for k, d in devices.items()}
    ns_alice, ns_mal = f"{u}-alice", f"{u}-mallory"
    racers = [(f"{u}-racer{i}", f"{u}-race{i}") for i in range(6)]
    for ns in (ns_alice, ns_mal, *(n for _, n in racers)):
        cp.kubectl("create", "namespace", ns)
    alice, mallory, bob = f"{u}-alice", f"{u}-mallory", f"{u}-bob"
    vc.apply(cp, _rbac(u, racers, devices["race"]["metadata"]["name"]) + [
        vc.bind(alice, f"{u}-editor", ns_alice), vc.bind(alice, f"{u}-claimer"), vc.bind(alice, f"{u}-use", ns_alice),
        vc.bind(mallory, f"{u}-editor", ns_mal),
        vc.bind(bob, f"{u}-editor", ns_alice), vc.bind(bob, f"{u}-use", ns_alice),
        vc.bind(vms.VIRT_CONTROLLER, f"{u}-editor"),
    ])  # fmt: skip
    users = [cp.mint_user(n) for n in (alice, mallory, bob, vms.VIRT_CONTROLLER)]
    site = Site(cp, u, node, agent, ns_alice, ns_mal, *users, [(cp.mint_user(n), ns) for n, ns in racers], devices,
                uids)  # fmt: skip
    vc.until(lambda: False, timeout=1)
    yield site


def _denied(r: subprocess.CompletedProcess[str], *parts: str) -> None:
    assert r.returncode != 0, f"admitted: {r.stdout}"
    assert "denied the request" in r.stderr, r.stderr
    for part in parts:
        assert part in r.stderr, r.stderr


def _host(s: Site, *keys: str) -> list[tuple[str, str]]:
    return [(s.name(k), s.per_device(k)) for k in keys]


def _with_limits(obj: dict[str, Any], path: tuple[str, ...], resource: str) -> dict[str, Any]:
    cursor = obj
    for key in path:
        cursor = cursor.setdefault(key, {})
    cursor["limits"] = {resource: "1"}
    return obj


def _add_hostdevices_patch(s: Site, *keys: str) -> str:
    value = [{"name": s.name(k), "deviceName": s.per_device(k)} for k in keys]
    return json.dumps({"op": "add", "path": "/spec/template/spec/domain/devices/hostDevices", "value": value})


# -- issue 21: names are ours before a claim; every field and pod that asks for a device ---------------------------


def test_1_naming_a_device_before_its_claim_is_denied_for_pods_vmis_and_vms(site: Site) -> None:
    s = site
    early = s.per_device("nic")
    _denied(vc.create(s.cp, vms.pod("early", s.ns_mal, resources=[early]), s.mallory),
            'pods.validate.devices.harvesterhci.io', 'pod "early" can only request device resources')
    _denied(vc.create(s.cp, vms.vmi("early", s.ns_mal, host=_host(s, "nic")), s.mallory),
            f'the name pcidevice "{s.name("nic")}" gets once claimed')
    halted = vms.vm("early", s.ns_mal, host=_host(s, "nic"))
    halted["spec"]["runStrategy"] = "Halted"
    _denied(vc.create(s.cp, halted, s.mallory), "gets once claimed")
    # a device the node does not have yet (hot-plug, an SR-IOV VF): its name is computable, so it is ours too
    later = f"{VENDOR}/{names.pcidevice_name(s.node, '0000:41:00.0')}"
    _denied(vc.create(s.cp, vms.pod("later", s.ns_mal, resources=[later]), s.mallory), 'pod "later"')
    _denied(vc.create(s.cp, vms.vm("later", s.ns_mal, host=[("x", later)]), s.mallory),
            f'shaped like the name of a device on node "{s.node}", which has no such device')
    # the pooled name of the model (what the unclaimed NIC carries now)
    _denied(vc.create(s.cp, vms.pod("pooled", s.ns_mal, resources=[POOLED_NIC]), s.mallory), 'pod "pooled"')


def test_2_the_owner_claims_and_uses_the_device_and_other_fields_do_not_reach_it(site: Site) -> None:
    s = site
    r = s.claim("nic")
    assert r.returncode == 0, r.stderr
    nic = s.per_device("nic")
    vm_res = _with_limits(vms.vm("res", s.ns_mal), ("spec", "template", "spec", "domain", "resources"), nic)
    _denied(vc.create(s.cp, vm_res, s.mallory), f'user "{s.mallory.name}" lacks the verb use on pcidevices')
    vmi_res = _with_limits(vms.vmi("res", s.ns_mal), ("spec", "domain", "resources"), nic)
    _denied(vc.create(s.cp, vmi_res, s.mallory), "lacks the verb use")
    mine = vc.create(s.cp, vms.vm("alice-vm", s.ns_alice, host=_host(s, "nic")), s.alice)
    assert mine.returncode == 0, mine.stderr
    stored = vc.get(s.cp, "vm", "alice-vm", s.ns_alice)
    assert stored is not None and json.loads(stored["metadata"]["annotations"]["devices.harvesterhci.io/requester"])[
        "user"] == s.alice.name  # fmt: skip


def test_3_launcher_pods_are_reviewed_and_get_only_what_their_vmi_was_admitted_for(site: Site) -> None:
    s = site
    vm_obj = vc.get(s.cp, "vm", "alice-vm", s.ns_alice)
    assert vm_obj is not None
    vmi = vc.create_once_visible(s.cp, vms.vmi("alice-vm", s.ns_alice, host=_host(s, "nic"), owner=vm_obj), s.vcu)
    assert vmi.returncode == 0, vmi.stderr
    vmi_obj = vc.until(lambda: vc.get(s.cp, "vmi", "alice-vm", s.ns_alice))
    vc.until(lambda: False, timeout=1)
    nic = s.per_device("nic")
    ok = vc.create(s.cp, vms.pod("virt-launcher-alice-vm", s.ns_alice, resources=[nic], owner=vmi_obj), s.vcu,
                   "--dry-run=server")  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    more = vms.pod("virt-launcher-alice-vm", s.ns_alice, resources=[nic, s.per_device("mine")], owner=vmi_obj)
    _denied(vc.create(s.cp, more, s.vcu, "--dry-run=server"), 'beyond those of virtualmachineinstance "alice-vm"')
    # a launcher pod for a VMI of mallory's that names nothing asks for alice's device
    plain = vc.create(s.cp, vms.vm("plain", s.ns_mal), s.mallory)
    assert plain.returncode == 0, plain.stderr
    plain_vm = vc.get(s.cp, "vm", "plain", s.ns_mal)
    assert vc.create_once_visible(s.cp, vms.vmi("plain", s.ns_mal, owner=plain_vm), s.vcu).returncode == 0
    plain_vmi = vc.until(lambda: vc.get(s.cp, "vmi", "plain", s.ns_mal))
    vc.until(lambda: False, timeout=1)
    _denied(vc.create(s.cp, vms.pod("virt-launcher-plain", s.ns_mal, resources=[nic], owner=plain_vmi), s.vcu),
            'beyond those of virtualmachineinstance "plain"')


def test_4_a_device_added_while_running_is_ours_before_and_after_it_appears(site: Site) -> None:
    s = site
    hot = _nic(s.node, "0000:44:00.0", "44")
    name = hot["metadata"]["name"]
    before = vc.create(s.cp, vms.pod("hot", s.ns_mal, resources=[f"{VENDOR}/{name}"]), s.mallory)
    _denied(before, 'pod "hot"')
    s.devices["hot"], s.uids["hot"] = hot, vc.report(s.cp, s.agent, hot)
    vc.until(lambda: False, timeout=1)
    _denied(vc.create(s.cp, vms.vm("hot", s.ns_mal, host=[(name, f"{VENDOR}/{name}")]), s.mallory),
            f'the name pcidevice "{name}" gets once claimed')


# -- issue 22: what changes after admission, and what a controller creates for a user ------------------------------


def test_5_restore_clone_and_snapshot_content_are_judged_by_who_asked(site: Site) -> None:
    s = site
    assert vc.create(s.cp, vms.vm("empty", s.ns_mal), s.mallory).returncode == 0
    patch = _add_hostdevices_patch(s, "nic")
    _denied(vc.create(s.cp, vms.vm_restore("steal", "empty", namespace=s.ns_mal, patches=[patch]), s.mallory),
            f'user "{s.mallory.name}" lacks the verb use')
    _denied(vc.create(s.cp, vms.vm_clone("steal", "empty", namespace=s.ns_mal, patches=[patch]), s.mallory),
            "lacks the verb use")
    content = vms.snapshot_content("forged", vms.vm("empty", s.ns_mal, host=_host(s, "nic")), namespace=s.ns_mal)
    _denied(vc.create(s.cp, content, s.mallory), "lacks the verb use")
    # a restore of hers that names nothing is admitted and recorded; the VM virt-controller then writes for it is
    # judged for mallory, whatever the snapshot held
    ok = vc.create(s.cp, vms.vm_restore("innocent", "empty", namespace=s.ns_mal), s.mallory)
    assert ok.returncode == 0, ok.stderr
    restore = vc.until(lambda: vc.get(s.cp, "virtualmachinerestore", "innocent", s.ns_mal))
    vc.until(lambda: False, timeout=1)
    written = vms.restored(vms.vm("from-restore", s.ns_mal, host=_host(s, "nic")), restore)
    _denied(vc.create(s.cp, written, s.vcu), f'user "{s.mallory.name}" lacks the verb use')
    # virt-controller writing a VM with a device for nobody in particular
    _denied(vc.create(s.cp, vms.vm("orphan", s.ns_mal, host=_host(s, "nic")), s.vcu),
            "belongs to no pool and carries no restore.kubevirt.io/lastRestoreUID")


def test_6_an_instancetype_that_appears_or_changes_later_is_judged_at_the_vmi(site: Site) -> None:
    s = site
    it = f"{s.u}-later"
    late = vms.vm("late", s.ns_mal, instancetype=("VirtualMachineClusterInstancetype", it))
    assert vc.create(s.cp, late, s.mallory).returncode == 0
    admin = vc.create(s.cp, vms.instancetype(it, "", host=_host(s, "nic")), None)
    assert admin.returncode == 0, admin.stderr
    vm_obj = vc.get(s.cp, "vm", "late", s.ns_mal)
    vc.until(lambda: False, timeout=1)
    expanded = vms.vmi("late", s.ns_mal, host=_host(s, "nic"), owner=vm_obj)  # as virt-controller expands it
    _denied(vc.create_once_visible(s.cp, expanded, s.vcu), f'user "{s.mallory.name}" lacks the verb use')
    # an instancetype of hers kept by a finalizer, deleted, then given the device: the update is judged
    held = vms.instancetype("held", s.ns_mal)
    held["metadata"]["finalizers"] = ["example.com/keep"]
    assert vc.create(s.cp, held, s.mallory).returncode == 0
    s.cp.kubectl("delete", "virtualmachineinstancetype", "held", "-n", s.ns_mal, "--wait=false", user=s.mallory)
    hostdevs = json.dumps({"spec": {"hostDevices": [{"name": s.name("nic"), "deviceName": s.per_device("nic")}]}})
    patched = s.cp.kubectl("patch", "virtualmachineinstancetype", "held", "-n", s.ns_mal, "--type=merge", "-p",
                           hostdevs, user=s.mallory, check=False)  # fmt: skip
    _denied(patched, "lacks the verb use")
    s.cp.kubectl("patch", "virtualmachineinstancetype", "held", "-n", s.ns_mal, "--type=merge", "-p",
                 '{"metadata":{"finalizers":null}}', user=s.mallory)  # fmt: skip
    # kinds are matched as KubeVirt matches them: a lower-case plural reference is the same instancetype
    lower = vms.vm("lower", s.ns_alice, instancetype=("virtualmachineclusterinstancetypes", it))
    r = vc.create(s.cp, lower, s.bob, "--dry-run=server")
    _denied(r, f'{s.ns_alice}/alice-vm" (requested by "{s.alice.name}")')


def test_7_exclusivity_checks_owner_reference_uids_and_holds_under_parallel_requests(site: Site) -> None:
    s = site
    forged = vms.vm("forged", s.ns_alice, host=_host(s, "nic"))
    forged["metadata"]["ownerReferences"] = [
        {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "name": "alice-vm", "uid": "0000-forged",
         "controller": True}
    ]  # fmt: skip
    _denied(vc.create(s.cp, forged, s.bob), f'{s.ns_alice}/alice-vm" (requested by "{s.alice.name}")')
    r = s.claim("race")
    assert r.returncode == 0, r.stderr
    bodies = [(user, vms.vm(f"race{i}", ns, host=_host(s, "race"))) for i, (user, ns) in enumerate(s.racers)]
    with ThreadPoolExecutor(len(bodies)) as pool:  # six kubectl processes at once
        done = list(pool.map(lambda ub: vc.create(s.cp, ub[1], ub[0]), bodies))
    results = [(r.returncode, r.stderr) for r in done]
    admitted = [i for i, (rc, _) in enumerate(results) if rc == 0]
    assert len(admitted) == 1, results
    assert all("held for" in err or "is named by" in err for rc, err in results if rc != 0), results


def test_8_the_owners_own_restore_and_clone_with_her_device_are_accepted(site: Site) -> None:
    s = site
    r = s.claim("mine")
    assert r.returncode == 0, r.stderr
    restore = vms.vm_restore("mine", "restored-a", namespace=s.ns_alice, patches=[_add_hostdevices_patch(s, "mine")])
    made = vc.create(s.cp, restore, s.alice)
    assert made.returncode == 0, made.stderr
    stored = vc.until(lambda: vc.get(s.cp, "virtualmachinerestore", "mine", s.ns_alice))
    vc.until(lambda: False, timeout=1)
    written = vc.create(s.cp, vms.restored(vms.vm("restored-a", s.ns_alice, host=_host(s, "mine")), stored), s.vcu)
    assert written.returncode == 0, written.stderr
    clone = vc.create(s.cp, vms.vm_clone("copy", "alice-vm", namespace=s.ns_alice), s.alice)
    assert clone.returncode == 0, clone.stderr
    clone_obj = vc.until(lambda: vc.get(s.cp, "virtualmachineclone", "copy", s.ns_alice))
    vc.until(lambda: False, timeout=1)
    tmp = vms.vm_restore(f"tmp-restore-{clone_obj['metadata']['uid']}", "alice-vm-clone", namespace=s.ns_alice,
                         owner=clone_obj)  # fmt: skip
    made_tmp = vc.create(s.cp, tmp, s.vcu)
    assert made_tmp.returncode == 0, made_tmp.stderr
    tmp_obj = vc.until(lambda: vc.get(s.cp, "virtualmachinerestore", tmp["metadata"]["name"], s.ns_alice))
    vc.until(lambda: False, timeout=1)
    copy_vm = vms.restored(vms.vm("alice-vm-clone", s.ns_alice, host=_host(s, "nic")), tmp_obj)
    done = vc.create(s.cp, copy_vm, s.vcu)
    assert done.returncode == 0, done.stderr
    requester = json.loads(vc.get(s.cp, "vm", "alice-vm-clone", s.ns_alice)["metadata"]["annotations"][  # type: ignore[index]
        "devices.harvesterhci.io/requester"])  # fmt: skip
    assert requester["user"] == s.alice.name and "virtualmachinerestore" in requester["via"]


def test_9_mallory_holds_nothing_the_kubelet_would_hand_a_device_to(site: Site) -> None:
    s = site
    ours = {s.per_device(k) for k in s.devices} | {POOLED_NIC}
    asked: list[str] = []
    for kind in ("pods", "vm", "vmi", "virtualmachineinstancetypes"):
        items = json.loads(s.cp.kubectl("get", kind, "-n", s.ns_mal, "-o", "json").stdout)["items"]
        for obj in items:
            if kind == "pods":
                names_asked = hostdevices.pod_resources(obj)
            else:
                names_asked = tuple(d.device_name for d in hostdevices.host_devices(obj))
            asked.extend(f"{kind}/{obj['metadata']['name']}: {n}" for n in names_asked if n in ours)
    assert asked == []
