"""The ownership invariant, searched for by a machine (issue 22): random sequences of claims (device plugin or DRA),
grants, VMs, VMIs, pods, instancetypes, restores, clones, ResourceClaims and templates (and the claims the resource
claim controller makes from them), discoveries and mode switches through the policy (tests/support/
ownership_model.py); after every step, everything admitted that asks for a device, and every pod the kubelet could
hand one to, traces back to an admission by someone allowed `use`. Bounded here; `bench/ownership_search.py` runs
the same machine for longer (nightly)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from policy import records
from policy.settings import PolicySettings
from tests.support import dra, vms
from tests.support import ownership_model as om
from tests.support.objects import ADMIN, pciclaim

ACTORS = st.sampled_from([om.ALICE, om.BOB, om.MALLORY, ADMIN])
USERS = st.sampled_from([om.ALICE, om.BOB, om.MALLORY])
DEVICE = st.integers(0, len(om.CATALOG) - 1)
DEVICES = st.lists(DEVICE, min_size=1, max_size=2, unique=True)
FORMS = st.sampled_from(["per-device", "per-device", "pooled", "vendor"])
VIA = st.sampled_from(["hostDevices", "gpus", "resources"])
DRA_SHAPES = st.sampled_from(["pin", "address", "broad", "others"])
IT_KINDS = st.sampled_from(["VirtualMachineInstancetype", "virtualmachineinstancetypes"])


class OwnershipMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.c = om.Cluster()
        self.n = 0

    def fresh(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}{self.n}"

    def _ask(self, kind: str, obj: dict[str, Any], who: str, asked_by: str | None = None,
             old: dict[str, Any] | None = None) -> dict[str, Any] | None:  # fmt: skip
        decision, stored = self.c.request(self.c.review("UPDATE" if old else "CREATE", obj, who, old))
        if decision.allowed and stored is not None:
            self.c.store(kind, stored, asked_by or who)
            return stored
        return None

    @initialize()
    def start(self) -> None:
        """alice has claimed two devices on n1 and one on n2 for device plugins, one on n2 through DRA, and may use
        them; bob may use the one on n2."""
        self.c.discovered.update({0, 1, 2, 5})
        for i in (0, 1, 2, 5):
            self.c.use.add((om.ALICE, om.device_name(i), om.NAMESPACE[om.ALICE]))
            self.claim(om.ALICE, i, through_dra=i == 5)
        self.c.use.add((om.BOB, om.device_name(2), om.NAMESPACE[om.BOB]))

    # -- agents, the admin, the cluster controller ---------------------------------------------------------------

    @rule(i=DEVICE)
    def agent_discovers(self, i: int) -> None:
        self.c.discovered.add(i)

    @rule()
    def admin_switches_the_resource_name_mode(self) -> None:
        mode = "perDevice" if self.c.settings.pooled else "pooled"
        self.c.settings = PolicySettings(resource_names=mode)

    @rule(who=USERS, i=DEVICE, own_namespace=st.booleans(), grant=st.booleans())
    def admin_grants_or_revokes_use(self, who: str, i: int, own_namespace: bool, grant: bool) -> None:
        ns = om.NAMESPACE[who] if own_namespace else om.NAMESPACE[om.ALICE]
        entry = (who, om.device_name(i), ns)
        (self.c.use.add if grant else self.c.use.discard)(entry)

    @rule(who=USERS, i=DEVICE, through_dra=st.booleans())
    def claim(self, who: str, i: int, through_dra: bool = False) -> None:
        if i not in self.c.discovered or i in self.c.claims:
            return
        obj = dra.dra_pciclaim(self.c.device(i), owner="") if through_dra else pciclaim(self.c.device(i), owner=None)
        obj["metadata"].get("annotations", {}).pop("devices.harvesterhci.io/requested-by", None)
        decision, obj = self.c.request(self.c.review("CREATE", obj, who))
        if decision.allowed and obj is not None:
            self.c.claims[i] = obj["metadata"]["annotations"]["devices.harvesterhci.io/requested-by"]
            if through_dra:
                self.c.dra.add(i)

    @rule(who=USERS, i=DEVICE)
    def release(self, who: str, i: int) -> None:
        if i not in self.c.claims:
            return
        old = self.c.claim_object(i, self.c.claims[i])
        decision, _ = self.c.request(self.c.review("DELETE", None, who, old))
        if decision.allowed:
            del self.c.claims[i]
            self.c.dra.discard(i)

    # -- VMs, instancetypes, VMIs, pods ---------------------------------------------------------------------------

    @rule(who=ACTORS, idx=DEVICES, form=FORMS, via=VIA, forge=st.booleans())
    def create_vm(self, who: str, idx: list[int], form: str, via: str, forge: bool) -> None:
        ns, name = om.NAMESPACE[who], self.fresh("vm")
        entries = om.entries_for(idx, form)
        if via == "resources":
            obj = om.with_resources(vms.vm(name, ns), "VirtualMachine", entries[0][1])
        else:
            obj = vms.vm(name, ns, host=entries if via == "hostDevices" else (), gpus=entries if via == "gpus" else ())
        if forge:
            obj = vms.recorded(obj, om.ALICE)  # an attacker writes the record herself
        self._ask("VirtualMachine", obj, who)

    @rule(data=st.data(), who=USERS, form=st.sampled_from(["per-device", "pooled"]), via=VIA)
    def create_vm_with_usable_devices(self, data: st.DataObject, who: str, form: str, via: str) -> None:
        """A request that can succeed (devices the user may use in her namespace), so later steps build on it."""
        ns = om.NAMESPACE[who]
        usable = sorted(i for i in range(len(om.CATALOG)) if (who, om.device_name(i), ns) in self.c.use)
        if usable:
            self.create_vm(who, [data.draw(st.sampled_from(usable))], form, via, False)

    @rule(who=ACTORS, cluster=st.booleans(), idx=DEVICES, form=FORMS, slot=st.integers(0, 1), delete=st.booleans())
    def write_instancetype(self, who: str, cluster: bool, idx: list[int], form: str, slot: int, delete: bool) -> None:
        ns = "" if cluster else om.NAMESPACE[who]
        if cluster and who != ADMIN:
            return  # RBAC: only the admin writes cluster instancetypes
        kind = "VirtualMachineClusterInstancetype" if cluster else "VirtualMachineInstancetype"
        name = f"it{slot}"
        obj = vms.instancetype(name, ns, host=om.entries_for(idx, form))
        current = self.c.get(kind, ns, name)
        if current is None:
            self._ask(kind, obj, who)
            return
        old = current.obj
        if delete:  # held by a finalizer and deleted: further updates still come to the webhook
            old = {**old, "metadata": {**old["metadata"], "deletionTimestamp": "2026-12-04T00:00:00Z"}}
            obj["metadata"]["deletionTimestamp"] = "2026-12-04T00:00:00Z"
        self._ask(kind, obj, who, old=old)

    @rule(who=ACTORS, cluster=st.booleans(), slot=st.integers(0, 1), spelling=IT_KINDS)
    def create_vm_with_instancetype(self, who: str, cluster: bool, slot: int, spelling: str) -> None:
        ns, name = om.NAMESPACE[who], self.fresh("itvm")
        kind = ("virtualmachineclusterinstancetype" if spelling.islower() else "VirtualMachineClusterInstancetype") \
            if cluster else spelling  # fmt: skip
        self._ask("VirtualMachine", vms.vm(name, ns, instancetype=(kind, f"it{slot}")), who)

    @rule(data=st.data())
    def virt_controller_starts_a_vm(self, data: st.DataObject) -> None:
        candidates = self.c.stored_vms()
        if not candidates:
            return
        vm = data.draw(st.sampled_from(candidates)).obj
        ns, name = vm["metadata"]["namespace"], vm["metadata"]["name"]
        if self.c.get("VirtualMachineInstance", ns, name) is not None:
            return
        vmi = vms.vmi(name, ns, owner=vm)
        # virt-controller applies the VM's template and its instancetype as it is now
        vmi["spec"] = {**vm["spec"]["template"]["spec"]}
        devices = vmi["spec"].setdefault("domain", {}).setdefault("devices", {})
        it = vm["spec"].get("instancetype")
        if it:
            cluster = it["kind"].lower().startswith("virtualmachineclusterinstancetype")
            stored = self.c.get("VirtualMachineClusterInstancetype" if cluster else "VirtualMachineInstancetype",
                                "" if cluster else ns, it["name"])  # fmt: skip
            if stored is not None:
                for field in ("hostDevices", "gpus"):
                    devices[field] = list(devices.get(field, [])) + list(stored.obj["spec"].get(field, []))
        owner = self.c.get("VirtualMachine", ns, name)
        assert owner is not None
        self._ask("VirtualMachineInstance", vmi, vms.VIRT_CONTROLLER, owner.asked_by)

    @rule(data=st.data(), extra=st.none() | DEVICE)
    def virt_controller_launches_a_pod(self, data: st.DataObject, extra: int | None) -> None:
        vmis = [s for (k, _), s in sorted(self.c.objects.items()) if k == "VirtualMachineInstance"]
        if not vmis:
            return
        vmi = data.draw(st.sampled_from(vmis))
        asked = self.c.asked_names("VirtualMachineInstance", vmi.obj)
        if extra is not None:  # e.g. an SR-IOV network's resource that KubeVirt adds to the launcher
            asked = [*asked, om.per_device(extra)]
        ns, name = vmi.obj["metadata"]["namespace"], vmi.obj["metadata"]["name"]
        pod = vms.pod(self.fresh(f"virt-launcher-{name}-"), ns, resources=asked, owner=vmi.obj)
        self._ask("Pod", pod, vms.VIRT_CONTROLLER, vmi.asked_by)

    @rule(who=USERS, i=DEVICE, form=FORMS, init=st.booleans())
    def user_creates_a_pod(self, who: str, i: int, form: str, init: bool) -> None:
        name = om.entries_for([i], form)[0][1]
        pod = vms.pod(self.fresh("pod"), om.NAMESPACE[who], resources=[] if init else [name])
        if init:
            pod["spec"]["initContainers"] = [{"name": "i", "image": "x", "resources": {"requests": {name: "1"}}}]
        self._ask("Pod", pod, who)

    @rule(who=USERS, idx=DEVICES, form=FORMS)
    def user_creates_a_vmi(self, who: str, idx: list[int], form: str) -> None:
        self._ask("VirtualMachineInstance", vms.vmi(self.fresh("vmi"), om.NAMESPACE[who],
                                                    host=om.entries_for(idx, form)), who)  # fmt: skip

    # -- DRA: ResourceClaims, templates and the claims the resource claim controller makes from them -------------

    @rule(who=USERS, i=DEVICE, shape=DRA_SHAPES, template=st.booleans())
    def user_creates_a_resourceclaim(self, who: str, i: int, shape: str, template: bool) -> None:
        ns = om.NAMESPACE[who]
        req = dra.request("dev", *om.dra_selectors(i, shape))
        if template:
            self._ask("ResourceClaimTemplate", dra.claim_template(self.fresh("tpl"), req, namespace=ns), who)
        else:
            self._ask("ResourceClaim", dra.resourceclaim(self.fresh("rc"), req, namespace=ns), who)

    @rule(data=st.data())
    def resource_claim_controller_claims_from_a_template(self, data: st.DataObject) -> None:
        templates = [s for (k, _), s in sorted(self.c.objects.items()) if k == "ResourceClaimTemplate"]
        if not templates:
            return
        template = data.draw(st.sampled_from(templates))
        claim = dra.from_template(template.obj, pod=self.fresh("pod"))
        decision, stored = self.c.request(self.c.review("CREATE", claim, dra.RESOURCE_CLAIM_CONTROLLER))
        if decision.allowed and stored is not None:
            stored["metadata"]["name"] = self.fresh(stored["metadata"]["generateName"])
            self.c.store("ResourceClaim", stored, template.asked_by)

    # -- restores and clones ---------------------------------------------------------------------------------------

    @rule(who=USERS, idx=DEVICES)
    def restore_with_a_patch(self, who: str, idx: list[int]) -> None:
        ns, target = om.NAMESPACE[who], self.fresh("restored")
        restore = self._ask("VirtualMachineRestore", vms.vm_restore(self.fresh("r"), target, namespace=ns,
                                                                      patches=[om.patch_adding(idx)]), who)  # fmt: skip
        written = vms.vm(target, ns, host=om.entries_for(idx, "per-device"))
        if restore is not None:
            written = vms.restored(written, restore)
        self._ask("VirtualMachine", written, vms.VIRT_CONTROLLER, who)

    @rule(data=st.data(), who=USERS)
    def clone_a_vm(self, data: st.DataObject, who: str) -> None:
        mine = [s for s in self.c.stored_vms() if s.obj["metadata"]["namespace"] == om.NAMESPACE[who]]
        if not mine:
            return
        source = data.draw(st.sampled_from(mine)).obj
        ns = om.NAMESPACE[who]
        clone = self._ask("VirtualMachineClone", vms.vm_clone(self.fresh("c"), source["metadata"]["name"],
                                                               namespace=ns), who)  # fmt: skip
        if clone is None:
            return
        target = self.fresh("clone")
        tmp = self._ask("VirtualMachineRestore", vms.vm_restore(f"tmp-restore-{clone['metadata']['uid']}", target,
                                                                  namespace=ns, owner=clone), vms.VIRT_CONTROLLER, who)
        copy_vm = vms.vm(target, ns)
        copy_vm["spec"]["template"]["spec"] = source["spec"]["template"]["spec"]
        if tmp is not None:
            copy_vm = vms.restored(copy_vm, tmp)
        self._ask("VirtualMachine", copy_vm, vms.VIRT_CONTROLLER, who)

    @rule(data=st.data(), who=USERS)
    def forge_the_record_on_an_own_vm(self, data: st.DataObject, who: str) -> None:
        mine = [s for s in self.c.stored_vms() if s.obj["metadata"]["namespace"] == om.NAMESPACE[who]]
        if not mine:
            return
        old = data.draw(st.sampled_from(mine)).obj
        forged = vms.recorded(old, om.ALICE)
        self._ask("VirtualMachine", forged, who, old=old)

    @rule(data=st.data(), who=USERS, node=st.sampled_from(om.NODES), shape=st.sampled_from(["replace", "or"]))
    def repin_an_own_vm(self, data: st.DataObject, who: str, node: str, shape: str) -> None:
        """Pooled pins as an attacker edits them: re-pin to another node, or OR a second term for it."""
        mine = [s for s in self.c.stored_vms() if s.obj["metadata"]["namespace"] == om.NAMESPACE[who]]
        if not mine:
            return
        old = data.draw(st.sampled_from(mine)).obj
        new = copy.deepcopy(old)
        term = {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}
        spec = new["spec"]["template"]["spec"]
        terms = (((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
            "requiredDuringSchedulingIgnoredDuringExecution") or {}).get("nodeSelectorTerms") or []  # fmt: skip
        terms = [term] if shape == "replace" else [*terms, term]
        spec["affinity"] = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": terms}}}  # fmt: skip
        self._ask("VirtualMachine", new, who, old=old)

    @rule(data=st.data())
    def delete_a_vm(self, data: st.DataObject) -> None:
        candidates = self.c.stored_vms()
        if candidates:
            vm = data.draw(st.sampled_from(candidates)).obj
            del self.c.objects[("VirtualMachine", f"{vm['metadata']['namespace']}/{vm['metadata']['name']}")]

    # -- the invariant -----------------------------------------------------------------------------------------------

    @invariant()
    def everything_traces_back_to_someone_allowed(self) -> None:
        self.c.check_kubelet()
        assert not self.c.violations, self.c.violations
        for (kind, key), stored in self.c.objects.items():
            value = stored.obj["metadata"].get("annotations", {}).get(records.ANNOTATION)
            if value is not None and kind in ("VirtualMachine", "VirtualMachineInstance"):
                recorded = records.Requester.decode(value)
                assert recorded is not None and recorded.username == stored.asked_by, (kind, key, value)


OwnershipMachine.TestCase.settings = settings(
    max_examples=25, stateful_step_count=20, deadline=None, suppress_health_check=list(HealthCheck)
)
TestOwnership = OwnershipMachine.TestCase


@pytest.mark.parametrize("seed", [0])
def test_the_machine_admits_the_owners_own_flow(seed: int) -> None:
    """A fixed run: the model lets the owner claim, use and start her device (the search is not vacuous)."""
    m = OwnershipMachine()
    m.start()
    assert m.c.claims == {0: om.ALICE, 1: om.ALICE, 2: om.ALICE, 5: om.ALICE} and m.c.dra == {5}
    m.create_vm(om.ALICE, [0], "per-device", "hostDevices", False)
    assert m.c.admitted["VirtualMachine"] == 1
    vm = m.c.stored_vms()[0]
    m.virt_controller_starts_a_vm(_Data(vm))
    assert m.c.admitted["VirtualMachineInstance"] == 1
    vmi = next(s for (k, _), s in m.c.objects.items() if k == "VirtualMachineInstance")
    m.virt_controller_launches_a_pod(_Data(vmi), None)
    assert m.c.admitted["Pod"] == 1
    m.everything_traces_back_to_someone_allowed()
    m.create_vm(om.MALLORY, [0], "per-device", "resources", True)
    assert m.c.admitted["VirtualMachine"] == 1, "mallory's VM asking for alice's device through resources"


class _Data:
    """A stand-in for hypothesis' data object that always draws `value`."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def draw(self, _: Any) -> Any:
        return self.value


def test_the_machine_admits_the_owners_own_dra_flow() -> None:
    """A fixed run through DRA: alice's claims for her device (and one made from her template) are admitted,
    mallory's pin is not, and her broad claim is admitted only narrowed to devices she owns (none)."""
    m = OwnershipMachine()
    m.start()
    m.release(om.ALICE, 1)
    m.claim(om.ALICE, 1, through_dra=True)
    assert m.c.dra == {1, 5}
    m.user_creates_a_resourceclaim(om.ALICE, 1, "pin", False)
    m.user_creates_a_resourceclaim(om.ALICE, 1, "broad", True)
    template = next(s for (k, _), s in m.c.objects.items() if k == "ResourceClaimTemplate")
    m.resource_claim_controller_claims_from_a_template(_Data(template))
    assert m.c.admitted["ResourceClaim"] == 2 and m.c.admitted["ResourceClaimTemplate"] == 1
    m.user_creates_a_resourceclaim(om.MALLORY, 1, "pin", False)
    assert m.c.admitted["ResourceClaim"] == 2, "mallory's claim pinning alice's device"
    m.user_creates_a_resourceclaim(om.MALLORY, 1, "broad", False)
    mallorys = [s for (k, key), s in m.c.objects.items() if k == "ResourceClaim" and key.startswith("ns-mallory/")]
    assert all(not m.c.dra_devices("ResourceClaim", s.obj) for s in mallorys)
    m.everything_traces_back_to_someone_allowed()
