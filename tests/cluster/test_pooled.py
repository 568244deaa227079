"""Issue 23 replayed against a real kube-apiserver with the webhook in pooled mode (`policy.resourceNames=pooled`):
two nodes with the same GPU model, alice's on one, mallory's on the other. The pin escapes the issue reproduced are
tried as mallory would (two ORed terms, a re-pin by an update, a VMI with a nodeSelector), then an agent naming
another node's device, then claim metadata that only the owner may shape."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from policy import names
from tests.cluster.test_webhook import Webhook, serve_webhook
from tests.support import vmcluster as vc
from tests.support import vms
from tests.support.controlplane import ControlPlane, KubeUser

POOLED = "nvidia.com/TU104GL_TESLA_T4"
GROUP = names.GROUP


@dataclass
class Pools:
    cp: ControlPlane
    node_a: str
    node_m: str
    agent_m: KubeUser
    ns_mal: str
    alice: KubeUser
    mallory: KubeUser
    bob: KubeUser
    gpu_a: dict[str, Any]
    gpu_m: dict[str, Any]


def _t4(node: str) -> dict[str, Any]:
    return vc.pci_device(node, "0000:3b:00.0", "45", ["0000:3b:00.0"], resourceName=POOLED, pooledResourceName=POOLED)


def _terms(*nodes: str) -> dict[str, Any]:
    terms = [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": [n]}]} for n in nodes]
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}}


def _pins(spec: dict[str, Any]) -> list[set[str]]:
    terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    return [{v for e in t.get("matchFields", []) if e["key"] == "metadata.name" for v in e["values"]} for t in terms]


@pytest.fixture(scope="module")
def pooled_webhook(control_plane: ControlPlane, installed_crds: str) -> Iterator[Webhook]:
    control_plane.kubectl("create", "namespace", vc.NS, check=False)
    vc.apply(control_plane, vc.webhook_kubevirt_reads())
    with serve_webhook(control_plane, PCIDEVICES_POLICY_RESOURCE_NAMES="pooled") as wh:
        yield wh


@pytest.fixture(scope="module")
def pools(pooled_webhook: Webhook) -> Pools:
    cp = pooled_webhook.cp
    u = "p" + os.urandom(3).hex()
    node_a, node_m = f"{u}-alice-node", f"{u}-mallory-node"
    agent_a, agent_m = cp.mint_node_token(node_a, namespace=vc.NS), cp.mint_node_token(node_m, namespace=vc.NS)
    gpu_a, gpu_m = _t4(node_a), _t4(node_m)
    uid_a, uid_m = vc.report(cp, agent_a, gpu_a), vc.report(cp, agent_m, gpu_m)
    ns_alice, ns_mal = f"{u}-alice", f"{u}-mallory"
    for ns in (ns_alice, ns_mal):
        cp.kubectl("create", "namespace", ns)
    alice, mallory, bob = f"{u}-alice", f"{u}-mallory", f"{u}-bob"
    editor = {"apiGroups": ["kubevirt.io"], "resources": vc.KUBEVIRT_KINDS,
              "verbs": ["get", "list", "create", "update", "patch", "delete"]}  # fmt: skip
    claims = {"apiGroups": [GROUP], "resources": ["pcideviceclaims"],
              "verbs": ["get", "list", "create", "update", "patch", "delete"]}  # fmt: skip
    vc.apply(cp, [
        vc.cluster_role(f"{u}-editor", [editor]),
        vc.cluster_role(f"{u}-claims", [claims]),  # what the chart's pcidevices-admin may do with claims
        vc.cluster_role(f"{u}-a", [{"apiGroups": [GROUP], "resources": ["pcidevices"], "verbs": ["claim", "use"],
                                    "resourceNames": [gpu_a["metadata"]["name"]]}]),
        vc.cluster_role(f"{u}-m", [{"apiGroups": [GROUP], "resources": ["pcidevices"], "verbs": ["claim", "use"],
                                    "resourceNames": [gpu_m["metadata"]["name"]]}]),
        vc.bind(alice, f"{u}-editor", ns_alice), vc.bind(alice, f"{u}-claims"), vc.bind(alice, f"{u}-a"),
        vc.bind(mallory, f"{u}-editor", ns_mal), vc.bind(mallory, f"{u}-claims"), vc.bind(mallory, f"{u}-m"),
        vc.bind(bob, f"{u}-claims"),
    ])  # fmt: skip
    p = Pools(cp, node_a, node_m, agent_m, ns_mal, cp.mint_user(alice), cp.mint_user(mallory), cp.mint_user(bob),
              gpu_a, gpu_m)  # fmt: skip
    vc.until(lambda: False, timeout=1)
    for device, uid, owner in ((gpu_a, uid_a, p.alice), (gpu_m, uid_m, p.mallory)):
        r = vc.create(cp, vc.ui_claim(device, uid), owner)
        assert r.returncode == 0, r.stderr
    vc.until(lambda: False, timeout=1)
    return p


def _denied(r: Any, *parts: str) -> None:
    assert r.returncode != 0 and "denied the request" in r.stderr, r.stderr or r.stdout
    for part in parts:
        assert part in r.stderr, r.stderr


def test_two_ored_terms_are_both_pinned_to_the_node_whose_pool_the_vm_was_judged_for(pools: Pools) -> None:
    p = pools
    body = vms.vm("two-terms", p.ns_mal, host=[("gpu1", POOLED)])
    body["spec"]["template"]["spec"]["affinity"] = _terms(p.node_m, p.node_a)
    r = vc.create(p.cp, body, p.mallory)
    assert r.returncode == 0, r.stderr
    stored = vc.get(p.cp, "vm", "two-terms", p.ns_mal)
    assert stored is not None
    assert all(p.node_m in pins for pins in _pins(stored["spec"]["template"]["spec"])), stored["spec"]["template"]


def test_a_re_pin_to_another_owners_node_by_a_patch_is_judged_and_denied(pools: Pools) -> None:
    p = pools
    vc.until(lambda: False, timeout=1)
    affinity = json.dumps({"spec": {"template": {"spec": {"affinity": _terms(p.node_a)}}}})
    r = p.cp.kubectl("patch", "vm", "two-terms", "-n", p.ns_mal, "--type=merge", "-p", affinity, user=p.mallory,
                     check=False)  # fmt: skip
    _denied(r, f"may use on node {json.dumps(p.node_a)}")


def test_a_vmi_with_a_node_selector_for_another_owners_node_is_pinned_to_its_own_pool(pools: Pools) -> None:
    p = pools
    body = vms.vmi("selector", p.ns_mal, host=[("gpu1", POOLED)])
    body["spec"]["nodeSelector"] = {"kubernetes.io/hostname": p.node_a}
    r = vc.create(p.cp, body, p.mallory)
    assert r.returncode == 0, r.stderr
    stored = vc.get(p.cp, "vmi", "selector", p.ns_mal)
    assert stored is not None and all(p.node_m in pins for pins in _pins(stored["spec"]))


def test_an_agent_cannot_offer_its_device_under_another_nodes_name(pools: Pools) -> None:
    p = pools
    theirs = f"nvidia.com/{p.gpu_a['metadata']['name']}"
    r = p.cp.kubectl("patch", "pcidevices", p.gpu_m["metadata"]["name"], "--subresource=status", "--type=merge",
                     "-p", json.dumps({"status": {"resourceName": theirs}}), user=p.agent_m, check=False)  # fmt: skip
    _denied(r, "can only be offered by its agent under its own names")


def test_only_the_owner_shapes_a_claims_finalizers_and_labels(pools: Pools) -> None:
    p = pools
    claim = p.gpu_a["metadata"]["name"]
    add = json.dumps({"metadata": {"finalizers": ["example.com/keep"]}})
    _denied(p.cp.kubectl("patch", "pcideviceclaim", claim, "--type=merge", "-p", add, user=p.bob, check=False),
            f"changed by its owner {json.dumps(p.alice.name)}")
    relabel = p.cp.kubectl("label", "pcideviceclaim", claim, f"nodename={p.node_m}", "--overwrite", user=p.bob,
                           check=False)  # fmt: skip
    _denied(relabel, "can only have its labels changed by its owner")
    mine = p.cp.kubectl("label", "pcideviceclaim", claim, "team=gpu", user=p.alice, check=False)
    assert mine.returncode == 0, mine.stderr
