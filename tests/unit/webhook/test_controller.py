"""The cluster controller: pure planning (group completion, janitor), its passes over an in-memory API, and the
Lease election rules."""

from __future__ import annotations

import copy
import datetime
from collections.abc import Mapping, Sequence
from typing import Any

import jsonpatch  # type: ignore[import-untyped]
import pytest

import apiclient
from policy import names
from policy.objects import FINALIZER_AGENT, PCIDevice
from tests.support.objects import NODE1, NODE1A, TENANT_A, Lab, pciclaim
from webhook.controller import apply, lease, plan, store

T0 = datetime.datetime(2026, 11, 27, 6, 0, tzinfo=datetime.UTC)
GRACE = datetime.timedelta(seconds=10)
GPU, AUDIO = Lab.gpu["metadata"]["name"], Lab.audio["metadata"]["name"]


def claim(device: Mapping[str, Any], *, age_s: float = 60, owner: str = TENANT_A, **meta: Any) -> dict[str, Any]:
    c = pciclaim(device, owner=owner, user_name="admin")
    c["metadata"]["creationTimestamp"] = (T0 - datetime.timedelta(seconds=age_s)).strftime("%Y-%m-%dT%H:%M:%SZ")
    c["metadata"]["uid"] = "uid-" + c["metadata"]["name"]
    c["metadata"].update(meta)
    return c


def facts(*claims: dict[str, Any]) -> list[plan.ClaimFacts]:
    return [plan.ClaimFacts.from_dict(c) for c in claims]


DEVICES = [PCIDevice.from_dict(d) for d in (Lab.gpu, Lab.audio, Lab.gpu_1a, Lab.audio_1a, Lab.nic)]
NODES = {NODE1, NODE1A}


def groups(*claims: dict[str, Any], mode: str = plan.AUTO) -> list[plan.Action]:
    return plan.plan_groups(facts(*claims), DEVICES, NODES, now=T0, grace=GRACE, mode=mode)


def test_an_unclaimed_sibling_is_claimed_for_the_same_owner_after_the_grace_period() -> None:
    actions = groups(claim(Lab.gpu))
    creates = [a for a in actions if isinstance(a, plan.CreateClaim)]
    assert [(a.device.name, a.owner, a.user_name, a.trigger) for a in creates] == [(AUDIO, TENANT_A, "admin", GPU)]
    assert plan.MarkSiblingsDone(GPU, (AUDIO,)) in actions
    body = plan.build_claim(creates[0])
    assert body["metadata"]["annotations"][names.ANNOTATION_REQUESTED_BY] == TENANT_A
    assert body["spec"] == {"address": Lab.audio["status"]["address"], "nodeName": NODE1, "userName": "admin",
                            "disableResourcePooling": False}  # fmt: skip


def test_nothing_happens_within_the_grace_period_so_the_uis_enable_group_finishes_first() -> None:
    assert groups(claim(Lab.gpu, age_s=3)) == []


def test_a_group_claimed_whole_by_the_ui_is_only_marked_done() -> None:
    actions = groups(claim(Lab.gpu), claim(Lab.audio, age_s=59))
    assert all(isinstance(a, plan.MarkSiblingsDone) and a.siblings == () for a in actions)
    assert len(actions) == 2


def test_a_sibling_its_owner_released_is_not_re_created() -> None:
    done = claim(Lab.gpu)
    done["metadata"]["annotations"][plan.SIBLINGS_ANNOTATION] = AUDIO
    assert groups(done) == []


def test_warn_mode_leaves_the_group_to_the_user() -> None:
    assert groups(claim(Lab.gpu), mode=plan.WARN) == []


def test_janitor_deletes_claims_of_vanished_nodes_and_drops_the_agent_finalizer() -> None:
    c = claim(Lab.gpu_1a, finalizers=[FINALIZER_AGENT])
    actions = plan.plan_janitor(facts(c, claim(Lab.gpu)), {NODE1})
    assert actions == [
        plan.DeleteClaim("PCIDeviceClaim", Lab.gpu_1a["metadata"]["name"], NODE1A),
        plan.RemoveFinalizer("PCIDeviceClaim", Lab.gpu_1a["metadata"]["name"], NODE1A),
    ]
    assert plan.plan_janitor(facts(c), set()) == [], "an empty node list is a failed read, not an empty cluster"


class MemoryApi:
    """Paths to objects; records writes; `conflict_on_create` names objects that appear meanwhile."""

    def __init__(self, objects: Sequence[tuple[str, dict[str, Any]]]) -> None:
        self.store: dict[str, dict[str, Any]] = {}
        for collection, obj in objects:
            self.store[f"{collection}/{obj['metadata']['name']}"] = copy.deepcopy(obj)
        self.writes: list[tuple[str, str]] = []
        self.conflict_on_create: set[str] = set()

    def list_all(self, path: str) -> list[dict[str, Any]]:
        return [copy.deepcopy(o) for p, o in self.store.items() if p.rsplit("/", 1)[0] == path]

    def list(
        self, res: apiclient.Resource, *, label_selector: str | None = None, namespace: str | None = None
    ) -> apiclient.ObjectList:
        return apiclient.ObjectList(self.list_all(res.path(None, namespace)), "1")

    def get(self, res: apiclient.Resource, name: str, *, namespace: str | None = None) -> dict[str, Any]:
        path = res.path(name, namespace)
        if path not in self.store:
            raise apiclient.NotFound(path, status=404)
        return copy.deepcopy(self.store[path])

    def create(
        self, res: apiclient.Resource, body: Mapping[str, Any], *, namespace: str | None = None
    ) -> dict[str, Any]:
        path = res.path(None, namespace)
        name = body["metadata"].get("name") or body["metadata"]["generateName"] + str(len(self.writes))
        if f"{path}/{name}" in self.store or name in self.conflict_on_create:
            raise apiclient.Conflict("exists", status=409)
        self.writes.append(("create", f"{path}/{name}"))
        obj = copy.deepcopy(dict(body))
        obj["metadata"] = {**obj["metadata"], "name": name, "uid": "uid-" + name, "resourceVersion": "1"}
        self.store[f"{path}/{name}"] = obj
        return obj

    def replace(
        self, res: apiclient.Resource, name: str, body: Mapping[str, Any], *, namespace: str | None = None
    ) -> dict[str, Any]:
        path = res.path(name, namespace)
        self.writes.append(("replace", path))
        self.store[path] = copy.deepcopy(dict(body))
        return self.store[path]

    def json_patch(
        self, res: apiclient.Resource, name: str, ops: Sequence[Mapping[str, Any]], *, namespace: str | None = None
    ) -> dict[str, Any]:
        path = res.path(name, namespace)
        self.writes.append(("patch", path))
        self.store[path] = jsonpatch.apply_patch(self.store[path], [dict(o) for o in ops])
        return self.store[path]

    def delete(self, res: apiclient.Resource, name: str, *, namespace: str | None = None) -> None:
        path = res.path(name, namespace)
        self.writes.append(("delete", path))
        obj = self.store[path]
        if obj["metadata"].get("finalizers"):
            obj["metadata"]["deletionTimestamp"] = "2026-11-27T06:00:00Z"
        else:
            del self.store[path]


API = f"/apis/{names.API_VERSION}"


def cluster_api(*claims: dict[str, Any], nodes: Sequence[str] = (NODE1, NODE1A)) -> MemoryApi:
    objs = [(f"{API}/pcidevices", d) for d in (Lab.gpu, Lab.audio, Lab.gpu_1a, Lab.audio_1a)]
    objs += [(f"{API}/pcideviceclaims", c) for c in claims]
    objs += [("/api/v1/nodes", {"metadata": {"name": n}}) for n in nodes]
    return MemoryApi(objs)


def controller(api: MemoryApi) -> apply.Controller:
    return apply.Controller(api, "harvester-system", plan.AUTO, GRACE, lambda: T0)


def test_a_pass_claims_the_sibling_records_an_event_and_a_second_pass_does_nothing() -> None:
    api = cluster_api(claim(Lab.gpu))
    controller(api).reconcile()
    audio = api.store[f"{API}/pcideviceclaims/{AUDIO}"]
    assert audio["metadata"]["annotations"][names.ANNOTATION_REQUESTED_BY] == TENANT_A
    events = [o for p, o in api.store.items() if p.startswith("/api/v1/namespaces/harvester-system/events/")]
    assert [e["involvedObject"]["name"] for e in events] == [AUDIO]
    assert api.store[f"{API}/pcideviceclaims/{GPU}"]["metadata"]["annotations"][plan.SIBLINGS_ANNOTATION] == AUDIO
    writes = len(api.writes)
    del api.store[f"{API}/pcideviceclaims/{AUDIO}"]  # the owner releases the sibling
    controller(api).reconcile()
    assert len(api.writes) == writes, "neither re-created nor touched again"


def test_a_sibling_claimed_meanwhile_is_left_alone() -> None:
    api = cluster_api(claim(Lab.gpu))
    api.conflict_on_create.add(AUDIO)
    controller(api).reconcile()
    assert f"{API}/pcideviceclaims/{AUDIO}" not in api.store
    assert ("patch", f"{API}/pcideviceclaims/{GPU}") in api.writes


def test_a_pass_cleans_up_the_claims_of_a_deleted_node() -> None:
    gone = Lab.gpu_1a["metadata"]["name"]
    api = cluster_api(claim(Lab.gpu_1a, finalizers=[FINALIZER_AGENT]), nodes=(NODE1,))
    controller(api).reconcile()
    assert f"{API}/pcideviceclaims/{gone}" in api.store  # deleting, finalizer dropped in the same pass
    assert api.store[f"{API}/pcideviceclaims/{gone}"]["metadata"]["finalizers"] == []


# -- Lease ----------------------------------------------------------------------------------------------------------


def _lease(holder: str, renewed: datetime.datetime, duration: int = 15) -> dict[str, Any]:
    return {
        "metadata": {"name": "l", "namespace": "ns", "resourceVersion": "5"},
        "spec": {
            "holderIdentity": holder,
            "renewTime": renewed.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "leaseDurationSeconds": duration,
        },
    }


@pytest.mark.parametrize(
    ("lease_obj", "step"),
    [
        (None, lease.Step.CREATE),
        (_lease("me", T0), lease.Step.RENEW),
        (_lease("other", T0 - datetime.timedelta(seconds=5)), lease.Step.FOLLOW),
        (_lease("other", T0 - datetime.timedelta(seconds=16)), lease.Step.TAKE_OVER),
        (_lease("", T0), lease.Step.TAKE_OVER),
    ],
)
def test_lease_decision(lease_obj: dict[str, Any] | None, step: lease.Step) -> None:
    assert lease.decide(lease_obj, "me", T0) is step


def test_a_replica_takes_over_an_expired_lease_and_counts_the_transition() -> None:
    api = MemoryApi([("/apis/coordination.k8s.io/v1/namespaces/ns/leases", _lease("old", T0 - GRACE * 3))])
    elector = lease.Elector(api, "ns", "l", "me", 15, lambda: T0)
    assert elector.try_acquire_or_renew()
    spec = api.store["/apis/coordination.k8s.io/v1/namespaces/ns/leases/l"]["spec"]
    assert spec["holderIdentity"] == "me" and spec["leaseTransitions"] == 1
    follower = lease.Elector(api, "ns", "l", "other", 15, lambda: T0)
    assert not follower.try_acquire_or_renew()


def test_the_watch_fed_store_gives_a_pass_the_same_facts_as_a_fresh_read() -> None:
    api = cluster_api(claim(Lab.gpu), claim(Lab.gpu_1a, finalizers=[FINALIZER_AGENT]), nodes=(NODE1,))
    facts = store.Store()
    for collection, kind in ((f"{API}/pcideviceclaims", "PCIDeviceClaim"), (f"{API}/pcidevices", "PCIDevice"),
                             ("/api/v1/nodes", "Node")):  # fmt: skip
        for obj in api.list_all(collection):
            assert facts.upsert(kind, obj)
    assert not facts.upsert("PCIDevice", {"metadata": {"name": "broken"}, "status": {"address": 7}})
    fresh = apply.observe(api)
    claims, devices, nodes = facts.snapshot()
    assert sorted(claims, key=lambda c: c.name) == sorted(fresh.claims, key=lambda c: c.name)
    assert {d.name for d in devices} == {d.name for d in fresh.devices} and nodes == fresh.nodes
    facts.delete("PCIDeviceClaim", GPU)
    assert GPU not in {c.name for c in facts.snapshot()[0]}
    watched = apply.Controller(
        api, "default", plan.AUTO, GRACE, lambda: T0, view=lambda: apply.Observed(*facts.snapshot())
    )
    actions = watched.reconcile()
    assert not any(isinstance(a, plan.CreateClaim) for a in actions), "the deleted trigger is gone from the view"
    assert any(isinstance(a, plan.DeleteClaim) for a in actions)


def test_a_released_lease_is_taken_at_once_by_another_replica() -> None:
    api = MemoryApi([])
    leader = lease.Elector(api, "ns", "l", "me", 15, lambda: T0)
    assert leader.try_acquire_or_renew()
    follower = lease.Elector(api, "ns", "l", "other", 15, lambda: T0)
    assert not follower.try_acquire_or_renew()
    leader.release()
    assert follower.try_acquire_or_renew()
