"""Admission rules, one module per API plural; RULES maps (group, resource) to the module.

Each module has `validate(ctx) -> Decision` and `mutate(ctx) -> Decision` and dispatches on subresource and
operation itself.
"""

from __future__ import annotations

from typing import Protocol

from policy import names
from policy.decision import Decision
from policy.rules import (
    kubevirts,
    pcideviceclaims,
    pcidevices,
    pods,
    resourceclaims,
    resourceclaimtemplates,
    resourceslices,
    usbdeviceclaims,
    usbdevices,
    virtualmachineclones,
    virtualmachineclusterinstancetypes,
    virtualmachineinstancereplicasets,
    virtualmachineinstances,
    virtualmachineinstancetypes,
    virtualmachinepools,
    virtualmachinerestores,
    virtualmachines,
    virtualmachinesnapshotcontents,
)
from policy.rules.context import Context


class RuleModule(Protocol):
    def validate(self, ctx: Context) -> Decision: ...
    def mutate(self, ctx: Context) -> Decision: ...


RULES: dict[tuple[str, str], RuleModule] = {
    (names.GROUP, "pcideviceclaims"): pcideviceclaims,
    (names.GROUP, "usbdeviceclaims"): usbdeviceclaims,
    (names.GROUP, "pcidevices"): pcidevices,
    (names.GROUP, "usbdevices"): usbdevices,
    ("kubevirt.io", "kubevirts"): kubevirts,
    ("kubevirt.io", "virtualmachines"): virtualmachines,
    ("kubevirt.io", "virtualmachineinstances"): virtualmachineinstances,
    ("kubevirt.io", "virtualmachineinstancereplicasets"): virtualmachineinstancereplicasets,
    ("pool.kubevirt.io", "virtualmachinepools"): virtualmachinepools,
    ("instancetype.kubevirt.io", "virtualmachineinstancetypes"): virtualmachineinstancetypes,
    ("instancetype.kubevirt.io", "virtualmachineclusterinstancetypes"): virtualmachineclusterinstancetypes,
    ("snapshot.kubevirt.io", "virtualmachinerestores"): virtualmachinerestores,
    ("snapshot.kubevirt.io", "virtualmachinesnapshotcontents"): virtualmachinesnapshotcontents,
    ("clone.kubevirt.io", "virtualmachineclones"): virtualmachineclones,
    ("", "pods"): pods,
    ("resource.k8s.io", "resourceclaims"): resourceclaims,
    ("resource.k8s.io", "resourceclaimtemplates"): resourceclaimtemplates,
    ("resource.k8s.io", "resourceslices"): resourceslices,
}

__all__ = ["RULES", "Context", "RuleModule"]
