"""VM, VMI, pool, replica set, instancetype and pod admission (A9, A9v, A12): allow/forbid tables over an in-memory
cluster view, the mutator's patch applied with jsonpatch, and the claim DELETE in-use check (A7)."""

from __future__ import annotations

import json
from typing import Any

import jsonpatch  # type: ignore[import-untyped]
import pytest

from policy import names, records
from policy.access import Grant
from policy.names import ADOPTED_REQUESTER
from policy.settings import PolicySettings
from tests.support import vms
from tests.support.objects import (
    NODE1,
    NODE1A,
    TENANT_A,
    TENANT_B,
    Lab,
    admit,
    changed,
    judge,
    migration,
    pciclaim,
    pcidevice,
    usbclaim,
    user,
)
from tests.support.objects import review as claim_review
from tests.support.vms import (
    entry,
    instancetype,
    pod,
    pool,
    recorded,
    replicaset,
    restored,
    review,
    snapshot_content,
    virt_controller,
    vm,
    vm_clone,
    vm_restore,
    vm_snapshot,
    vmi,
)

GPU, AUDIO = entry(Lab.gpu), entry(Lab.audio)
GPU_1A, AUDIO_1A = entry(Lab.gpu_1a), entry(Lab.audio_1a)
STICK = entry(Lab.stick)
STICK_1A = entry(Lab.stick_1a)
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
UNCLAIMED_T4 = pcidevice(NODE1, "0000:d9:00.0", iommu_group="95", resource_name="nvidia.com/TU104GL_TESLA_T4")
PER_DEVICE_UNCLAIMED = f"nvidia.com/{UNCLAIMED_T4['metadata']['name']}"
POOLED_T4 = "nvidia.com/TU104GL_TESLA_T4"
CLAIMED_T4 = changed(pcidevice(NODE1, "0000:da:00.0", iommu_group="96"), "status.pooledResourceName", POOLED_T4)


def _add_devices(*entries: tuple[str, str]) -> str:
    """A restore or clone patch that gives the VM host devices."""
    value = [{"name": n, "deviceName": d} for n, d in entries]
    return json.dumps({"op": "add", "path": "/spec/template/spec/domain/devices/hostDevices", "value": value})
RESTORE_USER = user(vms.RESTORE, groups=("system:serviceaccounts", "system:authenticated"))
OWNED_VM = recorded(vm("gpu-vm", host=[GPU, AUDIO]), TENANT_A)
OTHER_VM = vm("other-vm", host=[GPU, AUDIO])
B_VM = recorded(vm("b-vm", "ns-b", host=[GPU_1A, AUDIO_1A]), TENANT_B)  # tenant-b may use the node1-a GPU in ns-b
IT = instancetype("gpu-it", host=[AUDIO], gpus=[GPU])
IT_VM = recorded(vm("it-vm", instancetype=("VirtualMachineInstancetype", "gpu-it")), TENANT_A)
RS = recorded(replicaset("rs", host=[GPU, AUDIO]), TENANT_A)
POOL = recorded(pool("pool", host=[GPU, AUDIO]), TENANT_A)
RESTORE_A = recorded(vm_restore("r1", "restored"), TENANT_A)
RESTORE_B = recorded(vm_restore("r2", "restored", namespace="ns-b"), TENANT_B)

TABLE = [
    # -- VirtualMachine CREATE ---------------------------------------------------------------------------------
    case("allow create of vm naming a claimed gpu and its audio sibling", review("CREATE", OWNED_VM), True),
    case("allow create of vm naming the gpu under gpus", review("CREATE", vm("g", gpus=[GPU], host=[AUDIO])), True),
    case("allow create of vm with a usb device it may use", review("CREATE", vm("u", host=[STICK])), True),
    case("allow create of vm naming only other providers' devices", review("CREATE", vm("v", gpus=[VGPU])), True),
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
        "allow create of vm by a use-exempt restore controller without use",
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
        "allow create of a second vm of the same requester naming the same device (a clone)",
        review("CREATE", OTHER_VM),
        True,
        extra=(OWNED_VM,),
    ),
    case(
        "forbid create of a vm naming a device another requester's vm names",
        review("CREATE", vm("a-vm", host=[GPU_1A, AUDIO_1A])),
        False,
        'is named by virtualmachine "ns-b/b-vm" (requested by "tenant-b")',
        extra=(B_VM,),
    ),
    case(
        "forbid create of a vm naming a device a vm without a record names",
        review("CREATE", OTHER_VM),
        False,
        'is named by virtualmachine "ns-a/gpu-vm" (requested by nobody recorded)',
        extra=(vm("gpu-vm", host=[GPU, AUDIO]),),
    ),
    case(
        "forbid create of a vm naming a device another requester's vm names through an instancetype",
        review("CREATE", vm("a-vm", host=[GPU_1A, AUDIO_1A])),
        False,
        'is named by virtualmachine "ns-b/it-b" (requested by "tenant-b")',
        extra=(
            instancetype("it-1a", "ns-b", host=[GPU_1A, AUDIO_1A]),
            recorded(vm("it-b", "ns-b", instancetype=("virtualmachineinstancetypes", "it-1a")), TENANT_B),
        ),
    ),
    case(
        "forbid create of a vm whose forged controller ownerReference names the holder with another uid",
        review(
            "CREATE",
            changed(
                vm("a-vm", "ns-b", host=[GPU_1A, AUDIO_1A]),
                "metadata.ownerReferences",
                [{**vmi("x", "ns-b", owner=B_VM)["metadata"]["ownerReferences"][0], "uid": "forged"}],
            ),
            user_info=user(TENANT_A),
        ),
        False,
        "lacks the verb use",
        extra=(B_VM,),
    ),
    case(
        "forbid create of vm asking for a claimed device in domain.resources by a user without use",
        review(
            "CREATE",
            changed(vm("res", "ns-b"), "spec.template.spec.domain.resources", {"limits": {GPU[1]: "1"}}),
            user_info=TENANT_B_USER,
        ),
        False,
        'user "tenant-b" lacks the verb use on pcidevices',
    ),
    case(
        "forbid create of vmi asking for a claimed device in domain.resources requests by a user without use",
        review(
            "CREATE",
            changed(vmi("res", "ns-b"), "spec.domain.resources", {"requests": {GPU[1]: "1"}}),
            user_info=TENANT_B_USER,
        ),
        False,
        'user "tenant-b" lacks the verb use on pcidevices',
    ),
    case(
        "allow create of vm asking for its claimed gpu and audio in domain.resources",
        review(
            "CREATE",
            changed(vm("res"), "spec.template.spec.domain.resources", {"limits": {GPU[1]: "1", AUDIO[1]: "1"}}),
        ),
        True,
    ),
    case(
        "forbid create of vm naming the per-device name of an unclaimed device",
        review("CREATE", vm("early", host=[("x", PER_DEVICE_UNCLAIMED)])),
        False,
        f'the name pcidevice "{UNCLAIMED_T4["metadata"]["name"]}" gets once claimed; create pcideviceclaim',
        extra=(UNCLAIMED_T4,),
    ),
    case(
        "forbid create of vm naming a device that does not exist yet on a known node",
        review("CREATE", vm("early", host=[("x", "intel.com/node1-0000d9001")])),
        False,
        'shaped like the name of a device on node "node1", which has no such device',
    ),
    case(
        "forbid create of vm naming a usb device that does not exist yet on a known node",
        review("CREATE", vm("early", host=[("x", "kubevirt.io/node1-1234-5678-003007")])),
        False,
        'shaped like the name of a device on node "node1"',
    ),
    case(
        "forbid create of vm naming the pooled name of a model whose devices are all offered per device",
        review("CREATE", vm("early", host=[("x", POOLED_T4)])),
        False,
        'the pooled name of models "10de:1eb8", under which no device is offered now',
        extra=(CLAIMED_T4, pciclaim(CLAIMED_T4, owner=TENANT_A)),
    ),
    case(
        "allow create of vm naming a name of another provider that looks like nothing of ours",
        review("CREATE", vm("other", host=[("x", "intel.com/qat-vf")])),
        True,
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
        review("UPDATE", recorded(vm("gpu-vm", host=[AUDIO, GPU]), TENANT_A), OWNED_VM, user_info=TENANT_B_USER),
        True,
    ),
    case(
        "forbid update of a vm being deleted that adds a device its requester may not use",
        review(
            "UPDATE",
            changed(vm("gpu-vm", "ns-b", host=[GPU, AUDIO]), "metadata.deletionTimestamp", "2026-11-27T06:00:00Z"),
            changed(vm("gpu-vm", "ns-b"), "metadata.deletionTimestamp", "2026-11-27T06:00:00Z"),
            user_info=TENANT_B_USER,
        ),
        False,
        "lacks the verb use",
    ),
    case(
        "forbid update of vm that forges the admission record of another user",
        review(
            "UPDATE",
            recorded(vm("b", "ns-b"), TENANT_A),
            vm("b", "ns-b"),
            user_info=TENANT_B_USER,
        ),
        True,  # the mutator rewrites it to the requester; what is stored then names tenant-b
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
        "forbid create of vmi by virt-controller carrying a device its vm's requester may not use",
        review(
            "CREATE", vmi("b-vm", "ns-b", host=[GPU_1A, AUDIO_1A, STICK_1A], owner=B_VM), user_info=virt_controller()
        ),
        False,
        f'user "tenant-b" lacks the verb use on usbdevices "{STICK_1A[0]}"',
        extra=(B_VM, usbclaim(Lab.stick_1a, owner=TENANT_A)),
    ),
    case(
        "forbid create of vmi by virt-controller for a vm without an admission record",
        review("CREATE", vmi("legacy", host=[GPU, AUDIO], owner=vm("legacy")), user_info=virt_controller()),
        False,
        'carries no devices.harvesterhci.io/requester record',
        extra=(vm("legacy", host=[GPU, AUDIO]),),
    ),
    case(
        "forbid create of vmi by virt-controller whose vm's requester lost use since the vm was admitted",
        review("CREATE", vmi("gone", "ns-b", host=[GPU, AUDIO], owner=vm("gone", "ns-b")), user_info=virt_controller()),
        False,
        'user "tenant-b" lacks the verb use',
        extra=(recorded(vm("gone", "ns-b", host=[GPU, AUDIO]), TENANT_B),),
    ),
    case(
        "forbid create of vmi by virt-controller when the vm's instancetype gained a device its requester may not use",
        review(
            "CREATE",
            vmi("it-b", "ns-b", gpus=[GPU], host=[AUDIO], owner=vm("it-b", "ns-b")),
            user_info=virt_controller(),
        ),
        False,
        'user "tenant-b" lacks the verb use',
        extra=(
            recorded(vm("it-b", "ns-b", instancetype=("VirtualMachineClusterInstancetype", "later")), TENANT_B),
            instancetype("later", "", host=[AUDIO], gpus=[GPU]),
        ),
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
        "forbid create of vm by virt-controller that no pool or restore accounts for",
        review("CREATE", vm("restored", "ns-b", host=[GPU, AUDIO]), user_info=virt_controller()),
        False,
        "it belongs to no pool and carries no restore.kubevirt.io/lastRestoreUID of a restore",
    ),
    case(
        "allow create of vm by virt-controller for a restore whose requester may use its devices",
        review("CREATE", restored(vm("restored", host=[GPU, AUDIO]), RESTORE_A), user_info=virt_controller()),
        True,
        extra=(RESTORE_A,),
    ),
    case(
        "forbid create of vm by virt-controller for a restore whose requester may not use its devices",
        review(
            "CREATE", restored(vm("restored", "ns-b", host=[GPU, AUDIO]), RESTORE_B), user_info=virt_controller()
        ),
        False,
        'user "tenant-b" lacks the verb use',
        extra=(RESTORE_B,),
    ),
    case(
        "forbid create of vm by virt-controller marked by a restore the view does not hold",
        review("CREATE", restored(vm("restored", host=[GPU, AUDIO]), RESTORE_A), user_info=virt_controller()),
        False,
        "names no restore known",
    ),
    case(
        "forbid create of vm by a user carrying a restore mark (the mark traces only virt-controller's writes)",
        review("CREATE", restored(vm("restored", "ns-b", host=[GPU, AUDIO]), RESTORE_A), user_info=TENANT_B_USER),
        False,
        'user "tenant-b" lacks the verb use',
        extra=(RESTORE_A,),
    ),
    # -- restores, clones, snapshot contents (issue 22) --------------------------------------------------------
    case(
        "forbid create of a restore whose patch adds a device its requester may not use",
        review(
            "CREATE",
            vm_restore("r", "mine", namespace="ns-b", patches=[_add_devices(GPU, AUDIO)]),
            user_info=TENANT_B_USER,
        ),
        False,
        'user "tenant-b" lacks the verb use',
    ),
    case(
        "allow create of a restore whose patch adds the requester's own devices",
        review("CREATE", vm_restore("r", "mine", patches=[_add_devices(GPU, AUDIO)])),
        True,
    ),
    case(
        "forbid create of a restore of a snapshot whose copy names a device the requester may not use",
        review("CREATE", vm_restore("r", "back", snapshot="s1", namespace="ns-b"), user_info=TENANT_B_USER),
        False,
        'user "tenant-b" lacks the verb use',
        extra=(
            vm_snapshot("s1", "orig", "c1", namespace="ns-b"),
            snapshot_content("c1", vm("orig", "ns-b", host=[GPU, AUDIO]), namespace="ns-b"),
        ),
    ),
    case(
        "forbid create of a clone whose patch adds a device its requester may not use",
        review("CREATE", vm_clone("c", "empty", namespace="ns-b", patches=[_add_devices(GPU, AUDIO)]),
               user_info=TENANT_B_USER),
        False,
        'user "tenant-b" lacks the verb use',
        extra=(vm("empty", "ns-b"),),
    ),
    case(
        "allow create of a clone of the requester's own vm with its device",
        review("CREATE", vm_clone("c", "gpu-vm")),
        True,
        extra=(OWNED_VM,),
    ),
    case(
        "forbid create of a clone of another requester's vm by a user without use",
        review("CREATE", vm_clone("c", "gpu-vm", namespace="ns-a"), user_info=TENANT_B_USER),
        False,
        'user "tenant-b" lacks the verb use',
        extra=(OWNED_VM,),
    ),
    case(
        "forbid create of a snapshot content by a user whose vm copy names a device it may not use",
        review(
            "CREATE",
            snapshot_content("c2", vm("orig", "ns-b", host=[GPU, AUDIO]), namespace="ns-b"),
            user_info=TENANT_B_USER,
        ),
        False,
        'user "tenant-b" lacks the verb use',
    ),
    case(
        "allow create of a snapshot content by virt-controller (a copy of an admitted vm)",
        review(
            "CREATE",
            snapshot_content("c2", vm("orig", "ns-b", host=[GPU, AUDIO]), namespace="ns-b"),
            user_info=virt_controller(),
        ),
        True,
    ),
    case(
        "forbid create of a restore by virt-controller for a clone the view does not hold",
        review(
            "CREATE",
            vm_restore("tmp-restore-x", "copy", owner=vm_clone("c", "gpu-vm"), patches=[_add_devices(GPU, AUDIO)]),
            user_info=virt_controller(),
        ),
        False,
        'virtualmachineclone "c" with uid',
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
        "forbid create of a plain pod asking for the per-device name of an unclaimed device",
        review("CREATE", pod("p", resources=[PER_DEVICE_UNCLAIMED])),
        False,
        'pod "p" can only request device resources when virt-controller creates it',
        extra=(UNCLAIMED_T4,),
    ),
    case(
        "forbid create of a plain pod asking for a device that does not exist yet on a known node",
        review("CREATE", pod("p", resources=["intel.com/node1-0000d9001"])),
        False,
        'pod "p" can only request device resources',
    ),
    case(
        "forbid create of a pod whose init container requests a claimed device",
        review(
            "CREATE",
            changed(
                pod("p"),
                "spec.initContainers",
                [{"name": "init", "image": "x", "resources": {"requests": {GPU[1]: "1"}}}],
            ),
        ),
        False,
        'pod "p" can only request device resources',
    ),
    case(
        "forbid create of virt-launcher pod by virt-controller for a vmi the view does not hold",
        review(
            "CREATE",
            pod("virt-launcher-x", resources=[GPU[1]], owner=vmi("x", host=[GPU, AUDIO])),
            user_info=virt_controller(),
        ),
        False,
        "for no virtualmachineinstance the webhook knows",
    ),
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
    d = admit(body, cluster(*extra), GRANTS)
    assert d.allowed is allowed, d.message
    if not allowed:
        assert d.code == 403
        assert message in d.message


def test_validator_alone_forbids_a_vm_naming_a_gpu_without_its_iommu_sibling() -> None:
    d = judge(review("CREATE", recorded(vm("half", host=[GPU]), TENANT_A)), cluster(), GRANTS)
    assert not d.allowed
    assert f'shares group "45" with pcidevice "{AUDIO[0]}", which it does not name; add a hostDevices' in d.message


def test_message_of_an_unclaimed_sibling_names_the_claim_to_create() -> None:
    claims = (pciclaim(Lab.gpu, owner=TENANT_A),)
    d = admit(review("CREATE", vm("v", host=[GPU])), cluster(claims=claims), GRANTS)
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
    assert patched["metadata"]["annotations"][records.ANNOTATION] == recorded(obj, TENANT_A)["metadata"][
        "annotations"
    ][records.ANNOTATION]


def test_mutator_adds_host_devices_when_the_vm_names_the_gpu_only_under_gpus() -> None:
    obj = vm("g", gpus=[GPU])
    d = judge(review("CREATE", obj), cluster(), GRANTS, mutate=True)
    patched = jsonpatch.apply_patch(obj, list(d.patch))
    assert patched["spec"]["template"]["spec"]["domain"]["devices"]["hostDevices"] == [
        {"name": AUDIO[0], "deviceName": AUDIO[1]}
    ]


def test_mutator_leaves_a_complete_recorded_vm_and_unrelated_updates_alone() -> None:
    assert judge(review("CREATE", OWNED_VM), cluster(), GRANTS, mutate=True).patch == ()
    relabel = review("UPDATE", changed(vm("half", host=[GPU]), "metadata.labels", {"a": "b"}), vm("half", host=[GPU]))
    assert judge(relabel, cluster(), GRANTS, mutate=True).patch == ()


def test_mutator_stamps_the_record_of_the_requester_and_replaces_a_forged_one() -> None:
    forged = recorded(vm("v", host=[GPU, AUDIO]), TENANT_B)
    d = judge(review("CREATE", forged), cluster(), GRANTS, mutate=True)
    patched = jsonpatch.apply_patch(forged, list(d.patch))
    assert records.Requester.decode(patched["metadata"]["annotations"][records.ANNOTATION]).username == TENANT_A
    assert not judge(review("CREATE", forged), cluster(), GRANTS).allowed, "the validator refuses a forged record"


def test_mutator_removes_a_record_from_an_object_virt_controller_writes_for_nobody() -> None:
    obj = recorded(vm("v"), TENANT_A)
    d = judge(review("CREATE", obj, user_info=virt_controller()), cluster(), GRANTS, mutate=True)
    assert {"op": "remove", "path": "/metadata/annotations/devices.harvesterhci.io~1requester"} in d.patch


def _record_only(patch: tuple[Any, ...]) -> bool:
    return all("requester" in str(op.get("path")) + str(op.get("value")) for op in patch)


def test_mutator_never_completes_an_unclaimed_sibling() -> None:
    claims = (pciclaim(Lab.gpu, owner=TENANT_A),)
    d = judge(review("CREATE", vm("v", host=[GPU])), cluster(claims=claims), GRANTS, mutate=True)
    assert d.allowed and _record_only(d.patch)


def test_mutator_never_completes_a_sibling_of_another_owner() -> None:
    claims = (pciclaim(Lab.gpu, owner=TENANT_A), pciclaim(Lab.audio, owner=TENANT_B))
    d = judge(review("CREATE", vm("v", host=[GPU])), cluster(claims=claims), GRANTS, mutate=True)
    assert _record_only(d.patch)
    v = admit(review("CREATE", vm("v", host=[GPU])), cluster(claims=claims), GRANTS)
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
    assert admit(body, pooled_cluster(), GRANTS, settings=POOLED).allowed
    d = judge(body, pooled_cluster(), GRANTS, settings=POOLED, mutate=True)
    patched = jsonpatch.apply_patch(obj, list(d.patch))
    terms = patched["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]["nodeSelectorTerms"]
    assert terms == [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": [NODE1]}]}]


def test_pooled_vm_asking_for_more_than_a_node_holds_is_forbidden() -> None:
    obj = vm("pooled", host=[("a", POOL_NAME), ("b", POOL_NAME), ("c", POOL_NAME)])
    d = admit(review("CREATE", obj), pooled_cluster(), GRANTS, settings=POOLED)
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


# -- the takeover's records of adopted VMs ------------------------------------------------------------------------


def _adopted(obj: dict[str, Any], *resources: str) -> dict[str, Any]:
    rec = records.Requester(ADOPTED_REQUESTER, via="takeover", adopted=resources).encode()
    return changed(obj, ["metadata", "annotations"], {records.ANNOTATION: rec})


def test_the_vmi_of_an_adopted_vm_passes_for_the_names_it_used_upstream_only() -> None:
    adopted_vm = _adopted(vm("legacy", "ns-b", host=[GPU, AUDIO]), GPU[1], AUDIO[1])
    vmi_body = review("CREATE", vmi("legacy", "ns-b", host=[GPU, AUDIO], owner=adopted_vm), user_info=virt_controller())
    assert admit(vmi_body, cluster(adopted_vm), GRANTS).allowed
    partly = _adopted(vm("legacy", "ns-b", host=[GPU, AUDIO]), GPU[1])
    more = review("CREATE", vmi("legacy", "ns-b", host=[GPU, AUDIO], owner=partly), user_info=virt_controller())
    d = admit(more, cluster(partly), GRANTS)
    assert not d.allowed and "lacks the verb use" in d.message


def test_only_the_takeover_writes_an_adopted_record() -> None:
    old = vm("legacy", "ns-b", host=[GPU, AUDIO])
    new = _adopted(old, GPU[1], AUDIO[1])
    assert admit(review("UPDATE", new, old, user_info=migration()), cluster(), GRANTS).allowed
    d = admit(review("UPDATE", new, old, user_info=TENANT_B_USER), cluster(), GRANTS)
    assert not d.allowed and 'user "tenant-b" lacks the verb use' in d.message


# -- pooled pins that hold (issue 23) ------------------------------------------------------------------------------

B_POOL_GRANTS = (*GRANTS, Grant(TENANT_B, "use", names.GROUP, "pcidevices", name=T4_OTHER_NODE["metadata"]["name"],
                                namespace="ns-b"))  # fmt: skip


def _b_pooled_cluster(*extra: dict[str, Any]) -> list[dict[str, Any]]:
    return pooled_cluster(pciclaim(T4_OTHER_NODE, owner=TENANT_B), *extra)


def _terms(*nodes: str, field: bool = True) -> dict[str, Any]:
    if field:
        terms = [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": [n]}]} for n in nodes]
    else:
        terms = [{"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": [n]}]}
                 for n in nodes]  # fmt: skip
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}}


def _b_vm(affinity: dict[str, Any] | None = None, node_selector: dict[str, str] | None = None) -> dict[str, Any]:
    obj = vm("b-pooled", "ns-b", host=[("gpu1", POOL_NAME)])
    if affinity is not None:
        obj["spec"]["template"]["spec"]["affinity"] = affinity
    if node_selector is not None:
        obj["spec"]["template"]["spec"]["nodeSelector"] = node_selector
    return obj


def _pins(obj: dict[str, Any], path: tuple[str, ...] = ("spec", "template", "spec")) -> list[set[str]]:
    spec = obj
    for key in path:
        spec = spec[key]
    terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    return [{v for e in t.get("matchFields", []) if e["key"] == "metadata.name" for v in e["values"]} for t in terms]


@pytest.mark.parametrize(
    "shape",
    [
        pytest.param(_b_vm(_terms(NODE1A, NODE1)), id="two required terms, her node then alice's"),
        pytest.param(_b_vm(_terms(NODE1, NODE1A)), id="two required terms, alice's node first"),
        pytest.param(_b_vm(_terms(NODE1, field=False)), id="a hostname label term for alice's node"),
        pytest.param(_b_vm(node_selector={"kubernetes.io/hostname": NODE1}), id="a nodeSelector for alice's node"),
        pytest.param(_b_vm(), id="no scheduling at all"),
    ],
)
def test_a_pooled_vm_is_pinned_in_every_term_to_the_node_whose_pool_it_was_judged_for(shape: dict[str, Any]) -> None:
    body = review("CREATE", shape, user_info=TENANT_B_USER)
    d = judge(body, _b_pooled_cluster(), B_POOL_GRANTS, settings=POOLED, mutate=True)
    patched = jsonpatch.apply_patch(shape, list(d.patch))
    assert all(NODE1A in pins for pins in _pins(patched)), "every ORed term must require tenant-b's node"
    assert admit(body, _b_pooled_cluster(), B_POOL_GRANTS, settings=POOLED).allowed
    unpinned = review("CREATE", recorded(shape, TENANT_B), user_info=TENANT_B_USER)
    v = judge(unpinned, _b_pooled_cluster(), B_POOL_GRANTS, settings=POOLED)  # the validator alone: not pinned yet
    assert not v.allowed and "can only run on the node whose pool it was judged for" in v.message


def test_a_pooled_vm_re_pinned_to_another_owners_node_by_an_update_is_denied() -> None:
    old = jsonpatch.apply_patch(_b_vm(), list(judge(review("CREATE", _b_vm(), user_info=TENANT_B_USER),
                                                       _b_pooled_cluster(), B_POOL_GRANTS, settings=POOLED,
                                                       mutate=True).patch))  # fmt: skip
    old = recorded(old, TENANT_B)
    moved = changed(old, "spec.template.spec.affinity", _terms(NODE1))
    d = admit(review("UPDATE", moved, old, user_info=TENANT_B_USER), _b_pooled_cluster(), B_POOL_GRANTS,
              settings=POOLED)  # fmt: skip
    assert not d.allowed and f'that "{TENANT_B}" may use on node "{NODE1}"' in d.message


def test_a_pooled_vmi_of_a_user_is_pinned_and_virt_controllers_vmi_must_keep_its_vms_pin() -> None:
    direct = vmi("b-direct", "ns-b", host=[("gpu1", POOL_NAME)])
    direct["spec"]["nodeSelector"] = {"kubernetes.io/hostname": NODE1}
    body = review("CREATE", direct, user_info=TENANT_B_USER)
    assert admit(body, _b_pooled_cluster(), B_POOL_GRANTS, settings=POOLED).allowed
    patched = jsonpatch.apply_patch(direct, list(judge(body, _b_pooled_cluster(), B_POOL_GRANTS, settings=POOLED,
                                                       mutate=True).patch))  # fmt: skip
    assert all(NODE1A in pins for pins in _pins(patched, ("spec",)))
    owner = recorded(changed(_b_vm(), "spec.template.spec.affinity", _terms(NODE1A)), TENANT_B)
    escaped = vmi("b-pooled", "ns-b", host=[("gpu1", POOL_NAME)], owner=owner)
    escaped["spec"]["affinity"] = _terms(NODE1A, NODE1)  # a second, ORed term towards alice's node
    d = admit(review("CREATE", escaped, user_info=virt_controller()), _b_pooled_cluster(owner), B_POOL_GRANTS,
              settings=POOLED)  # fmt: skip
    assert not d.allowed and "can only run on the node whose pool it was judged for" in d.message


def test_a_vm_asking_for_a_device_offered_through_dra_is_told_to_use_a_resource_claim() -> None:
    dra_claim = changed(pciclaim(Lab.gpu, owner=TENANT_A), "spec.offer", "DRA")
    dra_gpu = changed(Lab.gpu, "status.resourceName", "nvidia.com/TU104GL_TESLA_T4")  # a DRA device keeps no name
    cluster_objects = [o for o in cluster() if o.get("metadata", {}).get("name") != GPU[0] or o["kind"] not in (
        "PCIDevice", "PCIDeviceClaim")]  # fmt: skip
    d = admit(review("CREATE", vm("v", host=[GPU, AUDIO])), [*cluster_objects, dra_gpu, dra_claim], GRANTS)
    assert not d.allowed and "is offered through Dynamic Resource Allocation" in d.message, d.message
