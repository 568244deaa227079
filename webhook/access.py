"""policy.access.Access answered by SubjectAccessReview, behind a short TTL cache.

Each admission of a claim asks one or two questions; the API server's authorizer is the only authority on RBAC
(ClusterRoles with custom verbs and resourceNames, RoleBindings of Rancher projects), so we ask it rather than
re-implement RBAC, and cache answers for a few seconds so bursts (the UI's "enable group") cost one round trip.
A user allowed a verb on a whole resource needs one answer for all its objects (`broad_first`).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

from policy import review
from webhook import metrics as metrics_mod

SAR_API_VERSION = "authorization.k8s.io/v1"


class SARClient(Protocol):
    def review_access(self, body: Mapping[str, Any]) -> bool:
        """Create a SubjectAccessReview and return status.allowed (raise on transport or API errors)."""
        ...


def build_review(
    user: review.UserInfo, *, verb: str, group: str, resource: str, name: str, namespace: str, subresource: str
) -> dict[str, Any]:
    """The SubjectAccessReview for a question, carrying user, uid, groups and extra (bound-token node names)."""
    attributes = {"verb": verb, "group": group, "resource": resource}
    for key, value in (("name", name), ("namespace", namespace), ("subresource", subresource)):
        if value:
            attributes[key] = value
    spec: dict[str, Any] = {"user": user.username, "resourceAttributes": attributes}
    if user.uid:
        spec["uid"] = user.uid
    if user.groups:
        spec["groups"] = list(user.groups)
    if user.extra:
        spec["extra"] = {k: list(v) for k, v in user.extra.items()}
    return {"apiVersion": SAR_API_VERSION, "kind": "SubjectAccessReview", "spec": spec}


_local = threading.local()


class WouldWait(Exception):
    """An answer that is not cached was asked for while waiting is not allowed (see without_waiting)."""


@contextlib.contextmanager
def without_waiting() -> Iterator[None]:
    """In this thread, for the block: a question whose answer is not cached raises WouldWait instead of asking the
    API server (the caller is an event loop that must not block; it asks again from a thread)."""
    _local.no_wait = True
    try:
        yield
    finally:
        _local.no_wait = False


class CachedAccess:
    """Thread-safe (gthread workers); an LRU bounded to max_entries; answers expire after ttl_s."""

    def __init__(
        self,
        client: SARClient,
        *,
        ttl_s: float,
        max_entries: int,
        metrics: metrics_mod.Metrics,
        clock: Callable[[], float] = time.monotonic,
        broad_first: bool = False,
    ) -> None:
        self._client = client
        self._broad_first = broad_first
        self._ttl = ttl_s
        self._max = max_entries
        self._metrics = metrics
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[object, ...], tuple[float, bool]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def allowed(
        self,
        user: review.UserInfo,
        *,
        verb: str,
        group: str,
        resource: str,
        name: str = "",
        namespace: str = "",
        subresource: str = "",
    ) -> bool:
        """With broad_first, a question about one object is first asked about all objects of its resource (in the
        same namespace): RBAC grants that hold for every name (no resourceNames) answer "yes" to it, so one cached
        answer per user and verb covers every device. A "no" there says nothing about this object, which is then
        asked about by name. Authorizers that answer an unnamed request more generously than a named one must not
        be used with broad_first."""
        if name and self._broad_first and self._ask(user, verb, group, resource, "", namespace, subresource):
            return True
        return self._ask(user, verb, group, resource, name, namespace, subresource)

    def _ask(
        self, user: review.UserInfo, verb: str, group: str, resource: str, name: str, namespace: str, subresource: str
    ) -> bool:
        key = (user.key(), verb, group, resource, name, namespace, subresource)
        now = self._clock()
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry[0] > now:
                self._entries.move_to_end(key)
                self.hits += 1
                self._metrics.sar_cache.labels("hit").inc()
                return entry[1]
            if getattr(_local, "no_wait", False):
                raise WouldWait
            self.misses += 1
        self._metrics.sar_cache.labels("miss").inc()
        body = build_review(
            user, verb=verb, group=group, resource=resource, name=name, namespace=namespace, subresource=subresource
        )
        try:
            answer = self._client.review_access(body)
        except Exception:
            self._metrics.sar_errors.inc()
            raise
        with self._lock:
            self._entries[key] = (now + self._ttl, answer)
            self._entries.move_to_end(key)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)
        return answer
