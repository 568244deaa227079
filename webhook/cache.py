"""Watch-fed cluster view: one reflector thread per kind (list, then watch from the list's resourceVersion).

Admissions never wait on the API server: they read policy.snapshot.ClusterIndex, which the reflectors keep current.
A watch whose resourceVersion has expired (410 Gone) or that fails is followed by a full re-list. `ready()` is true
only after every kind has been listed once, so /readyz keeps the API server away until the view is complete.
Started after fork, in each gunicorn worker (threads do not survive fork).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import apiclient
from policy import names, snapshot
from webhook import metrics as metrics_mod

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WatchedKind:
    kind: str  # as policy.snapshot.ClusterIndex names it
    path: str  # the cluster-wide collection


WATCHED: tuple[WatchedKind, ...] = (
    WatchedKind("PCIDevice", f"/apis/{names.API_VERSION}/pcidevices"),
    WatchedKind("PCIDeviceClaim", f"/apis/{names.API_VERSION}/pcideviceclaims"),
    WatchedKind("USBDevice", f"/apis/{names.API_VERSION}/usbdevices"),
    WatchedKind("USBDeviceClaim", f"/apis/{names.API_VERSION}/usbdeviceclaims"),
    WatchedKind("Node", "/api/v1/nodes"),
)


class Lister(Protocol):
    """What a reflector needs from the API (apiclient.client.Client; a fake in unit tests)."""

    def list_pages(self, path: str, limit: int) -> Iterator[tuple[list[dict[str, Any]], str]]: ...

    def watch(self, path: str, resource_version: str, timeout_s: int) -> Iterator[apiclient.WatchEvent]: ...


class Store(Protocol):
    def upsert(self, kind: str, obj: Mapping[str, Any]) -> bool: ...
    def delete(self, kind: str, name: str) -> None: ...


PAGE_SIZE = 500


class Reflector:
    """Keeps one kind of `store` equal to the API server's collection."""

    def __init__(
        self,
        watched: WatchedKind,
        lister: Lister,
        store: Store,
        *,
        metrics: metrics_mod.Metrics,
        watch_timeout_s: int,
        backoff_s: float,
        stop: threading.Event,
    ) -> None:
        self.watched = watched
        self._lister = lister
        self._store = store
        self._metrics = metrics
        self._watch_timeout = watch_timeout_s
        self._backoff = backoff_s
        self._stop = stop
        self._known: set[str] = set()  # names this reflector put into the store (it is their only writer)
        self.synced = threading.Event()

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                rv = self._relist()
                self._follow(rv)
            except Exception:
                if self._stop.is_set():
                    return
                log.warning("watch failed; re-listing", exc_info=True, extra={"kind": self.watched.kind})
                self._stop.wait(self._backoff)

    def _relist(self) -> str:
        """List page by page into the store, then drop what the list no longer has; return the list's version.

        Objects are updated one at a time, like a burst of watch events: each lookup still sees whole objects.
        """
        kind = self.watched.kind
        seen: set[str] = set()
        rv, skipped = "", 0
        for items, page_rv in self._lister.list_pages(self.watched.path, PAGE_SIZE):
            rv = rv or page_rv
            for obj in items:
                name = (obj.get("metadata") or {}).get("name")
                if isinstance(name, str):
                    seen.add(name)
                if not self._store.upsert(kind, obj):
                    skipped += 1
        for name in self._known - seen:
            self._store.delete(kind, name)
        self._known = seen
        self._metrics.watch_restarts.labels(kind).inc()
        if skipped:
            log.warning("skipped malformed objects", extra={"kind": kind, "count": skipped})
        if not self.synced.is_set():
            log.info("listed", extra={"kind": kind, "count": len(seen), "resource_version": rv})
        self.synced.set()
        return rv

    def _follow(self, rv: str) -> None:
        """Apply watch events until the server ends the watch or the resourceVersion expires."""
        while not self._stop.is_set():
            try:
                for event in self._lister.watch(self.watched.path, rv, self._watch_timeout):
                    if self._stop.is_set():
                        return
                    rv = self.apply(event) or rv
            except apiclient.Expired:
                log.info("resourceVersion expired; re-listing", extra={"kind": self.watched.kind})
                return

    def apply(self, event: apiclient.WatchEvent) -> str:
        """Apply one event to the store; return the resourceVersion to continue from ("" when unknown)."""
        meta = event.object.get("metadata") or {}
        rv = str(meta.get("resourceVersion", ""))
        name = meta.get("name")
        if event.type in ("ADDED", "MODIFIED"):
            if isinstance(name, str):
                self._known.add(name)
            if not self._store.upsert(self.watched.kind, event.object):
                log.warning("skipped malformed object", extra={"kind": self.watched.kind, "object": name})
        elif event.type == "DELETED" and isinstance(name, str):
            self._known.discard(name)
            self._store.delete(self.watched.kind, name)
        return rv


class WatchSource:
    """The reflectors of all watched kinds over one index."""

    def __init__(
        self,
        lister_factory: Callable[[], Lister],
        index: snapshot.ClusterIndex,
        *,
        metrics: metrics_mod.Metrics,
        watch_timeout_s: int,
        backoff_s: float,
        kinds: tuple[WatchedKind, ...] = WATCHED,
    ) -> None:
        self.index = index
        self._lister_factory = lister_factory
        self._metrics = metrics
        self._watch_timeout = watch_timeout_s
        self._backoff = backoff_s
        self._kinds = kinds
        self._stop = threading.Event()
        self.reflectors: list[Reflector] = []

    def start(self) -> None:
        lister = self._lister_factory()
        for watched in self._kinds:
            reflector = Reflector(
                watched,
                lister,
                self.index,
                metrics=self._metrics,
                watch_timeout_s=self._watch_timeout,
                backoff_s=self._backoff,
                stop=self._stop,
            )
            self.reflectors.append(reflector)
            threading.Thread(target=reflector.run, name=f"reflector-{watched.kind}", daemon=True).start()

    def ready(self) -> bool:
        return bool(self.reflectors) and all(r.synced.is_set() for r in self.reflectors)

    def stop(self) -> None:
        self._stop.set()


class FileSource:
    """A fixed view loaded from a file (benchmarks, offline runs): no API server needed.

    JSON Lines (one object per line, streamed: the peak stays one object) or, for small files, a JSON list.
    """

    def __init__(self, path: Path, index: snapshot.ClusterIndex) -> None:
        self.index = index
        self._path = path
        self._loaded = False

    def _objects(self) -> Iterator[Mapping[str, Any]]:
        with self._path.open("rb") as f:
            if f.read(1).lstrip() == b"[":
                f.seek(0)
                yield from json.load(f)
                return
            f.seek(0)
            for line in f:
                if line.strip():
                    yield json.loads(line)

    def start(self) -> None:
        count = 0
        for obj in self._objects():
            self.index.upsert(str(obj.get("kind")), obj)
            count += 1
        log.info("loaded view from file", extra={"path": str(self._path), "count": count})
        self._loaded = True

    def ready(self) -> bool:
        return self._loaded

    def stop(self) -> None:
        pass
