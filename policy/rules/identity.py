"""Who is asking: the trusted identities of the settings, told apart once per request."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from policy.review import UserInfo
from policy.settings import PolicySettings


class Role(enum.Enum):
    AGENT = "agent"  # a node agent with a token bound to a node
    UNBOUND_AGENT = "unbound-agent"  # an agent identity whose token names no node: denied everything
    CONTROLLER = "controller"
    MIGRATION = "migration"
    GC = "gc"
    USER = "user"  # anybody else, cluster-admins included (they are recognised through Access)


@dataclass(frozen=True, slots=True)
class Identity:
    role: Role
    username: str
    node: str | None  # set for Role.AGENT only

    def is_agent_of(self, node: str) -> bool:
        return self.role is Role.AGENT and self.node == node


def identify(user: UserInfo, settings: PolicySettings) -> Identity:
    name = user.username
    if name in settings.agent_usernames:
        node = user.node_name
        return Identity(Role.AGENT if node else Role.UNBOUND_AGENT, name, node)
    if name in settings.controller_usernames:
        return Identity(Role.CONTROLLER, name, None)
    if name in settings.migration_usernames:
        return Identity(Role.MIGRATION, name, None)
    if name in settings.gc_usernames:
        return Identity(Role.GC, name, None)
    return Identity(Role.USER, name, None)
