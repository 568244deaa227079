"""The permission question the rules ask, SubjectAccessReview style.

The webhook answers it with SubjectAccessReview and a short TTL cache; tests and benchmarks answer it from a table.
Keeping it a narrow protocol lets the rules stay pure.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from policy.review import UserInfo


class Access(Protocol):
    def allowed(
        self,
        user: UserInfo,
        *,
        verb: str,
        group: str,
        resource: str,
        name: str = "",
        namespace: str = "",
        subresource: str = "",
    ) -> bool: ...


def is_cluster_admin(access: Access, user: UserInfo) -> bool:
    """Cluster-admins are those allowed every verb on every resource."""
    return access.allowed(user, verb="*", group="*", resource="*")


@dataclass(frozen=True, slots=True)
class Grant:
    """One row of a StaticAccess table; '*' and '' (for name/namespace) match anything."""

    username: str
    verb: str
    group: str = "*"
    resource: str = "*"
    name: str = ""
    namespace: str = ""


class StaticAccess:
    """Access from a fixed table of grants (tests, benchmarks); no wildcard in a question matches a narrower grant."""

    def __init__(self, grants: Iterable[Grant] = ()) -> None:
        self._grants = tuple(grants)

    def allowed(
        self,
        user: UserInfo,
        *,
        verb: str,
        group: str,
        resource: str,
        name: str = "",
        namespace: str = "",
        subresource: str = "",
    ) -> bool:
        return any(
            g.username == user.username
            and _covers(g.verb, verb)
            and _covers(g.group, group)
            and _covers(g.resource, resource)
            and (g.name in ("", name))
            and (g.namespace in ("", namespace))
            for g in self._grants
        )


def _covers(granted: str, asked: str) -> bool:
    return granted == "*" or granted == asked
