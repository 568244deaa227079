"""The chart's observe mode (agent.observeOnly): the agent is told, and the host's /sys reaches it read-only, so not
even a bug in the agent could write there; the takeover init container (it writes remove_id) is left out. /dev stays
writable (the runtime mounts the termination log into it; the agent's guard refuses chown)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.support.controlplane import Binaries

CHART = Path(__file__).resolve().parents[2] / "charts" / "harvester-pcidevices-controller"


def _agent_pod(binaries: Binaries, *sets: str) -> dict[str, Any]:
    args = [a for s in sets for a in ("--set", s)]
    proc = subprocess.run(
        [str(binaries.helm), "template", "pcidevices", str(CHART), "--namespace", "harvester-system", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    ds = next(d for d in yaml.safe_load_all(proc.stdout) if d and d["kind"] == "DaemonSet")
    pod: dict[str, Any] = ds["spec"]["template"]["spec"]
    return pod


def _mounts(pod: dict[str, Any]) -> dict[str, bool]:
    return {m["mountPath"]: bool(m.get("readOnly")) for m in pod["containers"][0]["volumeMounts"]}


def _env(pod: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}


def test_observe_mode_mounts_sys_read_only_and_tells_the_agent(binaries: Binaries) -> None:
    pod = _agent_pod(binaries, "agent.observeOnly=true", "takeover.enabled=true")
    mounts = _mounts(pod)
    assert mounts["/sys"] is True and mounts["/dev"] is False
    assert _env(pod)["OBSERVE_ONLY"] == "true"
    assert "initContainers" not in pod


def test_by_default_the_agent_may_write_sys_and_dev(binaries: Binaries) -> None:
    pod = _agent_pod(binaries, "takeover.enabled=true")
    mounts = _mounts(pod)
    assert mounts["/sys"] is False and mounts["/dev"] is False
    assert _env(pod)["OBSERVE_ONLY"] == "false"
    assert [c["name"] for c in pod["initContainers"]] == ["takeover"]
