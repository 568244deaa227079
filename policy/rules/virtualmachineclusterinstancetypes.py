"""VirtualMachineClusterInstancetype CREATE and host-device UPDATEs (A9); `use` is checked cluster-wide

Rules in vmlike.py."""

from __future__ import annotations

from policy import hostdevices
from policy.decision import Decision
from policy.rules import vmlike
from policy.rules.context import Context

KIND = hostdevices.CLUSTER_INSTANCETYPE


def validate(ctx: Context) -> Decision:
    return vmlike.validate(ctx, KIND)


def mutate(ctx: Context) -> Decision:
    return vmlike.mutate(ctx, KIND)
