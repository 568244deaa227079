"""PCIDeviceClaims of this node around the vfio binder: finalizer, record, re-check, bind, status; release on delete.

Order matters for crash safety: the finalizer first (a claim deleted meanwhile cannot vanish with the device still
on vfio-pci), then the original driver into `status.kernelDriverToUnbind` (the binder's proof that it bound the
device), then the node-side re-check of A3-A5, the bind, the offering gate (condition `Offered`: a name offered for
the first time must not be waiting in anyone else's pod or VM), the device's effective resource name, and only then
`passthroughEnabled: true`. Every step re-reads what it needs, so a kill at any point converges on the next pass.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import apiclient
from nodeagent.deviceplugin import model
from nodeagent.errors import SysfsError
from nodeagent.events import EventRecorder
from nodeagent.host import groups
from nodeagent.host.binding import BindingRecord, Outcome, VfioBinder
from nodeagent.host.errors import BindError, NotOurs
from nodeagent.reconcile import plan
from nodeagent.sysfs.root import SysfsRoot
from policy import names

log = logging.getLogger(__name__)

Obj = dict[str, Any]
Offer = Callable[[Obj, str], plan.Condition]
"""(claim, resource name) -> condition Offered: the offering gate, asked only once the device is bound."""
Audit = Callable[[Obj, str, str], plan.Condition | None]
"""(claim, resource name, device id) -> condition Allocation (None: nothing holds the device)."""

BOUND = "Bound"
GROUP_COMPLETE = "GroupComplete"
IN_USE = "InUse"
UNBIND_PENDING = "UnbindPending"
PERMITTED = "Permitted"
OBSERVE_ONLY = "ObserveOnly"
DRA_REASON = "DynamicResourceAllocation"


@dataclass(frozen=True)
class ClaimResult:
    """What the rest of the pass needs from one claim: whether it is enabled, and under which resource name."""

    name: str
    enabled: bool
    resource_name: str = ""
    device: model.PciDevice | None = None
    selector: str = ""
    held: bool = False  # bound, but the offering gate holds its name back
    dra: bool = False  # offered through Dynamic Resource Allocation (spec.offer: DRA), never through a device plugin


def claim_owner(claim: Obj) -> str:
    meta = claim.get("metadata") or {}
    owner = (meta.get("annotations") or {}).get(names.ANNOTATION_REQUESTED_BY)
    return str(owner) if owner else f"legacy:{(claim.get('spec') or {}).get('userName', '')}"


def is_adopted(claim: Obj) -> bool:
    """A claim taken over from upstream keeps its pooled name (its VMs already use it)."""
    annotations = (claim.get("metadata") or {}).get("annotations") or {}
    return names.ANNOTATION_ADOPTED in annotations or claim_owner(claim).startswith(names.LEGACY_PREFIX)


class PCIClaimReconciler:
    def __init__(
        self,
        api: apiclient.KubeApi,
        binder: VfioBinder,
        root: SysfsRoot,
        events: EventRecorder,
        *,
        node: str,
        now: Callable[[], str],
    ) -> None:
        self._api = api
        self._binder = binder
        self._root = root
        self._events = events
        self._node = node
        self._now = now

    # -- status writes ------------------------------------------------------------------------------------------

    def _write_status(self, claim: Obj, desired: Mapping[str, Any]) -> Obj:
        st = claim.get("status") or {}
        patch = {k: v for k, v in desired.items() if st.get(k) != v}
        if not patch:
            return claim
        return self._api.patch(
            apiclient.PCIDEVICECLAIMS, claim["metadata"]["name"], {"status": patch}, subresource="status"
        )

    def _conditions(self, claim: Obj, wanted: Sequence[plan.Condition], drop: frozenset[str] = frozenset()) -> Obj:
        st = claim.get("status") or {}
        current = plan.drop_conditions(st.get("conditions") or [], drop)
        return self._write_status(claim, {"conditions": plan.set_conditions(current, wanted, self._now())})

    def _refuse(self, claim: Obj, reason: str, message: str) -> None:
        st = claim.get("status") or {}
        before = plan.condition(st, BOUND)
        conditions = plan.set_conditions(
            st.get("conditions") or [], [plan.Condition(BOUND, False, reason, message)], self._now()
        )
        desired: Obj = {"conditions": conditions}
        if st.get("passthroughEnabled"):
            desired["passthroughEnabled"] = False  # e.g. after a reboot, when the re-check no longer holds
        self._write_status(claim, desired)
        if before is None or before.get("reason") != reason or before.get("message") != message:
            log.warning("claim refused on the node", extra={"claim": claim["metadata"]["name"], "reason": reason})
            self._events.record(claim, "Warning", reason, message)

    def _set_finalizer(self, claim: Obj, present: bool) -> Obj | None:
        meta = claim["metadata"]
        fins = plan.finalizers_with(meta, present)
        if fins is None:
            return claim
        try:
            return self._api.patch(
                apiclient.PCIDEVICECLAIMS,
                meta["name"],
                {"metadata": {"finalizers": fins, "resourceVersion": meta.get("resourceVersion")}},
            )
        except apiclient.NotFound:
            return None

    # -- one claim ----------------------------------------------------------------------------------------------

    def reconcile(
        self,
        claim: Obj,
        device: Obj | None,
        *,
        peers: Callable[[str], Sequence[plan.GroupPeer]],
        resource_name: str,
        permit: plan.Condition | None,
        allocated_to: Callable[[str, str], list[Any]],
        observe_only: bool = False,
        offer: Offer | None = None,
        audit: Audit | None = None,
        dra_offer: str = "",
    ) -> ClaimResult:
        """`dra_offer`: the Offered message of a claim offered through DRA ("" for the device plugin): it gets no
        offering gate, no resource name on its device, no permit, and allocatedTo from its prepared ResourceClaims."""
        name = claim["metadata"]["name"]
        address = str((claim.get("spec") or {}).get("address", ""))
        if not names.is_pci_address(address):
            self._refuse(claim, "InvalidAddress", f"spec.address {address!r} is not a PCI address")
            return ClaimResult(name, False)
        if observe_only:
            self._observe(claim, device)
            return ClaimResult(name, False)
        if claim["metadata"].get("deletionTimestamp"):
            self._release(claim, address)
            return ClaimResult(name, False)
        if name != names.pcidevice_name(self._node, address):
            # The webhook's A1 keeps these out; the agent never binds a device under another device's name.
            self._refuse(
                claim,
                "NameMismatch",
                f"a claim for {address} on {self._node} must be named {names.pcidevice_name(self._node, address)}",
            )
            return ClaimResult(name, False)
        got = self._set_finalizer(claim, True)
        if got is None:
            return ClaimResult(name, False)
        claim = got
        st = claim.get("status") or {}

        if "kernelDriverToUnbind" not in st:
            if device is None or (device.get("status") or {}).get("absent"):
                self._refuse(claim, "DeviceAbsent", f"PCI device {address} is not present on node {self._node}")
                return ClaimResult(name, False)
            try:
                record = self._binder.record_for(address)
            except NotOurs as e:
                self._refuse(claim, "NotOurs", str(e))
                return ClaimResult(name, False)
            except BindError as e:
                self._refuse(claim, "DeviceAbsent", str(e))
                return ClaimResult(name, False)
            claim = self._write_status(claim, {"kernelDriverToUnbind": record.original_driver or ""})
            st = claim.get("status") or {}
        record = BindingRecord(address, st.get("kernelDriverToUnbind") or None)

        if device is None or (device.get("status") or {}).get("absent"):
            self._write_status(
                claim,
                {
                    "passthroughEnabled": False,
                    "conditions": plan.set_conditions(
                        st.get("conditions") or [],
                        [plan.Condition(BOUND, False, "DeviceAbsent", f"PCI device {address} is gone from the node")],
                        self._now(),
                    ),
                },
            )
            return ClaimResult(name, False)

        dst = device.get("status") or {}
        on_vfio = dst.get("kernelDriverInUse") == plan.VFIO_DRIVER
        if not on_vfio:
            why = plan.recheck_group(address, claim_owner(claim), peers(address))
            if why is not None:
                self._refuse(claim, "Refused", why)
                return ClaimResult(name, False)
        result = self._binder.bind(record)
        if result.outcome != Outcome.BOUND:
            self._refuse(claim, result.outcome.value, result.message or result.outcome.value)
            return ClaimResult(name, False)

        group = result.iommu_group or str(dst.get("iommuGroup", ""))
        gs = groups.group_status(self._root, group)
        if gs.complete:
            gcond = plan.Condition(GROUP_COMPLETE, True, "AllMembersBound", f"IOMMU group {group} is all on vfio-pci")
        else:
            missing = ", ".join(gs.missing)
            gcond = plan.Condition(GROUP_COMPLETE, False, "MembersNotBound", f"not on vfio-pci: {missing}; claim them")
        bound = plan.Condition(BOUND, True, "BoundToVfio", f"bound to vfio-pci (IOMMU group {group})")
        conditions = plan.drop_conditions(st.get("conditions") or [], frozenset({IN_USE, UNBIND_PENDING}))
        numa = dst.get("numaNode")
        dev = model.PciDevice(address, int(group), numa if isinstance(numa, int) and numa >= 0 else None)
        selector = f"{dst.get('vendorId', '')}:{dst.get('deviceId', '')}"
        if dra_offer:
            # DRA: no name is offered, so there is no gate, no device name and no permit (one path at a time)
            offered_dra = plan.Condition(plan.OFFERED, True, DRA_REASON, dra_offer)
            conditions = plan.drop_conditions(conditions, frozenset({PERMITTED, plan.ALLOCATION}))
            if not st.get("passthroughEnabled"):
                self._events.record(claim, "Normal", "PassthroughEnabled", f"{address} is bound to vfio-pci")
            self._write_status(
                claim,
                {
                    "passthroughEnabled": True,
                    "conditions": plan.set_conditions(conditions, [bound, gcond, offered_dra], self._now()),
                    "allocatedTo": allocated_to(resource_name, address),
                },
            )
            return ClaimResult(name, True, resource_name, dev, selector, dra=True)
        # Binding was the claim's own business; offering the name is the cluster's: the gate may hold it back.
        offer_cond = offer(claim, resource_name) if offer is not None else plan.offered(resource_name)
        if not offer_cond.status:
            held_conditions = plan.drop_conditions(conditions, frozenset({PERMITTED, plan.ALLOCATION}))
            self._hold(claim, offer_cond, [bound, gcond], held_conditions)
            return ClaimResult(name, False, held=True)
        # The device's status must name the resource before passthroughEnabled becomes true.
        if dst.get("resourceName") != resource_name:
            self._api.patch(
                apiclient.PCIDEVICES,
                device["metadata"]["name"],
                {"status": {"resourceName": resource_name}},
                subresource="status",
            )
        wanted = [bound, gcond, offer_cond]
        if permit is not None:
            wanted.append(permit)
        allocation = audit(claim, resource_name, address) if audit is not None else None
        if allocation is not None:
            wanted.append(allocation)
        else:
            conditions = plan.drop_conditions(conditions, frozenset({plan.ALLOCATION}))
        desired: Obj = {
            "passthroughEnabled": True,
            "conditions": plan.set_conditions(conditions, wanted, self._now()),
            "allocatedTo": allocated_to(resource_name, address),
        }
        if not st.get("passthroughEnabled"):
            self._events.record(claim, "Normal", "PassthroughEnabled", f"{address} is bound to vfio-pci")
        self._write_status(claim, desired)
        return ClaimResult(name, True, resource_name, dev, selector)

    def _hold(
        self,
        claim: Obj,
        held: plan.Condition,
        others: Sequence[plan.Condition],
        conditions: Sequence[Mapping[str, Any]],
    ) -> None:
        """The device is bound but its name is not offered: Offered=False says why, once as a Warning Event (again
        only when the reason or the objects it names change)."""
        before = plan.condition(claim.get("status") or {}, plan.OFFERED)
        wanted = [*others, held]
        desired: Obj = {"passthroughEnabled": False, "conditions": plan.set_conditions(conditions, wanted, self._now())}
        self._write_status(claim, desired)
        if before is None or (before.get("status"), before.get("reason"), before.get("message")) != (
            "False",
            held.reason,
            held.message,
        ):
            log.warning("offer held back", extra={"claim": claim["metadata"]["name"], "reason": held.reason})
            self._events.record(claim, "Warning", held.reason, held.message)

    def _observe(self, claim: Obj, device: Obj | None) -> None:
        """Observe mode: the host is never touched. A live claim is refused (Bound=False, reason ObserveOnly, one
        Event); a claim being deleted loses our finalizer unless its device is still on vfio-pci for it, which only
        a release outside observe mode may undo."""
        meta = claim["metadata"]
        st = claim.get("status") or {}
        on_vfio = ((device or {}).get("status") or {}).get("kernelDriverInUse") == plan.VFIO_DRIVER
        if meta.get("deletionTimestamp"):
            if plan.FINALIZER not in (meta.get("finalizers") or []):
                return
            if "kernelDriverToUnbind" in st and on_vfio:
                self._refuse(
                    claim,
                    OBSERVE_ONLY,
                    f"node {self._node} is in observe mode: the device stays on vfio-pci and the claim keeps its "
                    "finalizer until the node leaves observe mode and the agent releases it",
                )
                return
            self._set_finalizer(claim, False)
            return
        self._refuse(
            claim,
            OBSERVE_ONLY,
            f"node {self._node} is in observe mode: its agent binds no device (chart value agent.observeOnly or "
            "node label devices.harvesterhci.io/observe-only=true)",
        )

    def _release(self, claim: Obj, address: str) -> None:
        name = claim["metadata"]["name"]
        st = claim.get("status") or {}
        if plan.FINALIZER not in (claim["metadata"].get("finalizers") or []):
            return
        if "kernelDriverToUnbind" in st:
            record = BindingRecord(address, st.get("kernelDriverToUnbind") or None)
            try:
                result = self._binder.release(record)
            except (SysfsError, BindError) as e:
                log.error("release failed", extra={"claim": name}, exc_info=True)
                raise BindError(f"release of {address} failed: {e}", address=address) from e
            if result.outcome in (Outcome.IN_USE, Outcome.UNBIND_PENDING):
                ctype = IN_USE if result.outcome == Outcome.IN_USE else UNBIND_PENDING
                before = plan.condition(st, ctype)
                msg = result.message or ctype
                if result.outcome == Outcome.IN_USE:
                    msg = f"device busy: {msg}"
                self._conditions(claim, [plan.Condition(ctype, True, ctype, msg)])
                if before is None or before.get("status") != "True":
                    self._events.record(claim, "Warning", ctype, msg)
                return
            if result.outcome == Outcome.FAILED:
                raise BindError(f"release of {address} failed: {result.message}", address=address)
            if result.outcome == Outcome.NOT_RESTORED:
                self._events.record(claim, "Warning", "NotRestored", result.message)
            elif result.outcome == Outcome.RELEASED:
                self._events.record(claim, "Normal", "Released", f"{address} is back on {result.driver or 'no driver'}")
        self._set_finalizer(claim, False)
        log.info("claim released", extra={"claim": name, "pci_address": address})
