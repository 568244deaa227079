"""PolicySettings from env-like strings."""

from __future__ import annotations

import pytest

from policy.settings import AGENT, CONTROLLER_MANAGER, GC, PolicySettings


def test_defaults_name_the_chart_service_accounts_and_enforce_every_check() -> None:
    s = PolicySettings()
    assert s.agent_usernames == {AGENT} and s.gc_usernames == {GC, CONTROLLER_MANAGER}
    assert s.enforce_claim and s.enforce_release


def test_from_mapping_reads_lists_and_switches_and_ignores_other_keys() -> None:
    s = PolicySettings.from_mapping(
        {"AGENT_USERNAMES": " a, b ,,", "ENFORCE_CLAIM": "false", "ENFORCE_RELEASE": "On", "PATH": "/usr/bin"}
    )
    assert s.agent_usernames == {"a", "b"}
    assert (s.enforce_claim, s.enforce_release) == (False, True)
    assert s.controller_usernames == PolicySettings().controller_usernames


def test_from_mapping_rejects_a_switch_that_is_not_a_boolean() -> None:
    with pytest.raises(ValueError, match="ENFORCE_RELEASE must be true or false"):
        PolicySettings.from_mapping({"ENFORCE_RELEASE": "maybe"})
