"""AdmissionReview bodies shaped as the API server sends them (unit and cluster tests, bench)."""

from __future__ import annotations

import copy
import uuid
from typing import Any

GROUP = "devices.harvesterhci.io"


def make_review(
    *,
    api_version: str = "admission.k8s.io/v1",
    resource: str = "pcideviceclaims",
    kind: str = "PCIDeviceClaim",
    group: str = GROUP,
    operation: str = "CREATE",
    name: str = "node1-000001000",
    obj: dict[str, Any] | None = None,
    username: str = "tenant-a",
    uid: str | None = None,
) -> dict[str, Any]:
    if obj is None and operation != "DELETE":
        obj = {
            "apiVersion": f"{GROUP}/v1beta1",
            "kind": kind,
            "metadata": {"name": name},
            "spec": {"address": "0000:00:10.0", "nodeName": "node1", "userName": "admin"},
        }
    return {
        "apiVersion": api_version,
        "kind": "AdmissionReview",
        "request": {
            "uid": uid or str(uuid.uuid4()),
            "kind": {"group": group, "version": "v1beta1", "kind": kind},
            "resource": {"group": group, "version": "v1beta1", "resource": resource},
            "requestKind": {"group": group, "version": "v1beta1", "kind": kind},
            "requestResource": {"group": group, "version": "v1beta1", "resource": resource},
            "name": name,
            "operation": operation,
            "userInfo": {"username": username, "uid": "u-1", "groups": ["system:authenticated"]},
            "object": copy.deepcopy(obj),
            "oldObject": None,
            "dryRun": False,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    }
