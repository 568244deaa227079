"""USBDevice admission: the agent's objects judged by the name recomputed from node, ids and bus/device numbers;
ids, device paths and controller addresses in their exact forms (A11); A8 and A10u as for PCI devices."""

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
    gc,
    judge,
    review,
    usbclaim,
    user,
    without_status,
)

STICK = Lab.stick["metadata"]["name"]


def case(
    id: str,
    body: dict[str, Any],
    allowed: bool,
    message: str = "",
    *,
    extra: tuple[dict[str, Any], ...] = (),
    nodes: tuple[str, ...] = (NODE1, NODE1A),
) -> Any:
    return pytest.param(body, allowed, message, extra, nodes, id=id)


def status_update(new: dict[str, Any], who: dict[str, Any]) -> dict[str, Any]:
    return review("UPDATE", new, Lab.stick, user_info=who, sub_resource="status")


CASES = [
    case(
        "allow create of usbdevice by the node's agent",
        review("CREATE", without_status(Lab.stick), user_info=agent(NODE1)),
        True,
    ),
    case("allow update of usbdevice status by the node's agent", status_update(Lab.stick, agent(NODE1)), True),
    case(
        "allow update of usbdevice status without bus numbers but with a device path",
        status_update(changed(changed(Lab.stick, "status.busNum", None), "status.devNum", None), agent(NODE1)),
        True,
    ),
    case(
        "forbid update of usbdevice status whose device number does not give the name",
        status_update(changed(Lab.stick, "status.devNum", 5), agent(NODE1)),
        False,
        'give "node1-0951-1666-002005"',
    ),
    case(
        "forbid update of usbdevice status with a device path outside /dev/bus/usb",
        status_update(changed(Lab.stick, "status.devicePath", "/dev/bus/usb/../../sda"), agent(NODE1)),
        False,
        'can only have status.devicePath of the form /dev/bus/usb/BBB/DDD; got "/dev/bus/usb/../../sda"',
    ),
    case(
        "forbid update of usbdevice status with an upper-case vendor id",
        status_update(changed(Lab.stick, "status.vendorID", "09G1"), agent(NODE1)),
        False,
        'status.vendorID of 4 lower-case hex digits; got "09G1"',
    ),
    case(
        "forbid update of usbdevice status with a bus number beyond three digits",
        status_update(changed(Lab.stick, "status.busNum", 1000), agent(NODE1)),
        False,
        'can only have status.busNum from 1 to 999; got "1000"',
    ),
    case(
        "forbid update of usbdevice status with a bad controller address",
        status_update(changed(Lab.stick, "status.pciAddress", "0000:00:14"), agent(NODE1)),
        False,
        'in status.pciAddress; got "0000:00:14"',
    ),
    case(
        "forbid create of usbdevice by the agent of a prefix-sharing node",
        review("CREATE", without_status(Lab.stick), user_info=agent(NODE1A)),
        False,
        f'label nodename is "{NODE1}"',
    ),
    case(
        "forbid create of usbdevice named for a prefix-sharing node with the agent's label",
        review(
            "CREATE", changed(without_status(Lab.stick_1a), "metadata.labels.nodename", NODE1), user_info=agent(NODE1)
        ),
        False,
        f'the name does not have the form "{NODE1}-<vendor>-<product>-<bus><device>" of node "{NODE1}"',
    ),
    case(
        "forbid update of usbdevice by a user",
        review("UPDATE", changed(Lab.stick, "metadata.labels.x", "y"), Lab.stick, user_info=user(TENANT_A)),
        False,
        f'usbdevice "{STICK}" can only be changed by the node agent of its node',
    ),
    case(
        "forbid delete of claimed usbdevice by the node's agent",
        review("DELETE", old=Lab.stick, user_info=agent(NODE1)),
        False,
        f'usbdevice "{STICK}" can only be deleted while unclaimed or once node "{NODE1}" is gone',
        extra=(usbclaim(Lab.stick),),
    ),
    case(
        "allow delete of claimed usbdevice by the garbage collector once the node is gone",
        review("DELETE", old=Lab.stick, user_info=gc()),
        True,
        extra=(usbclaim(Lab.stick),),
        nodes=(NODE1A,),
    ),
    case(
        "allow delete of unclaimed usbdevice by the node's agent",
        review("DELETE", old=Lab.stick, user_info=agent(NODE1)),
        True,
    ),
]


@pytest.mark.parametrize(("body", "allowed", "message", "extra", "nodes"), CASES)
def test_usbdevice_admission(
    body: dict[str, Any], allowed: bool, message: str, extra: Any, nodes: tuple[str, ...]
) -> None:
    d = judge(body, Lab.cluster(*extra, nodes=nodes))
    assert d.allowed is allowed, d.message
    assert message in d.message
    if not allowed:
        assert d.code == 403 and d.message[0].islower()
