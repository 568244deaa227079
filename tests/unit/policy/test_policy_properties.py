"""Properties of the rules over generated clusters (Hypothesis), each checked against a plain statement of the rule:
A3 group completeness with its sibling warning, and A10's node binding for agents (node names that share prefixes
or contain '-')."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from policy import dispatch, names
from policy.access import Grant, StaticAccess
from policy.review import AdmissionRequest
from policy.settings import PolicySettings
from policy.snapshot import ClusterIndex
from tests.support.objects import (
    TENANT_A,
    TENANT_B,
    agent,
    changed,
    node,
    pciclaim,
    pcidevice,
    review,
    usbclaim,
    usbdevice,
    without_status,
)

ACCESS = StaticAccess([Grant(TENANT_A, "claim")])
NODE = "n-1"

member_st = st.fixed_dictionaries(
    {
        "known": st.booleans(),
        "bridge": st.booleans(),
        "critical": st.booleans(),
        "owner": st.sampled_from([None, TENANT_A, TENANT_B]),
        "usb_controller": st.booleans(),
        "usb_claimed": st.booleans(),
    }
)


@settings(max_examples=150, deadline=None)
@given(st.lists(member_st, min_size=0, max_size=4))
def test_a_group_goes_to_one_owner_only_when_every_sibling_allows_it(siblings: list[dict[str, Any]]) -> None:
    addresses = [f"0000:3b:00.{i}" for i in range(len(siblings) + 1)]
    members = [(addresses[0], False)] + [(a, s["bridge"]) for a, s in zip(addresses[1:], siblings, strict=True)]
    target = pcidevice(NODE, addresses[0], iommu_group="7", members=members)
    cluster: list[dict[str, Any]] = [node(NODE), target]
    expected_ok, expected_siblings = True, []
    for address, s in zip(addresses[1:], siblings, strict=True):
        if s["bridge"]:
            continue  # bridges never have objects and never count
        if not s["known"]:
            expected_ok = False
            continue
        dev = pcidevice(
            NODE,
            address,
            class_id="0c03" if s["usb_controller"] else "0403",
            iommu_group="7",
            members=members,
            host_critical=s["critical"],
            reasons=["holds /"] if s["critical"] else [],
        )
        cluster.append(dev)
        if s["owner"]:
            cluster.append(pciclaim(dev, owner=s["owner"]))
        if s["usb_controller"] and s["usb_claimed"]:
            stick = usbdevice(NODE, bus=1, dev=int(address[-1]) + 2, pci_address=address)
            cluster += [stick, usbclaim(stick, owner=TENANT_B)]
        if s["critical"] or s["owner"] == TENANT_B or (s["usb_controller"] and s["usb_claimed"]):
            expected_ok = False
        elif s["owner"] is None:
            expected_siblings.append(dev["metadata"]["name"])
    body = review("CREATE", pciclaim(target))
    d = dispatch.validate(
        AdmissionRequest.from_review(body), ClusterIndex.from_objects(cluster), ACCESS, PolicySettings()
    )
    assert d.allowed is expected_ok, d.message
    if expected_ok and expected_siblings:
        assert len(d.warnings) == 1
        assert all(f'"{n}"' in d.warnings[0] for n in expected_siblings)
    elif expected_ok:
        assert d.warnings == ()
    else:
        assert d.rule == "A3"


node_names = st.text(alphabet="ab-1", min_size=1, max_size=6).filter(lambda n: n[0] != "-" and n[-1] != "-")


@settings(max_examples=200, deadline=None)
@given(
    owner_node=node_names,
    agent_node=node_names,
    with_status=st.booleans(),
    forged_label=st.booleans(),
    op=st.sampled_from(["CREATE", "UPDATE", "DELETE"]),
)
def test_an_agent_writes_a_device_object_only_of_its_own_node(
    owner_node: str, agent_node: str, with_status: bool, forged_label: bool, op: str
) -> None:
    """Even with the nodename label forged to the agent's node, the name (and status) give the owner away."""
    dev = pcidevice(owner_node, "0000:3b:00.0")
    obj = dev if with_status else without_status(dev)
    if forged_label:
        obj = changed(obj, "metadata.labels.nodename", agent_node)
    if op == "CREATE":
        body = review("CREATE", obj, user_info=agent(agent_node))
    elif op == "UPDATE":
        body = review("UPDATE", obj, obj, user_info=agent(agent_node))
    else:
        body = review("DELETE", old=obj, user_info=agent(agent_node))
    view = ClusterIndex.from_objects([node(owner_node), node(agent_node)])
    d = dispatch.validate(AdmissionRequest.from_review(body), view, ACCESS, PolicySettings())
    assert d.allowed is (owner_node == agent_node), (owner_node, agent_node, d.message)
    assert names.pcidevice_name(owner_node, "0000:3b:00.0") == dev["metadata"]["name"]
