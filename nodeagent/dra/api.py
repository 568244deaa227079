"""The API calls of the agent's DRA side, over the project's client: ResourceSlices of its node, the ResourceClaims the
kubelet asks it to prepare, and the last gate's SubjectAccessReview (may the claim's requester `use` the device in the
claim's namespace)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import apiclient
from apiclient import kinds
from nodeagent.dra.driver import GetClaim, MayUse
from nodeagent.dra.model import PublishedDevice
from policy import names
from policy.records import Requester

Obj = dict[str, Any]


class ApiSlices:
    """slices.SliceStore over the client: listed by the node label, updated with a conditional merge patch."""

    def __init__(self, api: apiclient.KubeApi) -> None:
        self._api = api

    def list(self, node: str, driver: str) -> list[Obj]:
        found = self._api.list(kinds.RESOURCESLICES, label_selector=f"{names.LABEL_NODENAME}={node}").items
        return [o for o in found if (o.get("spec") or {}).get("driver") == driver]

    def create(self, body: Obj) -> Obj:
        return self._api.create(kinds.RESOURCESLICES, body)

    def update(self, name: str, body: Obj) -> Obj:
        meta = body["metadata"]
        patch = {
            "metadata": {k: meta[k] for k in ("labels", "ownerReferences", "resourceVersion") if k in meta},
            "spec": body["spec"],
        }
        return self._api.patch(kinds.RESOURCESLICES, name, patch)

    def delete(self, name: str) -> None:
        try:
            self._api.delete(kinds.RESOURCESLICES, name)
        except apiclient.NotFound:
            pass


def claim_reader(api: apiclient.KubeApi) -> GetClaim:
    def get_claim(namespace: str, name: str) -> Mapping[str, Any] | None:
        try:
            return api.get(kinds.RESOURCECLAIMS, name, namespace=namespace)
        except apiclient.NotFound:
            return None

    return get_claim


def use_checker(api: apiclient.KubeApi) -> MayUse:
    """(requester, device, namespace) -> allowed, asked of the API server each time (prepares are rare)."""

    def may_use(requester: Requester, device: PublishedDevice, namespace: str) -> bool:
        body = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": requester.username,
                "uid": requester.uid,
                "groups": list(requester.groups),
                "resourceAttributes": {
                    "namespace": namespace,
                    "verb": "use",
                    "group": names.GROUP,
                    "resource": "pcidevices" if device.address else "usbdevices",
                    "name": device.object_name,
                },
            },
        }
        answer = api.create(kinds.SUBJECTACCESSREVIEWS, body)
        return bool((answer.get("status") or {}).get("allowed"))

    return may_use

