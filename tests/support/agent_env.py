"""Builders shared by the agent's sysfs, cluster and bench runs: object bodies and an agent over a simulated host."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import apiclient
from nodeagent import wiring
from nodeagent.idsdb import NamesDatabases
from nodeagent.reconcile import allocations
from nodeagent.settings import AgentSettings
from policy import names
from tests.support.simhost import SimHost

NOW = "2026-01-01T00:00:00Z"


def kubevirt_cr(*, gate: bool = True, pci: Sequence[dict[str, Any]] = (), name: str = "kubevirt") -> dict[str, Any]:
    gates = ["LiveMigration"] + (["HostDevices"] if gate else [])
    return {
        "apiVersion": "kubevirt.io/v1",
        "kind": "KubeVirt",
        "metadata": {"name": name},
        "spec": {
            "configuration": {
                "developerConfiguration": {"featureGates": gates},
                "permittedHostDevices": {"pciHostDevices": list(pci)},
            }
        },
    }


def pci_claim(node: str, address: str, *, owner: str = "alice", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": names.API_VERSION,
        "kind": "PCIDeviceClaim",
        "metadata": {
            "name": names.pcidevice_name(node, address),
            "annotations": {names.ANNOTATION_REQUESTED_BY: owner},
        },
        "spec": {"address": address, "nodeName": node, "userName": owner, **spec},
    }


def usb_claim(name: str, *, owner: str = "alice") -> dict[str, Any]:
    return {
        "apiVersion": names.API_VERSION,
        "kind": "USBDeviceClaim",
        "metadata": {"name": name, "annotations": {names.ANNOTATION_REQUESTED_BY: owner}},
        "spec": {"userName": owner},
    }


def build_agent(
    host: SimHost,
    api: apiclient.KubeApi,
    node: str,
    *,
    pod_resources: allocations.Lister | None = None,
    chown: Any = None,
    **settings: Any,
) -> wiring.Agent:
    s = AgentSettings(node_name=node, device_plugins=False, udev=False, **settings)
    return wiring.build(
        s,
        api,
        root=host.root(),
        db=NamesDatabases.load(None, None),
        load_modules=host.sim.load_modules,
        serve_health=False,
        now=lambda: NOW,
        chown=chown or (lambda path, uid, gid: None),
        pod_resources=pod_resources,
        binder_timeouts=(2.0, 1.0, 0.5),
    )
