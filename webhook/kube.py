"""The webhook's only door to the API server (and the only `kubernetes` import in webhook/).

An explicitly built ApiClient (kubeconfig or in-cluster; nothing global), raw JSON reads so the cache stores slim
views rather than generated models, and library exceptions translated into the small tree below:

    KubeError
    ├── NotFound        404
    ├── Conflict        409 (AlreadyExists on create, stale resourceVersion on update)
    └── Expired         410 (a watch's resourceVersion is too old: re-list)
"""

from __future__ import annotations

import http.client
import json
import logging
import ssl
import threading
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import urllib3
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes.client import exceptions as k8s_exceptions
from kubernetes.watch import watch as k8s_watch

log = logging.getLogger(__name__)

_AUTH = ["BearerToken"]
_SAR_PATH = "/apis/authorization.k8s.io/v1/subjectaccessreviews"
_JSON = {"Accept": "application/json", "Content-Type": "application/json"}


class KubeError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status


class NotFound(KubeError):
    pass


class Conflict(KubeError):
    pass


class Expired(KubeError):
    pass


@dataclass(frozen=True, slots=True)
class WatchEvent:
    type: str  # ADDED, MODIFIED, DELETED, BOOKMARK
    object: Mapping[str, Any]


def connect(kubeconfig: Path | None) -> k8s_client.ApiClient:
    """An ApiClient from a kubeconfig file, or from the pod's service account when kubeconfig is None."""
    cfg = k8s_client.Configuration()
    if kubeconfig is not None:
        k8s_config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)  # type: ignore[no-untyped-call]
    else:
        k8s_config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    return k8s_client.ApiClient(cfg)


def _translate(status: int, body: bytes | None) -> KubeError:
    message = ""
    try:
        doc = json.loads(body or b"{}")
        message = str(doc.get("message", ""))
    except ValueError:
        message = (body or b"")[:200].decode(errors="replace")
    kind = {404: NotFound, 409: Conflict, 410: Expired}.get(status, KubeError)
    return kind(status, message)


class Kube:
    """Typed JSON calls on paths (`/api/v1/...`, `/apis/<group>/<version>/...`)."""

    def __init__(self, api: k8s_client.ApiClient, *, request_timeout_s: float = 10.0) -> None:
        self._api = api
        self._timeout = request_timeout_s
        self._local = threading.local()  # one SubjectAccessReview connection per thread

    def _call(
        self,
        method: str,
        path: str,
        *,
        query: Sequence[tuple[str, str]] = (),
        body: Any = None,
        content_type: str = "application/json",
        timeout: float | tuple[float, float] | None = None,
        stream: bool = False,
    ) -> Any:
        headers = dict(_JSON, **{"Content-Type": content_type})
        request = self._api.param_serialize(
            method, path, query_params=list(query), header_params=headers, body=body, auth_settings=_AUTH
        )
        try:
            response = self._api.call_api(*request, _request_timeout=timeout or self._timeout)
        except k8s_exceptions.ApiException as e:
            raise _translate(int(e.status or 0), e.body if isinstance(e.body, bytes) else None) from e
        if not 200 <= response.status <= 299:
            raise _translate(response.status, response.read())  # type: ignore[no-untyped-call]
        if stream:
            return response.response
        return json.loads(response.read() or b"{}")  # type: ignore[no-untyped-call]

    # reads -----------------------------------------------------------------------------------------------------
    def get(self, path: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", path)
        return result

    def list_pages(self, path: str, limit: int) -> Iterator[tuple[list[dict[str, Any]], str]]:
        """A collection in pages of `limit` items (one consistent snapshot), each with the list's resourceVersion.

        Pages keep the memory peak of a re-list of 100,000 objects at one page, not the whole collection.
        """
        token = ""
        while True:
            query = [("limit", str(limit))] + ([("continue", token)] if token else [])
            doc = self._call("GET", path, query=query)
            meta = doc.get("metadata") or {}
            yield list(doc.get("items") or []), str(meta.get("resourceVersion", ""))
            token = str(meta.get("continue") or "")
            if not token:
                return

    def watch(self, path: str, resource_version: str, timeout_s: int) -> Iterator[WatchEvent]:
        """Events after resource_version until the server ends the watch; raise Expired on 410 Gone."""
        query = [
            ("watch", "true"),
            ("resourceVersion", resource_version),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", str(timeout_s)),
        ]
        resp = self._call("GET", path, query=query, timeout=(10.0, timeout_s + 30.0), stream=True)
        try:
            for line in k8s_watch.iter_resp_lines(resp):  # type: ignore[no-untyped-call]
                if not line:
                    continue
                event = json.loads(line)
                obj = event.get("object") or {}
                if event.get("type") == "ERROR":
                    raise _translate(int(obj.get("code", 500)), json.dumps(obj).encode())
                yield WatchEvent(type=str(event.get("type", "")), object=obj)
        finally:
            resp.release_conn()

    # writes ----------------------------------------------------------------------------------------------------
    def create(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", path, body=dict(body))
        return result

    def replace(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """PUT; the body's metadata.resourceVersion makes it conditional (Conflict when stale)."""
        result: dict[str, Any] = self._call("PUT", path, body=dict(body))
        return result

    def delete(self, path: str) -> None:
        """DELETE (background propagation); NotFound when it is already gone."""
        self._call("DELETE", path, body={"propagationPolicy": "Background"})

    def list_all(self, path: str, limit: int = 500) -> list[dict[str, Any]]:
        """Every item of a collection (the controller's level-based passes; admissions never list)."""
        return [item for items, _ in self.list_pages(path, limit) for item in items]

    def json_patch(self, path: str, ops: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = self._call(
            "PATCH", path, body=[dict(op) for op in ops], content_type="application/json-patch+json"
        )
        return result

    # SubjectAccessReview (webhook.access.SARClient) -----------------------------------------------------------
    def review_access(self, body: Mapping[str, Any]) -> bool:
        """POST a SubjectAccessReview: the one API call on the hot path of admissions.

        A keep-alive connection per thread, set up from the client's own configuration (CA, client certificate,
        token with its refresh hook): the generated client layers cost more CPU than the request itself (measured
        0.6 ms per review through them, 0.35 ms through urllib3, 0.12 ms like this). With a proxy configured the
        client's pool is used instead.
        """
        data = json.dumps(body).encode()
        cfg = self._api.configuration
        headers = dict(_JSON)
        # auth_settings() runs the refresh hook (rotated in-cluster tokens); the key's name differs between client
        # versions ("authorization" before, "BearerToken" now), the header it describes does not.
        bearer = cfg.auth_settings().get("BearerToken") or {}
        if bearer.get("value"):
            headers[bearer.get("key") or "authorization"] = bearer["value"]
        if cfg.proxy:
            return self._review_via_pool(data, headers)
        for attempt in (1, 2):
            conn = self._sar_connection()
            try:
                conn.request("POST", _SAR_PATH, body=data, headers=headers)
                response = conn.getresponse()
                payload = response.read()
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                self._local.conn = None
                if attempt == 2:
                    raise KubeError(0, f"SubjectAccessReview failed: {e}") from e
                continue  # a kept-alive connection the server closed meanwhile: once more on a fresh one
            if not 200 <= response.status <= 299:
                raise _translate(response.status, payload)
            return _allowed(payload)
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Close this thread's SubjectAccessReview connection and the client's pool."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
        self._api.close()  # type: ignore[no-untyped-call]

    def _sar_connection(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            cfg = self._api.configuration
            url = urllib.parse.urlsplit(cfg.host)
            if url.scheme == "https":
                ctx = ssl.create_default_context(cafile=cfg.ssl_ca_cert or None)
                if cfg.cert_file:
                    ctx.load_cert_chain(cfg.cert_file, cfg.key_file or None)
                if not cfg.verify_ssl:
                    ctx.check_hostname = False
                    ctx.verify_mode = ssl.CERT_NONE
                elif cfg.assert_hostname is False:
                    ctx.check_hostname = False
                conn = _HTTPSConnection(
                    url.hostname or "", url.port or 443, context=ctx, timeout=self._timeout,
                    server_hostname=cfg.tls_server_name or None,
                )  # fmt: skip
            else:
                conn = http.client.HTTPConnection(url.hostname or "", url.port or 80, timeout=self._timeout)
            self._local.conn = conn
        return conn

    def _review_via_pool(self, data: bytes, headers: Mapping[str, str]) -> bool:
        cfg = self._api.configuration
        try:
            response = self._api.rest_client.pool_manager.request(
                "POST", cfg.host + _SAR_PATH, body=data, headers=dict(headers), timeout=self._timeout
            )
        except urllib3.exceptions.HTTPError as e:
            raise KubeError(0, f"SubjectAccessReview failed: {e}") from e
        if not 200 <= response.status <= 299:
            raise _translate(response.status, response.data)
        return _allowed(response.data)


def _allowed(payload: bytes) -> bool:
    doc = json.loads(payload)
    return bool((doc.get("status") or {}).get("allowed", False))


class _HTTPSConnection(http.client.HTTPSConnection):
    """HTTPS with an SNI/verification name other than the host connected to (kubeconfig tls-server-name)."""

    def __init__(self, host: str, port: int, *, server_hostname: str | None, **kwargs: Any) -> None:
        super().__init__(host, port, **kwargs)
        self._server_hostname = server_hostname

    def connect(self) -> None:
        if self._server_hostname is None:
            super().connect()
            return
        http.client.HTTPConnection.connect(self)
        self.sock = self._context.wrap_socket(self.sock, server_hostname=self._server_hostname)  # type: ignore[attr-defined]
