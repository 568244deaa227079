"""One reconcile pass over the whole node: host -> device objects -> claims -> KubeVirt permits -> device plugins.

Level-based: every pass reads the host and the API afresh and writes only what differs, so the same pass serves a
fresh start, a resync, a nudge and recovery after a crash. The order is the contract:

1. discovery (host facts);
2. this node's PCIDevice/USBDevice objects (claimed ones whose name was offered carry their effective resource
   name / `enabled`);
3. the kubelet's allocations (PodResources);
4. PCI claims (bind/release) and USB claims, each through the offering gate before its name is first offered, and
   the allocation audit once it is;
5. the KubeVirt CR's permitted host devices;
6. the device plugins' desired set.

The gate (`offers.read_requests`, `plan.offer_condition`) lists the cluster only in a pass that has a claim whose
name was never offered, at most once; the audit reads a pod (and its VMI) only while the kubelet reports it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Set
from dataclasses import dataclass, field
from typing import Any

import apiclient
from nodeagent import discovery
from nodeagent.deviceplugin import model
from nodeagent.dra.model import PublishedDevice
from nodeagent.dra.node import DraNode
from nodeagent.events import EventRecorder
from nodeagent.idsdb import NamesDatabases
from nodeagent.reconcile import allocations, offers, pcidevices, permits, plan, usbdevices
from nodeagent.reconcile.devices import apply_device_actions
from nodeagent.reconcile.pcideviceclaims import ClaimResult, PCIClaimReconciler, claim_owner, is_adopted
from nodeagent.reconcile.usbdeviceclaims import USBClaimReconciler, USBClaimResult
from nodeagent.settings import LABEL_OBSERVE_ONLY
from nodeagent.sysfs.root import SysfsRoot
from policy import dra, names
from policy.objects import USB_CONTROLLER_CLASS_PREFIX

log = logging.getLogger(__name__)

Obj = dict[str, Any]
HELD_RECHECK_S = 30.0
"""While the gate holds a claim back, the next pass comes this soon (no watch tells the agent that a pod is gone)."""


@dataclass
class PassReport:
    """What the last pass saw, for readiness, metrics and tests."""

    root_traced: bool = False
    pci_devices: int = 0
    usb_devices: int = 0
    enabled_pci: tuple[str, ...] = ()
    enabled_usb: tuple[str, ...] = ()
    kubevirt: str = ""
    host_critical: dict[str, list[str]] = field(default_factory=dict)
    observe_only: bool = False
    held: tuple[str, ...] = ()
    """Claims whose name the offering gate holds back (the runner looks again sooner while there are any)."""
    unexpected_allocations: dict[str, int] = field(default_factory=dict)
    """Offered resource name -> pods the kubelet allocated it to that are not admitted launcher pods."""
    dra_published: tuple[str, ...] = ()
    """Claims whose device this node offers through DRA (in its ResourceSlices)."""


class NodePass:
    """The pass, with everything it touches injected (wiring.build makes the real one)."""

    def __init__(
        self,
        api: apiclient.KubeApi,
        root: SysfsRoot,
        db: NamesDatabases,
        events: EventRecorder,
        pci_claims: PCIClaimReconciler,
        usb_claims: USBClaimReconciler,
        *,
        node: str,
        node_ip: str | None = None,
        resource_names: plan.ResourceNameMode = "perDevice",
        read_allocations: Callable[[], allocations.Allocations] = lambda: allocations.Allocations(known=True),
        set_plugins: Callable[[tuple[model.Resource, ...]], None] | None = None,
        dra_node: DraNode | None = None,
        kubevirt_namespace: str | None = None,
        now: Callable[[], str] = lambda: "",
        observe_only: bool = False,
    ) -> None:
        self._now = now
        self._observe_setting = observe_only
        self.observe_only = observe_only
        """Observe mode as the last pass decided it: the setting, or this node's label."""
        self._vmi_of = allocations.VmiResolver(api)
        self._kubevirt_namespace = kubevirt_namespace
        self._api = api
        self._root = root
        self._db = db
        self._events = events
        self._pci_claims = pci_claims
        self._usb_claims = usb_claims
        self._node = node
        self._node_ip = node_ip
        self._mode = resource_names
        self._read_allocations = read_allocations
        self._set_plugins = set_plugins
        self._dra = dra_node
        self._last_plugins: tuple[model.Resource, ...] = ()
        self._reported: dict[str, frozenset[str]] = {}  # claim -> unexpected holders already announced
        self._node_uid: str | None = None
        self.report = PassReport()
        self.allocations = allocations.Allocations(known=True)
        self.host_critical: dict[str, list[str]] = {}

    def _node_facts(self) -> tuple[Obj | None, bool]:
        """The ownerReference to this node, and whether its label asks for observe mode. Read every pass, before
        any claim is reconciled, so a node labelled before a claim arrives never sees a bind."""
        try:
            obj = self._api.get(apiclient.NODES, self._node)
        except apiclient.NotFound:
            log.warning("node object not found; device objects get no owner yet", extra={"node": self._node})
            return None, False
        except apiclient.KubeError as e:
            if e.status != 403:
                raise
            log.warning("not allowed to read the node; device objects get no owner", extra={"node": self._node})
            return None, False
        meta = obj.get("metadata") or {}
        self._node_uid = str(meta["uid"])
        observe = str((meta.get("labels") or {}).get(LABEL_OBSERVE_ONLY, "")).lower() == "true"
        return plan.node_owner_reference(self._node, self._node_uid), observe

    def __call__(self) -> None:
        node = self._node
        inv = discovery.discover(self._root, self._db, node, self._node_ip)
        self.host_critical = inv.critical.reasons
        selector = f"{names.LABEL_NODENAME}={node}"
        have_pci = {
            o["metadata"]["name"]: o for o in self._api.list(apiclient.PCIDEVICES, label_selector=selector).items
        }
        have_usb = {
            o["metadata"]["name"]: o for o in self._api.list(apiclient.USBDEVICES, label_selector=selector).items
        }
        all_pci_claims = self._api.list(apiclient.PCIDEVICECLAIMS).items
        all_usb_claims = self._api.list(apiclient.USBDEVICECLAIMS).items
        owner, labelled = self._node_facts()
        observe = self._observe_setting or labelled
        if observe != self.observe_only:
            log.warning("observe mode changed", extra={"node": node, "observe_only": observe, "by_label": labelled})
        self.observe_only = observe

        # -- which devices are claimed, and under which name ---------------------------------------------------
        found_pci = {d["metadata"]["name"]: d for d in inv.pci_devices}
        found_usb = {d["metadata"]["name"]: d for d in inv.usb_devices}
        my_pci_claims = [c for c in all_pci_claims if (c.get("spec") or {}).get("nodeName") == node]
        my_usb_claims = [
            c
            for c in all_usb_claims
            if c["metadata"]["name"] in found_usb
            or c["metadata"]["name"] in have_usb
            or (c.get("status") or {}).get("nodeName") == node
        ]
        claimed_pci: dict[str, str] = {}
        per_device: dict[str, str] = {}
        offered_pci: set[str] = set()
        # claims that offer their device through DRA (when this agent runs the DRA drivers): no name is offered
        dra_claims = {
            c["metadata"]["name"]
            for c in (*my_pci_claims, *my_usb_claims)
            if self._dra is not None and dra.is_dra(c.get("spec") or {})
        }
        for c in my_pci_claims:
            cname = c["metadata"]["name"]
            src: Any = found_pci.get(cname) or have_pci.get(cname) or {}
            sst = src.get("status") or {}
            pooled = str(sst.get("pooledResourceName") or sst.get("resourceName", ""))
            claimed_pci[cname] = plan.effective_resource_name(
                pooled,
                cname,
                mode=self._mode,
                disable_pooling=bool((c.get("spec") or {}).get("disableResourcePooling")),
                adopted=is_adopted(c),
            )
            per_device[cname] = plan.effective_resource_name(pooled, cname, mode="perDevice")
            cst = c.get("status") or {}
            offered_on = (have_pci.get(cname) or {}).get("status") or {}
            if cname not in dra_claims and plan.already_offered(
                cst,
                adopted=is_adopted(c),
                name_on_device=offered_on.get("resourceName") == claimed_pci[cname],
                enabled_before=cst.get("passthroughEnabled") is True,
            ):
                offered_pci.add(cname)
        claimed_usb = {c["metadata"]["name"] for c in my_usb_claims}
        live_usb = {c["metadata"]["name"] for c in my_usb_claims if not c["metadata"].get("deletionTimestamp")}
        offered_usb = {
            c["metadata"]["name"]
            for c in my_usb_claims
            if c["metadata"]["name"] not in dra_claims
            and plan.already_offered(
                c.get("status") or {},
                adopted=is_adopted(c),
                name_on_device=True,
                enabled_before=((have_usb.get(c["metadata"]["name"]) or {}).get("status") or {}).get("enabled") is True,
            )
        }

        # -- device objects ------------------------------------------------------------------------------------
        now = self._now()
        pci_actions = pcidevices.plan_pcidevices(
            inv.pci_devices,
            have_pci,
            claimed_pci,
            node=node,
            owner=owner,
            now=now,
            observe_only=observe,
            offered=offered_pci,
        )
        have_pci = apply_device_actions(
            self._api, apiclient.PCIDEVICES, pci_actions, have_pci, self._events, plan.PCI_STATUS_KEYS
        )
        usb_actions = usbdevices.plan_usbdevices(
            inv.usb_devices,
            have_usb,
            claimed_usb,
            live_usb & offered_usb,
            node=node,
            owner=owner,
            now=now,
            observe_only=observe,
        )
        have_usb = apply_device_actions(
            self._api, apiclient.USBDEVICES, usb_actions, have_usb, self._events, plan.USB_STATUS_KEYS
        )

        # -- allocations, KubeVirt -----------------------------------------------------------------------------
        self.allocations = self._read_allocations()
        if self.allocations.known:
            self._vmi_of.prune({(h.namespace, h.pod) for hs in self.allocations.index.values() for h in hs})
        kv = permits.find_kubevirt(self._api, self._kubevirt_namespace)
        permit = kv.condition()

        # -- claims --------------------------------------------------------------------------------------------
        by_address = {d["status"]["address"]: d for d in have_pci.values() if "address" in (d.get("status") or {})}
        live_owner = {}
        for c in my_pci_claims:
            if not c["metadata"].get("deletionTimestamp"):
                live_owner[str((c.get("spec") or {}).get("address", ""))] = claim_owner(c)
        usb_claimed_controllers = {
            str((have_usb[n].get("status") or {}).get("pciAddress", "")) for n in live_usb if n in have_usb
        }
        functions = {fn.address: fn for fn in inv.functions}

        def peers(address: str) -> list[plan.GroupPeer]:
            fn = functions.get(address)
            if fn is None or fn.iommu_group is None:
                return []
            out = []
            for m in inv.functions:
                if m.iommu_group != fn.iommu_group:
                    continue
                out.append(
                    plan.GroupPeer(
                        address=m.address,
                        bridge=m.bridge,
                        known=m.bridge or m.address in by_address,
                        host_critical=tuple(inv.critical.reasons.get(m.address, ())),
                        claim_owner=live_owner.get(m.address),
                        usb_claimed=m.class_code.startswith(USB_CONTROLLER_CLASS_PREFIX)
                        and m.address in usb_claimed_controllers,
                    )
                )
            return out

        def allocated_to(resource_name: str, device_id: str) -> list[Any]:
            return self.allocations.allocated_to_with_vmi(resource_name, device_id, self._vmi_of)

        # -- the offering gate: read the cluster at most once a pass, and only for a claim never offered -------
        gate_reads: dict[str, Any] = {}

        def requests() -> plan.ClusterRequests:
            if "requests" not in gate_reads:
                gate_reads["requests"] = offers.read_requests(self._api)
            found: plan.ClusterRequests = gate_reads["requests"]
            return found

        def offered_elsewhere(cname: str, resource: str) -> bool:
            """A name shared by several devices (pooled) may already be offered by another claim, on any node."""
            if resource == per_device.get(cname):
                return False  # a per-device name belongs to this one device
            if "devices" not in gate_reads:
                gate_reads["devices"] = {
                    o["metadata"]["name"]: str((o.get("status") or {}).get("resourceName", ""))
                    for o in self._api.list(apiclient.PCIDEVICES).items
                }
            return plan.offered_by_others(resource, cname, all_pci_claims, gate_reads["devices"])

        def offer_pci(claim: Obj, resource: str) -> plan.Condition:
            cname = claim["metadata"]["name"]
            if cname in offered_pci or offered_elsewhere(cname, resource):
                return plan.offered(resource)
            return plan.offer_condition(resource, claim_owner(claim), requests())

        def offer_usb(claim: Obj, resource: str) -> plan.Condition:
            if claim["metadata"]["name"] in offered_usb:
                return plan.offered(resource)
            return plan.offer_condition(resource, claim_owner(claim), requests())

        # -- the allocation audit ------------------------------------------------------------------------------
        unexpected: dict[str, int] = {}
        audited: set[str] = set()

        def audit(claim: Obj, resource: str, device_id: str) -> plan.Condition | None:
            cname = claim["metadata"]["name"]
            if not self.allocations.known:
                audited.add(cname)  # nothing is concluded from an unreadable kubelet; what was announced stays
                kept = plan.condition(claim.get("status") or {}, plan.ALLOCATION)
                return plan.as_condition(kept) if kept is not None else None
            holders = self.allocations.index.get((resource, device_id), ())
            holdings = sorted(
                {
                    plan.Holding(f"{h.namespace}/{h.pod}", self._vmi_of.admitted(h.namespace, h.pod, resource))
                    for h in holders
                }
            )
            bad = plan.unexpected_pods(holdings)
            unexpected[resource] = unexpected.get(resource, 0) + len(bad)
            previous = plan.condition(claim.get("status") or {}, plan.ALLOCATION)
            for pod in plan.new_offenders(bad, self._reported.get(cname), previous):
                log.warning("device allocated to an unexpected pod", extra={"claim": cname, "pod": pod})
                self._events.record(
                    claim,
                    "Warning",
                    plan.UNEXPECTED_ALLOCATION_EVENT,
                    plan.UNEXPECTED_ALLOCATION_EVENT_MESSAGE.format(resource=resource, pod=pod),
                )
            self._reported[cname] = frozenset(bad)
            audited.add(cname)
            return plan.allocation_condition(resource, holdings)

        # A released device must leave the kubelet before it leaves vfio-pci, or the plugin would advertise a device
        # that is being unbound for a moment: withdraw the devices of claims being deleted from the last plugin set.
        leaving = {
            str((c.get("spec") or {}).get("address", ""))
            for c in my_pci_claims
            if c["metadata"].get("deletionTimestamp")
        }
        if leaving and self._set_plugins is not None and self._last_plugins:
            self._set_plugins(withdraw_pci(self._last_plugins, leaving))
        if self._dra is not None:  # the same for DRA: out of the slices and the drivers' tables first
            going = (*my_pci_claims, *my_usb_claims)
            self._dra.withdraw({c["metadata"]["name"] for c in going if c["metadata"].get("deletionTimestamp")})

        def dra_offer(cname: str, device: str) -> str:
            if cname not in dra_claims:
                return ""
            driver = driver_of[cname]
            return f"offered through Dynamic Resource Allocation as {device} of driver {driver} on node {node}"

        def dra_holders(cname: str) -> Callable[[str, str], list[Any]]:
            dra_node = self._dra
            assert dra_node is not None
            return lambda resource, device_id: list(dra_node.holders(cname))

        driver_of = {c["metadata"]["name"]: dra.PCI_DRIVER for c in my_pci_claims}
        driver_of.update({c["metadata"]["name"]: dra.USB_DRIVER for c in my_usb_claims})

        pci_results: list[ClaimResult] = []
        for c in my_pci_claims:
            cname = c["metadata"]["name"]
            address = str((c.get("spec") or {}).get("address", ""))
            via_dra = cname in dra_claims
            pci_results.append(
                self._pci_claims.reconcile(
                    c,
                    have_pci.get(cname),
                    peers=peers,
                    resource_name=per_device[cname] if via_dra else claimed_pci[cname],
                    permit=None if via_dra else permit,
                    allocated_to=dra_holders(cname) if via_dra else allocated_to,
                    observe_only=observe,
                    offer=offer_pci,
                    audit=None if via_dra else audit,
                    dra_offer=dra_offer(cname, dra.pci_device_name(address) if names.is_pci_address(address) else ""),
                )
            )
        usb_results: list[USBClaimResult] = []
        for c in my_usb_claims:
            uname = c["metadata"]["name"]
            dev = have_usb.get(uname) or {"status": {"absent": True}}
            dst = dev.get("status") or {}
            via_dra = uname in dra_claims
            usb_device = (
                dra.usb_device_name(dst["busNum"], dst["devNum"])
                if isinstance(dst.get("busNum"), int) and isinstance(dst.get("devNum"), int)
                else ""
            )
            usb_results.append(
                self._usb_claims.reconcile(
                    c,
                    dev,
                    permit=None if via_dra else permit,
                    allocated_to=dra_holders(uname) if via_dra else allocated_to,
                    observe_only=observe,
                    offer=offer_usb,
                    audit=None if via_dra else audit,
                    dra_offer=dra_offer(uname, usb_device),
                )
            )
        for cname in [k for k in self._reported if k not in audited]:
            del self._reported[cname]  # a claim that is gone or no longer enabled starts afresh
        held = tuple(sorted([r.name for r in pci_results if r.held] + [r.name for r in usb_results if r.held]))

        # -- DRA: the node's ResourceSlices and the drivers' tables (one path at a time: never a permit or plugin) -
        published: list[PublishedDevice] = []
        if self._dra is not None:
            claims_by_name = {c["metadata"]["name"]: c for c in (*my_pci_claims, *my_usb_claims)}
            for r in pci_results:
                if r.enabled and r.dra and r.device is not None and r.name in have_pci:
                    members = [p.address for p in peers(r.device.address) if not p.bridge]
                    published.append(
                        self._dra.pci(
                            claims_by_name[r.name],
                            have_pci[r.name],
                            owner=claim_owner(claims_by_name[r.name]),
                            resource_name=r.resource_name,
                            group=r.device.iommu_group,
                            functions=members,
                        )
                    )
            for u in usb_results:
                if u.enabled and u.dra and u.name in have_usb:
                    found = self._dra.usb(
                        claims_by_name[u.name],
                        have_usb[u.name],
                        owner=claim_owner(claims_by_name[u.name]),
                        resource_name=u.resource_name,
                    )
                    if found is not None:
                        published.append(found)
            self._dra.publish(published, owner)
        pci_results_offered = [r for r in pci_results if not r.dra]
        usb_results_offered = [r for r in usb_results if not r.dra]

        # -- KubeVirt permits ----------------------------------------------------------------------------------
        pci_permits = {plan.PciPermit(r.resource_name, r.selector) for r in pci_results_offered if r.enabled}
        usb_permits = {plan.UsbPermit(r.resource_name, r.vendor, r.product) for r in usb_results_offered if r.enabled}
        ours: set[str] = set()
        for d in [*inv.pci_devices]:
            ours.add(d["status"]["resourceName"])
            ours.add(plan.effective_resource_name(d["status"]["resourceName"], d["metadata"]["name"], mode="perDevice"))
        ours.update(str((o.get("status") or {}).get("resourceName", "")) for o in have_pci.values())
        ours.update(str((o.get("status") or {}).get("resourceName", "")) for o in have_usb.values())
        ours.update(d["status"]["resourceName"] for d in inv.usb_devices)
        ours.discard("")
        permits.apply_permits(
            self._api,
            kv,
            pci_permits,
            usb_permits,
            ours=ours,
            needed=lambda cands: self._needed_anywhere(cands, all_pci_claims, all_usb_claims),
        )

        # -- device plugins ------------------------------------------------------------------------------------
        if self._set_plugins is not None:
            self._last_plugins = model.build_resources(
                [(r.resource_name, r.device) for r in pci_results_offered if r.enabled and r.device is not None],
                [(r.resource_name, r.device) for r in usb_results_offered if r.enabled and r.device is not None],
            )
            self._set_plugins(self._last_plugins)
        self.report = PassReport(
            root_traced=inv.critical.root_traced,
            pci_devices=len(inv.pci_devices),
            usb_devices=len(inv.usb_devices),
            enabled_pci=tuple(sorted(r.name for r in pci_results if r.enabled)),
            enabled_usb=tuple(sorted(r.name for r in usb_results if r.enabled)),
            kubevirt=permit.reason,
            host_critical=inv.critical.reasons,
            observe_only=observe,
            held=held,
            unexpected_allocations=unexpected,
            dra_published=tuple(sorted(d.object_name for d in published)),
        )

    def _needed_anywhere(self, candidates: Set[str], pci_claims: list[Obj], usb_claims: list[Obj]) -> Set[str]:
        """Which candidate names a live claim anywhere in the cluster still uses (read only when removing)."""
        live_pci = {c["metadata"]["name"] for c in pci_claims if not c["metadata"].get("deletionTimestamp")}
        live_usb = {c["metadata"]["name"] for c in usb_claims if not c["metadata"].get("deletionTimestamp")}
        needed: set[str] = set()
        for res, live in ((apiclient.PCIDEVICES, live_pci), (apiclient.USBDEVICES, live_usb)):
            if not live:
                continue
            for o in self._api.list(res).items:
                if o["metadata"]["name"] in live:
                    rn = str((o.get("status") or {}).get("resourceName", ""))
                    if rn in candidates:
                        needed.add(rn)
        return needed


def withdraw_pci(resources: tuple[model.Resource, ...], addresses: Set[str]) -> tuple[model.Resource, ...]:
    """The plugin set without the given PCI devices (a resource left with no device is dropped)."""
    out: list[model.Resource] = []
    for r in resources:
        if isinstance(r, model.PciResource):
            kept = tuple(d for d in r.devices if d.address not in addresses)
            if kept:
                out.append(model.PciResource(r.name, kept))
        else:
            out.append(r)
    return tuple(out)
