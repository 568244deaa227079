"""The project's only door to the API server: the agent, the webhook, the cluster controller, the takeover and
the local run all reach it through this package, and nothing else imports an HTTP or Kubernetes client.

    apiclient.api       KubeApi and the one-call protocols callers compose, Resource, ObjectList, WatchEvent,
                        CountingKube (no I/O)
    apiclient.kinds     the kinds the project reads or writes, as Resources
    apiclient.errors    KubeError > NotFound, Conflict, Expired (drawn there)
    apiclient.config    in-cluster and kubeconfig endpoints (rotating tokens, optional exec/auth-provider plugins)
    apiclient.client    Client: JSON over urllib3; lists in pages, watches, patches, SubjectAccessReviews

This module re-exports the first three, which import nothing beyond the standard library; importing
`apiclient.client` (urllib3) is left to the edges that connect. Why urllib3 and our own loader rather than the
`kubernetes` client, lightkube or kr8s: docs/apiclient.md (memory and image size, measured).
"""

from __future__ import annotations

from apiclient.api import (
    CountingKube,
    Creates,
    Deletes,
    Gets,
    JsonPatches,
    KubeApi,
    Lists,
    Obj,
    ObjectList,
    Patches,
    Replaces,
    Resource,
    Watches,
    WatchEvent,
)
from apiclient.errors import Conflict, Expired, KubeError, NotFound
from apiclient.kinds import (
    CUSTOMRESOURCEDEFINITIONS,
    EVENTS,
    KUBEVIRTS,
    LEASES,
    MUTATINGWEBHOOKCONFIGURATIONS,
    NAMESPACES,
    NODES,
    PCIDEVICECLAIMS,
    PCIDEVICES,
    PODS,
    SECRETS,
    SUBJECTACCESSREVIEWS,
    USBDEVICECLAIMS,
    USBDEVICES,
    VALIDATINGWEBHOOKCONFIGURATIONS,
    VIRTUALMACHINECLONES,
    VIRTUALMACHINECLUSTERINSTANCETYPES,
    VIRTUALMACHINEINSTANCEREPLICASETS,
    VIRTUALMACHINEINSTANCES,
    VIRTUALMACHINEINSTANCETYPES,
    VIRTUALMACHINEPOOLS,
    VIRTUALMACHINERESTORES,
    VIRTUALMACHINES,
    VIRTUALMACHINESNAPSHOTCONTENTS,
    VIRTUALMACHINESNAPSHOTS,
)

__all__ = [
    "CUSTOMRESOURCEDEFINITIONS",
    "Conflict",
    "CountingKube",
    "Creates",
    "Deletes",
    "Gets",
    "JsonPatches",
    "Lists",
    "Patches",
    "Replaces",
    "Watches",
    "EVENTS",
    "Expired",
    "KUBEVIRTS",
    "KubeApi",
    "KubeError",
    "LEASES",
    "MUTATINGWEBHOOKCONFIGURATIONS",
    "NAMESPACES",
    "NODES",
    "NotFound",
    "Obj",
    "ObjectList",
    "PCIDEVICECLAIMS",
    "PCIDEVICES",
    "PODS",
    "Resource",
    "SECRETS",
    "SUBJECTACCESSREVIEWS",
    "USBDEVICECLAIMS",
    "USBDEVICES",
    "VALIDATINGWEBHOOKCONFIGURATIONS",
    "VIRTUALMACHINECLONES",
    "VIRTUALMACHINECLUSTERINSTANCETYPES",
    "VIRTUALMACHINEINSTANCEREPLICASETS",
    "VIRTUALMACHINEINSTANCES",
    "VIRTUALMACHINEINSTANCETYPES",
    "VIRTUALMACHINEPOOLS",
    "VIRTUALMACHINERESTORES",
    "VIRTUALMACHINES",
    "VIRTUALMACHINESNAPSHOTCONTENTS",
    "VIRTUALMACHINESNAPSHOTS",
    "WatchEvent",
]
