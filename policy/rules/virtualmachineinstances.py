"""VirtualMachineInstance CREATE: the catch-all (A9v); virt-controller's VMIs must carry their owner's devices, anyone
else's get the A9 checks; rules in vmlike.py."""

from __future__ import annotations

from policy import hostdevices
from policy.decision import Decision
from policy.rules import vmlike
from policy.rules.context import Context

KIND = hostdevices.VMI


def validate(ctx: Context) -> Decision:
    return vmlike.validate(ctx, KIND)


def mutate(ctx: Context) -> Decision:
    return vmlike.mutate(ctx, KIND)
