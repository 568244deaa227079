"""USBDeviceClaim admission: allow/forbid table (A1u, A5, owner, A6, A7) and the mutation patch."""

from __future__ import annotations

from typing import Any

import jsonpatch  # type: ignore[import-untyped]
import pytest

from policy import names
from policy.access import Grant
from policy.objects import FINALIZER_AGENT
from tests.support.objects import (
    NODE1,
    NODE1A,
    TENANT_A,
    TENANT_B,
    Lab,
    agent,
    changed,
    judge,
    pciclaim,
    review,
    usbclaim,
    user,
)

OWNER = names.ANNOTATION_REQUESTED_BY
GRANTS = (
    Grant(TENANT_A, "claim", names.GROUP, "usbdevices"),
    Grant(TENANT_B, "claim", names.GROUP, "usbdevices"),
    Grant("releaser", "release", names.GROUP, "usbdevices"),
)
STICK = Lab.stick["metadata"]["name"]
XHCI = Lab.xhci["metadata"]["name"]
SMBUS = Lab.smbus["metadata"]["name"]


def case(
    id: str, body: dict[str, Any], allowed: bool, message: str = "", *, extra: tuple[dict[str, Any], ...] = ()
) -> Any:
    return pytest.param(body, allowed, message, extra, id=id)


_OWNED = usbclaim(Lab.stick, finalizers=[FINALIZER_AGENT])

CASES = [
    case("allow create of usbdeviceclaim by its owner", review("CREATE", usbclaim(Lab.stick)), True),
    case(
        "allow create of a ui-shaped usbdeviceclaim carrying only spec.username",
        review("CREATE", usbclaim(Lab.stick, ui=True, user_name="admin")),
        True,
    ),
    case(
        "allow create of a ui-shaped usbdeviceclaim carrying node and controller address",
        review("CREATE", usbclaim(Lab.stick, ui=True, ui_location=True)),
        True,
    ),
    case(
        "allow create of usbdeviceclaim re-sent for a device its owner already claimed",
        review("CREATE", usbclaim(Lab.stick, ui=True)),
        True,
        extra=(usbclaim(Lab.stick),),
    ),
    case(
        "forbid create of usbdeviceclaim already claimed by another owner",
        review("CREATE", usbclaim(Lab.stick)),
        False,
        f'usbdevice "{STICK}" is already claimed by "{TENANT_B}"',
        extra=(usbclaim(Lab.stick, owner=TENANT_B),),
    ),
    case(
        "forbid create of usbdeviceclaim for a device that does not exist",
        review("CREATE", changed(usbclaim(Lab.stick), "metadata.name", "node1-0951-1666-009009")),
        False,
        'usbdeviceclaim "node1-0951-1666-009009" can only claim an existing usbdevice',
    ),
    case(
        "forbid create of usbdeviceclaim without the claim verb",
        review("CREATE", usbclaim(Lab.stick, owner="tenant-c"), user_info=user("tenant-c")),
        False,
        "lacks the verb claim on usbdevices",
    ),
    case(
        "forbid create of usbdeviceclaim whose owner annotation names another user",
        review("CREATE", usbclaim(Lab.stick, owner=TENANT_B)),
        False,
        f'names "{TENANT_B}" but the requester is "{TENANT_A}"',
    ),
    case(
        "forbid create of usbdeviceclaim whose spec.nodename is another node",
        review("CREATE", changed(usbclaim(Lab.stick), "spec.nodeName", NODE1A)),
        False,
        f'spec.nodeName is "{NODE1A}" but usbdevice "{STICK}" has "{NODE1}"',
    ),
    case(
        "forbid create of usbdeviceclaim whose spec.pciaddress is not an address",
        review("CREATE", changed(usbclaim(Lab.stick), "spec.pciAddress", "../../../sys")),
        False,
        'in spec.pciAddress; got "../../../sys"',
    ),
    case(
        "forbid create of usbdeviceclaim while its host controller is pci-claimed",
        review("CREATE", usbclaim(Lab.stick)),
        False,
        f'its controller pcidevice "{XHCI}" is claimed by "{TENANT_B}"; delete pcideviceclaim "{XHCI}" first',
        extra=(pciclaim(Lab.xhci, owner=TENANT_B),),
    ),
    case(
        "forbid create of usbdeviceclaim while a member of its controller's iommu group is pci-claimed",
        review("CREATE", usbclaim(Lab.stick)),
        False,
        f'shares IOMMU group "3" with pcidevice "{SMBUS}", claimed by "{TENANT_A}"',
        extra=(pciclaim(Lab.smbus, owner=TENANT_A),),
    ),
    case(
        "allow create of usbdeviceclaim on a node whose name extends another node's name",
        review("CREATE", usbclaim(Lab.stick_1a)),
        True,
        extra=(pciclaim(Lab.xhci, owner=TENANT_B),),
    ),
    case(
        "allow create of usbdeviceclaim for a device whose controller address is unknown",
        review("CREATE", usbclaim(Lab.stick)),
        True,
        extra=(changed(Lab.stick, "status.pciAddress", None), pciclaim(Lab.xhci, owner=TENANT_B)),
    ),
    case(
        "forbid create of usbdeviceclaim for an absent device",
        review("CREATE", usbclaim(Lab.stick)),
        False,
        "is marked absent",
        extra=(changed(Lab.stick, "status.status", "orphaned"),),
    ),
    case(
        "forbid create of usbdeviceclaim by a node agent",
        review("CREATE", usbclaim(Lab.stick), user_info=agent(NODE1)),
        False,
        "may not create claims",
    ),
    case(
        "forbid update of usbdeviceclaim changing spec.username",
        review("UPDATE", changed(_OWNED, "spec.userName", "bob"), _OWNED),
        False,
        f'usbdeviceclaim "{STICK}" can only keep the spec it was created with',
    ),
    case(
        "forbid update of usbdeviceclaim removing the agent finalizer by its owner",
        review("UPDATE", changed(_OWNED, "metadata.finalizers", None), _OWNED),
        False,
        f"can only lose the finalizer {FINALIZER_AGENT}",
    ),
    case(
        "allow update of usbdeviceclaim removing the agent finalizer by the node's agent",
        review("UPDATE", changed(_OWNED, "metadata.finalizers", None), _OWNED, user_info=agent(NODE1)),
        True,
    ),
    case(
        "forbid update of usbdeviceclaim status by the agent of a prefix-sharing node",
        review("UPDATE", _OWNED, _OWNED, user_info=agent(NODE1A), sub_resource="status"),
        False,
        f'it belongs to node "{NODE1}"',
    ),
    case("allow delete of usbdeviceclaim by its owner", review("DELETE", old=_OWNED), True),
    case(
        "allow delete of usbdeviceclaim by another tenant with release",
        review("DELETE", old=_OWNED, user_info=user("releaser")),
        True,
    ),
    case(
        "forbid delete of usbdeviceclaim by another tenant without release",
        review("DELETE", old=_OWNED, user_info=user(TENANT_B)),
        False,
        "lacks the verb release on usbdevices",
    ),
]


@pytest.mark.parametrize(("body", "allowed", "message", "extra"), CASES)
def test_usbdeviceclaim_admission(body: dict[str, Any], allowed: bool, message: str, extra: Any) -> None:
    d = judge(body, Lab.cluster(*extra), GRANTS)
    assert d.allowed is allowed, d.message
    assert message in d.message
    if not allowed:
        assert d.code == 403 and d.message[0].islower()


def test_mutation_completes_a_ui_usb_claim_carrying_only_the_username() -> None:
    claim = usbclaim(Lab.stick, owner=None, user_name="admin")
    body = review("CREATE", claim)
    d = judge(body, Lab.cluster(), GRANTS, mutate=True)
    obj = jsonpatch.apply_patch(body["request"]["object"], list(d.patch))
    assert obj["spec"] == {"userName": "admin"}
    assert obj["metadata"]["annotations"] == {OWNER: TENANT_A}
    assert obj["metadata"]["labels"] == {names.LABEL_NODENAME: NODE1}
    assert obj["metadata"]["ownerReferences"] == [
        {"apiVersion": names.API_VERSION, "kind": "USBDevice", "name": STICK, "uid": Lab.stick["metadata"]["uid"]}
    ]
    assert judge(review("CREATE", obj), Lab.cluster(), GRANTS).allowed


def test_mutation_defaults_the_username_of_a_usb_claim_without_spec() -> None:
    claim = changed(usbclaim(Lab.stick, owner=None), "spec", None)
    body = review("CREATE", claim)
    d = judge(body, Lab.cluster(), GRANTS, mutate=True)
    obj = jsonpatch.apply_patch(body["request"]["object"], list(d.patch))
    assert obj["spec"] == {"userName": TENANT_A}


def test_mutation_of_a_claim_for_an_unknown_device_adds_no_ownerreference_or_label() -> None:
    claim = changed(usbclaim(Lab.stick, owner=None), "metadata.name", "node9-0951-1666-001001")
    body = review("CREATE", claim)
    d = judge(body, Lab.cluster(), GRANTS, mutate=True)
    paths = {op["path"] for op in d.patch}
    assert paths == {"/metadata/annotations"}
