"""VM, VMI, pool, replica set, instancetype and pod admission (A9, A9v, A12): allow/forbid tables over an in-memory
cluster view, the mutator's patch applied with jsonpatch, and the claim DELETE in-use check (A7)."""

from __future__ import annotations

from typing import Any

import jsonpatch  # type: ignore[import-untyped]
import pytest

from policy import names
from policy.access import Grant
from policy.settings import PolicySettings
from tests.support import vms
from tests.support.objects import (
    NODE1,
    NODE1A,
    TENANT_A,
    TENANT_B,
    Lab,
    changed,
    judge,
    pciclaim,
    pcidevice,
    usbclaim,
    user,
)
from tests.support.objects import review as claim_review
from tests.support.vms import entry, instancetype, pod, pool, replicaset, review, virt_controller, vm, vmi

GPU, AUDIO = entry(Lab.gpu), entry(Lab.audio)
GPU_1A, AUDIO_1A = entry(Lab.gpu_1a), entry(Lab.audio_1a)
STICK = entry(Lab.stick)
VGPU = ("vgpu1", "nvidia.com/GRID_T4-1Q")
GRANTS = (
    Grant(TENANT_A, "use", names.GROUP, "pcidevices", namespace="ns-a"),
    Grant(TENANT_A, "use", names.GROUP, "usbdevices", namespace="ns-a"),
    Grant(TENANT_B, "use", names.GROUP, "pcidevices", name=GPU_1A[0], namespace="ns-b"),
    Grant(TENANT_B, "use", names.GROUP, "pcidevices", name=AUDIO_1A[0], namespace="ns-b"),
)
CLAIMS = (
    pciclaim(Lab.gpu, owner=TENANT_A),
    pciclaim(Lab.audio, owner=TENANT_A),
    pciclaim(Lab.gpu_1a, owner=TENANT_A),
    pciclaim(Lab.audio_1a, owner=TENANT_A),
)


def _usbclaim() -> dict[str, Any]:
    return usbclaim(Lab.stick, owner=TENANT_A)


def cluster(*extra: dict[str, Any], claims: tuple[dict[str, Any], ...] = CLAIMS) -> list[dict[str, Any]]:
    return Lab.cluster(*claims, _usbclaim(), *extra)


def case(
    id: str, body: dict[str, Any], allowed: bool, message: str = "", *, extra: tuple[dict[str, Any], ...] = ()
) -> Any:
    return pytest.param(body, allowed, message, extra, id=id)


TENANT_B_USER = user(TENANT_B)
RESTORE_USER = user(vms.RESTORE, groups=("system:serviceaccounts", "system:authenticated"))
OWNED_VM = vm("gpu-vm", host=[GPU, AUDIO])
OTHER_VM = vm("other-vm", host=[GPU, AUDIO])
IT = instancetype("gpu-it", host=[AUDIO], gpus=[GPU])
IT_VM = vm("it-vm", instancetype=("VirtualMachineInstancetype", "gpu-it"))
RS = replicaset("rs", host=[GPU, AUDIO])
POOL = pool("pool", host=[GPU, AUDIO])

TABLE = [
    # -- VirtualMachine CREATE ---------------------------------------------------------------------------------
    case("allow create of vm naming a claimed gpu and its audio sibling", review("CREATE", OWNED_VM), True),
    case("allow create of vm naming the gpu under gpus", review("CREATE", vm("g", gpus=[GPU], host=[AUDIO])), True),
    case("allow create of vm with a usb device it may use", review("CREATE", vm("u", host=[STICK])), True),
    case("allow create of vm naming only other providers' devices", review("CREATE", vm("v", gpus=[VGPU])), True),
    case(
        "forbid create of vm naming a gpu without its iommu sibling",
        review("CREATE", vm("half", host=[GPU])),
        False,
        f'shares group "45" with pcidevice "{AUDIO[0]}", which it does not name; add a hostDevices entry',
    ),
    case(
        "forbid create of vm in a namespace where its requester lacks use",
        review("CREATE", vm("gpu-vm", "ns-b", host=[GPU, AUDIO])),
        False,
        'in namespace "ns-b"; user "tenant-a" lacks the verb use on pcidevices',
    ),
    case(
        "forbid create of vm naming someone else's device",
        review("CREATE", vm("steal", "ns-b", host=[GPU, AUDIO]), user_info=TENANT_B_USER),
        False,
        'user "tenant-b" lacks the verb use on pcidevices',
    ),
    case(
        "allow create of vm by the restore controller without use",
        review("CREATE", vm("restored", "ns-b", host=[GPU, AUDIO]), user_info=RESTORE_USER),
        True,
    ),
    case(
        "forbid create of vm naming an unclaimed device",
        review("CREATE", vm("free", host=[entry(Lab.gpu_beside_critical)])),
        False,
        f'pcidevice "{Lab.gpu_beside_critical["metadata"]["name"]}" (resource',
    ),
    case(
        "forbid create of vm naming a device by a mismatching deviceName",
        review("CREATE", vm("mismatch", host=[(GPU[0], AUDIO[1])])),
        False,
        f'by its resource name "{GPU[1]}"; its hostDevices entry "{GPU[0]}" asks for "{AUDIO[1]}"',
    ),
    case(
        "forbid create of a second vm naming the same device",
        review("CREATE", OTHER_VM),
        False,
        'is named by virtualmachine "ns-a/gpu-vm"',
        extra=(OWNED_VM,),
    ),
    case(
        "forbid create of vm naming devices on two nodes",
        review("CREATE", vm("split", host=[GPU, AUDIO, GPU_1A, AUDIO_1A])),
        False,
        'only use devices of one node; it names devices on nodes "node1", "node1-a"',
    ),
    # -- VirtualMachine UPDATE ---------------------------------------------------------------------------------
    case(
        "allow update of vm that changes only labels though its requester lacks use now",
        review("UPDATE", changed(OWNED_VM, "metadata.labels", {"x": "y"}), OWNED_VM, user_info=TENANT_B_USER),
        True,
    ),
    case(
        "allow update of vm that only reorders its host devices",
        review("UPDATE", vm("gpu-vm", host=[AUDIO, GPU]), OWNED_VM, user_info=TENANT_B_USER),
        True,
    ),
    case(
        "allow update of vm that is being deleted",
        review(
            "UPDATE",
            changed(vm("gpu-vm", "ns-b", host=[GPU]), "metadata.deletionTimestamp", "2026-11-27T06:00:00Z"),
            vm("gpu-vm", "ns-b"),
        ),
        True,
    ),
    case(
        "forbid update of vm adding a device its requester may not use",
        review("UPDATE", vm("b", "ns-b", host=[GPU, AUDIO]), vm("b", "ns-b"), user_info=TENANT_B_USER),
        False,
        "lacks the verb use",
    ),
    case(
        "allow update of vm that moves the gpu from hostDevices to gpus",
        review("UPDATE", vm("gpu-vm", gpus=[GPU], host=[AUDIO]), OWNED_VM),
        True,
        extra=(OWNED_VM,),
    ),
    # -- VMI (A9v) ---------------------------------------------------------------------------------------------
    case(
        "allow create of vmi by virt-controller carrying exactly its vm's devices",
        review("CREATE", vmi("gpu-vm", host=[AUDIO, GPU], owner=OWNED_VM), user_info=virt_controller()),
        True,
        extra=(OWNED_VM,),
    ),
    case(
        "forbid create of vmi by virt-controller whose devices differ from its vm's",
        review("CREATE", vmi("gpu-vm", host=[GPU, AUDIO, STICK], owner=OWNED_VM), user_info=virt_controller()),
        False,
        "can only carry the devices of the virtualmachine that owns it",
        extra=(OWNED_VM,),
    ),
    case(
        "forbid create of vmi by virt-controller for a vm the view does not hold",
        review("CREATE", vmi("gpu-vm", host=[GPU, AUDIO], owner=OWNED_VM), user_info=virt_controller()),
        False,
        'virtualmachine "gpu-vm" with uid',
    ),
    case(
        "forbid create of vmi by virt-controller whose ownerReference has another uid",
        review(
            "CREATE",
            changed(
                vmi("gpu-vm", host=[GPU, AUDIO], owner=OWNED_VM),
                "metadata.ownerReferences",
                [{**vmi("x", owner=OWNED_VM)["metadata"]["ownerReferences"][0], "uid": "forged"}],
            ),
            user_info=virt_controller(),
        ),
        False,
        "is not known",
        extra=(OWNED_VM,),
    ),
    case(
        "forbid create of vmi by a user whose labels and ownerReference name an admitted vm",
        review("CREATE", vmi("gpu-vm", "ns-b", host=[GPU, AUDIO], owner=OWNED_VM), user_info=TENANT_B_USER),
        False,
        "lacks the verb use",
        extra=(OWNED_VM,),
    ),
    case(
        "allow create of a direct vmi by a user who may use its devices",
        review("CREATE", vmi("direct", host=[GPU, AUDIO])),
        True,
    ),
    case(
        "allow create of vmi by virt-controller expanding its vm's instancetype",
        review("CREATE", vmi("it-vm", host=[AUDIO], gpus=[GPU], owner=IT_VM), user_info=virt_controller()),
        True,
        extra=(IT, IT_VM),
    ),
    case(
        "forbid create of vm whose instancetype names a device its requester may not use",
        review("CREATE", vm("it-vm", "ns-b", instancetype=("VirtualMachineInstancetype", "gpu-it"))),
        False,
        "lacks the verb use",
        extra=(instancetype("gpu-it", "ns-b", host=[AUDIO], gpus=[GPU]),),
    ),
    case(
        "allow create of vmi by virt-controller for its replica set",
        review("CREATE", vmi("rs-x", host=[GPU, AUDIO], owner=RS), user_info=virt_controller()),
        True,
        extra=(RS,),
    ),
    case(
        "allow create of vm by virt-controller without a pool (kubevirt's restore) without use",
        review("CREATE", vm("restored", "ns-b", host=[GPU, AUDIO]), user_info=virt_controller()),
        True,
    ),
    case(
        "forbid create of vm by virt-controller without a pool naming a device another vm names",
        review("CREATE", vm("restored", "ns-b", host=[GPU, AUDIO]), user_info=virt_controller()),
        False,
        'is named by virtualmachine "ns-a/gpu-vm"',
        extra=(OWNED_VM,),
    ),
    case(
        "forbid create of vmi by virt-controller without a controller ownerReference",
        review("CREATE", vmi("orphan", host=[GPU, AUDIO]), user_info=virt_controller()),
        False,
        "it has no controller ownerReference to a virtualmachine or virtualmachineinstancereplicaset",
    ),
    # -- pools, replica sets, instancetypes -------------------------------------------------------------------
    case(
        "forbid create of vm pool naming someone else's device",
        review("CREATE", pool("p", "ns-b", host=[GPU, AUDIO]), user_info=TENANT_B_USER),
        False,
        'virtualmachinepool "p" can only use devices its requester may use',
    ),
    case(
        "forbid create of replica set naming someone else's device",
        review("CREATE", replicaset("r", "ns-b", host=[GPU, AUDIO]), user_info=TENANT_B_USER),
        False,
        'virtualmachineinstancereplicaset "r" can only use devices',
    ),
    case("allow create of vm pool by the owner of its devices", review("CREATE", POOL), True),
    case(
        "allow create of vm by virt-controller for its pool",
        review("CREATE", vm("pool-0", host=[GPU, AUDIO], owner=POOL), user_info=virt_controller()),
        True,
        extra=(POOL,),
    ),
    case(
        "forbid create of cluster instancetype by a user who may use the device only in one namespace",
        review("CREATE", instancetype("c", "", host=[GPU, AUDIO])),
        False,
        'namespace (cluster-wide); user "tenant-a" lacks the verb use',
    ),
    # -- pods (A12) --------------------------------------------------------------------------------------------
    case(
        "forbid create of a plain pod asking for a claimed device",
        review("CREATE", pod("p", resources=[GPU[1]])),
        False,
        'pod "p" can only request device resources when virt-controller creates it for an admitted',
    ),
    case(
        "allow create of a pod asking for other extended resources",
        review("CREATE", pod("p", resources=["example.com/foo"])),
        True,
    ),
    case(
        "allow create of virt-launcher pod by virt-controller for its vmi",
        review(
            "CREATE",
            pod("virt-launcher-gpu-vm", resources=[GPU[1], AUDIO[1]], owner=vmi("gpu-vm", host=[GPU, AUDIO])),
            user_info=virt_controller(),
        ),
        True,
        extra=(vmi("gpu-vm", host=[GPU, AUDIO]),),
    ),
    case(
        "forbid create of virt-launcher pod asking beyond its vmi's devices",
        review(
            "CREATE",
            pod("virt-launcher-gpu-vm", resources=[GPU[1], STICK[1]], owner=vmi("gpu-vm", host=[GPU, AUDIO])),
            user_info=virt_controller(),
        ),
        False,
        'beyond those of virtualmachineinstance "gpu-vm"',
        extra=(vmi("gpu-vm", host=[GPU, AUDIO]),),
    ),
]


@pytest.mark.parametrize(("body", "allowed", "message", "extra"), TABLE)
def test_vm_like_and_pod_admission(body: dict[str, Any], allowed: bool, message: str, extra: tuple[Any, ...]) -> None:
    d = judge(body, cluster(*extra), GRANTS)
    assert d.allowed is allowed, d.message
    if not allowed:
        assert d.code == 403
        assert message in d.message


def test_message_of_an_unclaimed_sibling_names_the_claim_to_create() -> None:
    claims = (pciclaim(Lab.gpu, owner=TENANT_A),)
    d = judge(review("CREATE", vm("v", host=[GPU])), cluster(claims=claims), GRANTS)
    assert not d.allowed
    assert f'with unclaimed pcidevice "{AUDIO[0]}"; create pcideviceclaim "{AUDIO[0]}" for "tenant-a"' in d.message


def test_mutator_appends_same_owner_claimed_sibling_and_the_result_is_admitted() -> None:
    obj = vm("half", host=[GPU])
    d = judge(review("CREATE", obj), cluster(), GRANTS, mutate=True)
    assert d.allowed
    assert d.patch, "the audio sibling must be added"
    patched = jsonpatch.apply_patch(obj, list(d.patch))
    entries = patched["spec"]["template"]["spec"]["domain"]["devices"]["hostDevices"]
    assert {"name": AUDIO[0], "deviceName": AUDIO[1]} in entries
    assert judge(review("CREATE", patched), cluster(), GRANTS).allowed


def test_mutator_adds_host_devices_when_the_vm_names_the_gpu_only_under_gpus() -> None:
    obj = vm("g", gpus=[GPU])
    d = judge(review("CREATE", obj), cluster(), GRANTS, mutate=True)
    patched = jsonpatch.apply_patch(obj, list(d.patch))
    assert patched["spec"]["template"]["spec"]["domain"]["devices"]["hostDevices"] == [
        {"name": AUDIO[0], "deviceName": AUDIO[1]}
    ]


def test_mutator_leaves_a_complete_vm_and_unrelated_updates_alone() -> None:
    assert judge(review("CREATE", OWNED_VM), cluster(), GRANTS, mutate=True).patch == ()
    relabel = review("UPDATE", changed(vm("half", host=[GPU]), "metadata.labels", {"a": "b"}), vm("half", host=[GPU]))
    assert judge(relabel, cluster(), GRANTS, mutate=True).patch == ()


def test_mutator_never_completes_an_unclaimed_sibling() -> None:
    claims = (pciclaim(Lab.gpu, owner=TENANT_A),)
    d = judge(review("CREATE", vm("v", host=[GPU])), cluster(claims=claims), GRANTS, mutate=True)
    assert d.allowed and d.patch == ()


def test_mutator_never_completes_a_sibling_of_another_owner() -> None:
    claims = (pciclaim(Lab.gpu, owner=TENANT_A), pciclaim(Lab.audio, owner=TENANT_B))
    d = judge(review("CREATE", vm("v", host=[GPU])), cluster(claims=claims), GRANTS, mutate=True)
    assert d.patch == ()
    v = judge(review("CREATE", vm("v", host=[GPU])), cluster(claims=claims), GRANTS)
    assert not v.allowed and f'claimed by "{TENANT_B}"' in v.message


# -- pooled resource names ---------------------------------------------------------------------------------------

POOLED = PolicySettings(resource_names="pooled")
POOL_NAME = "nvidia.com/TU104GL_TESLA_T4"
T4_A = pcidevice(NODE1, "0000:86:00.0", iommu_group="100", resource_name=POOL_NAME)
T4_B = pcidevice(NODE1, "0000:87:00.0", iommu_group="101", resource_name=POOL_NAME)
T4_C = pcidevice(NODE1, "0000:88:00.0", iommu_group="102", resource_name=POOL_NAME)
T4_OTHER_NODE = pcidevice(NODE1A, "0000:86:00.0", iommu_group="100", resource_name=POOL_NAME)


def pooled_cluster(*extra: dict[str, Any]) -> list[dict[str, Any]]:
    return Lab.cluster(T4_A, T4_B, T4_C, T4_OTHER_NODE, pciclaim(T4_A), pciclaim(T4_B), *extra)


def test_pooled_vm_is_admitted_and_pinned_to_the_node_holding_its_claimed_pool() -> None:
    obj = vm("pooled", host=[("gpu1", POOL_NAME), ("gpu2", POOL_NAME)])
    body = review("CREATE", obj)
    assert judge(body, pooled_cluster(), GRANTS, settings=POOLED).allowed
    d = judge(body, pooled_cluster(), GRANTS, settings=POOLED, mutate=True)
    patched = jsonpatch.apply_patch(obj, list(d.patch))
    terms = patched["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]["nodeSelectorTerms"]
    assert terms == [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": [NODE1]}]}]


def test_pooled_vm_asking_for_more_than_a_node_holds_is_forbidden() -> None:
    obj = vm("pooled", host=[("a", POOL_NAME), ("b", POOL_NAME), ("c", POOL_NAME)])
    d = judge(review("CREATE", obj), pooled_cluster(), GRANTS, settings=POOLED)
    assert not d.allowed and f'no node has 3 claimed devices of "{POOL_NAME}"' in d.message


def test_pooled_claim_by_a_second_owner_on_the_same_node_is_forbidden_unless_it_opts_out() -> None:
    claim = pciclaim(T4_C, owner=TENANT_B)
    grants = (Grant(TENANT_B, "claim", names.GROUP, "pcidevices"),)
    body = claim_review("CREATE", claim, user_info=TENANT_B_USER)
    d = judge(body, pooled_cluster(), grants, settings=POOLED)
    assert not d.allowed and 'belongs to "tenant-a"; set spec.disableResourcePooling: true' in d.message
    assert judge(body, pooled_cluster(), grants).allowed  # perDevice: every device is its own pool
    opt_out = claim_review("CREATE", changed(claim, "spec.disableResourcePooling", True), user_info=TENANT_B_USER)
    assert judge(opt_out, pooled_cluster(), grants, settings=POOLED).allowed


# -- claim DELETE while in use (A7) -------------------------------------------------------------------------------


def _delete(claim: dict[str, Any]) -> dict[str, Any]:
    return claim_review("DELETE", None, claim)


def test_claim_delete_is_forbidden_while_a_vm_names_the_device() -> None:
    d = judge(_delete(CLAIMS[0]), cluster(OWNED_VM), GRANTS)
    assert not d.allowed and 'virtualmachine "ns-a/gpu-vm" name it; remove the device from them' in d.message


def test_claim_delete_is_forbidden_while_the_kubelet_has_the_device_allocated() -> None:
    claim = changed(CLAIMS[0], "status", {"allocatedTo": [{"pod": "ns-a/virt-launcher-x", "container": "compute"}]})
    d = judge(_delete(claim), cluster(), GRANTS)
    assert not d.allowed and 'pods "ns-a/virt-launcher-x" hold it' in d.message


def test_claim_delete_is_allowed_once_no_vm_names_the_device_or_the_node_is_gone() -> None:
    assert judge(_delete(CLAIMS[0]), cluster(vm("other", host=[GPU_1A, AUDIO_1A])), GRANTS).allowed
    gone = Lab.cluster(*CLAIMS, OWNED_VM, nodes=(NODE1A,))
    assert judge(_delete(CLAIMS[0]), gone, GRANTS).allowed


def test_claim_delete_ignores_vms_being_deleted() -> None:
    deleting = changed(OWNED_VM, "metadata.deletionTimestamp", "2026-11-27T06:00:00Z")
    assert judge(_delete(CLAIMS[0]), cluster(deleting), GRANTS).allowed
