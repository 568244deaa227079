"""The controller's effects: observe (list claims, devices, nodes), plan (plan.py), apply; one pass at a time.

Level-based: a pass reads everything afresh, so a failed write is simply planned again on the next pass. The
webhook judges every write (the controller is the trusted on-behalf-of identity of the owner rule, and the janitor
may drop the finalizer only once the webhook, too, sees the node gone).
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import apiclient
from policy import names
from policy.objects import FINALIZER_AGENT, MalformedObject, PCIDevice
from webhook.controller import plan

log = logging.getLogger(__name__)

CLAIMS = {"PCIDeviceClaim": apiclient.PCIDEVICECLAIMS, "USBDeviceClaim": apiclient.USBDEVICECLAIMS}


class ControllerApi(
    apiclient.Lists,
    apiclient.Gets,
    apiclient.Creates,
    apiclient.Replaces,
    apiclient.JsonPatches,
    apiclient.Deletes,
    Protocol,
):
    """The calls the controller makes (apiclient.client.Client; an in-memory fake in unit tests)."""


@dataclass(frozen=True, slots=True)
class Observed:
    claims: list[plan.ClaimFacts]
    devices: list[PCIDevice]
    nodes: set[str]


def observe(api: ControllerApi) -> Observed:
    """A fresh read of everything (tests, and a controller run without watches)."""
    claims: list[plan.ClaimFacts] = []
    for kind, res in CLAIMS.items():
        for obj in api.list(res).items:
            try:
                claims.append(plan.ClaimFacts.from_dict({**obj, "kind": kind}))
            except MalformedObject:
                continue
    devices: list[PCIDevice] = []
    for obj in api.list(apiclient.PCIDEVICES).items:
        try:
            devices.append(PCIDevice.from_dict(obj))
        except MalformedObject:
            continue
    nodes = {str((n.get("metadata") or {}).get("name")) for n in api.list(apiclient.NODES).items}
    return Observed(claims, devices, nodes)


@dataclass
class Controller:
    api: ControllerApi
    namespace: str  # where Events go: "default" for our cluster-scoped claims (the API server requires it)
    mode: str
    grace: datetime.timedelta
    clock: Callable[[], datetime.datetime]
    component: str = "pcidevices-controller"
    view: Callable[[], Observed] | None = None  # the watch-fed store; None: list everything each pass

    def reconcile(self) -> list[plan.Action]:
        """One pass; returns the actions it tried (tests and logs)."""
        seen = self.view() if self.view is not None else observe(self.api)
        actions = plan.plan_janitor(seen.claims, seen.nodes) + plan.plan_groups(
            seen.claims, seen.devices, seen.nodes, now=self.clock(), grace=self.grace, mode=self.mode
        )
        for action in actions:
            try:
                self._apply(action)
            except apiclient.KubeError as e:
                log.warning("action failed; retrying next pass", extra={"action": repr(action), "status": e.status})
        return actions

    def _apply(self, action: plan.Action) -> None:
        if isinstance(action, plan.CreateClaim):
            try:
                created = self.api.create(apiclient.PCIDEVICECLAIMS, plan.build_claim(action))
            except apiclient.Conflict:
                return  # claimed meanwhile (the UI's own "Enable Group"): nothing to do
            log.info(
                "claimed IOMMU sibling",
                extra={"claim": action.device.name, "owner": action.owner, "trigger": action.trigger},
            )
            self._event(
                created,
                "SiblingClaimed",
                f"claimed for {action.owner} because pcideviceclaim {action.trigger} shares IOMMU group "
                f"{action.device.iommu_group} on node {action.device.node_name}; a VM needs the whole group",
            )
        elif isinstance(action, plan.MarkSiblingsDone):
            self.api.json_patch(apiclient.PCIDEVICECLAIMS, action.claim, plan.siblings_patch(action))
        elif isinstance(action, plan.DeleteClaim):
            try:
                self.api.delete(CLAIMS[action.kind], action.name)
            except apiclient.NotFound:
                return
            log.info("deleted claim of a vanished node", extra={"claim": action.name, "node": action.node})
        elif isinstance(action, plan.RemoveFinalizer):
            try:
                obj = self.api.get(CLAIMS[action.kind], action.name)
            except apiclient.NotFound:
                return
            meta = obj.get("metadata") or {}
            finalizers = [f for f in meta.get("finalizers") or () if f != FINALIZER_AGENT]
            self.api.replace(CLAIMS[action.kind], action.name, {**obj, "metadata": {**meta, "finalizers": finalizers}})
            log.info("removed the agent finalizer of a vanished node's claim", extra={"claim": action.name})

    def _event(self, obj: Mapping[str, Any], reason: str, message: str) -> None:
        meta = obj.get("metadata") or {}
        now = self.clock().strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta.get('name', 'claim')}.", "namespace": self.namespace},
            "involvedObject": {
                "apiVersion": names.API_VERSION,
                "kind": "PCIDeviceClaim",
                "name": meta.get("name", ""),
                "uid": meta.get("uid", ""),
            },
            "reason": reason,
            "message": message,
            "type": "Normal",
            "source": {"component": self.component},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            self.api.create(apiclient.EVENTS, event, namespace=self.namespace)
        except apiclient.KubeError as e:
            log.warning("could not record an event", extra={"status": e.status, "reason": reason})
