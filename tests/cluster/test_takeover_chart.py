"""The chart's takeover (takeover.enabled): a hook Job as the migration identity, its RBAC, the agent's init step."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

from policy.settings import MIGRATION
from tests.support.controlplane import Binaries

CHART = Path(__file__).resolve().parents[2] / "charts" / "harvester-pcidevices-controller"
NS = "harvester-system"


def _render(binaries: Binaries, *sets: str) -> list[dict[str, Any]]:
    args = [a for s in sets for a in ("--set", s)]
    proc = subprocess.run(
        [str(binaries.helm), "template", "pcidevices-controller", str(CHART), "--namespace", NS, *args],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def _named(docs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["metadata"]["name"] == name and d["kind"] not in ("Deployment", "DaemonSet")]


def test_takeover_is_off_by_default_and_leaves_no_job_or_init_step(binaries: Binaries) -> None:
    docs = _render(binaries)
    assert not [d for d in docs if d["kind"] == "Job"]
    agent = next(d for d in docs if d["kind"] == "DaemonSet")
    assert "initContainers" not in agent["spec"]["template"]["spec"]


def test_enabled_takeover_runs_as_the_identity_the_webhook_trusts_before_install_and_upgrade(
    binaries: Binaries,
) -> None:
    docs = _render(binaries, "takeover.enabled=true")
    job = next(d for d in docs if d["kind"] == "Job")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    pod = job["spec"]["template"]["spec"]
    assert f"system:serviceaccount:{NS}:{pod['serviceAccountName']}" == MIGRATION
    assert pod["containers"][0]["command"][:2] == ["pcidevices-takeover", "--release-name=pcidevices-controller"]
    webhook = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "pcidevices-webhook")
    env = {e["name"]: e.get("value") for e in webhook["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["PCIDEVICES_POLICY_MIGRATION_USERNAMES"] == MIGRATION
    # the SA and its rights exist only as hooks (weight before the Job) and go once it succeeded
    for doc in _named(docs, "pcidevices-takeover"):
        annotations = doc["metadata"]["annotations"]
        assert "hook-succeeded" in annotations["helm.sh/hook-delete-policy"], doc["kind"]
        assert int(annotations["helm.sh/hook-weight"]) <= int(job["metadata"]["annotations"]["helm.sh/hook-weight"])
    role = next(d for d in docs if d["kind"] == "ClusterRole" and d["metadata"]["name"] == "pcidevices-takeover")
    deletes = {(r["apiGroups"][0], res) for r in role["rules"] if "delete" in r["verbs"] for res in r["resources"]}
    assert deletes == {
        ("devices.harvesterhci.io", "nodes"),
        ("admissionregistration.k8s.io", "validatingwebhookconfigurations"),
        ("admissionregistration.k8s.io", "mutatingwebhookconfigurations"),
    }
    for rule in role["rules"]:
        if rule["apiGroups"] == ["admissionregistration.k8s.io"]:
            assert rule["resourceNames"] in (["pcidevices-validator"], ["pcidevices-mutator"])


def test_enabled_takeover_removes_dynamic_ids_in_the_agents_init_step(binaries: Binaries) -> None:
    docs = _render(binaries, "takeover.enabled=true")
    agent = next(d for d in docs if d["kind"] == "DaemonSet")["spec"]["template"]["spec"]
    init = agent["initContainers"][0]
    assert init["command"] == ["pcidevices-agent", "takeover"]
    assert {m["mountPath"] for m in init["volumeMounts"]} == {"/sys"}
    assert init["env"][0]["name"] == "NODE_NAME"
