"""USBDeviceClaims of devices on this node: finalizer, prompt `status.nodeName`/`pciAddress`, the device node owned
by QEMU's uid, the offering gate (condition `Offered`), then `enabled` on the USBDevice (written here on the first
offer, by the device reconciler afterwards); release on delete."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import apiclient
from nodeagent.deviceplugin import model
from nodeagent.errors import SysfsError
from nodeagent.events import EventRecorder
from nodeagent.reconcile import plan

log = logging.getLogger(__name__)

Obj = dict[str, Any]
READY = "Ready"
OBSERVE_ONLY = "ObserveOnly"
DRA_REASON = "DynamicResourceAllocation"
PERMITTED = "Permitted"
OwnerSetter = Callable[[model.UsbDevice], bool]
Offer = Callable[[Obj, str], plan.Condition]
"""(claim, resource name) -> condition Offered: the offering gate, asked once the device node is ready."""
Audit = Callable[[Obj, str, str], plan.Condition | None]
"""(claim, resource name, device id) -> condition Allocation (None: nothing holds the device)."""


@dataclass(frozen=True)
class USBClaimResult:
    name: str
    enabled: bool
    resource_name: str = ""
    device: model.UsbDevice | None = None
    vendor: str = ""
    product: str = ""
    held: bool = False  # the offering gate holds its name back
    dra: bool = False  # offered through Dynamic Resource Allocation (spec.offer: DRA), never through a device plugin


class USBClaimReconciler:
    def __init__(
        self,
        api: apiclient.KubeApi,
        events: EventRecorder,
        *,
        node: str,
        now: Callable[[], str],
        set_owner: OwnerSetter,
    ) -> None:
        self._api = api
        self._events = events
        self._node = node
        self._now = now
        self._set_owner = set_owner

    def _write_status(self, claim: Obj, desired: Obj) -> Obj:
        st = claim.get("status") or {}
        patch = {k: v for k, v in desired.items() if st.get(k) != v}
        if not patch:
            return claim
        return self._api.patch(
            apiclient.USBDEVICECLAIMS, claim["metadata"]["name"], {"status": patch}, subresource="status"
        )

    def _finalizer(self, claim: Obj, present: bool) -> Obj | None:
        meta = claim["metadata"]
        fins = plan.finalizers_with(meta, present)
        if fins is None:
            return claim
        try:
            return self._api.patch(
                apiclient.USBDEVICECLAIMS,
                meta["name"],
                {"metadata": {"finalizers": fins, "resourceVersion": meta.get("resourceVersion")}},
            )
        except apiclient.NotFound:
            return None

    def _observe(self, claim: Obj, device: Obj) -> None:
        """Observe mode: the device node is never chowned and nothing is offered; the claim says why (Ready=False,
        reason ObserveOnly, one Event) and, being deleted, loses our finalizer (there is nothing to undo)."""
        if claim["metadata"].get("deletionTimestamp"):
            if plan.FINALIZER in (claim["metadata"].get("finalizers") or []):
                self._finalizer(claim, False)
            return
        dst = device.get("status") or {}
        claim = self._write_status(claim, {"nodeName": self._node, "pciAddress": str(dst.get("pciAddress", ""))})
        st = claim.get("status") or {}
        before = plan.condition(st, READY)
        message = (
            f"node {self._node} is in observe mode: its agent offers no device (chart value agent.observeOnly or "
            "node label devices.harvesterhci.io/observe-only=true)"
        )
        wanted = [plan.Condition(READY, False, OBSERVE_ONLY, message)]
        self._write_status(claim, {"conditions": plan.set_conditions(st.get("conditions") or [], wanted, self._now())})
        if before is None or before.get("reason") != OBSERVE_ONLY:
            self._events.record(claim, "Warning", OBSERVE_ONLY, message)

    def reconcile(
        self,
        claim: Obj,
        device: Obj,
        *,
        permit: plan.Condition | None,
        allocated_to: Callable[[str, str], list[Any]],
        observe_only: bool = False,
        offer: Offer | None = None,
        audit: Audit | None = None,
        dra_offer: str = "",
    ) -> USBClaimResult:
        name = claim["metadata"]["name"]
        if observe_only:
            self._observe(claim, device)
            return USBClaimResult(name, False)
        if claim["metadata"].get("deletionTimestamp"):
            if plan.FINALIZER in (claim["metadata"].get("finalizers") or []):
                self._finalizer(claim, False)
                self._events.record(claim, "Normal", "Released", f"USB device {name} released")
            return USBClaimResult(name, False)
        got = self._finalizer(claim, True)
        if got is None:
            return USBClaimResult(name, False)
        claim = got
        st = claim.get("status") or {}
        dst = device.get("status") or {}
        # The UI waits for nodeName: write it (and the controller address) before anything that can fail.
        claim = self._write_status(claim, {"nodeName": self._node, "pciAddress": str(dst.get("pciAddress", ""))})
        st = claim.get("status") or {}
        if dst.get("absent") or dst.get("status") == plan.ORPHANED:
            self._write_status(
                claim,
                {
                    "conditions": plan.set_conditions(
                        st.get("conditions") or [],
                        [plan.Condition(READY, False, "DeviceAbsent", f"USB device {name} is disconnected")],
                        self._now(),
                    )
                },
            )
            return USBClaimResult(name, False)
        bus, devnum = dst.get("busNum"), dst.get("devNum")
        if not isinstance(bus, int) or not isinstance(devnum, int):
            return USBClaimResult(name, False)
        udev = model.UsbDevice(bus, devnum)
        message = f"offered as {dst.get('resourceName', '')}"
        try:
            self._set_owner(udev)
        except SysfsError as e:
            message = str(e)
            wanted = [plan.Condition(READY, False, "DeviceNodeNotOwned", message)]
            conditions = plan.set_conditions(st.get("conditions") or [], wanted, self._now())
            self._write_status(claim, {"conditions": conditions})
            return USBClaimResult(name, False)
        resource = str(dst.get("resourceName", ""))
        vendor, product = str(dst.get("vendorID", "")), str(dst.get("productID", ""))
        if dra_offer:
            # DRA: no name is offered (the device stays not `enabled` for the device plugins), no gate, no permit
            wanted = [plan.Condition(READY, True, "Enabled", dra_offer),
                      plan.Condition(plan.OFFERED, True, DRA_REASON, dra_offer)]  # fmt: skip
            conditions = plan.drop_conditions(st.get("conditions") or [], frozenset({PERMITTED, plan.ALLOCATION}))
            if (plan.condition(st, READY) or {}).get("status") != "True":
                self._events.record(claim, "Normal", "Enabled", f"USB device {name}: {dra_offer}")
            self._write_status(
                claim,
                {
                    "conditions": plan.set_conditions(conditions, wanted, self._now()),
                    "allocatedTo": allocated_to(resource, udev.id),
                },
            )
            return USBClaimResult(name, True, resource, udev, vendor, product, dra=True)
        offer_cond = offer(claim, resource) if offer is not None else plan.offered(resource)
        if not offer_cond.status:
            self._hold(claim, offer_cond)
            return USBClaimResult(name, False, held=True)
        if dst.get("enabled") is not True:
            # The first offer: the device reconciler keeps `enabled` from the next pass on (the claim is Offered).
            self._api.patch(apiclient.USBDEVICES, name, {"status": {"enabled": True}}, subresource="status")
        wanted = [plan.Condition(READY, True, "Enabled", message), offer_cond]
        if permit is not None:
            wanted.append(permit)
        conditions = st.get("conditions") or []
        allocation = audit(claim, resource, udev.id) if audit is not None else None
        if allocation is not None:
            wanted.append(allocation)
        else:
            conditions = plan.drop_conditions(conditions, frozenset({plan.ALLOCATION}))
        if not plan.condition(st, READY) or plan.condition(st, READY).get("status") != "True":  # type: ignore[union-attr]
            self._events.record(claim, "Normal", "Enabled", f"USB device {name} {message}")
        self._write_status(
            claim,
            {
                "conditions": plan.set_conditions(conditions, wanted, self._now()),
                "allocatedTo": allocated_to(resource, udev.id),
            },
        )
        return USBClaimResult(name, True, resource, udev, str(dst.get("vendorID", "")), str(dst.get("productID", "")))

    def _hold(self, claim: Obj, held: plan.Condition) -> None:
        """The device node is ready but the name is not offered: Ready=False and Offered=False say why, once as a
        Warning Event (again only when the reason or the objects it names change)."""
        st = claim.get("status") or {}
        before = plan.condition(st, plan.OFFERED)
        wanted = [plan.Condition(READY, False, plan.USB_NOT_OFFERED, plan.USB_NOT_OFFERED_MESSAGE), held]
        self._write_status(claim, {"conditions": plan.set_conditions(st.get("conditions") or [], wanted, self._now())})
        if before is None or (before.get("status"), before.get("reason"), before.get("message")) != (
            "False",
            held.reason,
            held.message,
        ):
            log.warning("offer held back", extra={"claim": claim["metadata"]["name"], "reason": held.reason})
            self._events.record(claim, "Warning", held.reason, held.message)
