"""The DRA watches: DeviceClasses (cluster-scoped) and ResourceClaimTemplates (namespaced) reach the view through the
KubeVirt reflectors' keyed lister, are deleted exactly, and count as empty where resource.k8s.io/v1 is not served."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import apiclient
from policy import dra, records, snapshot
from tests.support.dra import claim_template, device_class, request
from webhook import cache, metrics, workloads

KINDS = {w.kind: w for w in workloads.WATCHED}


class Lister:
    def __init__(self, lists: dict[str, list[dict[str, Any]]], events: dict[str, list[apiclient.WatchEvent]]) -> None:
        self.lists, self.events = lists, events

    def list_pages(self, path: str, limit: int) -> Iterator[tuple[list[dict[str, Any]], str]]:
        if path not in self.lists:
            raise apiclient.NotFound("the server could not find the requested resource", status=404)
        yield self.lists[path], "7"

    def watch(self, path: str, resource_version: str, timeout_s: int) -> Iterator[apiclient.WatchEvent]:
        yield from self.events.pop(path, [])


def _run(kind: str, lister: Lister, index: snapshot.ClusterIndex) -> None:
    stop = threading.Event()
    keyed = workloads.KeyedLister(lister, absent_retry_s=0.01, stop=stop)
    r = cache.Reflector(KINDS[kind], keyed, index, metrics=metrics.Metrics(), watch_timeout_s=1, backoff_s=0.01,
                        stop=stop)  # fmt: skip
    rv = r._relist()
    if KINDS[kind].path in lister.lists:
        for event in keyed.watch(KINDS[kind].path, rv, 1):
            r.apply(event)


def test_device_classes_are_indexed_by_name_and_deleted_exactly() -> None:
    index = snapshot.ClusterIndex()
    ours, other = device_class(dra.PCI_DRIVER, f'device.driver == "{dra.PCI_DRIVER}"'), device_class("x", "true")
    path = KINDS["DeviceClass"].path
    _run("DeviceClass", Lister({path: [ours, other]}, {path: [apiclient.WatchEvent("DELETED", other)]}), index)
    got = index.device_class(dra.PCI_DRIVER)
    assert got is not None and got.pins.drivers == {dra.PCI_DRIVER}
    assert index.device_class("x") is None


def test_claim_templates_are_kept_per_namespace_with_their_record() -> None:
    index = snapshot.ClusterIndex()
    a = claim_template("t", request("d"), namespace="ns-a", inner_annotations={records.ANNOTATION: "r"})
    b = claim_template("t", request("d"), namespace="ns-b")
    path = KINDS["ResourceClaimTemplate"].path
    _run("ResourceClaimTemplate", Lister({path: [a, b]}, {path: [apiclient.WatchEvent("DELETED", b)]}), index)
    assert [(t.key, t.record) for t in index.claim_templates("ns-a")] == [("ns-a/t", "r")]
    assert index.claim_templates("ns-b") == []


def test_a_cluster_without_the_dra_api_counts_as_listed_and_empty() -> None:
    index = snapshot.ClusterIndex()
    _run("DeviceClass", Lister({}, {}), index)
    assert index.counts()["DeviceClass"] == 0
