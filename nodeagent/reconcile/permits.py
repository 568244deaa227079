"""The KubeVirt CR's `permittedHostDevices` in step with this node's enabled claims (optimistic concurrency).

The CR is found wherever it lives (`harvester-system/kubevirt`, `kubevirt/kubevirt`, ...). Entries are a set: this
node adds what its enabled claims need and removes names it could have added that no claim in the cluster needs any
more; entries of other providers are never touched. Each write is a merge patch that carries the resourceVersion it
was computed from, retried on conflict from a fresh read.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Set
from dataclasses import dataclass
from typing import Any

import apiclient
from nodeagent.reconcile import plan

log = logging.getLogger(__name__)

Obj = dict[str, Any]
PERMITTED = "Permitted"
CONFLICT_RETRIES = 5


@dataclass(frozen=True)
class KubeVirtState:
    cr: Obj | None

    def condition(self) -> plan.Condition:
        """What an enabled claim reports about KubeVirt (the UI and `kubectl describe` show why a VM cannot use it)."""
        if self.cr is None:
            return plan.Condition(PERMITTED, False, "NoKubeVirt", "no KubeVirt custom resource found in the cluster")
        if not plan.host_devices_gate(self.cr):
            where = f"{self.cr['metadata'].get('namespace', '')}/{self.cr['metadata']['name']}"
            return plan.Condition(
                PERMITTED,
                False,
                "HostDevicesGateOff",
                f"feature gate HostDevices is off in KubeVirt {where}: add it to "
                "spec.configuration.developerConfiguration.featureGates",
            )
        return plan.Condition(PERMITTED, True, "Permitted", "listed in KubeVirt permittedHostDevices")


def find_kubevirt(api: apiclient.KubeApi, namespace: str | None = None) -> KubeVirtState:
    """The KubeVirt CR: in `namespace` when configured, else the first one found in any namespace."""
    try:
        items = api.list(apiclient.KUBEVIRTS, namespace=namespace).items
    except apiclient.NotFound:  # the KubeVirt CRD is not installed
        return KubeVirtState(None)
    except apiclient.KubeError as e:
        if e.status != 403:
            raise
        log.warning("not allowed to list KubeVirt CRs; permits are not managed", extra={"error": str(e)})
        return KubeVirtState(None)
    items.sort(key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]))
    return KubeVirtState(items[0] if items else None)


def apply_permits(
    api: apiclient.KubeApi,
    state: KubeVirtState,
    pci: Set[plan.PciPermit],
    usb: Set[plan.UsbPermit],
    *,
    ours: Set[str],
    needed: Callable[[Set[str]], Set[str]],
) -> bool:
    """Bring the CR in step; return whether it was written. `needed(candidates)` says which of the candidate names
    some claim in the cluster still needs (asked only when there is something to remove)."""
    cr = state.cr
    if cr is None:
        return False
    ns, name = cr["metadata"].get("namespace", ""), cr["metadata"]["name"]
    wanted = {p.resource_name for p in pci} | {u.resource_name for u in usb}
    for _ in range(CONFLICT_RETRIES):
        candidates = plan.removal_candidates(cr, wanted, ours)
        still = needed(candidates) if candidates else frozenset()
        p = plan.plan_permits(cr, pci, usb, ours=ours, needed=still)
        if p.pci is None and p.usb is None:
            return False
        lists: Obj = {}
        if p.pci is not None:
            lists["pciHostDevices"] = p.pci
        if p.usb is not None:
            lists["usb"] = p.usb
        body = {
            "metadata": {"resourceVersion": cr["metadata"].get("resourceVersion")},
            "spec": {"configuration": {"permittedHostDevices": lists}},
        }
        try:
            api.patch(apiclient.KUBEVIRTS, name, body, namespace=ns)
        except apiclient.Conflict:
            cr = api.get(apiclient.KUBEVIRTS, name, namespace=ns)
            continue
        log.info("kubevirt permits updated", extra={"added": list(p.added), "removed": list(p.removed)})
        return True
    raise apiclient.Conflict("KubeVirt CR kept changing; permits not updated this pass", status=409)
