"""The mission's own words through the in-cluster webhook (Service -> endpoints -> pod): a claim accepted and one
rejected with its message, the observe-mode warning, a VM with a device accepted and one rejected.

This machine has no IOMMU, so its own devices can only be refused (A2); the accepted cases use devices of a node
"ghost" that the test publishes as an administrator would see them from an agent (no kubelet runs there)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from policy import names
from tests.node.conftest import Installed
from tests.support.objects import pcidevice
from tests.support.vms import entry, vm

GHOST = "ghost"
CLAIMED, SPARE, OBSERVED = "0000:41:00.0", "0000:42:00.0", "0000:43:00.0"


def _apply(installed: Installed, obj: dict[str, Any], *, check: bool = True) -> Any:
    return installed.cp.kubectl("apply", "-f", "-", input=json.dumps(obj), check=check)


def _publish(installed: Installed, address: str, **status: Any) -> dict[str, Any]:
    device = pcidevice(GHOST, address, iommu_group=address[5:7])
    meta = {k: device["metadata"][k] for k in ("name", "labels")}
    _apply(installed, {"apiVersion": device["apiVersion"], "kind": "PCIDevice", "metadata": meta, "spec": {}})
    installed.cp.kubectl(
        "patch", "pcidevice", meta["name"], "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": {**device["status"], **status}}),
    )  # fmt: skip
    device["status"].update(status)
    return device


def claim(device: dict[str, Any]) -> dict[str, Any]:
    st = device["status"]
    return {
        "apiVersion": names.API_VERSION,
        "kind": "PCIDeviceClaim",
        "metadata": {"name": device["metadata"]["name"]},
        "spec": {"address": st["address"], "nodeName": st["nodeName"], "userName": "admin"},
    }


@pytest.fixture(scope="module")
def ghost(installed: Installed) -> dict[str, dict[str, Any]]:
    # No kubelet runs there: a taint keeps the agent's DaemonSet (and anything else) off it.
    taint = {"key": "pcidevices.test/no-kubelet", "effect": "NoSchedule"}
    _apply(installed, {"apiVersion": "v1", "kind": "Node", "metadata": {"name": GHOST}, "spec": {"taints": [taint]}})
    _apply(installed, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "vms"}})
    return {
        "claimed": _publish(installed, CLAIMED),
        "spare": _publish(installed, SPARE),
        "observed": _publish(installed, OBSERVED, observeOnly=True),
    }


def test_a_claim_is_accepted_and_its_owner_recorded(installed: Installed, ghost: dict[str, dict[str, Any]]) -> None:
    got = _apply(installed, claim(ghost["claimed"]))
    assert "created" in got.stdout or "configured" in got.stdout or "unchanged" in got.stdout
    stored = installed.kubectl_json("get", "pcideviceclaim", ghost["claimed"]["metadata"]["name"])
    assert stored["metadata"]["annotations"][names.ANNOTATION_REQUESTED_BY] == "admin"  # the mutating webhook ran


def test_a_claim_of_a_device_without_iommu_group_is_rejected_with_its_message(
    installed: Installed, ghost: dict[str, dict[str, Any]]
) -> None:
    device = _publish(installed, "0000:44:00.0", iommuGroup="", iommuGroupMembers=[])
    got = _apply(installed, claim(device), check=False)
    assert got.returncode != 0
    assert f'pcideviceclaim "{device["metadata"]["name"]}" can only claim a PCI device that has an IOMMU group' in (
        got.stderr
    ), got.stderr


def test_a_claim_for_an_observe_only_node_is_admitted_with_the_warning(
    installed: Installed, ghost: dict[str, dict[str, Any]]
) -> None:
    got = _apply(installed, claim(ghost["observed"]))
    assert got.returncode == 0
    assert "Warning:" in got.stderr and "observe mode" in got.stderr, got.stderr


def test_a_vm_with_a_claimed_device_is_accepted(installed: Installed, ghost: dict[str, dict[str, Any]]) -> None:
    _apply(installed, claim(ghost["claimed"]))
    got = _apply(installed, vm("with-gpu", "vms", host=[entry(ghost["claimed"])]), check=False)
    assert got.returncode == 0, got.stderr


def test_a_vm_with_an_unclaimed_device_is_rejected_with_its_message(
    installed: Installed, ghost: dict[str, dict[str, Any]]
) -> None:
    got = _apply(installed, vm("with-spare", "vms", host=[entry(ghost["spare"])]), check=False)
    assert got.returncode != 0
    assert 'virtualmachine "with-spare"' in got.stderr and "denied the request" in got.stderr, got.stderr
