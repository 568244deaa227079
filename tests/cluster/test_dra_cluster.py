"""DRA against a real kube-apiserver calling the webhook (issue 18): the ResourceSlices the agent plans are valid
resource.k8s.io/v1 objects that read back unchanged (so an idle agent writes nothing), only a node's agent may write
its node's slices, and ResourceClaims and templates through both webhooks: alice's pinned claim and broad claim
(narrowed by the mutator, the CEL compiled by the API server), bob's claim for alice's device denied, a claim for a
device offered through the device plugin denied, a template recorded twice."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from nodeagent.dra import model, slices
from policy import dra, names, records
from tests.cluster.test_webhook import Webhook, serve_webhook
from tests.support import vmcluster as vc
from tests.support.controlplane import ControlPlane, KubeUser
from tests.support.dra import claim_template, our_classes, pin_pci, request, resourceclaim

GROUP = names.GROUP


def _role(name: str, rules: list[dict[str, Any]]) -> dict[str, Any]:
    return vc.cluster_role(name, rules)


def _bind_sa(role: str, sa: str) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": f"{role}-{sa}"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": vc.NS}],
    }


@pytest.fixture(scope="module")
def dra_webhook(control_plane: ControlPlane, installed_crds: str) -> Iterator[Webhook]:
    """Our DeviceClasses, the chart's DRA grants to the webhook and the agent, then the webhook."""
    cp = control_plane
    cp.kubectl("create", "namespace", vc.NS, check=False)
    vc.apply(cp, [
        *our_classes(),
        _role("dra-webhook-reads", [{"apiGroups": ["resource.k8s.io"],
                                     "resources": ["deviceclasses", "resourceclaimtemplates"],
                                     "verbs": ["get", "list", "watch"]}]),
        _bind_sa("dra-webhook-reads", "pcidevices-webhook"),
        _role("dra-agent", [{"apiGroups": ["resource.k8s.io"], "resources": ["resourceslices"],
                             "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]}]),
        _bind_sa("dra-agent", "pcidevices-agent"),
    ])  # fmt: skip
    with serve_webhook(cp) as wh:
        yield wh


@dataclass
class Site:
    cp: ControlPlane
    node: str
    agent: KubeUser
    other_agent: KubeUser
    ns: str
    alice: KubeUser
    bob: KubeUser
    devices: dict[str, dict[str, Any]]

    def name(self, key: str) -> str:
        return str(self.devices[key]["metadata"]["name"])


def _claim(device: dict[str, Any], uid: str, offer: str) -> dict[str, Any]:
    body = vc.ui_claim(device, uid)
    body["spec"]["offer"] = offer
    return body


@pytest.fixture(scope="module")
def site(dra_webhook: Webhook) -> Site:
    cp = dra_webhook.cp
    u = "d" + os.urandom(3).hex()
    node = f"{u}-node"
    agent = cp.mint_node_token(node, namespace=vc.NS)
    other_agent = cp.mint_node_token(f"{u}-other", namespace=vc.NS)
    # a GPU with its audio function in one IOMMU group, and a NIC alone in its own
    gpu, audio = "0000:3b:00.0", "0000:3b:00.1"
    devices = {
        "gpu": vc.pci_device(node, gpu, "45", [gpu, audio]),
        "audio": vc.pci_device(node, audio, "45", [gpu, audio], deviceId="10f8", classId="0403"),
        "nic": vc.pci_device(node, "0000:5e:00.0", "60", ["0000:5e:00.0"], vendorId="8086", deviceId="10d3",
                             classId="0200"),
    }  # fmt: skip
    uids = {k: vc.report(cp, agent, d) for k, d in devices.items()}
    ns = f"{u}-team"
    cp.kubectl("create", "namespace", ns)
    alice, bob = f"{u}-alice", f"{u}-bob"
    claimer = {"apiGroups": [GROUP], "resources": ["pcideviceclaims"], "verbs": ["get", "list", "create", "delete"]}
    dra_user = {"apiGroups": ["resource.k8s.io"], "resources": ["resourceclaims", "resourceclaimtemplates"],
                "verbs": ["get", "list", "create", "delete"]}  # fmt: skip
    use_mine = {"apiGroups": [GROUP], "resources": ["pcidevices"], "verbs": ["use"],
                "resourceNames": [devices[k]["metadata"]["name"] for k in devices]}  # fmt: skip
    vc.apply(cp, [
        _role(f"{u}-claimer", [claimer, {"apiGroups": [GROUP], "resources": ["pcidevices"], "verbs": ["claim"]}]),
        _role(f"{u}-dra", [dra_user]),
        _role(f"{u}-use", [use_mine]),
        vc.bind(alice, f"{u}-claimer"), vc.bind(alice, f"{u}-dra", ns), vc.bind(alice, f"{u}-use", ns),
        vc.bind(bob, f"{u}-dra", ns),
    ])  # fmt: skip
    s = Site(cp, node, agent, other_agent, ns, cp.mint_user(alice), cp.mint_user(bob), devices)
    for key, offer in (("gpu", dra.OFFER_DRA), ("audio", dra.OFFER_DRA), ("nic", dra.OFFER_DEVICE_PLUGIN)):
        r = vc.create(cp, _claim(devices[key], uids[key], offer), s.alice)
        assert r.returncode == 0, r.stderr
    vc.until(lambda: False, timeout=1)  # the webhook's view follows its watches
    return s


def _create(s: Site, obj: dict[str, Any], user: KubeUser) -> subprocess.CompletedProcess[str]:
    return s.cp.kubectl("create", "-o", "json", "-f", "-", input=json.dumps(obj), user=user, check=False)


def _denied(r: subprocess.CompletedProcess[str], *parts: str) -> None:
    assert r.returncode != 0, f"admitted: {r.stdout[:400]}"
    assert "denied the request" in r.stderr, r.stderr
    for part in parts:
        assert part in r.stderr, r.stderr


# -- ResourceSlices --------------------------------------------------------------------------------------------------


def _published(s: Site, owner: str = "alice") -> list[model.PublishedDevice]:
    out = []
    for key in ("gpu", "audio"):
        st = s.devices[key]["status"]
        out.append(model.build_pci(
            node=s.node, object_name=s.name(key), owner=owner, address=st["address"], vendor_id=st["vendorId"],
            device_id=st["deviceId"], class_id=st["classId"], iommu_group=45, numa_node=None,
            pcie_root="pci0000:00", resource_name=st["resourceName"],
        ))  # fmt: skip
    return out


class KubectlSlices:
    """slices.SliceStore over kubectl as one identity (what the agent's adapter does over its API client)."""

    def __init__(self, cp: ControlPlane, user: KubeUser) -> None:
        self.cp, self.user, self.writes = cp, user, 0

    def list(self, node: str, driver: str) -> list[dict[str, Any]]:
        out = self.cp.kubectl("get", "resourceslices", "-l", f"{names.LABEL_NODENAME}={node}", "-o", "json",
                              user=self.user).stdout  # fmt: skip
        return [o for o in json.loads(out)["items"] if o["spec"]["driver"] == driver]

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        self.writes += 1
        return json.loads(self.cp.kubectl("create", "-o", "json", "-f", "-", input=json.dumps(body),
                                          user=self.user).stdout)  # fmt: skip

    def update(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        self.writes += 1
        return json.loads(self.cp.kubectl("replace", "-o", "json", "-f", "-", input=json.dumps(body),
                                          user=self.user).stdout)  # fmt: skip

    def delete(self, name: str) -> None:
        self.writes += 1
        self.cp.kubectl("delete", "resourceslice", name, user=self.user)


def test_the_agents_slices_are_valid_and_read_back_unchanged(site: Site) -> None:
    s = site
    store = KubectlSlices(s.cp, s.agent)
    assert [a.verb for a in slices.publish(store, s.node, dra.PCI_DRIVER, _published(s))] == ["create"]
    for _ in range(2):  # the server keeps exactly what was written: an idle agent writes nothing
        assert slices.publish(store, s.node, dra.PCI_DRIVER, _published(s)) == []
    assert store.writes == 1
    slices.publish(store, s.node, dra.PCI_DRIVER, _published(s, owner="carol"))
    [got] = store.list(s.node, dra.PCI_DRIVER)
    assert got["spec"]["pool"]["generation"] == 2
    assert got["spec"]["devices"][0]["attributes"]["owner"] == {"string": "carol"}
    slices.publish(store, s.node, dra.PCI_DRIVER, [])
    assert store.list(s.node, dra.PCI_DRIVER) == []


def test_only_a_nodes_agent_writes_its_slices(site: Site) -> None:
    s = site
    [body] = slices.build_slices(s.node, dra.PCI_DRIVER, _published(s), 1)
    _denied(_create(s, body, s.other_agent), "slices.validate.devices.harvesterhci.io",
            "can only be written by the node agent of its own node")  # fmt: skip
    vc.apply(s.cp, [vc.bind(s.alice.name, "dra-agent")])  # RBAC lets her; the webhook does not
    _denied(_create(s, body, s.alice), "can only be written by the node agent of node")
    other = slices.build_slices(s.node, "gpu.example.com", [], 1)
    assert other == []  # nothing of another driver is planned


# -- ResourceClaims and templates through both webhooks --------------------------------------------------------------


def _group_claim(s: Site, name: str) -> dict[str, Any]:
    return resourceclaim(name, request("gpu", pin_pci(s.name("gpu"))), request("audio", pin_pci(s.name("audio"))),
                         namespace=s.ns)  # fmt: skip


def test_alices_pinned_claim_is_admitted_with_her_record(site: Site) -> None:
    s = site
    r = _create(s, _group_claim(s, "pinned"), s.alice)
    assert r.returncode == 0, r.stderr
    rec = records.Requester.decode(json.loads(r.stdout)["metadata"]["annotations"][records.ANNOTATION])
    assert rec is not None and rec.username == s.alice.name


def test_bob_may_not_claim_alices_device(site: Site) -> None:
    s = site
    _denied(_create(s, _group_claim(s, "steal"), s.bob), "dra.validate.devices.harvesterhci.io",
            f'user "{s.bob.name}" lacks the verb use on pcidevices')  # fmt: skip


def test_a_broad_claim_is_narrowed_to_its_requesters_devices(site: Site) -> None:
    s = site
    broad = resourceclaim("any-t4", request("gpu", 'device.attributes["pci.devices.harvesterhci.io"].numaNode == 0'),
                          namespace=s.ns)  # fmt: skip
    r = _create(s, broad, s.alice)
    assert r.returncode == 0, r.stderr
    selectors = [x["cel"]["expression"] for x in json.loads(r.stdout)["spec"]["devices"]["requests"][0]["exactly"][
        "selectors"]]  # fmt: skip
    assert selectors[-1] == dra.owner_selector(s.alice.name, [dra.PCI_DRIVER])


def test_a_claim_for_a_device_offered_through_the_device_plugin_is_denied(site: Site) -> None:
    s = site
    nic = resourceclaim("nic", request("nic", pin_pci(s.name("nic"))), namespace=s.ns)
    _denied(_create(s, nic, s.alice), "through the device plugin, and a device is offered through one path at a time")


def test_a_template_carries_its_creators_record_twice(site: Site) -> None:
    s = site
    r = _create(s, claim_template("tpl", request("any"), namespace=s.ns), s.alice)
    assert r.returncode == 0, r.stderr
    obj = json.loads(r.stdout)
    outer = obj["metadata"]["annotations"][records.ANNOTATION]
    assert obj["spec"]["metadata"]["annotations"][records.ANNOTATION] == outer
    # bob copies alice's record into his template: the mutator writes his own over it
    forged = claim_template("forged", request("any"), namespace=s.ns, annotations={records.ANNOTATION: outer},
                            inner_annotations={records.ANNOTATION: outer})  # fmt: skip
    r = _create(s, forged, s.bob)
    assert r.returncode == 0, r.stderr
    obj = json.loads(r.stdout)
    for where in (obj["metadata"], obj["spec"]["metadata"]):
        rec = records.Requester.decode(where["annotations"][records.ANNOTATION])
        assert rec is not None and rec.username == s.bob.name
