"""A model cluster for searching the ownership invariant by machine (issue 22): hypothesis drives `policy` through
random sequences of what alice, bob, mallory, an admin, virt-controller and the node agents do.

Each request goes through the policy as the API server sends it (mutating webhook, patch applied, validating webhook,
then the device holds of webhook/holds.py against an in-memory Lease store); what is admitted is stored, what is
denied is not. Beside the policy the model keeps its own truth, the **oracle**: who really asked for every stored
object (the user for a direct request; for what virt-controller writes, whoever asked for the VM, restore or clone it
writes for), and whom the RBAC model allows `use` of which device where. The invariant, checked after every step:

* every admitted object whose own entries ask for a device of ours was asked for by someone the RBAC model allowed
  `use` of that device in the object's namespace at the moment it was admitted (instancetypes: by their editor;
  ResourceClaims and templates: every device offered through DRA that their selectors, read by the oracle's own
  interpreter, let the scheduler allocate; a claim the resource claim controller makes: by its template's author);
* every pod that asks for an offered device is a launcher pod of a stored VMI whose devices cover what it asks for,
  and that VMI was admitted for someone allowed `use` (so whatever the kubelet could hand out traces back to them).

The policy may be stricter than the oracle (denials are fine); it may never admit what the oracle forbids.
"""

from __future__ import annotations

import copy
import json
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jsonpatch  # type: ignore[import-untyped]

import apiclient
from policy import dispatch, dra, hostdevices, names, offers
from policy.access import Grant, StaticAccess
from policy.decision import Decision
from policy.review import AdmissionRequest
from policy.settings import PolicySettings
from policy.snapshot import ClusterIndex
from tests.support import dra as dra_objects
from tests.support import vms
from tests.support.objects import ADMIN, node, pciclaim, pcidevice, user
from tests.support.objects import review as claim_review
from webhook import holds as holds_mod

ALICE, BOB, MALLORY = "alice", "bob", "mallory"
NAMESPACE = {ALICE: "ns-alice", BOB: "ns-bob", MALLORY: "ns-mallory", ADMIN: "ns-admin"}
NODES = ("n1", "n2")
POOLED = "nvidia.com/TU104GL_TESLA_T4"
# the devices agents may discover: (node, address, iommu group); d4 shares its group with d5
CATALOG = (
    ("n1", "0000:10:00.0", "10"),
    ("n1", "0000:11:00.0", "11"),
    ("n2", "0000:10:00.0", "10"),
    ("n1", "0000:12:00.0", "12"),
    ("n1", "0000:12:00.1", "12"),
    ("n2", "0000:11:00.0", "11"),  # alice claims it through DRA at the start
)
HOLD_NS = "harvester-system"


def device_name(index: int) -> str:
    n, address, _ = CATALOG[index]
    return names.pcidevice_name(n, address)


def per_device(index: int) -> str:
    return f"nvidia.com/{device_name(index)}"


class Leases:
    """coordination.k8s.io Leases in memory with resourceVersion compare-and-swap (webhook.holds.LeaseApi)."""

    def __init__(self) -> None:
        self.items: dict[str, dict[str, Any]] = {}
        self._rv = 0

    def get(self, res: apiclient.Resource, name: str, *, namespace: str | None = None) -> dict[str, Any]:
        path = res.path(name, namespace)
        if path not in self.items:
            raise apiclient.NotFound("not found", status=404)
        return copy.deepcopy(self.items[path])

    def create(
        self, res: apiclient.Resource, body: Mapping[str, Any], *, namespace: str | None = None
    ) -> dict[str, Any]:
        path = res.path(None, namespace)
        full = f"{path}/{body['metadata']['name']}"
        if full in self.items:
            raise apiclient.Conflict("already exists", status=409)
        return self._store(full, body)

    def replace(
        self, res: apiclient.Resource, name: str, body: Mapping[str, Any], *, namespace: str | None = None
    ) -> dict[str, Any]:
        path = res.path(name, namespace)
        if self.items[path]["metadata"]["resourceVersion"] != body["metadata"].get("resourceVersion"):
            raise apiclient.Conflict("conflict", status=409)
        return self._store(path, body)

    def _store(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        self._rv += 1
        stored = copy.deepcopy(dict(body))
        stored["metadata"]["resourceVersion"] = str(self._rv)
        self.items[path] = stored
        return copy.deepcopy(stored)


@dataclass
class Stored:
    obj: dict[str, Any]
    asked_by: str  # the oracle's requester
    allowed: bool  # the oracle's verdict when it was admitted


@dataclass
class Cluster:
    settings: PolicySettings = field(default_factory=PolicySettings)
    discovered: set[int] = field(default_factory=set)
    claims: dict[int, str] = field(default_factory=dict)  # device index -> owner
    dra: set[int] = field(default_factory=set)  # claimed devices whose claim offers them through DRA
    use: set[tuple[str, str, str]] = field(default_factory=set)  # (user, device name, namespace)
    objects: dict[tuple[str, str], Stored] = field(default_factory=dict)  # (kind, "<ns>/<name>") -> stored
    leases: Leases = field(default_factory=Leases)
    clock: float = 1_000_000.0
    admitted: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)

    # -- the cluster as the policy sees it --------------------------------------------------------------------

    def device(self, index: int) -> dict[str, Any]:
        n, address, group = CATALOG[index]
        members = [(a, False) for nn, a, g in CATALOG if nn == n and g == group]
        per_device_offer = index in self.claims and index not in self.dra and not self.settings.pooled
        offered = per_device(index) if per_device_offer else POOLED  # a DRA offer leaves the name as it was
        obj = pcidevice(n, address, iommu_group=group, members=members, resource_name=offered)
        obj["status"]["pooledResourceName"] = POOLED
        return obj

    def view_objects(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = [node(n) for n in NODES]
        out += [self.device(i) for i in sorted(self.discovered)]
        out += [self.claim_object(i, o) for i, o in sorted(self.claims.items())]
        out += dra_objects.our_classes()
        out += [s.obj for (kind, _), s in sorted(self.objects.items()) if kind not in ("Pod", "ResourceClaim")]
        return out

    def claim_object(self, index: int, owner: str | None) -> dict[str, Any]:
        if index in self.dra:
            return dra_objects.dra_pciclaim(self.device(index), owner=owner or "")
        return pciclaim(self.device(index), owner=owner)

    def access(self) -> StaticAccess:
        grants = [Grant(ADMIN, "*"), Grant(ALICE, "claim", names.GROUP, "pcidevices")]
        grants += [Grant(u, "use", names.GROUP, "pcidevices", name=d, namespace=ns) for u, d, ns in self.use]
        return StaticAccess(grants)

    def may_use(self, who: str, device: str, namespace: str) -> bool:
        """The oracle's RBAC: cluster-admins everything, others what the model granted in the namespace."""
        return who == ADMIN or (who, device, namespace) in self.use


    # -- requests ---------------------------------------------------------------------------------------------

    def request(self, body: dict[str, Any], *, dry_run: bool = False) -> tuple[Decision, dict[str, Any] | None]:
        """Mutate, apply the patch, validate, take the device holds: the API server's sequence."""
        self.clock += 1.0
        view = ClusterIndex.from_objects(self.view_objects())
        access = self.access()
        req = AdmissionRequest.from_review(body)
        mutated = dispatch.mutate(req, view, access, self.settings)
        if not mutated.allowed:
            return mutated, None
        obj = body["request"].get("object")
        if mutated.patch and obj is not None:
            obj = jsonpatch.apply_patch(obj, list(mutated.patch))
            body = copy.deepcopy(body)
            body["request"]["object"] = obj
            req = AdmissionRequest.from_review(body)
        decision = dispatch.validate(req, view, access, self.settings)
        if decision.allowed and decision.holds:
            taker = holds_mod.Holds(lambda: self.leases, HOLD_NS, view, grace_s=30.0, clock=lambda: self.clock)
            decision = taker.take(decision.holds, dry_run=dry_run) or decision
        return decision, obj

    def ours(self, name: str) -> set[str]:
        """The devices the kubelet could hand out under a resource name now: claimed ones offered under it (the
        agent runs a device plugin for claimed devices only)."""
        view = ClusterIndex.from_objects(self.view_objects())
        plugins = {device_name(i) for i in self.claims if i not in self.dra}  # DRA devices have no device plugin
        return {d.name for d in offers.resolve(view, name).offered if d.name in plugins}

    # -- the oracle ---------------------------------------------------------------------------------------------

    def judge(self, kind: str, obj: Mapping[str, Any], asked_by: str) -> bool:
        """Would the oracle allow `asked_by` what `obj`'s own entries ask for, here and now?

        A name offered by one device asks for that device. A pooled name asks for whichever claimed device of the
        pool the kubelet of the node it runs on hands out: on every node the object could be scheduled to (worked
        out here, independently of the policy's own reading of pins), every claimed device of that name must be one
        the requester may use. Objects without a pod template (instancetypes) are judged through their VMs.
        """
        namespace = str(obj["metadata"].get("namespace", ""))
        if kind in DRA_KINDS:
            return all(self.may_use(asked_by, d, namespace) for d in self.dra_devices(kind, obj))
        nodes = _schedulable_nodes(kind, obj)
        for name in set(self.asked_names(kind, obj)):
            devices = self.ours(name)
            if len(devices) == 1:
                if not self.may_use(asked_by, next(iter(devices)), namespace):
                    return False
                continue
            for i in self.claims:
                if device_name(i) in devices and CATALOG[i][0] in nodes:
                    if not self.may_use(asked_by, device_name(i), namespace):
                        return False
        return True

    def dra_devices(self, kind: str, obj: Mapping[str, Any]) -> set[str]:
        """The devices offered through DRA that the scheduler could allocate to this claim (or to every claim made
        from this template), read by the oracle's own interpreter of the selectors (`_matches`)."""
        spec = obj["spec"]["spec"] if kind == "ResourceClaimTemplate" else obj["spec"]
        found: set[str] = set()
        for req in (spec.get("devices") or {}).get("requests") or []:
            alternatives = [req["exactly"]] if "exactly" in req else list(req.get("firstAvailable") or [])
            for alt in alternatives:
                selectors = [s["cel"]["expression"] for s in alt.get("selectors") or []]
                selectors += [f'device.driver == "{alt.get("deviceClassName")}"']  # our classes select the driver
                for i in self.dra:
                    if i in self.claims and all(_matches(e, self.dra_attributes(i)) for e in selectors):
                        found.add(device_name(i))
        return found

    def dra_attributes(self, index: int) -> dict[str, str]:
        n, address, _ = CATALOG[index]
        return {"driver": dra.PCI_DRIVER, dra.ATTR_PCI_DEVICE: device_name(index), dra.ATTR_PCI_ADDRESS: address,
                dra.ATTR_NODE: n, dra.ATTR_OWNER: self.claims[index]}  # fmt: skip

    @staticmethod
    def asked_names(kind: str, obj: Mapping[str, Any]) -> list[str]:
        if kind == "Pod":
            return list(hostdevices.pod_resources(obj))
        if kind in hostdevices.DEVICE_PATHS:
            return [d.device_name for d in hostdevices.host_devices(obj)]
        return []

    def store(self, kind: str, obj: dict[str, Any], asked_by: str) -> None:
        """Keep an admitted object; judge it when it asks for something new (an update that leaves its names and
        where it may run as they were asks for nothing new: it keeps its verdict, as the policy does)."""
        namespace = str(obj["metadata"].get("namespace", ""))
        key = (kind, f"{namespace}/{obj['metadata']['name']}")
        before = self.objects.get(key)
        same = before is not None and (
            sorted(self.asked_names(kind, before.obj)) == sorted(self.asked_names(kind, obj))
            and _schedulable_nodes(kind, before.obj) == _schedulable_nodes(kind, obj)
            and before.asked_by == asked_by
        )
        allowed = before.allowed if same and before is not None else self.judge(kind, obj, asked_by)
        self.objects[key] = Stored(obj, asked_by, allowed)
        self.admitted[kind] += 1
        if not allowed:
            asked = sorted(self.dra_devices(kind, obj)) if kind in DRA_KINDS else self.asked_names(kind, obj)
            self.violations.append(f"{kind} {key[1]} admitted for {asked_by}, who may not use what it asks for: "
                                   f"{asked}")  # fmt: skip

    def check_kubelet(self) -> None:
        """Every pod that could receive an offered device is a launcher of a VMI admitted for someone allowed."""
        for (kind, key), stored in self.objects.items():
            if kind != "Pod":
                continue
            wanted = Counter(n for n in hostdevices.pod_resources(stored.obj) if self.ours(n))
            if not wanted:
                continue
            ns = key.split("/", 1)[0]
            refs = stored.obj["metadata"].get("ownerReferences") or []
            vmi = next((self.objects.get(("VirtualMachineInstance", f"{ns}/{r['name']}")) for r in refs
                        if r.get("kind") == "VirtualMachineInstance"), None)  # fmt: skip
            if vmi is None:
                self.violations.append(f"pod {key} asks for {dict(wanted)} and belongs to no stored VMI")
                continue
            have = Counter(self.asked_names("VirtualMachineInstance", vmi.obj))
            if wanted - have or not vmi.allowed:
                self.violations.append(f"pod {key} asks for {dict(wanted)} beyond VMI devices {dict(have)}")

    # -- helpers for the rules ------------------------------------------------------------------------------------

    def review(
        self, operation: str, obj: dict[str, Any] | None, who: str, old: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        info = vms.virt_controller() if who == vms.VIRT_CONTROLLER else user(
            who, groups=("system:authenticated",) + (("system:masters",) if who == ADMIN else ())
        )
        subject = obj if obj is not None else old
        assert subject is not None
        if subject.get("kind") == "PCIDeviceClaim":
            return claim_review(operation, obj, old, user_info=info)
        if subject.get("kind") in DRA_KINDS:
            if who == dra_objects.RESOURCE_CLAIM_CONTROLLER:
                info = user(who, groups=("system:serviceaccounts", "system:serviceaccounts:kube-system"))
            return dra_objects.dra_review(operation, obj, old, user_info=info)
        return vms.review(operation, obj, old, user_info=info)

    def get(self, kind: str, namespace: str, name: str) -> Stored | None:
        return self.objects.get((kind, f"{namespace}/{name}"))

    def stored_vms(self) -> list[Stored]:
        return [s for (k, _), s in sorted(self.objects.items()) if k == "VirtualMachine"]


DRA_KINDS = ("ResourceClaim", "ResourceClaimTemplate")
_ATTR = re.compile(r'device\.attributes\["([^"]+)"\]\.(\w+) (==|!=) "([^"]*)"$')
_DRIVER = re.compile(r'device\.driver (==|!=) "([^"]*)"$')


def _matches(expression: str, attrs: Mapping[str, str]) -> bool:
    """The oracle's reading of a CEL selector: `&&` of terms, a term an `||` of comparisons in parentheses, a
    comparison `device.driver` or `device.attributes["<driver>"].<name>` with a string literal. An attribute of
    another driver is missing (no match, as a CEL error is for the scheduler); anything else it cannot read matches
    (the oracle errs towards more devices)."""
    for term in expression.split(" && "):
        term = term.strip()
        if term.startswith("(") and term.endswith(")"):
            if not any(_compare(t.strip(), attrs) for t in term[1:-1].split(" || ")):
                return False
        elif not _compare(term, attrs):
            return False
    return True


def _compare(atom: str, attrs: Mapping[str, str]) -> bool:
    if m := _DRIVER.match(atom):
        return (attrs["driver"] == m.group(2)) == (m.group(1) == "==")
    if m := _ATTR.match(atom):
        driver, name, op, value = m.groups()
        if driver != attrs["driver"] or name not in attrs:
            return False
        return (attrs[name] == value) == (op == "==")
    return True


def _schedulable_nodes(kind: str, obj: Mapping[str, Any]) -> set[str]:
    """The nodes a pod made from obj could land on, from its required node-affinity terms on metadata.name only
    (other expressions are assumed to match: the oracle errs towards more nodes). No pod template: none."""
    path = hostdevices.POD_SPEC_PATHS.get(kind)
    if path is None:
        return set()
    cursor: Any = obj
    for key in path:
        cursor = cursor.get(key) if isinstance(cursor, Mapping) else None
    affinity = (cursor or {}).get("affinity") or {}
    terms = ((affinity.get("nodeAffinity") or {}).get("requiredDuringSchedulingIgnoredDuringExecution") or {}).get(
        "nodeSelectorTerms"
    ) or []
    if not terms:
        return set(NODES)
    out: set[str] = set()
    for term in terms:
        allowed = set(NODES)
        for expr in term.get("matchFields") or []:
            if expr.get("key") == "metadata.name" and expr.get("operator") == "In":
                allowed &= set(expr.get("values") or [])
        out |= allowed
    return out


def entries_for(indexes: list[int], form: str) -> list[tuple[str, str]]:
    """hostDevices entries for catalog devices, named the way an attacker might: per-device, pooled or another
    vendor's prefix."""
    out = []
    for i in indexes:
        name = {"per-device": per_device(i), "pooled": POOLED, "vendor": f"evil.com/{device_name(i)}"}[form]
        out.append((device_name(i), name))
    return out


def with_resources(obj: dict[str, Any], kind: str, resource: str) -> dict[str, Any]:
    path = hostdevices.RESOURCE_PATHS[kind]
    cursor = obj
    for key in path:
        cursor = cursor.setdefault(key, {})
    cursor["limits"] = {resource: "1"}
    return obj


def dra_selectors(index: int, shape: str) -> list[str]:
    """A request's selectors as users write them: one device by name, by address on its node, any device of the
    class (the mutator narrows it), or any device that is not this one."""
    n, address, _ = CATALOG[index]
    return {
        "pin": [dra_objects.pin_pci(device_name(index))],
        "address": [dra_objects.pin_address(address, n)],
        "broad": [],
        "others": [f"{dra.attribute(dra.PCI_DRIVER, dra.ATTR_PCI_DEVICE)} != {dra.cel_string(device_name(index))}"],
    }[shape]


def patch_adding(indexes: list[int]) -> str:
    value = [{"name": device_name(i), "deviceName": per_device(i)} for i in indexes]
    return json.dumps({"op": "add", "path": "/spec/template/spec/domain/devices/hostDevices", "value": value})
