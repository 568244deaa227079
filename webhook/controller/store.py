"""The controller's watch-fed view: the reflectors of webhook.cache keep parsed facts of claims, PCI devices and
node names current, so a pass reads memory instead of listing 100,000 devices every few seconds."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

from policy import names
from policy.objects import MalformedObject, PCIDevice
from webhook import cache
from webhook import metrics as metrics_mod
from webhook.controller import plan

WATCHED: tuple[cache.WatchedKind, ...] = (
    cache.WatchedKind("PCIDeviceClaim", f"/apis/{names.API_VERSION}/pcideviceclaims"),
    cache.WatchedKind("USBDeviceClaim", f"/apis/{names.API_VERSION}/usbdeviceclaims"),
    cache.WatchedKind("PCIDevice", f"/apis/{names.API_VERSION}/pcidevices"),
    cache.WatchedKind("Node", "/api/v1/nodes"),
)


class Store:
    """A cache.Store of the facts the plans read; `snapshot()` copies them for one pass."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._claims: dict[tuple[str, str], plan.ClaimFacts] = {}
        self._devices: dict[str, PCIDevice] = {}
        self._nodes: set[str] = set()

    def upsert(self, kind: str, obj: Mapping[str, Any]) -> bool:
        name = (obj.get("metadata") or {}).get("name")
        try:
            if kind == "Node":
                with self._lock:
                    self._nodes.add(str(name))
            elif kind == "PCIDevice":
                device = PCIDevice.from_dict(obj)
                with self._lock:
                    self._devices[device.name] = device
            else:
                claim = plan.ClaimFacts.from_dict({**obj, "kind": kind})
                with self._lock:
                    self._claims[(kind, claim.name)] = claim
        except MalformedObject:
            self.delete(kind, str(name))
            return False
        return True

    def delete(self, kind: str, name: str) -> None:
        with self._lock:
            if kind == "Node":
                self._nodes.discard(name)
            elif kind == "PCIDevice":
                self._devices.pop(name, None)
            else:
                self._claims.pop((kind, name), None)

    def snapshot(self) -> tuple[list[plan.ClaimFacts], list[PCIDevice], set[str]]:
        with self._lock:
            return list(self._claims.values()), list(self._devices.values()), set(self._nodes)


class Watches:
    """One reflector thread per watched kind into `store`; `synced()` once each has listed."""

    def __init__(
        self,
        lister_factory: Callable[[], cache.Lister],
        store: Store,
        *,
        watch_timeout_s: int = 300,
        backoff_s: float = 2.0,
    ) -> None:
        self._stop = threading.Event()
        lister = lister_factory()
        metrics = metrics_mod.Metrics()
        self.reflectors = [
            cache.Reflector(w, lister, store, metrics=metrics, watch_timeout_s=watch_timeout_s, backoff_s=backoff_s,
                            stop=self._stop)
            for w in WATCHED
        ]  # fmt: skip

    def start(self) -> None:
        for r in self.reflectors:
            threading.Thread(target=r.run, name=f"controller-{r.watched.kind}", daemon=True).start()

    def synced(self) -> bool:
        return all(r.synced.is_set() for r in self.reflectors)

    def stop(self) -> None:
        self._stop.set()
