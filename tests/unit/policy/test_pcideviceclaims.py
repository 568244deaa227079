"""PCIDeviceClaim admission: allow/forbid table over an in-memory cluster view (NodeRestriction style), and the
mutation patch applied with jsonpatch."""

from __future__ import annotations

from typing import Any

import jsonpatch  # type: ignore[import-untyped]
import pytest

from policy import names
from policy.access import Grant
from policy.objects import FINALIZER_AGENT
from policy.settings import PolicySettings
from tests.support.objects import (
    ADMIN,
    NODE1,
    NODE1A,
    TENANT_A,
    TENANT_B,
    Lab,
    agent,
    changed,
    controller,
    gc,
    judge,
    migration,
    pciclaim,
    review,
    usbclaim,
    user,
)

OWNER = names.ANNOTATION_REQUESTED_BY
GRANTS = (
    Grant(TENANT_A, "claim", "devices.harvesterhci.io", "pcidevices"),
    Grant(TENANT_A, "claim", "devices.harvesterhci.io", "usbdevices"),
    Grant(TENANT_B, "claim", "devices.harvesterhci.io", "pcidevices"),
    Grant("releaser", "release", "devices.harvesterhci.io", "pcidevices"),
    Grant("legacy-holder", "claim", "devices.harvesterhci.io", "pcidevices", name=Lab.gpu["metadata"]["name"]),
)
GPU = Lab.gpu["metadata"]["name"]
AUDIO = Lab.audio["metadata"]["name"]
_GPU_REF = {"apiVersion": names.API_VERSION, "kind": "PCIDevice", "name": GPU, "uid": Lab.gpu["metadata"]["uid"]}


def case(
    id: str,
    body: dict[str, Any],
    allowed: bool,
    message: str = "",
    *,
    extra: tuple[dict[str, Any], ...] = (),
    nodes: tuple[str, ...] = (NODE1, NODE1A),
    warning: str | None = None,
    code: int | None = None,
    settings: PolicySettings | None = None,
) -> Any:
    return pytest.param(body, allowed, message, extra, nodes, warning, code, settings, id=id)


def claimed(device: dict[str, Any], owner: str) -> dict[str, Any]:
    return pciclaim(device, owner=owner, user_name=owner)


CREATE = [
    case(
        "allow create of pcideviceclaim by its owner, warning about the unclaimed sibling",
        review("CREATE", pciclaim(Lab.gpu)),
        True,
        warning=f'unclaimed devices "{AUDIO}"; a VM can use it only once the whole group is claimed',
    ),
    case(
        "allow create of pcideviceclaim with a bridge in its iommu group and the sibling claimed by the same owner",
        review("CREATE", pciclaim(Lab.gpu)),
        True,
        extra=(claimed(Lab.audio, TENANT_A),),
        warning="",
    ),
    case(
        "allow create of a ui-shaped pcideviceclaim whose display username differs from the requester",
        review("CREATE", pciclaim(Lab.gpu, ui=True, user_name="admin")),
        True,
    ),
    case(
        "allow create of pcideviceclaim re-sent for a device its owner already claimed",
        review("CREATE", pciclaim(Lab.gpu, ui=True)),
        True,
        extra=(claimed(Lab.gpu, TENANT_A),),
    ),
    case(
        "allow create of pcideviceclaim on a node whose name extends another node's name",
        review("CREATE", pciclaim(Lab.gpu_1a)),
        True,
    ),
    case(
        "allow create of pcideviceclaim for a device in an 8-digit vmd domain",
        review("CREATE", pciclaim(Lab.vmd_gpu)),
        True,
    ),
    case(
        "allow create of pcideviceclaim sent as admission.k8s.io/v1beta1",
        review("CREATE", pciclaim(Lab.gpu), api_version="admission.k8s.io/v1beta1"),
        True,
    ),
    case(
        "allow create of pcideviceclaim by the cluster controller for another owner",
        review("CREATE", pciclaim(Lab.audio, owner=TENANT_A), user_info=controller()),
        True,
        extra=(claimed(Lab.gpu, TENANT_A),),
    ),
    case(
        "allow create of pcideviceclaim by the takeover for a legacy owner",
        review("CREATE", pciclaim(Lab.gpu, owner="legacy:admin"), user_info=migration()),
        True,
    ),
    case(
        "allow create of pcideviceclaim without the claim verb when claim checks are off",
        review("CREATE", pciclaim(Lab.gpu, owner="tenant-c"), user_info=user("tenant-c")),
        True,
        settings=PolicySettings(enforce_claim=False),
    ),
    case(
        "forbid create of pcideviceclaim without the claim verb",
        review("CREATE", pciclaim(Lab.gpu, owner="tenant-c"), user_info=user("tenant-c")),
        False,
        f'pcideviceclaim "{GPU}" can only be created by users allowed to claim pcidevice "{GPU}"; user "tenant-c"',
    ),
    case(
        "forbid create of pcideviceclaim already claimed by another owner",
        review("CREATE", pciclaim(Lab.gpu)),
        False,
        f'pcidevice "{GPU}" is already claimed by "{TENANT_B}"',
        extra=(claimed(Lab.gpu, TENANT_B),),
    ),
    case(
        "forbid create of pcideviceclaim without the owner annotation",
        review("CREATE", pciclaim(Lab.gpu, owner=None)),
        False,
        f"can only be created with the annotation {OWNER} naming its owner; it has none",
    ),
    case(
        "forbid create of pcideviceclaim whose owner annotation names another user",
        review("CREATE", pciclaim(Lab.gpu, owner=TENANT_B)),
        False,
        f'the annotation {OWNER} names "{TENANT_B}" but the requester is "{TENANT_A}"',
    ),
    case(
        "forbid create of pcideviceclaim by a node agent",
        review("CREATE", pciclaim(Lab.gpu), user_info=agent(NODE1)),
        False,
        "node agent",
    ),
    case(
        "forbid create of pcideviceclaim by an agent token without the node-name extra",
        review("CREATE", pciclaim(Lab.gpu), user_info=agent(None)),
        False,
        "token bound to a node; its token carries no authentication.kubernetes.io/node-name extra",
    ),
    case(
        "forbid create of pcideviceclaim for a device that does not exist",
        review("CREATE", pciclaim(Lab.gpu, name="node2-00003b000", node_name="node2")),
        False,
        'pcideviceclaim "node2-00003b000" can only claim an existing pcidevice; pcidevice "node2-00003b000" does not',
    ),
    case(
        "forbid create of pcideviceclaim named unlike its device",
        review("CREATE", pciclaim(Lab.gpu, name="my-gpu")),
        False,
        f'pcideviceclaim "my-gpu" must be named like the device it claims; spec.nodeName "{NODE1}" and spec.address '
        f'"0000:3b:00.0" name pcidevice "{GPU}"; name the claim "{GPU}"',
    ),
    case(
        "forbid create of pcideviceclaim whose spec.nodeName is another node",
        review("CREATE", pciclaim(Lab.gpu, node_name=NODE1A)),
        False,
        f'spec.nodeName is "{NODE1A}" but pcidevice "{GPU}" has "{NODE1}"',
    ),
    case(
        "forbid create of pcideviceclaim whose spec.address is a path",
        review("CREATE", pciclaim(Lab.gpu, address="../../x")),
        False,
        'can only name PCI addresses of the form 0000:3b:00.0 in spec.address; got "../../x"',
    ),
    case(
        "forbid create of pcideviceclaim whose address has a 3-digit domain",
        review("CREATE", pciclaim(Lab.gpu, address="000:3b:00.0")),
        False,
        'in spec.address; got "000:3b:00.0"',
    ),
    case(
        "forbid create of pcideviceclaim whose address has an upper-case digit",
        review("CREATE", pciclaim(Lab.gpu, address="0000:3B:00.0")),
        False,
        'in spec.address; got "0000:3B:00.0"',
    ),
    case(
        "forbid create of pcideviceclaim for an absent device",
        review("CREATE", pciclaim(Lab.absent_gpu)),
        False,
        "is marked absent",
    ),
    case(
        "forbid create of pcideviceclaim whose ownerreference names another uid",
        review("CREATE", pciclaim(Lab.gpu, owner_references=[{**_GPU_REF, "uid": "1234"}])),
        False,
        'with uid "1234" but pcidevice',
    ),
    case(
        "forbid create of pcideviceclaim for a device without iommu group",
        review("CREATE", pciclaim(Lab.no_iommu)),
        False,
        'has none; turn the IOMMU on for node "node1": enable VT-d (Intel) or AMD-Vi/IOMMU (AMD) in the firmware '
        "and add intel_iommu=on (Intel) or amd_iommu=on iommu=pt (AMD) to the kernel command line",
    ),
    case(
        "forbid create of pcideviceclaim for a host-critical device",
        review("CREATE", pciclaim(Lab.nic)),
        False,
        "is host-critical (carries the default route via mgmt-br, mgmt-bo, eno1); choose another device",
    ),
    case(
        "forbid create of pcideviceclaim whose iommu group holds a host-critical device",
        review("CREATE", pciclaim(Lab.gpu_beside_critical)),
        False,
        f'also holds pcidevice "{Lab.critical_sibling["metadata"]["name"]}" (holds / via nvme0n1p2)',
    ),
    case(
        "forbid create of pcideviceclaim whose iommu group holds a device unknown to the cluster",
        review("CREATE", pciclaim(Lab.gpu_unknown_sibling)),
        False,
        'group "70" on node "node1" also holds "0000:af:00.1", which has no pcidevice object',
    ),
    case(
        "forbid create of pcideviceclaim whose iommu group sibling is claimed by another owner",
        review("CREATE", pciclaim(Lab.gpu)),
        False,
        f'also holds pcidevice "{AUDIO}", claimed by "{TENANT_B}"; ask "{TENANT_B}" to release',
        extra=(claimed(Lab.audio, TENANT_B),),
    ),
    case(
        "forbid create of pcideviceclaim for a usb controller with claimed usb devices behind it",
        review("CREATE", pciclaim(Lab.xhci)),
        False,
        f'usbdeviceclaims "{Lab.stick["metadata"]["name"]}" use devices behind it; delete those claims first',
        extra=(usbclaim(Lab.stick, owner=TENANT_B),),
    ),
    case(
        "forbid create of pcideviceclaim whose iommu group holds a usb controller with claimed usb devices",
        review("CREATE", pciclaim(Lab.smbus)),
        False,
        f'also holds pcidevice "{Lab.xhci["metadata"]["name"]}" with usbdeviceclaims '
        f'"{Lab.stick["metadata"]["name"]}" behind it',
        extra=(usbclaim(Lab.stick, owner=TENANT_B),),
    ),
    case(
        "allow create of pcideviceclaim for a usb controller whose usb devices are unclaimed",
        review("CREATE", pciclaim(Lab.xhci)),
        True,
        warning=f'unclaimed devices "{Lab.smbus["metadata"]["name"]}"',
    ),
    case(
        "forbid create of pcideviceclaim whose spec.address is not a string with code 400",
        review("CREATE", changed(pciclaim(Lab.gpu), "spec.address", 42)),
        False,
        "spec.address must be a string",
        code=400,
    ),
    case(
        "forbid create of pcideviceclaim without an object with code 400",
        changed(review("CREATE", pciclaim(Lab.gpu)), "request.object", None),
        False,
        "carries no object",
        code=400,
    ),
]

_OWNED = pciclaim(Lab.gpu, user_name=TENANT_A, finalizers=[FINALIZER_AGENT], owner_references=None)
_OWNED_UI = pciclaim(Lab.gpu, ui=True, finalizers=[FINALIZER_AGENT])
_NO_FINALIZER = changed(_OWNED, "metadata.finalizers", None)

UPDATE = [
    case(
        "allow update of pcideviceclaim adding a label by its owner",
        review("UPDATE", changed(_OWNED, "metadata.labels", {"team": "ml"}), _OWNED),
        True,
    ),
    case(
        "forbid update of pcideviceclaim changing spec.userName",
        review("UPDATE", changed(_OWNED, "spec.userName", "someone"), _OWNED),
        False,
        f'pcideviceclaim "{GPU}" can only keep the spec it was created with',
    ),
    case(
        "forbid update of pcideviceclaim changing the owner annotation",
        review("UPDATE", changed(_OWNED, ("metadata", "annotations", OWNER), TENANT_B), _OWNED),
        False,
        f'the annotation {OWNER} changed from "{TENANT_A}" to "{TENANT_B}"',
    ),
    case(
        "forbid update of pcideviceclaim adding the owner annotation later",
        review("UPDATE", _OWNED, changed(_OWNED, "metadata.annotations", None)),
        False,
        f'changed from none to "{TENANT_A}"',
    ),
    case(
        "allow update of pcideviceclaim adding the owner annotation by the takeover",
        review("UPDATE", _OWNED, changed(_OWNED, "metadata.annotations", None), user_info=migration()),
        True,
    ),
    case(
        "forbid update of pcideviceclaim changing ownerreferences",
        review("UPDATE", changed(_OWNED_UI, "metadata.ownerReferences", []), _OWNED_UI),
        False,
        "can only keep the ownerReferences it was created with",
    ),
    case(
        "allow update of pcideviceclaim ownerreferences by the garbage collector",
        review("UPDATE", changed(_OWNED_UI, "metadata.ownerReferences", None), _OWNED_UI, user_info=gc()),
        True,
    ),
    case(
        "forbid update of pcideviceclaim removing the agent finalizer by its owner",
        review("UPDATE", _NO_FINALIZER, _OWNED),
        False,
        f'can only lose the finalizer {FINALIZER_AGENT} through the node agent of node "{NODE1}"',
    ),
    case(
        "allow update of pcideviceclaim removing the agent finalizer by the node's agent",
        review("UPDATE", _NO_FINALIZER, _OWNED, user_info=agent(NODE1)),
        True,
    ),
    case(
        "allow update of pcideviceclaim adding the agent finalizer by the node's agent",
        review("UPDATE", _OWNED, _NO_FINALIZER, user_info=agent(NODE1)),
        True,
    ),
    case(
        "forbid update of pcideviceclaim removing the agent finalizer by the agent of a prefix-sharing node",
        review("UPDATE", _NO_FINALIZER, _OWNED, user_info=agent(NODE1A)),
        False,
        f'it belongs to node "{NODE1}" but the token of',
    ),
    case(
        "allow update of pcideviceclaim without spec.nodename by the agent of its device's node",
        review(
            "UPDATE",
            changed(_OWNED, "spec.nodeName", None),
            changed(_OWNED, "spec.nodeName", None),
            user_info=agent(NODE1),
            sub_resource="status",
        ),
        True,
    ),
    case(
        "forbid update of pcideviceclaim changing labels by the node's agent",
        review("UPDATE", changed(_OWNED, "metadata.labels", {"x": "y"}), _OWNED, user_info=agent(NODE1)),
        False,
        "also changed metadata.labels",
    ),
    case(
        "allow update of pcideviceclaim removing the agent finalizer by the janitor once the node is gone",
        review("UPDATE", _NO_FINALIZER, _OWNED, user_info=controller()),
        True,
        nodes=(NODE1A,),
    ),
    case(
        "forbid update of pcideviceclaim removing the agent finalizer by the janitor while the node exists",
        review("UPDATE", _NO_FINALIZER, _OWNED, user_info=controller()),
        False,
        "or the cluster controller once the node is gone",
    ),
    case(
        "allow update of pcideviceclaim status by the node's agent",
        review(
            "UPDATE",
            changed(_OWNED, "status", {"passthroughEnabled": True}),
            _OWNED,
            user_info=agent(NODE1),
            sub_resource="status",
        ),
        True,
    ),
    case(
        "allow update of pcideviceclaim status by the cluster controller",
        review("UPDATE", _OWNED, _OWNED, user_info=controller(), sub_resource="status"),
        True,
    ),
    case(
        "forbid update of pcideviceclaim status by its owner",
        review("UPDATE", changed(_OWNED, "status", {"passthroughEnabled": True}), _OWNED, sub_resource="status"),
        False,
        f'can only have its status written by the node agent of node "{NODE1}" or the cluster controller',
    ),
    case(
        "forbid update of pcideviceclaim status by the agent of another node",
        review("UPDATE", _OWNED, _OWNED, user_info=agent(NODE1A), sub_resource="status"),
        False,
        f'is bound to node "{NODE1A}"',
    ),
]

DELETE = [
    case("allow delete of pcideviceclaim by its owner", review("DELETE", old=_OWNED), True),
    case(
        "allow delete of pcideviceclaim by another tenant with release",
        review("DELETE", old=_OWNED, user_info=user("releaser")),
        True,
    ),
    case(
        "forbid delete of pcideviceclaim by another tenant without release",
        review("DELETE", old=_OWNED, user_info=user(TENANT_B)),
        False,
        f'can only be deleted by its owner "{TENANT_A}" or by users allowed to release it; user "{TENANT_B}" lacks '
        "the verb release",
    ),
    case(
        "allow delete of pcideviceclaim by another tenant when release checks are off",
        review("DELETE", old=_OWNED, user_info=user(TENANT_B)),
        True,
        settings=PolicySettings(enforce_release=False),
    ),
    case(
        "allow delete of pcideviceclaim by a cluster-admin", review("DELETE", old=_OWNED, user_info=user(ADMIN)), True
    ),
    case("allow delete of pcideviceclaim by the garbage collector", review("DELETE", old=_OWNED, user_info=gc()), True),
    case(
        "allow delete of pcideviceclaim by the janitor once the node is gone",
        review("DELETE", old=_OWNED, user_info=controller()),
        True,
        nodes=(NODE1A,),
    ),
    case(
        "forbid delete of pcideviceclaim by the janitor while the node exists",
        review("DELETE", old=_OWNED, user_info=controller()),
        False,
        f'can only be deleted by the cluster controller once its node is gone; node "{NODE1}" still exists',
    ),
    case(
        "allow delete of pcideviceclaim with a legacy owner by a holder of claim on the device",
        review("DELETE", old=pciclaim(Lab.gpu, owner="legacy:admin"), user_info=user("legacy-holder")),
        True,
    ),
    case(
        "forbid delete of pcideviceclaim with a legacy owner by a user without claim on the device",
        review("DELETE", old=pciclaim(Lab.gpu, owner="legacy:admin"), user_info=user("tenant-c")),
        False,
        'its owner "legacy:admin"',
    ),
    case(
        "allow delete of pcideviceclaim the cluster view does not know and the api server did not send",
        changed(review("DELETE", old=_OWNED, user_info=user(TENANT_B)), "request.oldObject", None),
        True,
    ),
    case(
        "allow delete of pcideviceclaim by its owner once the node is gone",
        review("DELETE", old=_OWNED),
        True,
        nodes=(NODE1A,),
    ),
    case(
        "forbid delete of pcideviceclaim known only from the cluster view by another tenant",
        changed(review("DELETE", old=_OWNED, user_info=user(TENANT_B)), "request.oldObject", None),
        False,
        "lacks the verb release",
        extra=(_OWNED,),
    ),
]


@pytest.mark.parametrize(
    ("body", "allowed", "message", "extra", "nodes", "warning", "code", "settings"), CREATE + UPDATE + DELETE
)
def test_pcideviceclaim_admission(
    body: dict[str, Any],
    allowed: bool,
    message: str,
    extra: tuple[dict[str, Any], ...],
    nodes: tuple[str, ...],
    warning: str | None,
    code: int | None,
    settings: PolicySettings | None,
) -> None:
    d = judge(body, Lab.cluster(*extra, nodes=nodes), GRANTS, settings=settings)
    assert d.allowed is allowed, d.message
    assert message in d.message
    if not allowed:
        assert d.code == (code or 403)
        assert d.message == d.message.strip() and d.message[0].islower() and not d.message.endswith(".")
        assert "denied" not in d.message
    if warning == "":
        assert d.warnings == ()
    elif warning is not None:
        assert len(d.warnings) == 1 and warning in d.warnings[0], d.warnings


def _mutated(body: dict[str, Any], *extra: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    d = judge(body, Lab.cluster(*extra), GRANTS, mutate=True)
    assert d.allowed
    obj = body["request"]["object"]
    return jsonpatch.apply_patch(obj, list(d.patch)), d


def test_mutation_sets_owner_username_ownerreference_and_label_on_a_bare_claim() -> None:
    bare = pciclaim(Lab.gpu, owner=None)
    obj, _ = _mutated(review("CREATE", bare))
    meta = obj["metadata"]
    assert meta["annotations"] == {OWNER: TENANT_A}
    assert obj["spec"]["userName"] == TENANT_A
    assert meta["ownerReferences"] == [
        {"apiVersion": names.API_VERSION, "kind": "PCIDevice", "name": GPU, "uid": Lab.gpu["metadata"]["uid"]}
    ]
    assert meta["labels"] == {names.LABEL_NODENAME: NODE1}


def test_mutation_keeps_the_ui_display_name_and_ownerreference_and_adds_owner_and_label() -> None:
    ui = pciclaim(Lab.gpu, ui=True, owner=None)
    obj, d = _mutated(review("CREATE", ui))
    assert obj["spec"]["userName"] == "admin"
    assert obj["metadata"]["ownerReferences"] == ui["metadata"]["ownerReferences"]
    assert obj["metadata"]["annotations"][OWNER] == TENANT_A
    assert obj["metadata"]["labels"][names.LABEL_NODENAME] == NODE1
    assert not any(op["path"].startswith("/metadata/ownerReferences") for op in d.patch)


def test_mutation_replaces_an_owner_annotation_naming_someone_else() -> None:
    obj, _ = _mutated(review("CREATE", pciclaim(Lab.gpu, owner=TENANT_B)))
    assert obj["metadata"]["annotations"][OWNER] == TENANT_A


def test_mutation_keeps_the_owner_the_cluster_controller_names() -> None:
    obj, _ = _mutated(review("CREATE", pciclaim(Lab.audio, owner=TENANT_B, user_name=None), user_info=controller()))
    assert obj["metadata"]["annotations"][OWNER] == TENANT_B
    assert obj["spec"]["userName"] == TENANT_B


def test_mutation_adds_an_ownerreference_beside_other_owners() -> None:
    other = {"apiVersion": "v1", "kind": "ConfigMap", "name": "x", "uid": "u1"}
    obj, _ = _mutated(review("CREATE", pciclaim(Lab.gpu, owner_references=[other])))
    assert [r["kind"] for r in obj["metadata"]["ownerReferences"]] == ["ConfigMap", "PCIDevice"]


def test_mutation_escapes_the_owner_annotation_key_beside_other_annotations() -> None:
    body = review("CREATE", changed(pciclaim(Lab.gpu, owner=None), "metadata.annotations", {"note": "x"}))
    obj, _ = _mutated(body)
    assert obj["metadata"]["annotations"] == {"note": "x", OWNER: TENANT_A}


def test_mutated_claims_pass_validation() -> None:
    for claim in (pciclaim(Lab.gpu, owner=None), pciclaim(Lab.gpu, owner=None, ui=True)):
        obj, _ = _mutated(review("CREATE", claim))
        assert judge(review("CREATE", obj), Lab.cluster(), GRANTS).allowed


def test_mutation_adds_the_nodename_label_beside_other_labels() -> None:
    obj, _ = _mutated(review("CREATE", changed(pciclaim(Lab.gpu), "metadata.labels", {"team": "ml"})))
    assert obj["metadata"]["labels"] == {"team": "ml", names.LABEL_NODENAME: NODE1}


def test_mutation_leaves_updates_alone() -> None:
    d = judge(review("UPDATE", _OWNED, _OWNED), Lab.cluster(), GRANTS, mutate=True)
    assert d.allowed and d.patch == ()


def test_mutation_never_fails_on_malformed_claims() -> None:
    for obj in (changed(pciclaim(Lab.gpu), "metadata.annotations", 5), changed(pciclaim(Lab.gpu), "spec", "x")):
        d = judge(review("CREATE", obj), Lab.cluster(), GRANTS, mutate=True)
        assert d.allowed


class CountingView:
    """A ClusterView that counts the questions asked of it."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inner, name)

        def counted(*args: Any) -> Any:
            self.calls += 1
            return method(*args)

        return counted


def test_validation_asks_the_view_as_often_however_large_the_cluster() -> None:
    from policy import dispatch
    from policy.access import StaticAccess
    from policy.review import AdmissionRequest
    from policy.snapshot import ClusterIndex
    from tests.support.objects import pcidevice

    crowd = [pcidevice(f"crowd{n}", f"0000:{i:02x}:00.0", iommu_group=str(i)) for n in range(40) for i in range(50)]
    request = AdmissionRequest.from_review(review("CREATE", pciclaim(Lab.gpu)))
    counts = []
    for cluster in (Lab.cluster(), Lab.cluster(*crowd, *(pciclaim(d, owner=TENANT_B) for d in crowd[::3]))):
        view = CountingView(ClusterIndex.from_objects(cluster))
        d = dispatch.validate(request, view, StaticAccess(GRANTS), PolicySettings())
        assert d.allowed
        counts.append(view.calls)
    assert counts[0] == counts[1] and counts[0] < 20


# -- claim metadata only its owner shapes (issue 23) --------------------------------------------------------------

_MINE = pciclaim(Lab.gpu, owner=TENANT_A, finalizers=[FINALIZER_AGENT])


@pytest.mark.parametrize(
    ("new", "who", "allowed"),
    [
        pytest.param(changed(_MINE, "metadata.finalizers", [FINALIZER_AGENT, "example.com/keep"]), user(TENANT_B),
                     False, id="forbid another user adding a finalizer that keeps a released device claimed"),
        pytest.param(changed(_MINE, "metadata.labels", {names.LABEL_NODENAME: NODE1A}), user(TENANT_B), False,
                     id="forbid another user changing the nodename label"),
        pytest.param(changed(_MINE, "metadata.labels", {"team": "x"}), user(TENANT_A), True,
                     id="allow the owner to label her claim"),
        pytest.param(changed(_MINE, "metadata.finalizers", [FINALIZER_AGENT, "example.com/keep"]), user(TENANT_A),
                     True, id="allow the owner to add a finalizer of her own"),
        pytest.param(changed(_MINE, "metadata.annotations", {OWNER: TENANT_A, "note": "x"}), user(TENANT_B), True,
                     id="allow another user an annotation (only labels and finalizers shape the claim)"),
        pytest.param(changed(_MINE, "metadata.labels", {"team": "x"}), controller(), True,
                     id="allow the cluster controller"),
        pytest.param(changed(_MINE, "metadata.labels", {"team": "x"}), user(ADMIN, groups=("system:masters",)), True,
                     id="allow a cluster-admin"),
    ],
)  # fmt: skip
def test_only_the_owner_shapes_a_claims_labels_and_finalizers(new: dict[str, Any], who: Any, allowed: bool) -> None:
    d = judge(review("UPDATE", new, _MINE, user_info=who), Lab.cluster(_MINE), GRANTS)
    assert d.allowed is allowed, d.message
    if not allowed:
        assert 'can only have its' in d.message and f'changed by its owner "{TENANT_A}"' in d.message
