"""Claims for devices of a node whose agent runs in observe mode are admitted with a warning (DESIGN §6)."""

from __future__ import annotations

import copy
from typing import Any

from nodeagent import settings as agent_settings
from policy import messages
from policy.access import Grant
from policy.objects import PCIDevice, USBDevice
from tests.support.objects import TENANT_A, Lab, judge, pciclaim, review, usbclaim, user

GRANTS = (
    Grant(TENANT_A, "claim", "devices.harvesterhci.io", "pcidevices"),
    Grant(TENANT_A, "claim", "devices.harvesterhci.io", "usbdevices"),
)


def _observed(device: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(device)
    out["status"]["observeOnly"] = True
    return out


def _cluster_with(device: dict[str, Any]) -> list[Any]:
    name = device["metadata"]["name"]
    return [o for o in Lab.cluster() if o.get("metadata", {}).get("name") != name] + [device]


def test_pci_claim_for_an_observe_only_node_is_admitted_with_the_warning() -> None:
    gpu = _observed(Lab.gpu)
    d = judge(review("CREATE", pciclaim(gpu, owner=TENANT_A), user_info=user(TENANT_A)), _cluster_with(gpu), GRANTS)
    assert d.allowed, d.message
    warning = next(w for w in d.warnings if "observe mode" in w)
    assert warning.startswith(f'pcideviceclaim "{gpu["metadata"]["name"]}" targets node "node1"')
    assert "ObserveOnly" in warning


def test_pci_claim_for_a_normal_node_gets_no_observe_warning() -> None:
    d = judge(review("CREATE", pciclaim(Lab.gpu, owner=TENANT_A), user_info=user(TENANT_A)), Lab.cluster(), GRANTS)
    assert d.allowed, d.message
    assert not any("observe mode" in w for w in d.warnings)


def test_usb_claim_for_an_observe_only_node_is_admitted_with_the_warning() -> None:
    stick = _observed(Lab.stick)
    d = judge(review("CREATE", usbclaim(stick, owner=TENANT_A), user_info=user(TENANT_A)), _cluster_with(stick), GRANTS)
    assert d.allowed, d.message
    assert len(d.warnings) == 1 and d.warnings[0].startswith("usbdeviceclaim"), d.warnings
    assert "observe mode" in d.warnings[0]


def test_device_views_read_status_observe_only() -> None:
    assert PCIDevice.from_dict(_observed(Lab.gpu)).observe_only
    assert not PCIDevice.from_dict(Lab.gpu).observe_only
    assert USBDevice.from_dict(_observed(Lab.stick)).observe_only


def test_the_warning_names_the_label_the_agent_reads() -> None:
    assert f"{agent_settings.LABEL_OBSERVE_ONLY}=true" in messages.WARN_OBSERVE_ONLY
