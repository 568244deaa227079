"""Watches of the KubeVirt kinds that name host devices (part 2) and of the DRA kinds the ResourceClaim rules read,
feeding the same ClusterIndex as the claims.

These kinds are namespaced, and the reflectors of webhook.cache key objects by metadata.name alone; `KeyedLister`
renames each object to `<namespace>/<name>` on the way in (policy.hostdevices.Workload understands that form), so
a DELETED event and a re-list remove exactly the object they mean. A kind whose CRD is not installed (KubeVirt not
deployed yet, or an optional API such as pools), or that the webhook may not list, counts as listed and empty and is
looked for again later, so the webhook's readiness never waits on a KubeVirt API that does not exist.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import apiclient
from policy import copies, hostdevices, snapshot
from webhook import cache
from webhook import metrics as metrics_mod

log = logging.getLogger(__name__)

WATCHED: tuple[cache.WatchedKind, ...] = (
    cache.WatchedKind(hostdevices.VM, "/apis/kubevirt.io/v1/virtualmachines"),
    cache.WatchedKind(hostdevices.VMI, "/apis/kubevirt.io/v1/virtualmachineinstances"),
    cache.WatchedKind(hostdevices.REPLICA_SET, "/apis/kubevirt.io/v1/virtualmachineinstancereplicasets"),
    cache.WatchedKind(hostdevices.POOL, "/apis/pool.kubevirt.io/v1alpha1/virtualmachinepools"),
    cache.WatchedKind(hostdevices.INSTANCETYPE, "/apis/instancetype.kubevirt.io/v1beta1/virtualmachineinstancetypes"),
    cache.WatchedKind(
        hostdevices.CLUSTER_INSTANCETYPE, "/apis/instancetype.kubevirt.io/v1beta1/virtualmachineclusterinstancetypes"
    ),
    # part 3: what makes virt-controller write a VM for someone (restores, clones, and the snapshots between)
    cache.WatchedKind(
        hostdevices.SNAPSHOT_CONTENT, "/apis/snapshot.kubevirt.io/v1beta1/virtualmachinesnapshotcontents"
    ),
    cache.WatchedKind(copies.SNAPSHOT, "/apis/snapshot.kubevirt.io/v1beta1/virtualmachinesnapshots"),
    cache.WatchedKind(copies.RESTORE, "/apis/snapshot.kubevirt.io/v1beta1/virtualmachinerestores"),
    cache.WatchedKind(copies.CLONE, "/apis/clone.kubevirt.io/v1beta1/virtualmachineclones"),
    # DRA (policy.dra): what decides whether a ResourceClaim may reach our drivers, and the templates whose records
    # the claims the resource claim controller makes must carry (absent before Kubernetes 1.34: listed as empty)
    cache.WatchedKind("DeviceClass", "/apis/resource.k8s.io/v1/deviceclasses"),
    cache.WatchedKind("ResourceClaimTemplate", "/apis/resource.k8s.io/v1/resourceclaimtemplates"),
)


def keyed(obj: dict[str, Any]) -> dict[str, Any]:
    """obj with metadata.name `<namespace>/<name>` (a shallow copy; the slim view is made from it right away)."""
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        return obj
    name, namespace = meta.get("name"), meta.get("namespace") or ""
    if not isinstance(name, str) or not isinstance(namespace, str):
        return obj
    return {**obj, "metadata": {**meta, "name": f"{namespace}/{name}"}}


class KeyedLister:
    """A cache.Lister over another one: namespaced keys, and a missing API is an empty collection."""

    def __init__(self, inner: cache.Lister, *, absent_retry_s: float, stop: threading.Event) -> None:
        self._inner = inner
        self._retry = absent_retry_s
        self._stop = stop
        self._absent: set[str] = set()

    def list_pages(self, path: str, limit: int) -> Iterator[tuple[list[dict[str, Any]], str]]:
        try:
            for items, rv in self._inner.list_pages(path, limit):
                self._absent.discard(path)
                yield [keyed(o) for o in items], rv
        except apiclient.KubeError as e:
            if e.status not in (403, 404):
                raise
            # 404: KubeVirt (or this optional API) is not installed; 403: the webhook's RBAC lacks it (the chart
            # grants it): a warning, and the rules see none of these objects until a later list succeeds
            if path not in self._absent:
                level = logging.INFO if e.status == 404 else logging.WARNING
                log.log(
                    level, "cannot list; treating the collection as empty", extra={"path": path, "status": e.status}
                )
            self._absent.add(path)
            yield [], ""

    def watch(self, path: str, resource_version: str, timeout_s: int) -> Iterator[apiclient.WatchEvent]:
        if path in self._absent:
            # wait, then make the reflector list again (it re-lists on Expired): the CRD may have appeared
            self._stop.wait(min(self._retry, timeout_s))
            raise apiclient.Expired("API not installed", status=410)
        for event in self._inner.watch(path, resource_version, timeout_s):
            yield apiclient.WatchEvent(event.type, keyed(dict(event.object)))


class Sources:
    """Several view sources as one (the claims' watches and these): ready when all are."""

    def __init__(self, *sources: Any) -> None:
        self._sources = sources

    def start(self) -> None:
        for s in self._sources:
            s.start()

    def ready(self) -> bool:
        return all(s.ready() for s in self._sources)

    def stop(self) -> None:
        for s in self._sources:
            s.stop()


class WorkloadSource:
    """The reflectors of the KubeVirt kinds over `index` (a view source like cache.WatchSource)."""

    def __init__(
        self,
        lister_factory: Callable[[], cache.Lister],
        index: snapshot.ClusterIndex,
        *,
        metrics: metrics_mod.Metrics,
        watch_timeout_s: int,
        backoff_s: float,
        absent_retry_s: float = 60.0,
    ) -> None:
        self._stop = threading.Event()

        def factory() -> cache.Lister:
            return KeyedLister(lister_factory(), absent_retry_s=absent_retry_s, stop=self._stop)

        self.watches = cache.WatchSource(
            factory, index, metrics=metrics, watch_timeout_s=watch_timeout_s, backoff_s=backoff_s, kinds=WATCHED
        )

    def start(self) -> None:
        self.watches.start()

    def ready(self) -> bool:
        return self.watches.ready()

    def stop(self) -> None:
        self._stop.set()
        self.watches.stop()
