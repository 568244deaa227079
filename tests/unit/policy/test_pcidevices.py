"""PCIDevice admission: written only by the node's agent (judged by recomputed name, label and status), the
garbage collector and cluster-admins (A10, A10u); deleted only while unclaimed or once the node is gone (A8);
addresses always valid (A11)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.objects import (
    ADMIN,
    NODE1,
    NODE1A,
    TENANT_A,
    Lab,
    agent,
    changed,
    gc,
    judge,
    pciclaim,
    review,
    user,
    without_status,
)

GPU = Lab.gpu["metadata"]["name"]
GPU_1A = Lab.gpu_1a["metadata"]["name"]
# node1-a's GPU relabelled for node1: its name still says node1-a
FORGED = changed(without_status(Lab.gpu_1a), "metadata.labels.nodename", NODE1)


def case(
    id: str,
    body: dict[str, Any],
    allowed: bool,
    message: str = "",
    *,
    extra: tuple[dict[str, Any], ...] = (),
    nodes: tuple[str, ...] = (NODE1, NODE1A),
    code: int = 403,
) -> Any:
    return pytest.param(body, allowed, message, extra, nodes, code, id=id)


CASES = [
    case(
        "allow create of pcidevice by the node's agent (status dropped by the api server)",
        review("CREATE", without_status(Lab.gpu), user_info=agent(NODE1)),
        True,
    ),
    case(
        "allow create of pcidevice with status by the node's agent",
        review("CREATE", Lab.gpu, user_info=agent(NODE1)),
        True,
    ),
    case(
        "allow create of pcidevice by the agent of a node whose name extends another's",
        review("CREATE", without_status(Lab.gpu_1a), user_info=agent(NODE1A)),
        True,
    ),
    case(
        "forbid create of pcidevice by the agent of a prefix-sharing node",
        review("CREATE", without_status(Lab.gpu), user_info=agent(NODE1A)),
        False,
        f'label nodename is "{NODE1}" but the token of "system:serviceaccount:harvester-system:pcidevices-agent" '
        f'is bound to node "{NODE1A}"',
    ),
    case(
        "forbid create of pcidevice named for a prefix-sharing node by an agent whose label matches",
        review("CREATE", FORGED, user_info=agent(NODE1)),
        False,
        f'the name does not have the form "{NODE1}-<address without : and .>" of node "{NODE1}"',
    ),
    case(
        "forbid create of pcidevice named for another node with status by the agent",
        review("CREATE", changed(Lab.gpu_1a, "metadata.labels.nodename", NODE1), user_info=agent(NODE1)),
        False,
        f'status.nodeName is "{NODE1A}"',
    ),
    case(
        "forbid update of pcidevice status whose address does not give the name",
        review(
            "UPDATE",
            changed(Lab.gpu, "status.address", "0000:3b:00.1"),
            Lab.gpu,
            user_info=agent(NODE1),
            sub_resource="status",
        ),
        False,
        'from its node and status.address; node "node1" and "0000:3b:00.1" give "node1-00003b001"',
    ),
    case(
        "forbid update of pcidevice status with a path as address",
        review("UPDATE", changed(Lab.gpu, "status.address", "../../x"), Lab.gpu, user_info=user(ADMIN)),
        False,
        'can only name PCI addresses of the form 0000:3b:00.0 in status.address; got "../../x"',
    ),
    case(
        "forbid update of pcidevice status with a path in its iommu group members",
        review(
            "UPDATE",
            changed(Lab.gpu, "status.iommuGroupMembers", [{"address": "/etc", "bridge": False}]),
            Lab.gpu,
            user_info=agent(NODE1),
            sub_resource="status",
        ),
        False,
        'in status.iommuGroupMembers; got "/etc"',
    ),
    case(
        "allow update of pcidevice status marking a claimed device absent by the node's agent",
        review(
            "UPDATE", changed(Lab.gpu, "status.absent", True), Lab.gpu, user_info=agent(NODE1), sub_resource="status"
        ),
        True,
        extra=(pciclaim(Lab.gpu),),
    ),
    case(
        "forbid update of pcidevice by the agent of a prefix-sharing node",
        review("UPDATE", Lab.gpu, Lab.gpu, user_info=agent(NODE1A), sub_resource="status"),
        False,
        f'is bound to node "{NODE1A}"',
    ),
    case(
        "forbid update of pcidevice taking over another node's object by relabelling it",
        review("UPDATE", changed(Lab.gpu_1a, "metadata.labels.nodename", NODE1), Lab.gpu_1a, user_info=agent(NODE1)),
        False,
        f'label nodename is "{NODE1A}"',
    ),
    case(
        "forbid update of pcidevice by a user",
        review("UPDATE", changed(Lab.gpu, "metadata.labels.x", "y"), Lab.gpu, user_info=user(TENANT_A)),
        False,
        f'pcidevice "{GPU}" can only be changed by the node agent of its node, the garbage collector or '
        f'cluster-admins; user "{TENANT_A}" may not; to use the device create a pcideviceclaim instead',
    ),
    case(
        "forbid create of pcidevice by a user",
        review("CREATE", without_status(Lab.gpu), user_info=user(TENANT_A)),
        False,
        "can only be created by the node agent",
    ),
    case(
        "allow update of pcidevice by a cluster-admin",
        review("UPDATE", changed(Lab.gpu, "metadata.labels.x", "y"), Lab.gpu, user_info=user(ADMIN)),
        True,
    ),
    case(
        "allow update of pcidevice by the garbage collector",
        review("UPDATE", changed(Lab.gpu, "metadata.ownerReferences", None), Lab.gpu, user_info=gc()),
        True,
    ),
    case(
        "forbid any write of pcidevice by an agent token without the node-name extra",
        review("UPDATE", Lab.gpu, Lab.gpu, user_info=agent(None), sub_resource="status"),
        False,
        "its token carries no authentication.kubernetes.io/node-name extra",
    ),
    case(
        "forbid update of pcidevice whose status.hostcritical is not a boolean with code 400",
        review("UPDATE", changed(Lab.gpu, "status.hostCritical", "yes"), Lab.gpu, user_info=agent(NODE1)),
        False,
        "status.hostCritical must be a boolean",
        code=400,
    ),
    case(
        "allow delete of unclaimed pcidevice by the node's agent",
        review("DELETE", old=Lab.gpu, user_info=agent(NODE1)),
        True,
    ),
    case(
        "forbid delete of claimed pcidevice by the node's agent",
        review("DELETE", old=Lab.gpu, user_info=agent(NODE1)),
        False,
        f'pcidevice "{GPU}" can only be deleted while unclaimed or once node "{NODE1}" is gone; pcideviceclaim '
        f'"{GPU}" of "{TENANT_A}" holds it; delete the claim first',
        extra=(pciclaim(Lab.gpu),),
    ),
    case(
        "forbid delete of claimed pcidevice by a cluster-admin",
        review("DELETE", old=Lab.gpu, user_info=user(ADMIN)),
        False,
        "can only be deleted while unclaimed",
        extra=(pciclaim(Lab.gpu),),
    ),
    case(
        "allow delete of claimed pcidevice by the garbage collector once the node is gone",
        review("DELETE", old=Lab.gpu, user_info=gc()),
        True,
        extra=(pciclaim(Lab.gpu),),
        nodes=(NODE1A,),
    ),
    case(
        "forbid delete of pcidevice by a user",
        review("DELETE", old=Lab.gpu, user_info=user(TENANT_A)),
        False,
        "can only be deleted by the node agent",
    ),
    case(
        "forbid delete of pcidevice of another node by an agent",
        review("DELETE", old=Lab.gpu_1a, user_info=agent(NODE1)),
        False,
        f'label nodename is "{NODE1A}"',
    ),
    case(
        "forbid delete of claimed pcidevice known only from the cluster view",
        changed(review("DELETE", old=Lab.gpu, user_info=agent(NODE1)), "request.oldObject", None),
        False,
        "can only be deleted while unclaimed",
        extra=(pciclaim(Lab.gpu),),
    ),
]


@pytest.mark.parametrize(("body", "allowed", "message", "extra", "nodes", "code"), CASES)
def test_pcidevice_admission(
    body: dict[str, Any], allowed: bool, message: str, extra: Any, nodes: tuple[str, ...], code: int
) -> None:
    d = judge(body, Lab.cluster(*extra, nodes=nodes))
    assert d.allowed is allowed, d.message
    assert message in d.message
    if not allowed:
        assert d.code == code and d.message[0].islower()


def test_devices_get_no_mutation() -> None:
    d = judge(review("CREATE", Lab.gpu, user_info=agent(NODE1)), Lab.cluster(), mutate=True)
    assert d.allowed and d.patch == ()


# -- names are node-bound (A10, issue 23) ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("resource_name", "pooled", "allowed"),
    [
        pytest.param("nvidia.com/node1-a-00003b000", "", True, id="allow its own per-device name"),
        pytest.param("nvidia.com/TU104GL_TESLA_T4", "", True, id="allow a pooled name"),
        pytest.param("nvidia.com/TU104GL_TESLA_T4", "nvidia.com/TU104GL_TESLA_T4", True,
                     id="allow the pooled name it reports for its model"),
        pytest.param("nvidia.com/node1-00003b000", "", False, id="forbid another node's per-device name"),
        pytest.param("nvidia.com/node1-00003b000", "nvidia.com/TU104GL_TESLA_T4", False,
                     id="forbid another node's per-device name beside a pooled name"),
        pytest.param("nvidia.com/GA100_A100", "nvidia.com/TU104GL_TESLA_T4", False,
                     id="forbid a pooled name other than its model's"),
        pytest.param("intel.com/node1-a-00003b000", "nvidia.com/TU104GL_TESLA_T4", False,
                     id="forbid its per-device name under another vendor"),
        pytest.param("nvidia.com/TU104GL_TESLA_T4", "nvidia.com/node1-00003b000", False,
                     id="forbid a pooled name in per-device shape"),
    ],
)  # fmt: skip
def test_an_agent_offers_its_device_only_under_its_own_names(resource_name: str, pooled: str, allowed: bool) -> None:
    new = changed(Lab.gpu_1a, "status.resourceName", resource_name)
    if pooled:
        new = changed(new, "status.pooledResourceName", pooled)
    body = review("UPDATE", new, Lab.gpu_1a, user_info=agent(NODE1A), sub_resource="status")
    d = judge(body, Lab.cluster())
    assert d.allowed is allowed, d.message
    if not allowed:
        assert "can only be offered by its agent under its own names" in d.message
