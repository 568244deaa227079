"""The chart's DRA parts (issue 18), rendered with helm: DeviceClasses only where resource.k8s.io/v1 is served, the
webhook entries for ResourceClaims, templates and slices, and `dra.enabled=false` leaving every DRA part out."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

from policy import dra
from tests.support.controlplane import Binaries

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "harvester-pcidevices-controller"


def _render(binaries: Binaries, *args: str) -> list[dict[str, Any]]:
    proc = subprocess.run([str(binaries.helm), "template", "p", str(CHART), "--namespace", "harvester-system", *args],
                          capture_output=True, text=True, check=False, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def _hooks(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    kinds = ("ValidatingWebhookConfiguration", "MutatingWebhookConfiguration")
    return {h["name"]: h for d in docs if d["kind"] in kinds for h in d["webhooks"]}


def test_device_classes_select_their_driver_where_the_api_is_served(binaries: Binaries) -> None:
    classes = [d for d in _render(binaries, "--api-versions", "resource.k8s.io/v1/DeviceClass")
               if d["kind"] == "DeviceClass"]  # fmt: skip
    assert sorted(c["metadata"]["name"] for c in classes) == sorted(dra.DRIVERS)
    for c in classes:
        assert c["spec"]["selectors"] == [{"cel": {"expression": f'device.driver == "{c["metadata"]["name"]}"'}}]
    assert not [d for d in _render(binaries) if d["kind"] == "DeviceClass"]  # Kubernetes < 1.34


def test_claims_and_templates_reach_the_webhook_with_their_own_failure_policy(binaries: Binaries) -> None:
    hooks = _hooks(_render(binaries, "--set", "webhook.draFailurePolicy=Ignore"))
    v, m, s = (hooks[f"{n}.devices.harvesterhci.io"] for n in ("dra.validate", "dra.mutate", "slices.validate"))
    assert v["rules"][0]["resources"] == ["resourceclaims", "resourceclaimtemplates"]
    assert v["rules"][0]["operations"] == ["CREATE", "UPDATE"] and m["rules"][0]["operations"] == ["CREATE"]
    assert {v["failurePolicy"], m["failurePolicy"], s["failurePolicy"]} == {"Ignore"}
    assert "request.operation == 'CREATE'" in v["matchConditions"][0]["expression"]
    assert s["rules"][0]["resources"] == ["resourceslices"] and s["rules"][0]["scope"] == "Cluster"
    assert all(d in s["matchConditions"][0]["expression"] for d in dra.DRIVERS)


def test_dra_disabled_renders_no_dra_part(binaries: Binaries) -> None:
    docs = _render(binaries, "--set", "dra.enabled=false", "--api-versions", "resource.k8s.io/v1/DeviceClass")
    assert not [d for d in docs if d["kind"] == "DeviceClass"]
    assert not [n for n in _hooks(docs) if n.startswith(("dra.", "slices."))]
    agent = next(d for d in docs if d["kind"] == "DaemonSet")["spec"]["template"]["spec"]
    dra_volumes = ("plugins-registry", "dra-pci", "dra-usb", "cdi")
    assert not [v for v in agent["volumes"] if v["name"] in dra_volumes]
    env = {e["name"]: e.get("value") for e in agent["containers"][0]["env"]}
    assert env["DRA"] == "false" and "CDI_DIR" not in env
    rules = [r for d in docs if d["kind"] == "ClusterRole" for r in d["rules"]]
    assert not [r for r in rules if "resource.k8s.io" in r["apiGroups"]]
