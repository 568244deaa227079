"""KubeVirt CR admission (A10): a node agent may only add permits for resources claimed on its node and remove
permits no claim on another node needs; any other change by an agent is refused."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.objects import (
    NODE1,
    NODE1A,
    TENANT_A,
    Lab,
    agent,
    changed,
    judge,
    kubevirt,
    pci_permit,
    pciclaim,
    review,
    usb_permit,
    usbclaim,
    user,
)

POOL = "nvidia.com/TU104GL_TESLA_T4"
POOLED_GPU = changed(Lab.gpu, "status.resourceName", POOL)
POOLED_GPU_1A = changed(Lab.gpu_1a, "status.resourceName", POOL)
GPU_CLAIMED = (pciclaim(Lab.gpu),)
EMPTY = kubevirt()


def case(
    id: str,
    body: dict[str, Any],
    allowed: bool,
    message: str = "",
    *,
    extra: tuple[dict[str, Any], ...] = (),
    code: int = 403,
) -> Any:
    return pytest.param(body, allowed, message, extra, code, id=id)


def by_agent(new: dict[str, Any], old: dict[str, Any], node: str | None = NODE1) -> dict[str, Any]:
    return review("UPDATE", new, old, user_info=agent(node))


CASES = [
    case(
        "allow update of kubevirt adding the permit of a device claimed on the agent's node",
        by_agent(kubevirt(pci=[pci_permit(Lab.gpu)]), EMPTY),
        True,
        extra=GPU_CLAIMED,
    ),
    case(
        "allow update of kubevirt adding the usb permit of a device claimed on the agent's node",
        by_agent(kubevirt(usb=[usb_permit(Lab.stick)]), EMPTY),
        True,
        extra=(usbclaim(Lab.stick),),
    ),
    case(
        "allow update of kubevirt adding a permit when the cr had no permittedhostdevices",
        by_agent(kubevirt(pci=[pci_permit(Lab.gpu)]), changed(EMPTY, "spec.configuration.permittedHostDevices", None)),
        True,
        extra=GPU_CLAIMED,
    ),
    case(
        "forbid update of kubevirt adding the permit of an unclaimed device",
        by_agent(kubevirt(pci=[pci_permit(Lab.gpu)]), EMPTY),
        False,
        f'can only gain permittedHostDevices entries for devices claimed on node "{NODE1}"; the pciHostDevices entry '
        f'"{Lab.gpu["status"]["resourceName"]}" names no device claimed on that node',
    ),
    case(
        "forbid update of kubevirt adding the permit of a device claimed on a prefix-sharing node",
        by_agent(kubevirt(pci=[pci_permit(Lab.gpu_1a)]), EMPTY),
        False,
        "names only devices claimed on other nodes",
        extra=(pciclaim(Lab.gpu_1a),),
    ),
    case(
        "forbid update of kubevirt adding a permit without externalresourceprovider",
        by_agent(kubevirt(pci=[pci_permit(Lab.gpu, external=False)]), EMPTY),
        False,
        "with externalResourceProvider: true",
        extra=GPU_CLAIMED,
    ),
    case(
        "forbid update of kubevirt adding a permit whose selector is not the claimed device",
        by_agent(kubevirt(pci=[{**pci_permit(Lab.gpu), "pciVendorSelector": "8086:1572"}]), EMPTY),
        False,
        'selects "8086:1572" but the claimed devices on node "node1" are "10DE:1EB8"',
        extra=GPU_CLAIMED,
    ),
    case(
        "forbid update of kubevirt adding a usb permit with several selectors",
        by_agent(
            kubevirt(usb=[{**usb_permit(Lab.stick), "selectors": [{"vendor": "0951", "product": "1666"}] * 2}]), EMPTY
        ),
        False,
        'selects "(several or malformed selectors)"',
        extra=(usbclaim(Lab.stick),),
    ),
    case(
        "allow update of kubevirt removing the permit of the agent's node after the claim went",
        by_agent(EMPTY, kubevirt(pci=[pci_permit(Lab.gpu)])),
        True,
    ),
    case(
        "allow update of kubevirt removing a pooled permit no claim needs",
        by_agent(EMPTY, kubevirt(pci=[pci_permit(POOLED_GPU)])),
        True,
        extra=(POOLED_GPU, POOLED_GPU_1A),
    ),
    case(
        "forbid update of kubevirt removing a pooled permit a claim on another node needs",
        by_agent(EMPTY, kubevirt(pci=[pci_permit(POOLED_GPU)])),
        False,
        f'the pciHostDevices entry "{POOL}" is needed by claimed devices "{Lab.gpu_1a["metadata"]["name"]}"',
        extra=(POOLED_GPU, POOLED_GPU_1A, pciclaim(POOLED_GPU_1A)),
    ),
    case(
        "allow update of kubevirt removing a duplicated permit another node needs",
        by_agent(kubevirt(pci=[pci_permit(POOLED_GPU)]), kubevirt(pci=[pci_permit(POOLED_GPU)] * 2)),
        True,
        extra=(POOLED_GPU, POOLED_GPU_1A, pciclaim(POOLED_GPU_1A)),
    ),
    case(
        "forbid update of kubevirt removing another node's per-device permit",
        by_agent(EMPTY, kubevirt(pci=[pci_permit(Lab.gpu_1a)])),
        False,
        "is needed by claimed devices",
        extra=(pciclaim(Lab.gpu_1a),),
    ),
    case(
        "forbid update of kubevirt changing feature gates by an agent",
        by_agent(changed(EMPTY, "spec.configuration.developerConfiguration.featureGates", []), EMPTY),
        False,
        "also changed spec.configuration.developerConfiguration",
    ),
    case(
        "forbid update of kubevirt changing mediated devices by an agent",
        by_agent(changed(EMPTY, "spec.configuration.permittedHostDevices.mediatedDevices", [{"x": 1}]), EMPTY),
        False,
        "also changed spec.configuration.permittedHostDevices.mediatedDevices",
    ),
    case(
        "allow update of kubevirt by an agent while the server bumps resourceversion and status",
        by_agent(changed(changed(EMPTY, "metadata.resourceVersion", "4712"), "status.phase", "Deploying"), EMPTY),
        True,
    ),
    case(
        "forbid delete of kubevirt by an agent",
        review("DELETE", old=EMPTY, user_info=agent(NODE1)),
        False,
        "can only be updated by a node agent, never deleted",
    ),
    case(
        "forbid update of kubevirt by an agent token without the node-name extra",
        by_agent(kubevirt(pci=[pci_permit(Lab.gpu)]), EMPTY, node=None),
        False,
        "token bound to a node",
        extra=GPU_CLAIMED,
    ),
    case(
        "forbid update of kubevirt whose pcihostdevices is not a list with code 400",
        by_agent(changed(EMPTY, "spec.configuration.permittedHostDevices.pciHostDevices", "all"), EMPTY),
        False,
        "can only hold lists of objects in spec.configuration.permittedHostDevices.pciHostDevices",
        code=400,
    ),
    case(
        "allow update of kubevirt by a user (not an agent)",
        review(
            "UPDATE",
            changed(EMPTY, "spec.configuration.developerConfiguration.featureGates", []),
            EMPTY,
            user_info=user(TENANT_A),
        ),
        True,
    ),
    case(
        "allow update of kubevirt adding its node's permit by the agent of the prefix-sharing node",
        by_agent(kubevirt(pci=[pci_permit(Lab.gpu_1a)]), EMPTY, node=NODE1A),
        True,
        extra=(pciclaim(Lab.gpu_1a),),
    ),
]


@pytest.mark.parametrize(("body", "allowed", "message", "extra", "code"), CASES)
def test_kubevirt_admission(body: dict[str, Any], allowed: bool, message: str, extra: Any, code: int) -> None:
    d = judge(body, Lab.cluster(*extra))
    assert d.allowed is allowed, d.message
    assert message in d.message
    if not allowed:
        assert d.code == code and d.message[0].islower()
