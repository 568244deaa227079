"""SubjectAccessReview questions and their TTL cache."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from policy import review
from webhook import access, metrics

ALICE = review.UserInfo(
    username="alice",
    uid="1234",
    groups=("tenants", "system:authenticated"),
    extra={"authentication.kubernetes.io/node-name": ("node1",)},
)


class FakeSAR:
    def __init__(self, allowed: bool = True, error: Exception | None = None) -> None:
        self.bodies: list[Mapping[str, Any]] = []
        self.allowed = allowed
        self.error = error

    def review_access(self, body: Mapping[str, Any]) -> bool:
        self.bodies.append(body)
        if self.error is not None:
            raise self.error
        return self.allowed


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _cached(sar: FakeSAR, clock: Clock, max_entries: int = 100) -> tuple[access.CachedAccess, metrics.Metrics]:
    m = metrics.Metrics()
    return access.CachedAccess(sar, ttl_s=10, max_entries=max_entries, metrics=m, clock=clock), m


def test_the_review_carries_user_uid_groups_extra_and_the_resource_attributes() -> None:
    sar = FakeSAR()
    cached, _ = _cached(sar, Clock())
    cached.allowed(ALICE, verb="claim", group="devices.harvesterhci.io", resource="pcidevices", name="node1-00003b000")
    assert sar.bodies == [
        {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": "alice",
                "uid": "1234",
                "groups": ["tenants", "system:authenticated"],
                "extra": {"authentication.kubernetes.io/node-name": ["node1"]},
                "resourceAttributes": {
                    "verb": "claim",
                    "group": "devices.harvesterhci.io",
                    "resource": "pcidevices",
                    "name": "node1-00003b000",
                },
            },
        }
    ]


@pytest.mark.parametrize("answer", [True, False])
def test_a_repeated_question_within_the_ttl_is_answered_from_the_cache(answer: bool) -> None:
    sar, clock = FakeSAR(allowed=answer), Clock()
    cached, m = _cached(sar, clock)
    for _ in range(3):
        assert cached.allowed(ALICE, verb="release", group="g", resource="pcidevices", name="d") is answer
        clock.now += 3
    assert len(sar.bodies) == 1
    assert (cached.hits, cached.misses) == (2, 1)
    assert m.sar_cache.labels("hit")._value.get() == 2


def test_an_answer_older_than_the_ttl_is_asked_again() -> None:
    sar, clock = FakeSAR(), Clock()
    cached, _ = _cached(sar, clock)
    cached.allowed(ALICE, verb="claim", group="g", resource="pcidevices", name="d")
    clock.now += 10.5
    cached.allowed(ALICE, verb="claim", group="g", resource="pcidevices", name="d")
    assert len(sar.bodies) == 2


def test_different_users_names_groups_or_extras_are_different_questions() -> None:
    sar = FakeSAR()
    cached, _ = _cached(sar, Clock())
    other_groups = review.UserInfo(username="alice", uid="1234", groups=("admins",), extra=ALICE.extra)
    other_node = review.UserInfo(
        username="alice", uid="1234", groups=ALICE.groups, extra={"authentication.kubernetes.io/node-name": ("n2",)}
    )
    for user in (ALICE, other_groups, other_node):
        cached.allowed(user, verb="claim", group="g", resource="pcidevices", name="d")
    cached.allowed(ALICE, verb="claim", group="g", resource="pcidevices", name="e")
    assert len(sar.bodies) == 4


def test_the_cache_holds_at_most_max_entries_dropping_the_least_recently_used() -> None:
    sar = FakeSAR()
    cached, _ = _cached(sar, Clock(), max_entries=2)
    for name in ("a", "b", "a", "c", "a", "b"):
        cached.allowed(ALICE, verb="claim", group="g", resource="r", name=name)
    # a miss, b miss, a hit, c miss (evicts b), a hit, b miss
    assert [b["spec"]["resourceAttributes"]["name"] for b in sar.bodies] == ["a", "b", "c", "b"]


def test_a_failing_review_raises_is_counted_and_is_not_cached() -> None:
    sar = FakeSAR(error=ConnectionError("api down"))
    cached, m = _cached(sar, Clock())
    for _ in range(2):
        with pytest.raises(ConnectionError):
            cached.allowed(ALICE, verb="claim", group="g", resource="r", name="x")
    assert len(sar.bodies) == 2
    assert m.sar_errors._value.get() == 2


class NamedGrantSAR(FakeSAR):
    """An authorizer like RBAC: `grants` maps a user to the device names a resourceNames rule gives them ("*": a
    rule without resourceNames); a question without a name is allowed only by "*"."""

    def __init__(self, grants: Mapping[str, set[str]]) -> None:
        super().__init__()
        self.grants = grants

    def review_access(self, body: Mapping[str, Any]) -> bool:
        self.bodies.append(body)
        names = self.grants.get(body["spec"]["user"], set())
        asked = body["spec"]["resourceAttributes"].get("name")
        return "*" in names or (asked is not None and asked in names)


def _broad(sar: FakeSAR, clock: Clock) -> access.CachedAccess:
    return access.CachedAccess(sar, ttl_s=10, max_entries=100, metrics=metrics.Metrics(), clock=clock, broad_first=True)


def test_broad_first_answers_every_device_of_a_user_with_a_resource_wide_grant_from_one_review() -> None:
    sar = NamedGrantSAR({"alice": {"*"}})
    cached = _broad(sar, Clock())
    assert all(cached.allowed(ALICE, verb="claim", group="g", resource="pcidevices", name=f"d{i}") for i in range(50))
    assert len(sar.bodies) == 1
    assert "name" not in sar.bodies[0]["spec"]["resourceAttributes"]
    assert (cached.hits, cached.misses) == (49, 1)


def test_broad_first_still_asks_by_name_for_a_user_whose_grant_names_devices() -> None:
    bob = review.UserInfo(username="bob")
    sar = NamedGrantSAR({"bob": {"d1"}})
    cached = _broad(sar, Clock())
    assert cached.allowed(bob, verb="claim", group="g", resource="pcidevices", name="d1")
    assert not cached.allowed(bob, verb="claim", group="g", resource="pcidevices", name="d2")
    assert cached.allowed(bob, verb="claim", group="g", resource="pcidevices", name="d1")
    asked = [b["spec"]["resourceAttributes"].get("name") for b in sar.bodies]
    assert asked == [None, "d1", "d2"]  # the resource-wide "no" is cached once; each name is asked once


def test_broad_first_keeps_the_namespace_of_the_question() -> None:
    sar = NamedGrantSAR({"alice": {"*"}})
    cached = _broad(sar, Clock())
    cached.allowed(ALICE, verb="use", group="g", resource="pcidevices", name="d1", namespace="tenant-a")
    assert sar.bodies[0]["spec"]["resourceAttributes"] == {
        "verb": "use", "group": "g", "resource": "pcidevices", "namespace": "tenant-a"
    }  # fmt: skip


def test_without_broad_first_each_device_is_its_own_question() -> None:
    sar = NamedGrantSAR({"alice": {"*"}})
    cached, _ = _cached(sar, Clock())
    for i in range(3):
        cached.allowed(ALICE, verb="claim", group="g", resource="pcidevices", name=f"d{i}")
    assert [b["spec"]["resourceAttributes"]["name"] for b in sar.bodies] == ["d0", "d1", "d2"]
