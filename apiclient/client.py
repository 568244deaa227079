"""The real client: JSON over one urllib3 pool (the transport the `kubernetes` package itself uses), on paths.

No generated models: objects stay JSON dicts, and `metadata.managedFields` (often half an object, read by no caller)
is dropped on arrival. Lists are read in pages (one consistent snapshot; a re-list of 100,000 objects never holds
more than a page of raw JSON); watches stream and end with `Expired` on 410 Gone; writes report conflicts as
`Conflict`. SubjectAccessReviews, the one call on the hot path of admissions, go over a kept-alive connection per
thread (http.client): 0.12 ms a review, against 0.35 ms through the pool and 0.6 ms through the generated client.
"""

from __future__ import annotations

import http.client
import json
import threading
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import urllib3

from apiclient import config, kinds
from apiclient.api import Obj, ObjectList, Resource, WatchEvent
from apiclient.errors import KubeError, from_status

Query = list[tuple[str, str]]


def _slim(obj: Any) -> Obj:
    if isinstance(obj, dict):
        meta = obj.get("metadata")
        if isinstance(meta, dict):
            meta.pop("managedFields", None)
    return obj  # type: ignore[no-any-return]


class Client:
    """`apiclient.api.KubeApi` and the rest of what the processes ask of the API server."""

    def __init__(
        self,
        endpoint: config.Endpoint,
        *,
        request_timeout_s: float = 10.0,
        pool_size: int = 10,
        page: int = 250,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self._endpoint = endpoint
        self._page = page
        self._timeout = request_timeout_s
        self._headers = dict(headers or {})  # e.g. Impersonate-User
        pool_kw: dict[str, Any] = {"server_hostname": endpoint.server_name} if endpoint.server_name else {}
        self._pool = urllib3.PoolManager(
            num_pools=2, maxsize=pool_size, ssl_context=endpoint.context, retries=False, **pool_kw
        )
        self._local = threading.local()  # one SubjectAccessReview connection per thread

    @classmethod
    def connect(
        cls, kubeconfig: Path | None, *, request_timeout_s: float = 10.0, headers: Mapping[str, str] | None = None
    ) -> Client:
        """From a kubeconfig file, or the pod's service account when kubeconfig is None."""
        endpoint = config.from_kubeconfig(kubeconfig) if kubeconfig is not None else config.in_cluster()
        return cls(endpoint, request_timeout_s=request_timeout_s, headers=headers)

    def _request_headers(self, content_type: str) -> dict[str, str]:
        headers = {"Accept": "application/json", "Content-Type": content_type, **self._headers}
        token = self._endpoint.bearer()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    def _call(
        self,
        method: str,
        path: str,
        *,
        query: Query | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: urllib3.Timeout | None = None,
        stream: bool = False,
    ) -> Any:
        url = self._endpoint.server + path + (f"?{urlencode(query)}" if query else "")
        try:
            resp = self._pool.request(
                method,
                url,
                body=json.dumps(body).encode() if body is not None else None,
                headers=self._request_headers(content_type),
                timeout=timeout or urllib3.Timeout(connect=5.0, read=self._timeout),
                preload_content=not stream,
            )
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise KubeError(f"API server unreachable: {e}") from e
        if not 200 <= resp.status <= 299:
            raw = resp.read() if stream else resp.data
            if stream:
                resp.release_conn()
            raise from_status(resp.status, raw)
        if stream:
            return resp
        return json.loads(resp.data or b"{}")

    # reads ----------------------------------------------------------------------------------------------------

    def list_pages(
        self,
        collection: Resource | str,
        limit: int | None = None,
        *,
        label_selector: str | None = None,
        namespace: str | None = None,
    ) -> Iterator[tuple[list[Obj], str]]:
        """A collection in pages of `limit` items (one consistent snapshot), each with the list's resourceVersion.

        `collection` is a Resource, or the path of a cluster-wide collection (the webhook's reflectors name theirs
        by path).
        """
        path = collection if isinstance(collection, str) else collection.path(None, namespace)
        token = ""
        while True:
            query = [("limit", str(limit or self._page))]
            if label_selector:
                query.append(("labelSelector", label_selector))
            if token:
                query.append(("continue", token))
            doc = self._call("GET", path, query=query)
            meta = doc.get("metadata") or {}
            yield [_slim(o) for o in doc.get("items") or []], str(meta.get("resourceVersion", ""))
            token = str(meta.get("continue") or "")
            if not token:
                return

    def list(self, res: Resource, *, label_selector: str | None = None, namespace: str | None = None) -> ObjectList:
        """The whole collection, read in pages."""
        items: list[Obj] = []
        rv = ""
        for page, page_rv in self.list_pages(res, label_selector=label_selector, namespace=namespace):
            items.extend(page)
            rv = rv or page_rv
        return ObjectList(items, rv)

    def get(self, res: Resource, name: str, *, namespace: str | None = None) -> Obj:
        return _slim(self._call("GET", res.path(name, namespace)))

    def watch(
        self,
        collection: Resource | str,
        resource_version: str = "",
        timeout_s: int = 300,
        *,
        label_selector: str | None = None,
        stop: threading.Event | None = None,
    ) -> Iterator[WatchEvent]:
        """Events after resource_version until the server ends the watch; raise Expired on 410 Gone.

        `collection` is a Resource (watched cluster-wide) or the path of a cluster-wide collection.
        """
        path = collection if isinstance(collection, str) else collection.path()
        query = [("watch", "true"), ("allowWatchBookmarks", "true"), ("timeoutSeconds", str(timeout_s))]
        if resource_version:
            query.append(("resourceVersion", resource_version))
        if label_selector:
            query.append(("labelSelector", label_selector))
        timeout = urllib3.Timeout(connect=5.0, read=timeout_s + 30.0)
        resp = self._call("GET", path, query=query, timeout=timeout, stream=True)
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
                        raise from_status(int(obj.get("code", 500)), json.dumps(obj).encode())
                    yield WatchEvent(type=str(event.get("type", "")), object=_slim(obj))
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise KubeError(f"watch of {path} broke: {e}") from e
        finally:
            resp.release_conn()

    # writes ---------------------------------------------------------------------------------------------------

    def create(self, res: Resource, body: Mapping[str, Any], *, namespace: str | None = None) -> Obj:
        """POST; Conflict when the name is taken (create-if-absent)."""
        return _slim(self._call("POST", res.path(None, namespace), body=dict(body)))

    def replace(self, res: Resource, name: str, body: Mapping[str, Any], *, namespace: str | None = None) -> Obj:
        """PUT; the body's metadata.resourceVersion makes it conditional (Conflict when stale)."""
        return _slim(self._call("PUT", res.path(name, namespace), body=dict(body)))

    def patch(
        self,
        res: Resource,
        name: str,
        patch: Mapping[str, Any],
        *,
        namespace: str | None = None,
        subresource: str | None = None,
    ) -> Obj:
        """A JSON merge patch (RFC 7386); one carrying metadata.resourceVersion is conditional."""
        path = res.path(name, namespace, subresource)
        return _slim(self._call("PATCH", path, body=dict(patch), content_type="application/merge-patch+json"))

    def json_patch(
        self, res: Resource, name: str, ops: Sequence[Mapping[str, Any]], *, namespace: str | None = None
    ) -> Obj:
        """A JSON patch (RFC 6902); a `test` op on /metadata/resourceVersion makes it conditional."""
        body = [dict(op) for op in ops]
        path = res.path(name, namespace)
        return _slim(self._call("PATCH", path, body=body, content_type="application/json-patch+json"))

    def delete(self, res: Resource, name: str, *, namespace: str | None = None) -> None:
        """DELETE; NotFound when it is already gone."""
        self._call("DELETE", res.path(name, namespace))

    # SubjectAccessReview --------------------------------------------------------------------------------------

    def review_access(self, body: Mapping[str, Any]) -> bool:
        """POST a SubjectAccessReview and return status.allowed, over this thread's kept-alive connection."""
        data = json.dumps(body).encode()
        headers = self._request_headers("application/json")
        path = kinds.SUBJECTACCESSREVIEWS.path()
        for attempt in (1, 2):
            conn = self._sar_connection()
            try:
                conn.request("POST", path, body=data, headers=headers)
                response = conn.getresponse()
                payload = response.read()
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                self._local.conn = None
                if attempt == 2:
                    raise KubeError(f"SubjectAccessReview failed: {e}") from e
                continue  # a kept-alive connection the server closed meanwhile: once more on a fresh one
            if not 200 <= response.status <= 299:
                raise from_status(response.status, payload)
            return bool((json.loads(payload).get("status") or {}).get("allowed", False))
        raise AssertionError("unreachable")

    def _sar_connection(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            url = urllib.parse.urlsplit(self._endpoint.server)
            if url.scheme == "https":
                conn = _HTTPSConnection(
                    url.hostname or "", url.port or 443, context=self._endpoint.context, timeout=self._timeout,
                    server_hostname=self._endpoint.server_name,
                )  # fmt: skip
            else:
                conn = http.client.HTTPConnection(url.hostname or "", url.port or 80, timeout=self._timeout)
            self._local.conn = conn
        return conn

    def close(self) -> None:
        """Close this thread's SubjectAccessReview connection and the pool."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
        self._pool.clear()


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
