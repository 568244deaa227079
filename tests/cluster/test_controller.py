"""The cluster controller behind a real kube-apiserver with the webhook over TLS: two replicas of
`python -m webhook.controller` share a Lease; the Harvester UI's claim flows, leader failover and the janitor."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from policy import names
from policy.objects import FINALIZER_AGENT
from policy.settings import CONTROLLER
from tests.cluster.test_webhook import Webhook, webhook  # noqa: F401  (the module-scoped webhook fixture)
from tests.support import vmcluster as vc
from tests.support.controlplane import ControlPlane, KubeUser
from webhook.controller import plan

OWNER = names.ANNOTATION_REQUESTED_BY


@pytest.fixture(scope="module")
def wh(control_plane: ControlPlane, installed_crds: str, webhook: Webhook) -> Webhook:  # noqa: F811
    return webhook


@dataclass
class Site:
    cp: ControlPlane
    node: str
    agent: KubeUser
    tenant: KubeUser
    replicas: vc.ControllerReplicas
    n: int = 0

    def group(self, node: str | None = None, agent: KubeUser | None = None) -> tuple[dict[str, Any], ...]:
        """A fresh GPU + audio pair in its own IOMMU group, reported by the node's agent; returns (gpu, audio)."""
        self.n += 1
        node, agent = node or self.node, agent or self.agent
        addrs = [f"0000:{0x10 + self.n:02x}:00.0", f"0000:{0x10 + self.n:02x}:00.1"]
        pair = tuple(vc.pci_device(node, a, str(100 + self.n), addrs) for a in addrs)
        for d in pair:
            d["metadata"]["uid"] = vc.report(self.cp, agent, d)
        vc.until(lambda: False, timeout=1)
        return pair

    def claim(self, device: dict[str, Any], user_name: str = "Alice (admin)") -> None:
        r = vc.create(self.cp, vc.ui_claim(device, device["metadata"]["uid"], user_name), self.tenant)
        assert r.returncode == 0, r.stderr

    def stored(self, device: dict[str, Any]) -> dict[str, Any] | None:
        return vc.get(self.cp, "pcideviceclaim", device["metadata"]["name"])


@pytest.fixture(scope="module")
def site(wh: Webhook) -> Iterator[Site]:
    cp = wh.cp
    u = "c" + os.urandom(3).hex()
    node = f"{u}-node-1"
    agent = cp.mint_node_token(node, namespace=vc.NS)
    tenant = f"{u}-tenant"
    vc.apply(cp, vc.controller_rbac() + [
        vc.cluster_role(f"{u}-claimer", [
            {"apiGroups": [names.GROUP], "resources": ["pcideviceclaims"],
             "verbs": ["get", "list", "create", "delete"]},
            {"apiGroups": [names.GROUP], "resources": ["pcidevices"], "verbs": ["claim"]},
        ]),
        vc.bind(tenant, f"{u}-claimer"),
    ])  # fmt: skip
    workdir = Path(tempfile.mkdtemp(prefix="ctl"))
    replicas = vc.ControllerReplicas(cp, workdir, cp.mint_user(CONTROLLER), lease=f"{u}-lease")
    replicas.start("replica-1")
    replicas.start("replica-2")
    try:
        assert vc.until(replicas.holder, timeout=30), replicas.log("replica-1")
        yield Site(cp, node, agent, cp.mint_user(tenant), replicas)
    finally:
        replicas.stop_all()


def test_claiming_one_gpu_gets_its_audio_sibling_claimed_for_the_same_owner(site: Site) -> None:
    gpu, audio = site.group()
    site.claim(gpu)
    got = vc.until(lambda: site.stored(audio), timeout=30)
    assert got, site.replicas.log(site.replicas.holder())
    assert got["metadata"]["annotations"][OWNER] == site.tenant.name
    assert got["spec"]["userName"] == "Alice (admin)"  # the display name is copied, not the controller's
    trigger = site.stored(gpu)
    assert (
        trigger is not None
        and trigger["metadata"]["annotations"][plan.SIBLINGS_ANNOTATION] == audio["metadata"]["name"]
    )
    events = site.cp.kubectl("get", "events", "-n", "default", "--field-selector",
                             f"involvedObject.name={audio['metadata']['name']}", "-o", "name").stdout  # fmt: skip
    assert events.strip(), "an Event says why the sibling was claimed"


def test_enable_group_the_uis_way_gets_no_error_and_no_second_claim(site: Site) -> None:
    gpu, audio = site.group()
    site.claim(gpu)
    site.claim(audio)  # the UI's "Enable Group": one create per member, well within the grace period
    assert vc.until(lambda: all(plan.SIBLINGS_ANNOTATION in (site.stored(d) or {"metadata": {}})["metadata"].get(
        "annotations", {}) for d in (gpu, audio)), timeout=30)  # fmt: skip
    for d in (gpu, audio):
        stored = site.stored(d)
        assert stored is not None and stored["metadata"]["annotations"][plan.SIBLINGS_ANNOTATION] == ""
    log = "".join(site.replicas.log(i) for i in list(site.replicas.procs))
    assert "action failed" not in log


def test_a_sibling_its_owner_releases_is_not_claimed_again(site: Site) -> None:
    gpu, audio = site.group()
    site.claim(gpu)
    assert vc.until(lambda: site.stored(audio), timeout=30)
    site.cp.kubectl("delete", "pcideviceclaim", audio["metadata"]["name"], user=site.tenant)
    vc.until(lambda: False, timeout=5)  # grace (2 s) and several passes
    assert site.stored(audio) is None
    assert site.stored(gpu) is not None


def test_deleting_a_node_cleans_up_its_claims(site: Site) -> None:
    cp = site.cp
    node = f"{site.node}-gone"
    agent = cp.mint_node_token(node, namespace=vc.NS, pod=f"agent-{node}"[:63])
    gpu, audio = site.group(node, agent)
    for d in (gpu, audio):
        site.claim(d)
        name = d["metadata"]["name"]
        cp.kubectl("patch", "pcideviceclaim", name, "--type=merge", "-p",
                   json.dumps({"metadata": {"finalizers": [FINALIZER_AGENT]}}), user=agent)  # fmt: skip
    cp.kubectl("delete", "node", node)
    assert vc.until(lambda: site.stored(gpu) is None and site.stored(audio) is None, timeout=60), site.replicas.log(
        site.replicas.holder()
    )


def test_killing_the_leader_lets_the_other_replica_take_over(site: Site) -> None:
    replicas = site.replicas
    leader = replicas.holder()
    assert leader in replicas.procs
    replicas.kill(leader)  # SIGKILL: no hand-over, the Lease must expire (3 s here)
    other = vc.until(lambda: (h := replicas.holder()) != leader and h, timeout=30)
    assert other and other in replicas.procs
    gpu, audio = site.group()
    site.claim(gpu)
    assert vc.until(lambda: site.stored(audio), timeout=30), "the new leader works"
