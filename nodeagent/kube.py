"""The agent's only door to the API server (and the only `kubernetes` import in nodeagent/).

`KubeApi` holds exactly the calls the reconcilers make, on raw JSON dicts. `ApiKube` is the real adapter: JSON over
a urllib3 pool (the transport the kubernetes client uses), configured from the pod's service account or a kubeconfig
with certificates or tokens. Importing `kubernetes.client` alone costs ~33 MiB of RSS (every generated model), more
than a third of the agent's budget, so the `kubernetes` package is imported only to load a kubeconfig that needs its
exec or auth-provider plugins. Tests use `tests/support/fake_kube.py`. Failures become the tree below (all are
`nodeagent.errors.KubeError`):

    KubeError           any failed call (carries the HTTP status; 0 when the server could not be reached)
    ├── NotFound        404
    ├── Conflict        409: AlreadyExists on create, stale resourceVersion on update/patch
    └── Expired         410: a watch's resourceVersion is too old (re-list)
"""

from __future__ import annotations

import base64
import json
import logging
import os
import ssl
import tempfile
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlencode

import urllib3
import yaml

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
PODS = Resource("", "v1", "pods", "Pod", namespaced=True)
# KubeVirt's kinds that name devices, read (never written) by the offering gate and the allocation audit
VIRTUALMACHINES = Resource("kubevirt.io", "v1", "virtualmachines", "VirtualMachine", namespaced=True)
VIRTUALMACHINEINSTANCES = Resource(
    "kubevirt.io", "v1", "virtualmachineinstances", "VirtualMachineInstance", namespaced=True
)
VIRTUALMACHINEINSTANCEREPLICASETS = Resource(
    "kubevirt.io", "v1", "virtualmachineinstancereplicasets", "VirtualMachineInstanceReplicaSet", namespaced=True
)
VIRTUALMACHINEPOOLS = Resource(
    "pool.kubevirt.io", "v1alpha1", "virtualmachinepools", "VirtualMachinePool", namespaced=True
)
VIRTUALMACHINEINSTANCETYPES = Resource(
    "instancetype.kubevirt.io", "v1beta1", "virtualmachineinstancetypes", "VirtualMachineInstancetype", namespaced=True
)
VIRTUALMACHINECLUSTERINSTANCETYPES = Resource(
    "instancetype.kubevirt.io", "v1beta1", "virtualmachineclusterinstancetypes", "VirtualMachineClusterInstancetype"
)


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

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


def _translate(status: int, body: bytes | None) -> KubeError:
    message = ""
    try:
        doc = json.loads(body or b"{}")
        message = str(doc.get("message", "")) if isinstance(doc, dict) else ""
    except ValueError:
        message = (body or b"")[:200].decode(errors="replace")
    kind = {404: NotFound, 409: Conflict, 410: Expired}.get(status, KubeError)
    return kind(f"{status}: {message}", status=status)


@dataclass(frozen=True)
class Endpoint:
    """Where and how to reach the API server: URL, TLS context, and a bearer token (fixed or re-read from a file)."""

    server: str
    context: ssl.SSLContext
    token: str | None = None
    token_file: str | None = None

    def bearer(self) -> str | None:
        if self.token_file is not None:
            try:
                return Path(self.token_file).read_text().strip()  # bound tokens rotate: read it every time
            except OSError:
                return self.token
        return self.token


def _tls(ca_file: str | None, ca_data: bytes | None, insecure: bool) -> ssl.SSLContext:
    if insecure:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    return ssl.create_default_context(cafile=ca_file, cadata=ca_data.decode() if ca_data else None)


def _load_client_cert(ctx: ssl.SSLContext, cert: bytes, key: bytes) -> None:
    """ssl wants files: write both to a private temporary file that exists only while they are loaded."""
    fd, path = tempfile.mkstemp(prefix="kubecert")
    try:
        os.write(fd, cert + b"\n" + key)
        os.close(fd)
        ctx.load_cert_chain(path)
    finally:
        os.unlink(path)


def in_cluster_endpoint(sa_dir: Path = SA_DIR, env: Mapping[str, str] | None = None) -> Endpoint:
    env = os.environ if env is None else env
    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT", "443")
    if not host:
        raise KubeError("not in a cluster: KUBERNETES_SERVICE_HOST is not set", status=0)
    if ":" in host:
        host = f"[{host}]"
    ctx = _tls(str(sa_dir / "ca.crt"), None, False)
    return Endpoint(f"https://{host}:{port}", ctx, token_file=str(sa_dir / "token"))


def kubeconfig_endpoint(path: Path) -> Endpoint:
    """The current context of a kubeconfig: certificates, CA and tokens inline or as files; plugins via kubernetes."""
    doc = yaml.safe_load(path.read_text()) or {}
    ctx_name = doc.get("current-context")
    context = next((c["context"] for c in doc.get("contexts") or [] if c.get("name") == ctx_name), None)
    if context is None:
        raise KubeError(f"{path}: no current context", status=0)
    cluster = next(c["cluster"] for c in doc.get("clusters") or [] if c.get("name") == context.get("cluster"))
    user: dict[str, Any] = next((u["user"] for u in doc.get("users") or [] if u.get("name") == context.get("user")), {})
    if "exec" in user or "auth-provider" in user:
        return _plugin_endpoint(path)
    base = path.parent

    def data(key: str) -> bytes | None:
        if user.get(f"{key}-data") or cluster.get(f"{key}-data"):
            return base64.b64decode(user.get(f"{key}-data") or cluster.get(f"{key}-data"))
        f = user.get(key) or cluster.get(key)
        return (base / f).read_bytes() if f else None

    ca = data("certificate-authority")
    ctx = _tls(None, ca, bool(cluster.get("insecure-skip-tls-verify")))
    cert, key = data("client-certificate"), data("client-key")
    if cert and key:
        _load_client_cert(ctx, cert, key)
    token_file = user.get("tokenFile")
    return Endpoint(
        str(cluster["server"]).rstrip("/"),
        ctx,
        token=user.get("token"),
        token_file=str(base / token_file) if token_file else None,
    )


def _plugin_endpoint(path: Path) -> Endpoint:
    """Kubeconfigs with exec/auth-provider plugins: let the kubernetes package run them (a one-off heavy import)."""
    from kubernetes import client as k8s_client
    from kubernetes import config as k8s_config

    cfg = k8s_client.Configuration()
    k8s_config.load_kube_config(config_file=str(path), client_configuration=cfg)  # type: ignore[no-untyped-call]
    ctx = _tls(cfg.ssl_ca_cert, None, not cfg.verify_ssl)
    if cfg.cert_file and cfg.key_file:
        ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
    auth = str((cfg.api_key or {}).get("authorization", ""))
    return Endpoint(str(cfg.host).rstrip("/"), ctx, token=auth.removeprefix("Bearer ") or None)


def _slim(obj: Any) -> Obj:
    """Drop metadata.managedFields (often half an object's size; the agent never reads them)."""
    if isinstance(obj, dict):
        meta = obj.get("metadata")
        if isinstance(meta, dict):
            meta.pop("managedFields", None)
    return obj  # type: ignore[no-any-return]


class ApiKube:
    """KubeApi over one urllib3 pool: paths, JSON bodies, merge patches; errors translated."""

    def __init__(
        self, endpoint: Endpoint, *, request_timeout_s: float = 10.0, pool_size: int = 10, page: int = 250
    ) -> None:
        self._endpoint = endpoint
        self._page = page
        self._timeout = request_timeout_s
        self._pool = urllib3.PoolManager(num_pools=2, maxsize=pool_size, ssl_context=endpoint.context, retries=False)

    @classmethod
    def connect(cls, kubeconfig: Path | None, *, request_timeout_s: float = 10.0) -> ApiKube:
        """From a kubeconfig file, or the pod's service account when kubeconfig is None."""
        endpoint = kubeconfig_endpoint(kubeconfig) if kubeconfig is not None else in_cluster_endpoint()
        return cls(endpoint, request_timeout_s=request_timeout_s)

    def _call(
        self,
        method: str,
        path: str,
        *,
        query: list[tuple[str, str]] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: urllib3.Timeout | None = None,
        stream: bool = False,
    ) -> Any:
        url = self._endpoint.server + path + (f"?{urlencode(query)}" if query else "")
        headers = {"Accept": "application/json", "Content-Type": content_type}
        token = self._endpoint.bearer()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            resp = self._pool.request(
                method,
                url,
                body=json.dumps(body).encode() if body is not None else None,
                headers=headers,
                timeout=timeout or urllib3.Timeout(connect=5.0, read=self._timeout),
                preload_content=not stream,
            )
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise KubeError(f"API server unreachable: {e}", status=0) from e
        if not 200 <= resp.status <= 299:
            raw = resp.data if not stream else resp.read()
            if stream:
                resp.release_conn()
            raise _translate(resp.status, raw)
        if stream:
            return resp
        return json.loads(resp.data or b"{}")

    def list(self, res: Resource, *, label_selector: str | None = None, namespace: str | None = None) -> ObjectList:
        """The whole collection, read in pages (one consistent snapshot) so a big node never parses it at once."""
        items: list[Obj] = []
        token, rv = "", ""
        while True:
            query = [("limit", str(self._page))] + ([("labelSelector", label_selector)] if label_selector else [])
            if token:
                query.append(("continue", token))
            doc = self._call("GET", res.path(None, namespace), query=query)
            items.extend(_slim(o) for o in doc.get("items") or [])
            meta = doc.get("metadata") or {}
            rv = rv or str(meta.get("resourceVersion", ""))
            token = str(meta.get("continue") or "")
            if not token:
                return ObjectList(items, rv)

    def get(self, res: Resource, name: str, *, namespace: str | None = None) -> Obj:
        return _slim(self._call("GET", res.path(name, namespace)))

    def create(self, res: Resource, body: Mapping[str, Any], *, namespace: str | None = None) -> Obj:
        return _slim(self._call("POST", res.path(None, namespace), body=dict(body)))

    def patch(
        self,
        res: Resource,
        name: str,
        patch: Mapping[str, Any],
        *,
        namespace: str | None = None,
        subresource: str | None = None,
    ) -> Obj:
        return _slim(
            self._call(
                "PATCH",
                res.path(name, namespace, subresource),
                body=dict(patch),
                content_type="application/merge-patch+json",
            )
        )

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
        query = [("watch", "true"), ("allowWatchBookmarks", "true"), ("timeoutSeconds", str(timeout_s))]
        if resource_version:
            query.append(("resourceVersion", resource_version))
        if label_selector:
            query.append(("labelSelector", label_selector))
        timeout = urllib3.Timeout(connect=5.0, read=timeout_s + 30.0)
        resp = self._call("GET", res.path(), query=query, timeout=timeout, stream=True)
        try:
            pending = b""
            for chunk in resp.stream(65536, decode_content=True):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if stop is not None and stop.is_set():
                        return
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    obj = event.get("object") or {}
                    if event.get("type") == "ERROR":
                        raise _translate(int(obj.get("code", 500)), json.dumps(obj).encode())
                    yield WatchEvent(type=str(event.get("type", "")), object=obj)
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise KubeError(f"watch of {res.plural} broke: {e}", status=0) from e
        finally:
            resp.release_conn()
