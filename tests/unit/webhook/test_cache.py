"""The watch-fed view: list, then watch from the list's resourceVersion; re-list on 410; ready after every kind."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import apiclient
from policy import snapshot
from webhook import cache, metrics


def _pci(name: str, rv: str, node: str = "node1", address: str = "0000:00:10.0") -> dict[str, Any]:
    return {
        "apiVersion": "devices.harvesterhci.io/v1beta1",
        "kind": "PCIDevice",
        "metadata": {"name": name, "resourceVersion": rv, "labels": {"nodename": node}},
        "status": {
            "address": address,
            "nodeName": node,
            "vendorId": "10de",
            "deviceId": "1eb8",
            "classId": "0302",
            "iommuGroup": "5",
            "resourceName": "nvidia.com/TU104GL_TESLA_T4",
            "kernelDriverInUse": "nvidia",
        },
    }


class FakeLister:
    """Scripted API: lists return queued snapshots; watches yield queued event lists or raise."""

    def __init__(self) -> None:
        self.lists: list[tuple[list[dict[str, Any]], str]] = []
        self.watches: list[list[apiclient.WatchEvent] | Exception] = []
        self.calls: list[tuple[str, str]] = []
        self.done = threading.Event()

    def list_pages(self, path: str, limit: int) -> Iterator[tuple[list[dict[str, Any]], str]]:
        self.calls.append(("list", path))
        items, rv = self.lists.pop(0)
        for start in range(0, max(len(items), 1), 2):  # pages of two, to exercise paging
            yield items[start : start + 2], rv

    def watch(self, path: str, resource_version: str, timeout_s: int) -> Iterator[apiclient.WatchEvent]:
        self.calls.append(("watch", resource_version))
        if not self.watches:
            self.done.set()
            time.sleep(0.05)
            return
        step = self.watches.pop(0)
        if isinstance(step, Exception):
            raise step
        yield from step


def _reflector(lister: FakeLister, index: snapshot.ClusterIndex, stop: threading.Event) -> cache.Reflector:
    return cache.Reflector(
        cache.WATCHED[0], lister, index, metrics=metrics.Metrics(), watch_timeout_s=5, backoff_s=0.01, stop=stop
    )


def _run_until_idle(reflector: cache.Reflector, lister: FakeLister, stop: threading.Event) -> None:
    t = threading.Thread(target=reflector.run, daemon=True)
    t.start()
    assert lister.done.wait(5)
    stop.set()
    t.join(5)


def test_events_after_the_list_are_applied_and_the_watch_resumes_from_the_last_resource_version() -> None:
    lister, index, stop = FakeLister(), snapshot.ClusterIndex(), threading.Event()
    lister.lists.append(([_pci("node1-000001000", "5")], "10"))
    lister.watches.append(
        [
            apiclient.WatchEvent("ADDED", _pci("node1-000002000", "11", address="0000:00:20.0")),
            apiclient.WatchEvent("BOOKMARK", {"metadata": {"resourceVersion": "12"}}),
        ]
    )
    lister.watches.append([apiclient.WatchEvent("DELETED", _pci("node1-000001000", "13"))])
    reflector = _reflector(lister, index, stop)
    _run_until_idle(reflector, lister, stop)
    assert index.pcidevice("node1-000001000") is None
    assert index.pcidevice("node1-000002000") is not None
    assert [c for c in lister.calls if c[0] == "watch"][:3] == [("watch", "10"), ("watch", "12"), ("watch", "13")]
    assert reflector.synced.is_set()


def test_an_expired_resource_version_leads_to_a_full_relist_that_drops_vanished_objects() -> None:
    lister, index, stop = FakeLister(), snapshot.ClusterIndex(), threading.Event()
    lister.lists.append(([_pci("node1-000001000", "5")], "10"))
    lister.watches.append(apiclient.Expired("too old resource version", status=410))
    lister.lists.append(([_pci("node1-000002000", "30", address="0000:00:20.0")], "31"))
    _run_until_idle(_reflector(lister, index, stop), lister, stop)
    assert [c[0] for c in lister.calls][:4] == ["list", "watch", "list", "watch"]
    assert ("watch", "31") in lister.calls
    assert index.pcidevice("node1-000001000") is None
    assert index.pcidevice("node1-000002000") is not None


def test_a_failing_watch_is_retried_after_a_relist() -> None:
    lister, index, stop = FakeLister(), snapshot.ClusterIndex(), threading.Event()
    lister.lists += [([], "1"), ([_pci("node1-000001000", "2")], "3")]
    lister.watches.append(ConnectionResetError("peer closed"))
    _run_until_idle(_reflector(lister, index, stop), lister, stop)
    assert index.pcidevice("node1-000001000") is not None


def test_the_source_is_ready_only_when_every_kind_has_been_listed() -> None:
    gate = threading.Event()

    class SlowNodes(FakeLister):
        def list_pages(self, path: str, limit: int) -> Iterator[tuple[list[dict[str, Any]], str]]:
            if path.endswith("/nodes"):
                gate.wait(5)
            yield [], "1"

        def watch(self, path: str, resource_version: str, timeout_s: int) -> Iterator[apiclient.WatchEvent]:
            time.sleep(0.05)
            return iter(())

    source = cache.WatchSource(
        SlowNodes, snapshot.ClusterIndex(), metrics=metrics.Metrics(), watch_timeout_s=5, backoff_s=0.01
    )
    source.start()
    try:
        deadline = time.monotonic() + 5
        while sum(r.synced.is_set() for r in source.reflectors) < len(cache.WATCHED) - 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert not source.ready()
        gate.set()
        while not source.ready():
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        source.stop()
        gate.set()


def test_a_relist_over_several_pages_keeps_every_object_and_drops_only_vanished_ones() -> None:
    lister, index, stop = FakeLister(), snapshot.ClusterIndex(), threading.Event()
    five = [_pci(f"node1-0000010{i}0", "5", address=f"0000:00:1{i}.0") for i in range(5)]
    lister.lists.append((five, "10"))
    lister.watches.append(apiclient.Expired("gone", status=410))
    lister.lists.append((five[1:], "20"))
    _run_until_idle(_reflector(lister, index, stop), lister, stop)
    assert index.pcidevice("node1-000001000") is None
    assert all(index.pcidevice(f"node1-0000010{i}0") is not None for i in range(1, 5))


@pytest.mark.parametrize("form", ["json list", "json lines"])
def test_the_file_source_loads_every_kind_into_the_index(tmp_path: Path, form: str) -> None:
    path = tmp_path / "view.json"
    objects = [_pci("node1-000001000", "1"), {"kind": "Node", "metadata": {"name": "node1"}}]
    if form == "json list":
        path.write_text(json.dumps(objects))
    else:
        path.write_text("".join(json.dumps(o) + "\n" for o in objects))
    index = snapshot.ClusterIndex()
    source = cache.FileSource(path, index)
    assert not source.ready()
    source.start()
    assert source.ready()
    assert index.pcidevice("node1-000001000") is not None
    assert index.node_exists("node1")


def test_a_malformed_watched_object_is_skipped_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    lister, index, stop = FakeLister(), snapshot.ClusterIndex(), threading.Event()
    reflector = _reflector(lister, index, stop)
    bad = {"kind": "PCIDevice", "metadata": {"name": "node1-000001000", "resourceVersion": "3"}, "status": "nope"}
    assert reflector.apply(apiclient.WatchEvent("ADDED", bad)) == "3"
    assert index.pcidevice("node1-000001000") is None
    assert any(r.getMessage() == "skipped malformed object" for r in caplog.records)
