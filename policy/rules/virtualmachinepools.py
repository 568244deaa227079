"""VirtualMachinePool CREATE and host-device UPDATEs (A9); the pool's VMs then pass A9v against it

Rules in vmlike.py."""

from __future__ import annotations

from policy import hostdevices
from policy.decision import Decision
from policy.rules import vmlike
from policy.rules.context import Context

KIND = hostdevices.POOL


def validate(ctx: Context) -> Decision:
    return vmlike.validate(ctx, KIND)


def mutate(ctx: Context) -> Decision:
    return vmlike.mutate(ctx, KIND)
