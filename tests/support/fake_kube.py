"""An in-memory API server for the agent's reconcilers (the `apiclient.KubeApi` protocol).

It behaves like the real one where the agent depends on it: resourceVersion on every write, merge patches
(RFC 7386), a patch carrying `metadata.resourceVersion` is conditional, the status subresource (status is written
only through `/status`, everything else only through the main resource), finalizers (delete sets
`deletionTimestamp`; the object goes when the last finalizer is removed), equality label selectors, watches.

It records every call (`calls`, `writes`) and can inject errors: `fail_next(verb, plural, error)` makes the next
matching call raise, `fail_write_at = n` makes the n-th write from now fail, `down = True` makes every call raise
KubeError (the API server is unreachable).
"""

from __future__ import annotations

import copy
import itertools
import queue
import threading
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from apiclient import Conflict, KubeError, NotFound, ObjectList, Resource, WatchEvent

Obj = dict[str, Any]
WRITES = ("create", "patch", "delete")


def merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, Mapping) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


@dataclass(frozen=True)
class Call:
    verb: str
    plural: str
    name: str | None
    subresource: str | None = None
    body: Any = None


def _matches(obj: Obj, selector: str | None) -> bool:
    if not selector:
        return True
    labels = obj.get("metadata", {}).get("labels") or {}
    for term in selector.split(","):
        k, _, v = term.partition("=")
        if labels.get(k.strip()) != v.strip():
            return False
    return True


class FakeKube:
    def __init__(self, *, status_subresource: frozenset[str] | None = None) -> None:
        self._lock = threading.RLock()
        self._store: dict[tuple[str, str, str], Obj] = {}  # (plural, namespace, name)
        self._rv = itertools.count(1)
        self._watchers: list[tuple[str, str | None, queue.Queue[WatchEvent | None]]] = []
        self.calls: list[Call] = []
        self._failures: list[tuple[str, str, Exception]] = []
        self.down = False
        self.fail_write_at: int | None = None  # the n-th write from now on (1-based) fails, once
        self.status_subresource = status_subresource or frozenset(
            {"pcidevices", "pcideviceclaims", "usbdevices", "usbdeviceclaims"}
        )

    # -- test controls --------------------------------------------------------------------------------------------

    def fail_next(self, verb: str, plural: str, error: Exception | None = None) -> None:
        self._failures.append((verb, plural, error or KubeError("injected failure", status=500)))

    @property
    def writes(self) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.verb in WRITES]

    def objects(self, plural: str) -> list[Obj]:
        with self._lock:
            return [copy.deepcopy(o) for (p, _, _), o in sorted(self._store.items()) if p == plural]

    def peek(self, plural: str, name: str, namespace: str = "") -> Obj | None:
        with self._lock:
            o = self._store.get((plural, namespace, name))
            return copy.deepcopy(o) if o is not None else None

    def put(self, res: Resource, body: Mapping[str, Any], *, namespace: str = "") -> Obj:
        """Store an object as another client would create it (status included), without recording a call."""
        with self._lock:
            obj = copy.deepcopy(dict(body))
            meta = obj.setdefault("metadata", {})
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("generation", 1)
            if res.namespaced:
                meta["namespace"] = namespace
            obj.setdefault("apiVersion", res.api_version)
            obj.setdefault("kind", res.kind)
            key = (res.plural, namespace if res.namespaced else "", meta["name"])
            existed = key in self._store
            meta["resourceVersion"] = str(next(self._rv))
            self._store[key] = obj
            self._notify(res.plural, "MODIFIED" if existed else "ADDED", obj)
            return copy.deepcopy(obj)

    def remove(self, res: Resource, name: str, *, namespace: str = "") -> None:
        """Delete as another client would, finalizers honoured."""
        with self._lock:
            key = (res.plural, namespace if res.namespaced else "", name)
            obj = self._store.get(key)
            if obj is None:
                return
            self._delete_obj(res.plural, key, obj)

    # -- KubeApi --------------------------------------------------------------------------------------------------

    def _enter(
        self, verb: str, res: Resource, name: str | None, subresource: str | None = None, body: Any = None
    ) -> None:
        self.calls.append(Call(verb, res.plural, name, subresource, copy.deepcopy(body)))
        if verb in WRITES and self.fail_write_at is not None:
            self.fail_write_at -= 1
            if self.fail_write_at == 0:
                self.fail_write_at = None
                raise KubeError("injected failure of this write", status=500)
        if self.down:
            raise KubeError("API server unreachable (fake)", status=0)
        for i, (v, p, err) in enumerate(self._failures):
            if v == verb and p == res.plural:
                del self._failures[i]
                raise err

    def _key(self, res: Resource, name: str, namespace: str | None) -> tuple[str, str, str]:
        return (res.plural, (namespace or "") if res.namespaced else "", name)

    def list(self, res: Resource, *, label_selector: str | None = None, namespace: str | None = None) -> ObjectList:
        with self._lock:
            self._enter("list", res, None)
            items = [
                copy.deepcopy(o)
                for (p, ns, _), o in sorted(self._store.items())
                if p == res.plural and _matches(o, label_selector) and (not namespace or ns == namespace)
            ]
            return ObjectList(items, str(next(self._rv)))

    def get(self, res: Resource, name: str, *, namespace: str | None = None) -> Obj:
        with self._lock:
            self._enter("get", res, name)
            obj = self._store.get(self._key(res, name, namespace))
            if obj is None:
                raise NotFound(f"404: {res.plural} {name!r} not found", status=404)
            return copy.deepcopy(obj)

    def create(self, res: Resource, body: Mapping[str, Any], *, namespace: str | None = None) -> Obj:
        with self._lock:
            name = body.get("metadata", {}).get("name")
            self._enter("create", res, name, body=body)
            key = self._key(res, name, namespace)
            if key in self._store:
                raise Conflict(f"409: {res.plural} {name!r} already exists", status=409)
            obj = copy.deepcopy(dict(body))
            if res.plural in self.status_subresource:
                obj.pop("status", None)
            meta = obj.setdefault("metadata", {})
            meta.update(uid=str(uuid.uuid4()), generation=1, resourceVersion=str(next(self._rv)))
            if res.namespaced:
                meta["namespace"] = namespace or ""
            self._store[key] = obj
            self._notify(res.plural, "ADDED", obj)
            return copy.deepcopy(obj)

    def patch(
        self,
        res: Resource,
        name: str,
        patch: Mapping[str, Any],
        *,
        namespace: str | None = None,
        subresource: str | None = None,
    ) -> Obj:
        with self._lock:
            self._enter("patch", res, name, subresource, patch)
            key = self._key(res, name, namespace)
            obj = self._store.get(key)
            if obj is None:
                raise NotFound(f"404: {res.plural} {name!r} not found", status=404)
            want_rv = (patch.get("metadata") or {}).get("resourceVersion")
            if want_rv is not None and want_rv != obj["metadata"]["resourceVersion"]:
                raise Conflict(f"409: {res.plural} {name!r} was modified", status=409)
            new = merge_patch(obj, patch)
            if res.plural in self.status_subresource:
                if subresource == "status":
                    new = dict(obj, status=new.get("status"))
                else:
                    new["status"] = copy.deepcopy(obj.get("status"))
            new["metadata"]["resourceVersion"] = obj["metadata"]["resourceVersion"]
            if new.get("spec") != obj.get("spec"):
                new["metadata"]["generation"] = obj["metadata"].get("generation", 1) + 1
            if new == obj:
                return copy.deepcopy(obj)  # a no-op patch changes nothing, as on the real server
            new["metadata"]["resourceVersion"] = str(next(self._rv))
            if new["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers"):
                del self._store[key]
                self._notify(res.plural, "DELETED", new)
                return copy.deepcopy(new)
            self._store[key] = new
            self._notify(res.plural, "MODIFIED", new)
            return copy.deepcopy(new)

    def delete(self, res: Resource, name: str, *, namespace: str | None = None) -> None:
        with self._lock:
            self._enter("delete", res, name)
            key = self._key(res, name, namespace)
            obj = self._store.get(key)
            if obj is None:
                raise NotFound(f"404: {res.plural} {name!r} not found", status=404)
            self._delete_obj(res.plural, key, obj)

    def _delete_obj(self, plural: str, key: tuple[str, str, str], obj: Obj) -> None:
        if obj["metadata"].get("finalizers"):
            if not obj["metadata"].get("deletionTimestamp"):
                obj = copy.deepcopy(obj)
                obj["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
                obj["metadata"]["resourceVersion"] = str(next(self._rv))
                self._store[key] = obj
                self._notify(plural, "MODIFIED", obj)
            return
        del self._store[key]
        self._notify(plural, "DELETED", obj)

    def watch(
        self,
        res: Resource,
        *,
        resource_version: str,
        label_selector: str | None = None,
        timeout_s: int = 300,
        stop: threading.Event | None = None,
    ) -> Iterator[WatchEvent]:
        with self._lock:
            self._enter("watch", res, None)
            q: queue.Queue[WatchEvent | None] = queue.Queue()
            entry = (res.plural, label_selector, q)
            self._watchers.append(entry)
        try:
            while stop is None or not stop.is_set():
                try:
                    event = q.get(timeout=0.05)
                except queue.Empty:
                    if self.down:
                        raise KubeError("watch broke (fake)", status=0) from None
                    continue
                if event is None:
                    return
                yield event
        finally:
            with self._lock:
                if entry in self._watchers:
                    self._watchers.remove(entry)

    def end_watches(self) -> None:
        """The server closes every watch (as on an API server restart)."""
        with self._lock:
            for _, _, q in self._watchers:
                q.put(None)

    def _notify(self, plural: str, kind: str, obj: Obj) -> None:
        for p, sel, q in self._watchers:
            if p == plural and _matches(obj, sel):
                q.put(WatchEvent(kind, copy.deepcopy(obj)))
