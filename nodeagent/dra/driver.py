"""One DRA driver on this node: the devices the last pass published, and the kubelet's prepare/unprepare calls.

`publish()` comes from the reconcile pass (the same devices it wrote into the ResourceSlices); `prepare()` and
`unprepare()` come from the gRPC servicer (nodeagent.deviceplugin.draplugin), one call per kubelet request, claims
judged one by one: the claim is read from the API server, the last gate decides (nodeagent.dra.prepare), the
requester's `use` on every device is asked (SubjectAccessReview, in the claim's namespace), and the CDI spec is
written. `holders()` tells the pass which devices prepared claims hold (status.allocatedTo, and the release's in-use
check: a device is not given back to its driver while a claim holds it).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nodeagent.dra import cdi, prepare
from nodeagent.dra.model import PublishedDevice
from policy.records import Requester

log = logging.getLogger(__name__)

GetClaim = Callable[[str, str], Mapping[str, Any] | None]
"""(namespace, name) -> the ResourceClaim, None when it does not exist."""
MayUse = Callable[[Requester, PublishedDevice, str], bool]
"""(requester, device, namespace) -> whether the requester may use the device there."""
Unusable = Callable[[PublishedDevice], str | None]
"""device -> why it cannot be handed out now (not on vfio-pci, no /dev/vfio/<group>, ...), None when it can."""


@dataclass(frozen=True)
class ClaimRef:
    namespace: str
    uid: str
    name: str


@dataclass(frozen=True)
class PreparedDevice:
    request_names: tuple[str, ...]
    pool: str
    device: str
    cdi_ids: tuple[str, ...]


@dataclass(frozen=True)
class PrepareResult:
    devices: tuple[PreparedDevice, ...] = ()
    error: str = ""


class DraDriver:
    def __init__(
        self,
        driver: str,
        node: str,
        store: cdi.CdiStore,
        *,
        get_claim: GetClaim,
        may_use: MayUse,
        iommufd: Callable[[], bool] = lambda: False,
        unusable: Unusable = lambda device: None,
    ) -> None:
        self.driver = driver
        self.node = node
        self._store = store
        self._get_claim = get_claim
        self._may_use = may_use
        self._iommufd = iommufd
        self._unusable = unusable
        self._lock = threading.Lock()
        self._published: dict[str, PublishedDevice] = {}
        self.on_change: Callable[[], None] = lambda: None
        """Called after a claim was prepared or unprepared (the agent's next pass writes allocatedTo, or releases)."""
        self.prepared_count = 0
        self.refused_count = 0

    def publish(self, devices: Sequence[PublishedDevice]) -> None:
        with self._lock:
            self._published = {d.name: d for d in devices if d.driver == self.driver}

    def published(self) -> dict[str, PublishedDevice]:
        with self._lock:
            return dict(self._published)

    # -- the kubelet's calls --------------------------------------------------------------------------------------

    def prepare(self, claims: Sequence[ClaimRef]) -> dict[str, PrepareResult]:
        return {c.uid: self._prepare_one(c) for c in claims}

    def _prepare_one(self, ref: ClaimRef) -> PrepareResult:
        shown = f"{ref.namespace}/{ref.name}"
        try:
            claim = self._get_claim(ref.namespace, ref.name)
        except Exception as e:  # the API server is unreachable: the kubelet asks again
            log.warning("claim could not be read", extra={"claim": shown, "error": str(e)})
            return PrepareResult(error=f"claim {shown} could not be read: {e}")
        if claim is None:
            return PrepareResult(error=f"claim {shown} does not exist")
        decided = prepare.plan_prepare(
            claim, uid=ref.uid, driver=self.driver, node=self.node, published=self.published()
        )
        if isinstance(decided, prepare.Refusal):
            return self._refuse(shown, decided.message)
        for device, _ in decided.devices:
            why = self._unusable(device)
            if why is not None:
                return self._refuse(shown, prepare.UNUSABLE.format(claim=shown, device=device.object_name, why=why))
            if not self._may_use(decided.requester, device, ref.namespace):
                resource = "pcidevices" if device.address else "usbdevices"
                return self._refuse(
                    shown,
                    prepare.NO_USE.format(
                        claim=shown,
                        user=decided.requester.username,
                        resource=resource,
                        device=device.object_name,
                        namespace=ref.namespace,
                    ),
                )
        spec = cdi.build_spec(
            self.driver,
            ref.uid,
            shown,
            [d for d, _ in decided.devices],
            iommufd=self._iommufd(),
            pods=decided.pods,
        )
        if self._store.write(self.driver, ref.uid, spec):
            self.prepared_count += 1
            log.info("claim prepared", extra={"claim": shown, "devices": [d.object_name for d, _ in decided.devices]})
            self.on_change()
        return PrepareResult(
            tuple(
                PreparedDevice(requests, self.node, d.name, (cdi.device_id(self.driver, ref.uid, d.name),))
                for d, requests in decided.devices
            )
        )

    def _refuse(self, claim: str, message: str) -> PrepareResult:
        self.refused_count += 1
        log.warning("claim not prepared", extra={"claim": claim, "reason": message})
        return PrepareResult(error=message)

    def unprepare(self, claims: Sequence[ClaimRef]) -> dict[str, str]:
        out = {}
        for c in claims:
            try:
                if self._store.remove(self.driver, c.uid):
                    log.info("claim unprepared", extra={"claim": f"{c.namespace}/{c.name}"})
                    self.on_change()
                out[c.uid] = ""
            except OSError as e:
                out[c.uid] = f"CDI spec of claim {c.namespace}/{c.name} could not be removed: {e.strerror}"
        return out

    # -- for the pass ---------------------------------------------------------------------------------------------

    def prepared_claims(self) -> dict[str, cdi.PreparedClaim]:
        """The claims this driver holds prepared, by uid (from the CDI specs on disk)."""
        return self._store.prepared(self.driver)

    def holders(self) -> dict[str, list[cdi.PreparedClaim]]:
        """Device object name -> the prepared claims holding it."""
        out: dict[str, list[cdi.PreparedClaim]] = {}
        for p in self._store.prepared(self.driver).values():
            for name in p.devices:
                out.setdefault(name, []).append(p)
        return out
