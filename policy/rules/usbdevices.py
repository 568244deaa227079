"""Rules (in progress)."""

from __future__ import annotations

from policy import decision
from policy.decision import Decision
from policy.rules.context import Context


def validate(ctx: Context) -> Decision:
    return decision.allow()


def mutate(ctx: Context) -> Decision:
    return decision.allow()
