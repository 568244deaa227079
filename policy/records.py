"""Admission records: who asked for a workload's devices, written by the webhook and trusted by nothing else.

A VM is judged when it is admitted, but the devices reach a launcher pod later, through objects other actors create
(the VMI virt-controller makes, an instancetype that changes, a restore or a clone). The webhook therefore stamps
every workload it judges with the requester it judged (`ANNOTATION`), computed from the request's authenticated user
or, for objects a controller writes on someone's behalf, from that someone's own record. The mutator always writes
the value it computes and the validator refuses any other, and the chart sends every request that sets or changes the
annotation, so users cannot forge one; the last gate (a VMI's admission) re-checks `use` for the recorded requester
against the cluster as it is then.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from policy import names
from policy.review import UserInfo

ANNOTATION = f"{names.GROUP}/requester"
MAX_GROUPS = 64  # a record stays small; a requester with more groups is judged on the first 64 (sorted)


@dataclass(frozen=True, slots=True)
class Requester:
    """The identity whose `use` a workload's devices are judged by."""

    username: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    via: str = ""  # how the webhook traced it, for people reading the annotation ("restore ns-a/r1", ...)
    adopted: tuple[str, ...] = ()  # resource names the takeover found in use and grandfathered

    @classmethod
    def of(cls, user: UserInfo, via: str = "") -> Requester:
        return cls(user.username, user.uid, tuple(sorted(set(user.groups)))[:MAX_GROUPS], via)

    def user_info(self) -> UserInfo:
        return UserInfo(username=self.username, uid=self.uid, groups=self.groups)

    def traced(self, via: str) -> Requester:
        """The same requester, reached through another object."""
        return Requester(self.username, self.uid, self.groups, via, self.adopted)

    def encode(self) -> str:
        body: dict[str, object] = {"user": self.username}
        if self.uid:
            body["uid"] = self.uid
        if self.groups:
            body["groups"] = list(self.groups)
        if self.via:
            body["via"] = self.via
        if self.adopted:
            body["adopted"] = list(self.adopted)
        return json.dumps(body, separators=(",", ":"), sort_keys=True)

    @classmethod
    def decode(cls, value: object) -> Requester | None:
        """The record in an annotation value; None when it is absent or not shaped as the webhook writes it."""
        if not isinstance(value, str) or not value or len(value) > 16384:
            return None
        try:
            body = json.loads(value)
        except ValueError:
            return None
        if not isinstance(body, dict):
            return None
        user, uid, via = body.get("user"), body.get("uid", ""), body.get("via", "")
        groups, adopted = body.get("groups", []), body.get("adopted", [])
        if not (isinstance(user, str) and user and isinstance(uid, str) and isinstance(via, str)):
            return None
        if not (_strings(groups) and _strings(adopted)):
            return None
        return cls(user, uid, tuple(groups)[:MAX_GROUPS], via, tuple(adopted))


def _strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)
