"""The offering gate's reads: what the whole cluster asks for, listed only when a claim's name is about to be offered
for the first time (DESIGN §3, issue 21).

Anyone can compute the name a device will be offered under, so a pod or VM may wait for it before the device is even
claimed, and the kubelet would hand the device to it the moment a plugin advertises it. Before a name is first
offered the agent therefore lists every pod that is not finished and every VM, VMI, pool and replica set (with the
instancetypes they refer to) and lets `plan.offer_condition` decide. This is the I/O edge; the decision is pure.
A claim that is offered is never gated again, so an idle agent lists none of this.
"""

from __future__ import annotations

import logging
from typing import Any

import apiclient
from nodeagent.reconcile import plan

log = logging.getLogger(__name__)

Obj = dict[str, Any]

WORKLOADS = (
    apiclient.VIRTUALMACHINES,
    apiclient.VIRTUALMACHINEINSTANCES,
    apiclient.VIRTUALMACHINEINSTANCEREPLICASETS,
    apiclient.VIRTUALMACHINEPOOLS,
)
INSTANCETYPES = (apiclient.VIRTUALMACHINEINSTANCETYPES, apiclient.VIRTUALMACHINECLUSTERINSTANCETYPES)


def _list(api: apiclient.KubeApi, res: apiclient.Resource, unreadable: list[str]) -> list[Obj]:
    """Every object of a kind, cluster-wide, each with its kind set (list items need not carry it). A kind that is
    not installed (no KubeVirt, no pools) holds nothing; one the agent may not list is noted, and the gate then
    holds every offer back rather than guess."""
    try:
        items = api.list(res).items
    except apiclient.NotFound:
        return []
    except apiclient.KubeError as e:
        if e.status != 403:
            raise
        log.warning("not allowed to list a kind the offering gate reads", extra={"kind": res.kind})
        unreadable.append(f"{res.plural}.{res.group}" if res.group else res.plural)
        return []
    return [dict(o, kind=res.kind) for o in items]


def read_requests(api: apiclient.KubeApi) -> plan.ClusterRequests:
    unreadable: list[str] = []
    pods = _list(api, apiclient.PODS, unreadable)
    workloads = [o for res in WORKLOADS for o in _list(api, res, unreadable)]
    instancetypes = [o for res in INSTANCETYPES for o in _list(api, res, unreadable)]
    found = plan.build_requests(pods, workloads, instancetypes, unreadable)
    log.info(
        "listed what the cluster asks for before a first offer",
        extra={"pods": len(pods), "workloads": len(workloads), "names": len(found.by_name)},
    )
    return found
