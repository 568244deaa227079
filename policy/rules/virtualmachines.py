"""VirtualMachine CREATE, and UPDATE when hostDevices or gpus change as a set (A9); the mutator completes IOMMU groups
and pins pooled VMs; rules in vmlike.py."""

from __future__ import annotations

from policy import hostdevices
from policy.decision import Decision
from policy.rules import vmlike
from policy.rules.context import Context

KIND = hostdevices.VM


def validate(ctx: Context) -> Decision:
    return vmlike.validate(ctx, KIND)


def mutate(ctx: Context) -> Decision:
    return vmlike.mutate(ctx, KIND)
