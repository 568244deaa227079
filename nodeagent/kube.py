"""The agent's only door to the API server (and the only `kubernetes` import in nodeagent/).

`KubeApi` holds exactly the calls the reconcilers make, on raw JSON dicts (no generated models: an agent with 1,000
devices must stay small). `ApiKube` is the real adapter over an explicitly built ApiClient; tests use
`tests/support/fake_kube.py`. Library exceptions become the small tree below (all are `nodeagent.errors.KubeError`):

    KubeError           any failed call (carries the HTTP status; 0 when the server could not be reached)
    ├── NotFound        404
    ├── Conflict        409: AlreadyExists on create, stale resourceVersion on update/patch
    └── Expired         410: a watch's resourceVersion is too old (re-list)
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from nodeagent.errors import KubeError

log = logging.getLogger(__name__)

Obj = dict[str, Any]


class NotFound(KubeError):
    pass


class Conflict(KubeError):
    pass


class Expired(KubeError):
    pass


@dataclass(frozen=True, slots=True)
class Resource:
    """Where a kind lives: `/api/v1` for the core group, `/apis/<group>/<version>` otherwise."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = False

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


PCIDEVICES = Resource("devices.harvesterhci.io", "v1beta1", "pcidevices", "PCIDevice")
PCIDEVICECLAIMS = Resource("devices.harvesterhci.io", "v1beta1", "pcideviceclaims", "PCIDeviceClaim")
USBDEVICES = Resource("devices.harvesterhci.io", "v1beta1", "usbdevices", "USBDevice")
USBDEVICECLAIMS = Resource("devices.harvesterhci.io", "v1beta1", "usbdeviceclaims", "USBDeviceClaim")
KUBEVIRTS = Resource("kubevirt.io", "v1", "kubevirts", "KubeVirt", namespaced=True)
NODES = Resource("", "v1", "nodes", "Node")
EVENTS = Resource("", "v1", "events", "Event", namespaced=True)


@dataclass(frozen=True, slots=True)
class ObjectList:
    items: list[Obj]
    resource_version: str


@dataclass(frozen=True, slots=True)
class WatchEvent:
    type: str  # ADDED, MODIFIED, DELETED, BOOKMARK
    object: Mapping[str, Any]


class KubeApi(Protocol):
    """The calls the agent makes. Patches are JSON merge patches; a patch carrying metadata.resourceVersion is
    conditional (Conflict when stale), which is how the KubeVirt CR is updated."""

    def list(
        self, res: Resource, *, label_selector: str | None = None, namespace: str | None = None
    ) -> ObjectList: ...

    def get(self, res: Resource, name: str, *, namespace: str | None = None) -> Obj: ...

    def create(self, res: Resource, body: Mapping[str, Any], *, namespace: str | None = None) -> Obj: ...

    def patch(
        self,
        res: Resource,
        name: str,
        patch: Mapping[str, Any],
        *,
        namespace: str | None = None,
        subresource: str | None = None,
    ) -> Obj: ...

    def delete(self, res: Resource, name: str, *, namespace: str | None = None) -> None: ...

    def watch(
        self,
        res: Resource,
        *,
        resource_version: str,
        label_selector: str | None = None,
        timeout_s: int = 300,
        stop: threading.Event | None = None,
    ) -> Iterator[WatchEvent]: ...


WRITE_VERBS = ("create", "patch", "delete")


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


# -- the real adapter -----------------------------------------------------------------------------------------------

_AUTH = ["BearerToken"]


def _translate(status: int, body: bytes | None) -> KubeError:
    message = ""
    try:
        doc = json.loads(body or b"{}")
        message = str(doc.get("message", "")) if isinstance(doc, dict) else ""
    except ValueError:
        message = (body or b"")[:200].decode(errors="replace")
    kind = {404: NotFound, 409: Conflict, 410: Expired}.get(status, KubeError)
    return kind(f"{status}: {message}", status=status)


class ApiKube:
    """KubeApi over the kubernetes client's ApiClient, on paths and raw JSON."""

    def __init__(self, api: Any, *, request_timeout_s: float = 10.0) -> None:
        self._api = api
        self._timeout = request_timeout_s

    @classmethod
    def connect(cls, kubeconfig: Path | None, *, request_timeout_s: float = 10.0) -> ApiKube:
        """From a kubeconfig file, or the pod's service account when kubeconfig is None."""
        from kubernetes import client as k8s_client
        from kubernetes import config as k8s_config

        cfg = k8s_client.Configuration()
        if kubeconfig is not None:
            k8s_config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)  # type: ignore[no-untyped-call]
        else:
            k8s_config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
        return cls(k8s_client.ApiClient(cfg), request_timeout_s=request_timeout_s)

    def _call(
        self,
        method: str,
        path: str,
        *,
        query: list[tuple[str, str]] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: float | tuple[float, float] | None = None,
        stream: bool = False,
    ) -> Any:
        from kubernetes.client import exceptions as k8s_exceptions
        from urllib3 import exceptions as urllib3_exceptions

        headers = {"Accept": "application/json", "Content-Type": content_type}
        request = self._api.param_serialize(
            method, path, query_params=query or [], header_params=headers, body=body, auth_settings=_AUTH
        )
        try:
            response = self._api.call_api(*request, _request_timeout=timeout or self._timeout)
        except k8s_exceptions.ApiException as e:
            raise _translate(int(e.status or 0), e.body if isinstance(e.body, bytes) else None) from e
        except (urllib3_exceptions.HTTPError, OSError) as e:
            raise KubeError(f"API server unreachable: {e}", status=0) from e
        if not 200 <= response.status <= 299:
            raise _translate(response.status, response.read())
        if stream:
            return response.response
        try:
            return json.loads(response.read() or b"{}")
        except (urllib3_exceptions.HTTPError, OSError) as e:
            raise KubeError(f"API server connection lost: {e}", status=0) from e

    def list(self, res: Resource, *, label_selector: str | None = None, namespace: str | None = None) -> ObjectList:
        query = [("labelSelector", label_selector)] if label_selector else []
        doc = self._call("GET", res.path(None, namespace), query=query)
        return ObjectList(list(doc.get("items") or []), str((doc.get("metadata") or {}).get("resourceVersion", "")))

    def get(self, res: Resource, name: str, *, namespace: str | None = None) -> Obj:
        result: Obj = self._call("GET", res.path(name, namespace))
        return result

    def create(self, res: Resource, body: Mapping[str, Any], *, namespace: str | None = None) -> Obj:
        result: Obj = self._call("POST", res.path(None, namespace), body=dict(body))
        return result

    def patch(
        self,
        res: Resource,
        name: str,
        patch: Mapping[str, Any],
        *,
        namespace: str | None = None,
        subresource: str | None = None,
    ) -> Obj:
        result: Obj = self._call(
            "PATCH",
            res.path(name, namespace, subresource),
            body=dict(patch),
            content_type="application/merge-patch+json",
        )
        return result

    def delete(self, res: Resource, name: str, *, namespace: str | None = None) -> None:
        self._call("DELETE", res.path(name, namespace))

    def watch(
        self,
        res: Resource,
        *,
        resource_version: str,
        label_selector: str | None = None,
        timeout_s: int = 300,
        stop: threading.Event | None = None,
    ) -> Iterator[WatchEvent]:
        """Events after resource_version until the server ends the watch; raise Expired on 410 Gone."""
        from kubernetes.watch import watch as k8s_watch
        from urllib3 import exceptions as urllib3_exceptions

        query = [("watch", "true"), ("allowWatchBookmarks", "true"), ("timeoutSeconds", str(timeout_s))]
        if resource_version:
            query.append(("resourceVersion", resource_version))
        if label_selector:
            query.append(("labelSelector", label_selector))
        resp = self._call("GET", res.path(), query=query, timeout=(10.0, timeout_s + 30.0), stream=True)
        try:
            for line in k8s_watch.iter_resp_lines(resp):  # type: ignore[no-untyped-call]
                if stop is not None and stop.is_set():
                    return
                if not line:
                    continue
                event = json.loads(line)
                obj = event.get("object") or {}
                if event.get("type") == "ERROR":
                    raise _translate(int(obj.get("code", 500)), json.dumps(obj).encode())
                yield WatchEvent(type=str(event.get("type", "")), object=obj)
        except (urllib3_exceptions.HTTPError, OSError) as e:
            raise KubeError(f"watch of {res.plural} broke: {e}", status=0) from e
        finally:
            resp.release_conn()
