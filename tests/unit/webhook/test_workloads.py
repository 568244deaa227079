"""The KubeVirt watches of part 2: namespaced keys through the shared reflectors, and absent APIs as empty."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

import apiclient
from policy import access, hostdevices, names, snapshot
from tests.support.objects import TENANT_A, Lab, pciclaim
from tests.support.vms import entry, recorded, review, vm
from webhook import app as app_mod
from webhook import cache, metrics, workloads
from webhook import settings as settings_mod

VM_PATH = workloads.WATCHED[0].path


class PathLister:
    """Lists per path (or an error), one scripted watch per path, then nothing."""

    def __init__(self, lists: dict[str, list[dict[str, Any]] | Exception], events: list[apiclient.WatchEvent]) -> None:
        self.lists = lists
        self.events = events

    def list_pages(self, path: str, limit: int) -> Iterator[tuple[list[dict[str, Any]], str]]:
        value = self.lists.get(path, apiclient.NotFound("the server could not find the requested resource", status=404))
        if isinstance(value, Exception):
            raise value
        yield value, "10"

    def watch(self, path: str, resource_version: str, timeout_s: int) -> Iterator[apiclient.WatchEvent]:
        events, self.events = (self.events, []) if path == VM_PATH else ([], self.events)
        yield from events


def _reflect(lister: cache.Lister, index: snapshot.ClusterIndex, kind: cache.WatchedKind) -> cache.Reflector:
    stop = threading.Event()
    keyed = workloads.KeyedLister(lister, absent_retry_s=0.01, stop=stop)
    return cache.Reflector(kind, keyed, index, metrics=metrics.Metrics(), watch_timeout_s=1, backoff_s=0.01, stop=stop)


def test_vms_of_the_same_name_in_two_namespaces_are_kept_apart_and_deleted_exactly() -> None:
    a, b = vm("gpu-vm", "ns-a", host=[("x", "nvidia.com/a")]), vm("gpu-vm", "ns-b", host=[("y", "nvidia.com/b")])
    index = snapshot.ClusterIndex()
    lister = PathLister({VM_PATH: [a, b]}, [apiclient.WatchEvent("DELETED", a)])
    keyed = workloads.KeyedLister(lister, absent_retry_s=0.01, stop=threading.Event())
    reflector = _reflect(lister, index, workloads.WATCHED[0])
    rv = reflector._relist()
    assert index.workload(hostdevices.VM, "ns-a", "gpu-vm") is not None
    assert [w.key for w in index.workloads_naming("nvidia.com/b")] == ["ns-b/gpu-vm"]
    for event in keyed.watch(VM_PATH, rv, 1):
        reflector.apply(event)
    assert index.workload(hostdevices.VM, "ns-a", "gpu-vm") is None
    assert index.workloads_naming("nvidia.com/a") == []
    assert index.workload(hostdevices.VM, "ns-b", "gpu-vm") is not None


@pytest.mark.parametrize("status", [404, 403])
def test_an_api_that_is_missing_or_forbidden_counts_as_listed_and_empty(status: int) -> None:
    index = snapshot.ClusterIndex()
    error = apiclient.NotFound("missing", status=404) if status == 404 else apiclient.KubeError("forbidden", status=403)
    reflector = _reflect(PathLister({VM_PATH: error}, []), index, workloads.WATCHED[0])
    reflector._relist()
    assert reflector.synced.is_set()
    assert index.counts()[hostdevices.VM] == 0


def test_a_missing_api_is_listed_again_after_the_retry_wait() -> None:
    stop = threading.Event()
    lister = PathLister({VM_PATH: apiclient.NotFound("missing", status=404)}, [])
    keyed = workloads.KeyedLister(lister, absent_retry_s=0.01, stop=stop)
    assert list(keyed.list_pages(VM_PATH, 10)) == [([], "")]
    with pytest.raises(apiclient.Expired):
        list(keyed.watch(VM_PATH, "", 5))
    lister.lists[VM_PATH] = [vm("late")]
    pages = list(keyed.list_pages(VM_PATH, 10))
    assert pages[0][0][0]["metadata"]["name"] == "ns-a/late"


def test_other_api_errors_are_not_hidden() -> None:
    keyed = workloads.KeyedLister(
        PathLister({VM_PATH: apiclient.KubeError("boom", status=500)}, []), absent_retry_s=0, stop=threading.Event()
    )
    with pytest.raises(apiclient.KubeError):
        list(keyed.list_pages(VM_PATH, 10))


def test_a_vm_review_goes_through_the_routes_patched_then_judged() -> None:
    index = snapshot.ClusterIndex.from_objects(Lab.cluster(pciclaim(Lab.gpu), pciclaim(Lab.audio)))
    grants = access.StaticAccess([access.Grant(TENANT_A, "use", names.GROUP, "pcidevices", namespace="ns-a")])
    app = app_mod.create_app(settings_mod.WebhookSettings(), view=index, access=grants)
    app_mod.runtime(app).start()
    client = app.test_client()
    body = review("CREATE", vm("half", host=[entry(Lab.gpu)]))
    mutated = client.post("/mutate", json=body).get_json()["response"]
    assert mutated["allowed"] and mutated["patchType"] == "JSONPatch"
    body = review("CREATE", recorded(vm("half", host=[entry(Lab.gpu)]), TENANT_A))  # as the mutator leaves it
    judged = client.post("/validate", json=body).get_json()["response"]
    assert not judged["allowed"] and judged["status"]["code"] == 403
    assert "which it does not name; add a hostDevices entry" in judged["status"]["message"]
    other_ns = review("CREATE", vm("v", "ns-b", host=[entry(Lab.gpu), entry(Lab.audio)]))
    assert not client.post("/validate", json=other_ns).get_json()["response"]["allowed"]
