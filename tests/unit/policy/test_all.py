"""The curated public surface of policy (httpx style): __all__ is exact, sorted and importable."""

from __future__ import annotations

import policy

EXPECTED = {
    "FINALIZER_AGENT",
    "KINDS",
    "MUTATING_RULES",
    "VALIDATING_RULES",
    "Access",
    "AdmissionRequest",
    "ClusterIndex",
    "ClusterView",
    "Decision",
    "Grant",
    "MalformedObject",
    "MalformedReview",
    "Operation",
    "PolicySettings",
    "StaticAccess",
    "UserInfo",
    "mutate",
    "validate",
}


def test_all_lists_exactly_the_public_names() -> None:
    assert set(policy.__all__) == EXPECTED
    assert len(policy.__all__) == len(EXPECTED)


def test_every_public_name_is_importable_from_the_package() -> None:
    for name in policy.__all__:
        assert getattr(policy, name) is not None, name


def test_public_names_hide_the_private_modules() -> None:
    public = {n for n in dir(policy) if not n.startswith("_")}
    modules = {n for n in public if type(getattr(policy, n)).__name__ == "module"}
    assert public - modules == EXPECTED


def test_webhook_rules_cover_exactly_the_kinds_the_policy_judges() -> None:
    sent = {(g, *(r.split("/") + [""])[:2]) for g, r, _ in policy.VALIDATING_RULES}
    assert sent == set(policy.KINDS)
    assert {(g, r) for g, r, _ in policy.MUTATING_RULES} <= {(g, r) for g, r, s in policy.KINDS if not s}
