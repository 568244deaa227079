"""ResourceSlice writes (A10d): the slices of our drivers are the node agents' alone, each agent's its own node's.

A slice says which devices a node offers; the scheduler allocates claims from it and the node's kubelet asks that
node's agent to prepare them. So an agent may create, update and delete only slices of our drivers whose
`spec.nodeName` and pool name are the node its token is bound to, and nothing else may create or change a slice of
our drivers (cluster-admins aside). Deletes also come from the node's kubelet (it wipes its node's slices of a
driver whose plugin is gone) and the garbage collector. The agent's last gate stays: it prepares only devices it
published itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from policy import decision, dra, messages
from policy.decision import Decision
from policy.rules.context import Context
from policy.rules.identity import Role

KUBELET_PREFIX = "system:node:"


def _field(obj: Mapping[str, Any] | None, *path: str) -> str:
    cursor: Any = obj
    for key in path:
        cursor = cursor.get(key) if isinstance(cursor, Mapping) else None
    return cursor if isinstance(cursor, str) else ""


def validate(ctx: Context) -> Decision:
    r = ctx.request
    if r.sub_resource:
        return decision.allow()
    present = [o for o in (r.object, r.old_object) if o is not None]
    drivers = {_field(o, "spec", "driver") for o in present}
    agent = ctx.identity.role is Role.AGENT
    if not agent and not drivers & set(dra.DRIVERS):
        return decision.allow()
    name = messages.shown(r.name)
    user = ctx.user
    if agent:
        for o in present:
            driver, node = _field(o, "spec", "driver"), _field(o, "spec", "nodeName")
            pool = _field(o, "spec", "pool", "name")
            if driver not in dra.DRIVERS or node != ctx.identity.node or (o is r.object and pool != node):
                return decision.deny(
                    "A10d",
                    messages.SLICE_AGENT_NODE.format(
                        name=name,
                        drivers=messages.listed(dra.DRIVERS),
                        driver=messages.shown(driver),
                        node=messages.shown(node),
                        pool=messages.shown(pool),
                        user=user,
                        agent_node=messages.shown(ctx.identity.node or ""),
                    ),
                )
        return decision.allow()
    node = _field(r.old_object or r.object, "spec", "nodeName")
    if r.operation == "DELETE" and (r.user.username == KUBELET_PREFIX + node or ctx.identity.role is Role.GC):
        return decision.allow()
    if ctx.is_cluster_admin():
        return decision.allow()
    driver = sorted(drivers & set(dra.DRIVERS))[0]
    return decision.deny(
        "A10d",
        messages.SLICE_WRITER.format(name=name, driver=messages.shown(driver), node=messages.shown(node), user=user),
    )


def mutate(ctx: Context) -> Decision:
    return decision.allow()
