"""The calls callers make (`KubeApi`), what they name (`Resource`) and what they get back; no I/O here.

Callers depend on this protocol, not on the client: `apiclient.client.Client` is the real one, and
`tests/support/fake_kube.py` an in-memory one that records calls and injects errors. Objects are plain JSON dicts:
callers read the few fields they need into their own typed views.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

Obj = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Resource:
    """Where a kind lives: `/api/v1` for the core group, `/apis/<group>/<version>` otherwise."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = False

    @classmethod
    def of(cls, api_version: str, plural: str, kind: str = "", *, namespaced: bool = False) -> Resource:
        """From an object's apiVersion (`v1`, `group/version`)."""
        group, _, version = api_version.rpartition("/")
        return cls(group, version, plural, kind, namespaced)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, name: str | None = None, namespace: str | None = None, subresource: str | None = None) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        if name is not None:
            base += f"/{name}"
            if subresource:
                base += f"/{subresource}"
        return base


@dataclass(frozen=True, slots=True)
class ObjectList:
    items: list[Obj]
    resource_version: str


@dataclass(frozen=True, slots=True)
class WatchEvent:
    type: str  # ADDED, MODIFIED, DELETED, BOOKMARK
    object: Mapping[str, Any]


# One call each, so that every caller's protocol names exactly the calls it makes (a lease needs get, create and
# replace; the agent needs KubeApi) and a fake implements only those.


class Lists(Protocol):
    def list(self, res: Resource, *, label_selector: str | None = None, namespace: str | None = None) -> ObjectList: ...


class Gets(Protocol):
    def get(self, res: Resource, name: str, *, namespace: str | None = None) -> Obj: ...


class Creates(Protocol):
    def create(self, res: Resource, body: Mapping[str, Any], *, namespace: str | None = None) -> Obj: ...


class Replaces(Protocol):
    def replace(self, res: Resource, name: str, body: Mapping[str, Any], *, namespace: str | None = None) -> Obj: ...


class Patches(Protocol):
    def patch(
        self,
        res: Resource,
        name: str,
        patch: Mapping[str, Any],
        *,
        namespace: str | None = None,
        subresource: str | None = None,
    ) -> Obj: ...


class JsonPatches(Protocol):
    def json_patch(
        self, res: Resource, name: str, ops: Sequence[Mapping[str, Any]], *, namespace: str | None = None
    ) -> Obj: ...


class Deletes(Protocol):
    def delete(self, res: Resource, name: str, *, namespace: str | None = None) -> None: ...


class Watches(Protocol):
    def watch(
        self,
        res: Resource,
        *,
        resource_version: str,
        label_selector: str | None = None,
        timeout_s: int = 300,
        stop: threading.Event | None = None,
    ) -> Iterator[WatchEvent]: ...


class KubeApi(Lists, Gets, Creates, Patches, Deletes, Watches, Protocol):
    """The calls the agent makes. Patches are JSON merge patches; a patch carrying metadata.resourceVersion is
    conditional (Conflict when stale), which is how the KubeVirt CR is updated."""


class CountingKube:
    """Wraps a KubeApi and counts its writes per (verb, plural): the proof that an idle node writes nothing."""

    def __init__(self, inner: KubeApi) -> None:
        self._inner = inner
        self._lock = threading.Lock()
        self.counts: dict[tuple[str, str], int] = {}

    @property
    def writes(self) -> int:
        with self._lock:
            return sum(self.counts.values())

    def _count(self, verb: str, res: Resource) -> None:
        with self._lock:
            key = (verb, res.plural)
            self.counts[key] = self.counts.get(key, 0) + 1

    def list(self, res: Resource, *, label_selector: str | None = None, namespace: str | None = None) -> ObjectList:
        return self._inner.list(res, label_selector=label_selector, namespace=namespace)

    def get(self, res: Resource, name: str, *, namespace: str | None = None) -> Obj:
        return self._inner.get(res, name, namespace=namespace)

    def create(self, res: Resource, body: Mapping[str, Any], *, namespace: str | None = None) -> Obj:
        self._count("create", res)
        return self._inner.create(res, body, namespace=namespace)

    def patch(
        self,
        res: Resource,
        name: str,
        patch: Mapping[str, Any],
        *,
        namespace: str | None = None,
        subresource: str | None = None,
    ) -> Obj:
        self._count("patch", res)
        return self._inner.patch(res, name, patch, namespace=namespace, subresource=subresource)

    def delete(self, res: Resource, name: str, *, namespace: str | None = None) -> None:
        self._count("delete", res)
        self._inner.delete(res, name, namespace=namespace)

    def watch(
        self,
        res: Resource,
        *,
        resource_version: str,
        label_selector: str | None = None,
        timeout_s: int = 300,
        stop: threading.Event | None = None,
    ) -> Iterator[WatchEvent]:
        return self._inner.watch(
            res, resource_version=resource_version, label_selector=label_selector, timeout_s=timeout_s, stop=stop
        )
