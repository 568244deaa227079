"""ResourceClaim and ResourceClaimTemplate admission (rules D0-D7): allow/forbid tables over an in-memory view, the
mutation (admission record, narrowing of broad requests) applied with jsonpatch, and the selector reader."""

from __future__ import annotations

from typing import Any

import jsonpatch  # type: ignore[import-untyped]
import pytest

from policy import dra, names, records
from policy.access import Grant
from policy.records import Requester
from policy.review import UserInfo
from tests.support.dra import (
    NAMESPACE,
    RESOURCE_CLAIM_CONTROLLER,
    claim_template,
    device_class,
    dra_pciclaim,
    dra_review,
    dra_usbclaim,
    from_template,
    our_classes,
    pin_address,
    pin_pci,
    pin_usb,
    request,
    resourceclaim,
)
from tests.support.objects import NODE1, NODE1A, TENANT_A, TENANT_B, Lab, admit, judge, pciclaim, user

GPU = Lab.gpu["metadata"]["name"]
AUDIO = Lab.audio["metadata"]["name"]
GPU_1A = Lab.gpu_1a["metadata"]["name"]
AUDIO_1A = Lab.audio_1a["metadata"]["name"]
XHCI = Lab.xhci["metadata"]["name"]
STICK = Lab.stick["metadata"]["name"]
NIC_FREE = Lab.gpu_beside_critical["metadata"]["name"]


def _use(who: str, resource: str, name: str, namespace: str = NAMESPACE) -> Grant:
    return Grant(who, "use", names.GROUP, resource, name=name, namespace=namespace)


GRANTS = (
    _use(TENANT_A, "pcidevices", GPU),
    _use(TENANT_A, "pcidevices", AUDIO),
    _use(TENANT_A, "pcidevices", XHCI),
    _use(TENANT_A, "usbdevices", STICK),
    _use(TENANT_B, "pcidevices", GPU_1A, "team-b"),
    _use(TENANT_B, "pcidevices", AUDIO_1A, "team-b"),
)
# tenant-a offers the GPU and its audio function (one IOMMU group) and a USB stick through DRA, and the USB
# controller through the device plugin; tenant-b offers the same GPU model at the same address on node1-a via DRA
CLAIMS = (
    dra_pciclaim(Lab.gpu),
    dra_pciclaim(Lab.audio),
    pciclaim(Lab.xhci),
    dra_usbclaim(Lab.stick),
    dra_pciclaim(Lab.gpu_1a, owner=TENANT_B),
    dra_pciclaim(Lab.audio_1a, owner=TENANT_B),
)
NVIDIA = device_class("gpu.nvidia.com", 'device.driver == "gpu.nvidia.com"')


def cluster(*extra: dict[str, Any]) -> list[Any]:
    return Lab.cluster(*our_classes(), NVIDIA, *CLAIMS, *extra)


def record(who: str = TENANT_A, via: str = "") -> str:
    """The record the webhook writes for `who` as tests.support.objects.user() sends them."""
    info = user(who)
    return Requester.of(UserInfo(info["username"], info["uid"], tuple(info["groups"])), via=via).encode()


def recorded(obj: dict[str, Any], who: str = TENANT_A) -> dict[str, Any]:
    obj["metadata"].setdefault("annotations", {})[records.ANNOTATION] = record(who)
    return obj


def case(id: str, body: dict[str, Any], allowed: bool, message: str = "", *, mutated: bool = True) -> Any:
    return pytest.param(body, allowed, message, mutated, id=id)


CASES = [
    case(
        "allow a claim pinning a whole iommu group of devices its requester may use",
        dra_review("CREATE", resourceclaim("gpu", request("gpu", pin_pci(GPU)), request("audio", pin_pci(AUDIO)))),
        True,
    ),
    case(
        "allow a claim pinning a whole group by address and node",
        dra_review(
            "CREATE",
            resourceclaim("gpu", request("gpu", pin_address("0000:3b:00.0", NODE1)),
                          request("audio", pin_address("0000:3b:00.1", NODE1))),  # fmt: skip
        ),
        True,
    ),
    case(
        "forbid a claim that pins part of an iommu group",
        dra_review("CREATE", resourceclaim("gpu", request("gpu", pin_pci(GPU)))),
        False,
        f'shares group "45" on node "{NODE1}" with pcidevice "{AUDIO}", which no request pins; add a request with '
        f"the selector {pin_pci(AUDIO)}",
    ),
    case(
        "forbid a claim pinning an address on every node when the requester may not use all of them",
        dra_review("CREATE", resourceclaim("gpu", request("gpu", pin_address("0000:3b:00.0")),
                                           request("audio", pin_address("0000:3b:00.1")))),  # fmt: skip
        False,
        f'user "{TENANT_A}" lacks the verb use on pcidevices "{GPU_1A}"',
    ),
    case(
        "forbid another tenant's claim for a device it may not use",
        dra_review(
            "CREATE",
            resourceclaim("steal", request("gpu", pin_pci(GPU)), request("audio", pin_pci(AUDIO)), namespace="team-b"),
            user_info=user(TENANT_B),
        ),
        False,
        f'resourceclaim "steal" can only get devices its requester may use in namespace "team-b"; user "{TENANT_B}" '
        f'lacks the verb use on pcidevices "{GPU}"',
    ),
    case(
        "forbid a claim for a device offered through the device plugin",
        dra_review("CREATE", resourceclaim("xhci", request("x", pin_pci(XHCI)))),
        False,
        f'pcideviceclaim "{XHCI}" offers pcidevice "{XHCI}" through the device plugin, and a device is offered '
        "through one path at a time",
    ),
    case(
        "forbid a claim for an unclaimed device",
        dra_review("CREATE", resourceclaim("free", request("x", pin_pci(NIC_FREE)))),
        False,
        f'pins pcidevice "{NIC_FREE}", which has no claim; create pcideviceclaim "{NIC_FREE}" with spec.offer: DRA',
    ),
    case(
        "forbid a claim pinning a device that does not exist",
        dra_review("CREATE", resourceclaim("none", request("x", pin_pci("node9-00000100")))),
        False,
        'request "x" pins pciDevice "node9-00000100", which no pcidevice matches',
    ),
    case(
        "forbid admin access to passthrough devices",
        dra_review("CREATE", resourceclaim("adm", request("x", pin_pci(GPU), admin_access=True))),
        False,
        'request "x" sets adminAccess: true',
    ),
    case(
        "allow a broad claim once the webhook narrowed it to the requester's devices",
        dra_review("CREATE", resourceclaim("any", request("any"))),
        True,
    ),
    case(
        "forbid a broad claim that was not narrowed",
        dra_review("CREATE", recorded(resourceclaim("any", request("any")))),
        False,
        f'request "any" lacks the selector {dra.owner_selector(TENANT_A, [dra.PCI_DRIVER])}',
        mutated=False,
    ),
    case(
        "forbid a broad claim in a namespace where the requester may not use her own devices",
        dra_review("CREATE", resourceclaim("any", request("any"), namespace="team-z")),
        False,
        f'in namespace "team-z"; user "{TENANT_A}" lacks the verb use on pcidevices',
    ),
    case(
        "allow a claim of another driver's class without judging or recording it",
        dra_review("CREATE", resourceclaim("nv", request("g", device_class="gpu.nvidia.com"))),
        True,
    ),
    case(
        "forbid a forged admission record on a claim of another driver",
        dra_review("CREATE", recorded(resourceclaim("nv", request("g", device_class="gpu.nvidia.com")), TENANT_B)),
        False,
        f"can only carry the annotation {records.ANNOTATION} as the webhook writes it",
        mutated=False,
    ),
    case(
        "allow a claim of an unknown class only narrowed to the requester's devices",
        dra_review("CREATE", resourceclaim("any", request("g", device_class="made-up"))),
        True,
    ),
    case(
        "treat a selector with a top-level or as broad",
        dra_review("CREATE", resourceclaim("or", request("x", f"{pin_pci(GPU_1A)} || true"))),
        True,
    ),
    case(
        "allow a usb claim pinning a stick offered through dra",
        dra_review("CREATE", resourceclaim("usb", request("s", pin_usb(STICK), device_class=dra.USB_DRIVER))),
        True,
    ),
    case(
        "allow firstAvailable alternatives, narrowing only the broad one",
        dra_review("CREATE", resourceclaim("fa", request("d", first_available=[
            ("exact", dra.USB_DRIVER, [pin_usb(STICK)]), ("any", dra.USB_DRIVER, [])]))),  # fmt: skip
        True,
    ),
]


@pytest.mark.parametrize(("body", "allowed", "message", "mutated"), CASES)
def test_resourceclaim_admission(body: dict[str, Any], allowed: bool, message: str, mutated: bool) -> None:
    d = admit(body, cluster(), GRANTS) if mutated else judge(body, cluster(), GRANTS)
    assert d.allowed is allowed, d.message
    if message:
        assert message in d.message


def _mutated(body: dict[str, Any], who: str = TENANT_A) -> dict[str, Any]:
    d = judge(body, cluster(), GRANTS, mutate=True)
    assert d.allowed
    return jsonpatch.apply_patch(body["request"]["object"], list(d.patch))  # type: ignore[no-any-return]


def test_mutation_records_the_requester_and_narrows_broad_requests_to_their_devices() -> None:
    obj = _mutated(dra_review("CREATE", resourceclaim("any", request("any"), request("gpu", pin_pci(GPU)),
                                                      request("audio", pin_pci(AUDIO)))))  # fmt: skip
    assert obj["metadata"]["annotations"][records.ANNOTATION] == record()
    selectors = [r["exactly"].get("selectors", []) for r in obj["spec"]["devices"]["requests"]]
    assert selectors[0] == [{"cel": {"expression": dra.owner_selector(TENANT_A, [dra.PCI_DRIVER])}}]
    assert selectors[1] == [{"cel": {"expression": pin_pci(GPU)}}]  # pinned requests are left as they are


def test_mutation_narrows_a_request_of_an_unknown_class_for_both_drivers() -> None:
    obj = _mutated(dra_review("CREATE", resourceclaim("any", request("g", 'device.attributes["x"].y == 1',
                                                                     device_class="made-up"))))  # fmt: skip
    sel = obj["spec"]["devices"]["requests"][0]["exactly"]["selectors"]
    assert sel[-1]["cel"]["expression"] == dra.owner_selector(TENANT_A)
    assert len(sel) == 2


def test_mutation_leaves_other_drivers_claims_alone() -> None:
    d = judge(dra_review("CREATE", resourceclaim("nv", request("g", device_class="gpu.nvidia.com"))), cluster(),
              GRANTS, mutate=True)  # fmt: skip
    assert d.allowed and d.patch == ()


def test_the_narrowing_selector_quotes_any_username() -> None:
    hostile = 'mallory" || true || "'
    expr = dra.owner_selector(hostile)
    assert '"mallory\\" || true || \\""' in expr
    assert dra.pins(expr).conjunctive  # the quotes stay inside the literal: no top-level ||


def test_a_broad_claim_of_a_requester_without_devices_is_admitted_with_a_warning() -> None:
    body = dra_review("CREATE", resourceclaim("any", request("any"), namespace="team-b"), user_info=user("nobody"))
    d = admit(body, cluster(), GRANTS)
    assert d.allowed
    assert any("none is offered through DRA now" in w for w in d.warnings)


def test_a_broad_claim_warns_about_devices_in_shared_iommu_groups() -> None:
    d = admit(dra_review("CREATE", resourceclaim("any", request("any"))), cluster(), GRANTS)
    assert d.allowed and any("share IOMMU groups with other functions" in w for w in d.warnings)


# -- claims the resource claim controller makes from templates (D7) -----------------------------------------------


def _admitted_template(*requests: dict[str, Any], who: str = TENANT_A) -> dict[str, Any]:
    body = dra_review("CREATE", claim_template("tpl", *requests), user_info=user(who))
    d = admit(body, cluster(), GRANTS)
    assert d.allowed, d.message
    return _mutated(body)


def test_template_mutation_records_the_creator_twice_and_narrows_its_requests() -> None:
    tpl = _admitted_template(request("any"))
    rec = Requester.decode(tpl["metadata"]["annotations"][records.ANNOTATION])
    assert rec is not None and rec.username == TENANT_A and rec.via == f"resourceclaimtemplate {NAMESPACE}/tpl"
    assert tpl["spec"]["metadata"]["annotations"][records.ANNOTATION] == tpl["metadata"]["annotations"][
        records.ANNOTATION
    ]
    sel = tpl["spec"]["spec"]["devices"]["requests"][0]["exactly"]["selectors"]
    assert sel == [{"cel": {"expression": dra.owner_selector(TENANT_A, [dra.PCI_DRIVER])}}]


@pytest.mark.parametrize("requests", [[request("any")], [request("g", pin_pci(GPU)), request("a", pin_pci(AUDIO))]])
def test_allow_the_claims_the_controller_makes_from_an_admitted_template(requests: list[dict[str, Any]]) -> None:
    tpl = _admitted_template(*requests)
    claim = from_template(tpl)
    d = judge(dra_review("CREATE", claim, user_info=user(RESOURCE_CLAIM_CONTROLLER)), cluster(tpl), GRANTS)
    assert d.allowed, d.message


def test_forbid_a_controller_made_claim_whose_template_the_webhook_never_recorded() -> None:
    tpl = claim_template("old", request("any", dra.owner_selector(TENANT_A, [dra.PCI_DRIVER])))
    d = judge(dra_review("CREATE", from_template(tpl), user_info=user(RESOURCE_CLAIM_CONTROLLER)), cluster(tpl),
              GRANTS)  # fmt: skip
    assert not d.allowed and "it carries no devices.harvesterhci.io/requester record" in d.message


def test_forbid_a_controller_made_claim_whose_record_no_template_carries() -> None:
    tpl = _admitted_template(request("any"))
    claim = from_template(tpl)
    claim["spec"]["devices"]["requests"][0]["exactly"]["selectors"] = []  # not the template's spec
    d = judge(dra_review("CREATE", claim, user_info=user(RESOURCE_CLAIM_CONTROLLER)), cluster(tpl), GRANTS)
    assert not d.allowed and "no template of namespace" in d.message


def test_forbid_a_template_for_devices_its_creator_may_not_use() -> None:
    body = dra_review(
        "CREATE", claim_template("t", request("g", pin_pci(GPU)), request("a", pin_pci(AUDIO)), namespace="team-b"),
        user_info=user(TENANT_B),
    )
    d = admit(body, cluster(), GRANTS)
    assert not d.allowed and "lacks the verb use" in d.message


@pytest.mark.parametrize("where", ["metadata", "inner"])
def test_forbid_a_template_with_a_forged_record(where: str) -> None:
    forged = {records.ANNOTATION: record(TENANT_B)}
    tpl = claim_template("t", request("any"), **({"annotations": forged} if where == "metadata" else
                                                 {"inner_annotations": forged}))  # fmt: skip
    mutated = _mutated(dra_review("CREATE", tpl))
    assert mutated["metadata"]["annotations"][records.ANNOTATION] == mutated["spec"]["metadata"]["annotations"][
        records.ANNOTATION
    ]
    d = judge(dra_review("CREATE", tpl), cluster(), GRANTS)
    assert not d.allowed and "as the webhook writes it" in d.message


# -- updates ------------------------------------------------------------------------------------------------------


def test_forbid_changing_the_record_of_a_claim() -> None:
    old = recorded(resourceclaim("any", request("any")))
    new = recorded(resourceclaim("any", request("any")), TENANT_B)
    d = judge(dra_review("UPDATE", new, old, user_info=user(TENANT_B)), cluster(), GRANTS)
    assert not d.allowed
    assert judge(dra_review("UPDATE", old, old), cluster(), GRANTS).allowed


def test_forbid_changing_the_inner_record_of_a_template() -> None:
    old = claim_template("t", request("any"), inner_annotations={records.ANNOTATION: record()})
    new = claim_template("t", request("any"), inner_annotations={records.ANNOTATION: record(TENANT_B)})
    assert not judge(dra_review("UPDATE", new, old), cluster(), GRANTS).allowed


# -- the selector reader ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "pinned"),
    [
        (pin_pci("n1-x"), {(dra.PCI_DRIVER, "pciDevice"): "n1-x"}),
        (f'"n1-x" == device.attributes["{dra.PCI_DRIVER}"]["pciDevice"]', {(dra.PCI_DRIVER, "pciDevice"): "n1-x"}),
        (f"({pin_pci('n1-x')}) && device.attributes[\"{dra.PCI_DRIVER}\"].numaNode == 0",
         {(dra.PCI_DRIVER, "pciDevice"): "n1-x"}),
        (pin_address("0000:3b:00.0", "n1"), {(dra.PCI_DRIVER, "pciAddress"): "0000:3b:00.0",
                                             (dra.PCI_DRIVER, "node"): "n1"}),
        (f"{pin_pci('a')} || {pin_pci('b')}", None),
        (f"true ? {pin_pci('a')} : false", None),
        (f"{pin_pci('a')} == true", {}),
        (f'device.attributes["{dra.PCI_DRIVER}"].pciDevice == "a\\" || true || \\"b"', {}),
        (f'device.attributes["{dra.PCI_DRIVER}"].pciDevice in ["a", "b"]', {}),
        ('device.attributes["other.example.com"].pciDevice == "a"', {}),
        ('r"x" == device.driver', None),
        (f'device.attributes["{dra.PCI_DRIVER}"].pciDevice == """a""" ', None),
    ],
)  # fmt: skip
def test_selector_pins(expression: str, pinned: dict[tuple[str, str], str] | None) -> None:
    p = dra.pins(expression)
    if pinned is None:
        assert not p.conjunctive
        return
    assert {k: next(iter(v)) for k, v in p.values.items() if v} == pinned


def test_class_and_request_pins_combine_and_two_drivers_match_nothing() -> None:
    p = dra.all_pins([f'device.driver == "{dra.PCI_DRIVER}"', pin_pci("a")])
    assert p.drivers == {dra.PCI_DRIVER} and p.value(dra.PCI_DRIVER, "pciDevice") == "a"
    assert dra.all_pins([pin_pci("a"), pin_pci("b")]).value(dra.PCI_DRIVER, "pciDevice") is False


def test_slice_names_and_device_names() -> None:
    assert dra.pci_device_name("0000:3b:00.0") == "pci-0000-3b-00-0"
    assert dra.pci_device_name("10000:01:00.0") == "pci-10000-01-00-0"
    assert dra.slice_name("node1", dra.PCI_DRIVER, 0) == "node1-pcidevices-0"
    long = dra.slice_name("n" * 253, dra.USB_DRIVER, 1)
    assert len(long) <= 253 and long.endswith("-usbdevices-1")
    assert dra.pcie_root("/sys/devices/pci0000:00/0000:00:1c.0/0000:03:00.0") == "pci0000:00"
    assert dra.pcie_root("/sys/devices/platform/x") is None


def test_node1a_devices_stay_out_of_node1_pins() -> None:
    d = admit(
        dra_review("CREATE", resourceclaim("g", request("g", pin_address("0000:3b:00.0", NODE1A)),
                                           request("a", pin_address("0000:3b:00.1", NODE1A)), namespace="team-b"),
                   user_info=user(TENANT_B)),
        cluster(), GRANTS,
    )  # fmt: skip
    assert d.allowed, d.message


# -- ResourceSlices of our drivers are the node agents' (A10d) ----------------------------------------------------


def _slice(node: str, driver: str = dra.PCI_DRIVER, pool: str | None = None) -> dict[str, Any]:
    return {
        "apiVersion": f"{dra.GROUP}/{dra.VERSION}",
        "kind": "ResourceSlice",
        "metadata": {"name": dra.slice_name(node, driver, 0)},
        "spec": {"driver": driver, "nodeName": node, "pool": {"name": pool or node, "generation": 1,
                                                               "resourceSliceCount": 1}, "devices": []},
    }  # fmt: skip


def _slice_review(operation: str, obj: dict[str, Any] | None, old: dict[str, Any] | None = None, *,
                  user_info: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    body = dra_review(operation, {**(obj or old or {}), "kind": "ResourceClaim"}, user_info=user_info)
    req = body["request"]
    req["kind"] = req["requestKind"] = {"group": dra.GROUP, "version": dra.VERSION, "kind": "ResourceSlice"}
    plural = {"group": dra.GROUP, "version": dra.VERSION, "resource": "resourceslices"}
    req["resource"] = req["requestResource"] = plural
    req["object"], req["oldObject"], req["namespace"] = obj, old, ""
    return body


@pytest.mark.parametrize(
    ("operation", "obj", "old", "who", "allowed"),
    [
        pytest.param("CREATE", _slice(NODE1), None, "agent1", True, id="allow an agent its own node's slice"),
        pytest.param("CREATE", _slice(NODE1A), None, "agent1", False, id="forbid an agent another node's slice"),
        pytest.param("CREATE", _slice(NODE1, pool=NODE1A), None, "agent1", False,
                     id="forbid an agent a pool named after another node"),
        pytest.param("CREATE", _slice(NODE1, driver="gpu.nvidia.com"), None, "agent1", False,
                     id="forbid an agent another driver's slice"),
        pytest.param("UPDATE", _slice(NODE1), _slice(NODE1), "agent1", True, id="allow an agent to update its slice"),
        pytest.param("DELETE", None, _slice(NODE1A), "agent1", False, id="forbid an agent deleting another node's"),
        pytest.param("CREATE", _slice(NODE1), None, TENANT_A, False, id="forbid a user publishing our devices"),
        pytest.param("DELETE", None, _slice(NODE1), f"system:node:{NODE1}", True,
                     id="allow the node's kubelet to wipe"),
        pytest.param("DELETE", None, _slice(NODE1), f"system:node:{NODE1A}", False,
                     id="forbid another node's kubelet to delete"),
        pytest.param("CREATE", _slice(NODE1, driver="gpu.nvidia.com"), None, TENANT_A, True,
                     id="leave other drivers' slices alone"),
        pytest.param("CREATE", _slice(NODE1), None, "kubernetes-admin", True, id="allow cluster-admins"),
    ],
)  # fmt: skip
def test_resourceslice_writes(
    operation: str, obj: dict[str, Any] | None, old: dict[str, Any] | None, who: str, allowed: bool
) -> None:
    from tests.support.objects import agent

    info = agent(NODE1) if who == "agent1" else user(who)
    d = judge(_slice_review(operation, obj, old, user_info=info), cluster(), GRANTS)
    assert d.allowed is allowed, d.message
