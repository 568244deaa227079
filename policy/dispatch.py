"""Entry points of the policy: validate and mutate, dispatched NodeRestriction style.

resource -> subresource -> operation; each resource has one module in policy/rules named by its API plural.
A request for a resource this policy does not know is answered 400 (the webhook configuration sent us
something it should not have).
"""

from __future__ import annotations

from policy import decision, messages, names, review
from policy.access import Access
from policy.decision import Decision
from policy.review import AdmissionRequest
from policy.rules import RULES, Context
from policy.rules.identity import Role, identify
from policy.settings import PolicySettings
from policy.snapshot import ClusterView

# Part 2 (A9, A9v, A12): kinds that name host devices, as (group, plural, operations the validator judges);
# matchConditions in the chart narrow UPDATEs to those that change the devices asked for, the instancetype or the
# admission record. VMI UPDATEs are sent only when the record changes (it may not).
VM_LIKE: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("kubevirt.io", "virtualmachines", ("CREATE", "UPDATE")),
    ("kubevirt.io", "virtualmachineinstances", ("CREATE", "UPDATE")),
    ("kubevirt.io", "virtualmachineinstancereplicasets", ("CREATE", "UPDATE")),
    ("pool.kubevirt.io", "virtualmachinepools", ("CREATE", "UPDATE")),
    ("instancetype.kubevirt.io", "virtualmachineinstancetypes", ("CREATE", "UPDATE")),
    ("instancetype.kubevirt.io", "virtualmachineclusterinstancetypes", ("CREATE", "UPDATE")),
)
# Part 3 (issue 22): objects that make virt-controller write a VM for their creator (policy.copies)
COPIES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("snapshot.kubevirt.io", "virtualmachinerestores", ("CREATE", "UPDATE")),
    ("snapshot.kubevirt.io", "virtualmachinesnapshotcontents", ("CREATE", "UPDATE")),
    ("clone.kubevirt.io", "virtualmachineclones", ("CREATE", "UPDATE")),
)

# Dynamic Resource Allocation (policy.dra): claims and templates that may get our drivers' devices; UPDATEs only
# when the admission record changes (a matchCondition in the chart; the specs are immutable)
DRA: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("resource.k8s.io", "resourceclaims", ("CREATE", "UPDATE")),
    ("resource.k8s.io", "resourceclaimtemplates", ("CREATE", "UPDATE")),
)
# the slices of our drivers are the node agents' (A10d; the chart sends those of our drivers and any by an agent)
SLICES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("resource.k8s.io", "resourceslices", ("CREATE", "UPDATE", "DELETE")),
)

# (group, resource, subresource) the validator and mutator understand.
KINDS: frozenset[tuple[str, str, str]] = frozenset(
    {
        (names.GROUP, "pcideviceclaims", ""),
        (names.GROUP, "pcideviceclaims", "status"),
        (names.GROUP, "usbdeviceclaims", ""),
        (names.GROUP, "usbdeviceclaims", "status"),
        (names.GROUP, "pcidevices", ""),
        (names.GROUP, "pcidevices", "status"),
        (names.GROUP, "usbdevices", ""),
        (names.GROUP, "usbdevices", "status"),
        ("kubevirt.io", "kubevirts", ""),
        *((group, plural, "") for group, plural, _ in VM_LIKE),
        *((group, plural, "") for group, plural, _ in COPIES),
        ("", "pods", ""),
        *((group, plural, "") for group, plural, _ in (*DRA, *SLICES)),
    }
)

# What the webhook configurations must send (group, resource[/subresource], operations): exactly what the rules
# judge. KubeVirt updates reach the validator only when an agent makes them (a matchCondition in the chart).
_CRUD = ("CREATE", "UPDATE", "DELETE")
VALIDATING_RULES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    (names.GROUP, "pcideviceclaims", _CRUD),
    (names.GROUP, "pcideviceclaims/status", ("UPDATE",)),
    (names.GROUP, "usbdeviceclaims", _CRUD),
    (names.GROUP, "usbdeviceclaims/status", ("UPDATE",)),
    (names.GROUP, "pcidevices", _CRUD),
    (names.GROUP, "pcidevices/status", ("UPDATE",)),
    (names.GROUP, "usbdevices", _CRUD),
    (names.GROUP, "usbdevices/status", ("UPDATE",)),
    ("kubevirt.io", "kubevirts", _CRUD),
    *VM_LIKE,
    *COPIES,
    ("", "pods", ("CREATE",)),
    *DRA,
    *SLICES,
)
MUTATING_RULES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    (names.GROUP, "pcideviceclaims", ("CREATE",)),
    (names.GROUP, "usbdeviceclaims", ("CREATE",)),
    # the mutator stamps admission records, completes IOMMU groups and pins pooled VMs
    *(
        (group, plural, ("CREATE",) if plural == "virtualmachineinstances" else ops)
        for group, plural, ops in VM_LIKE
        if group != "instancetype.kubevirt.io"
    ),
    *((group, plural, ops) for group, plural, ops in COPIES if plural != "virtualmachinesnapshotcontents"),
    *((group, plural, ("CREATE",)) for group, plural, _ in DRA),
)


def validate(request: AdmissionRequest, view: ClusterView, access: Access, settings: PolicySettings) -> Decision:
    unknown = _unknown(request)
    if unknown is not None:
        return unknown
    ctx = _context(request, view, access, settings)
    if ctx.identity.role is Role.UNBOUND_AGENT:
        return decision.deny(
            "A10",
            messages.AGENT_UNBOUND.format(user=messages.shown(request.user.username), extra=review.NODE_NAME_EXTRA),
        )
    return RULES[(request.resource.group, request.resource.resource)].validate(ctx)


def mutate(request: AdmissionRequest, view: ClusterView, access: Access, settings: PolicySettings) -> Decision:
    unknown = _unknown(request)
    if unknown is not None:
        return unknown
    ctx = _context(request, view, access, settings)
    return RULES[(request.resource.group, request.resource.resource)].mutate(ctx)


def _context(request: AdmissionRequest, view: ClusterView, access: Access, settings: PolicySettings) -> Context:
    return Context(request, identify(request.user, settings), view, access, settings)


def _unknown(request: AdmissionRequest) -> Decision | None:
    key = (request.resource.group, request.resource.resource, request.sub_resource)
    if key in KINDS:
        return None
    gr = f"{request.resource.resource}.{request.resource.group}".strip(".")
    if request.sub_resource:
        gr += f"/{request.sub_resource}"
    return decision.malformed(messages.UNKNOWN_RESOURCE.format(resource=gr), rule="unknown-resource")
