"""The agent loads only what it runs: its resident memory is a target (docs/agent.md), and code it imports but never
calls (the webhook's admission rules, its web framework, the certificate keeper's crypto) is resident all the same."""

from __future__ import annotations

import subprocess
import sys

NOT_FOR_THE_AGENT = ("policy.dispatch", "policy.rules", "policy.snapshot", "flask", "cryptography", "kubernetes")


def test_the_agent_does_not_import_the_admission_rules_or_the_webhooks_libraries() -> None:
    probe = (
        "import sys, nodeagent.wiring, nodeagent.__main__; "
        f"print(sorted(m for m in sys.modules if m.startswith({NOT_FOR_THE_AGENT!r})))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_policy_surface_still_loads_on_first_use() -> None:
    probe = "import sys, policy; assert 'policy.dispatch' not in sys.modules; print(policy.validate.__module__)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "policy.dispatch"
