"""The chart in a real API server: `helm install` (URL mode, no --wait), then the webhook and a node agent started out
of cluster with the chart's identities and settings (devcluster.Stack), claims applied through the chart-installed
configurations, `helm upgrade` with a changed CRD, `helm uninstall`, and the Harvester Addon switch.

Runs on its own control plane: the chart owns objects (CRDs, roles, configurations) other modules create by hand.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from devcluster.stack import CHART, Process, Stack
from tests.support.controlplane import Binaries, ControlPlane, KubeUser

REPO = Path(__file__).resolve().parents[2]
NODE = "sim-node"
GPU, AUDIO, NIC = "0000:00:03.0", "0000:00:03.1", "0000:00:04.0"
DENIED = 'admission webhook "validate.devices.harvesterhci.io" denied the request: '


@dataclass
class Site:
    cp: ControlPlane
    stack: Stack
    webhook: Process
    controller: Process
    agent: Process
    alice: KubeUser  # pcidevices-admin
    bob: KubeUser  # pcidevices-user


def _device(address: str) -> str:
    return f"{NODE}-{address.replace(':', '').replace('.', '')[-9:]}"


def _claim(address: str, user: str) -> dict[str, Any]:
    return {
        "apiVersion": "devices.harvesterhci.io/v1beta1",
        "kind": "PCIDeviceClaim",
        "metadata": {"name": _device(address)},
        "spec": {"address": address, "nodeName": NODE, "userName": user},
    }


def _bind(cp: ControlPlane, user: KubeUser, role: str) -> None:
    cp.kubectl("create", "clusterrolebinding", f"{user.name}-{role}", f"--clusterrole={role}", f"--user={user.name}")


@pytest.fixture(scope="module")
def site(binaries: Binaries) -> Iterator[Site]:
    workdir = Path(tempfile.mkdtemp(prefix="chart"))
    cp = ControlPlane(binaries, workdir / "cp")
    stack = Stack(cp, workdir / "stack")
    try:
        cp.start()
        cp.kubectl("apply", "-f", str(REPO / "tests" / "fixtures" / "crds"))
        stack.install()
        webhook = stack.start_webhook()
        controller = stack.start_controller()
        assert controller is not None, "this checkout has no pcidevices-controller"
        agent = stack.start_node(NODE, simulated=True)
        stack.wait_admitting(webhook)
        stack.wait_devices(NODE, agent)
        alice, bob = cp.mint_user("alice"), cp.mint_user("bob")
        _bind(cp, alice, "pcidevices-admin")
        _bind(cp, bob, "pcidevices-user")
        yield Site(cp, stack, webhook, controller, agent, alice, bob)
    finally:
        stack.stop()
        cp.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _until(ok: Any, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ok():
            return True
        time.sleep(0.5)
    return bool(ok())


def _get(cp: ControlPlane, *args: str) -> Any:
    r = cp.kubectl("get", *args, "-o", "json", check=False)
    return json.loads(r.stdout) if r.returncode == 0 else None


def _ca_bundles(cp: ControlPlane) -> set[str]:
    out = set()
    for kind in ("validatingwebhookconfigurations", "mutatingwebhookconfigurations"):
        for conf in _get(cp, kind, "-l", "app.kubernetes.io/instance=pcidevices")["items"]:
            out |= {h["clientConfig"].get("caBundle", "") for h in conf["webhooks"]}
    return out


def test_the_webhook_and_agent_work_with_exactly_the_chart_identities(site: Site) -> None:
    cp = site.cp
    bundles = _ca_bundles(cp)
    assert len(bundles) == 1 and "" not in bundles  # the webhook patched the chart's configurations
    secret = _get(cp, "secret", "pcidevices-webhook-certs", "-n", "harvester-system")
    assert secret["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm" and secret["data"]["tls.crt"]
    wanted = {_device(GPU), _device(AUDIO), _device(NIC)}
    assert _until(lambda: wanted <= {d["metadata"]["name"] for d in _get(cp, "pcidevices")["items"]})
    assert _until(lambda: _get(cp, "usbdevices")["items"]), "the agent wrote no USBDevice"
    lease = _until(lambda: (_get(cp, "lease", "pcidevices-controller", "-n", "harvester-system") or {}).get("spec"))
    assert lease, site.controller.log_tail()
    for proc in (site.webhook, site.controller, site.agent):
        log = proc.log_tail(200000)
        # RBAC lacks nothing it asked for
        assert " 403: " not in log and "is forbidden" not in log and "cannot list" not in log, log[-3000:]


def test_a_pcidevices_admin_claims_a_device_and_the_agent_enables_passthrough(site: Site) -> None:
    cp = site.cp
    r = cp.kubectl("create", "-f", "-", input=json.dumps(_claim(GPU, "alice")), user=site.alice, check=False)
    assert r.returncode == 0, r.stderr
    assert "Warning:" in r.stderr and _device(AUDIO) in r.stderr  # the unclaimed IOMMU-group sibling
    claim = _get(cp, "pcideviceclaim", _device(GPU))
    assert claim["metadata"]["annotations"]["devices.harvesterhci.io/requested-by"] == "alice"

    def enabled() -> bool:
        c = _get(cp, "pcideviceclaim", _device(GPU))
        return bool(c and (c.get("status") or {}).get("passthroughEnabled"))

    assert _until(enabled), site.agent.log_tail()

    def sibling_claimed_for_alice() -> bool:  # the cluster controller completes the IOMMU group after its grace
        c = _get(cp, "pcideviceclaim", _device(AUDIO))
        return bool(c) and c["metadata"]["annotations"]["devices.harvesterhci.io/requested-by"] == "alice"

    assert _until(sibling_claimed_for_alice, timeout=90), site.controller.log_tail()


def test_a_released_claim_gives_the_device_back_to_its_driver_and_withdraws_the_permit(site: Site) -> None:
    """Claim and release through the chart's webhook configurations, with the agent and its node-bound identity."""
    cp = site.cp
    kubevirt = {
        "apiVersion": "kubevirt.io/v1",
        "kind": "KubeVirt",
        "metadata": {"name": "kubevirt", "namespace": "harvester-system"},
        "spec": {"configuration": {"developerConfiguration": {"featureGates": ["HostDevices"]},
                                   "permittedHostDevices": {}}},
    }  # fmt: skip
    cp.kubectl("apply", "-f", "-", input=json.dumps(kubevirt))
    name = _device(NIC)

    def device() -> Any:
        return _get(cp, "pcidevice", name)

    def permitted() -> set[str]:
        kv = _get(cp, "kubevirt", "kubevirt", "-n", "harvester-system")
        perm = ((kv or {}).get("spec", {}).get("configuration", {}).get("permittedHostDevices")) or {}
        return {e.get("resourceName", "") for e in perm.get("pciHostDevices") or []}

    original = device()["status"]["kernelDriverInUse"]
    assert original == "ixgbe"
    r = cp.kubectl("create", "-f", "-", input=json.dumps(_claim(NIC, "alice")), user=site.alice, check=False)
    assert r.returncode == 0, r.stderr

    def enabled() -> bool:
        c = _get(cp, "pcideviceclaim", name)
        return bool(c and (c.get("status") or {}).get("passthroughEnabled"))

    assert _until(enabled), site.agent.log_tail()
    resource = device()["status"]["resourceName"]
    assert _until(lambda: device()["status"]["kernelDriverInUse"] == "vfio-pci"), site.agent.log_tail()
    assert _until(lambda: resource in permitted()), site.agent.log_tail()

    r = cp.kubectl("delete", "pcideviceclaim", name, "--wait=false", user=site.alice, check=False)
    assert r.returncode == 0, r.stderr
    assert _until(lambda: _get(cp, "pcideviceclaim", name) is None), site.agent.log_tail()
    assert _until(lambda: device()["status"]["kernelDriverInUse"] == original), site.agent.log_tail()
    assert _until(lambda: resource not in permitted()), site.agent.log_tail()

def test_a_pcidevices_user_cannot_claim_and_kubectl_says_why(site: Site) -> None:
    cp = site.cp
    r = cp.kubectl("create", "-f", "-", input=json.dumps(_claim(NIC, "bob")), user=site.bob, check=False)
    assert r.returncode != 0 and "cannot create resource" in r.stderr, r.stderr  # RBAC: pcidevices-user has no create
    # Even with the right to create claim objects, the webhook wants the "claim" verb on the device.
    cp.kubectl("create", "clusterrole", "claim-writer", "--verb=create", "--resource=pcideviceclaims")
    cp.kubectl("create", "clusterrolebinding", "bob-claim-writer", "--clusterrole=claim-writer", "--user=bob")
    r = cp.kubectl("create", "-f", "-", input=json.dumps(_claim(NIC, "bob")), user=site.bob, check=False)
    assert r.returncode != 0
    assert DENIED in r.stderr and 'user "bob" lacks the verb claim' in r.stderr, r.stderr
    assert _get(cp, "pcideviceclaim", _device(NIC)) is None


def test_a_claim_whose_spec_does_not_match_its_device_is_rejected(site: Site) -> None:
    claim = _claim(NIC, "alice")
    claim["spec"]["nodeName"] = "another-node"
    r = site.cp.kubectl("create", "-f", "-", input=json.dumps(claim), user=site.alice, check=False)
    assert r.returncode != 0 and DENIED in r.stderr, r.stderr


def _changed_chart(into: Path) -> Path:
    """A copy of the chart (CRD links resolved) whose PCIDeviceClaim CRD has one more printer column."""
    chart = into / CHART.name
    shutil.copytree(CHART, chart, symlinks=False)
    path = chart / "files" / "crds" / "devices.harvesterhci.io_pcideviceclaims.yaml"
    crd = yaml.safe_load(path.read_text())
    for version in crd["spec"]["versions"]:
        version.setdefault("additionalPrinterColumns", []).append(
            {"name": "Upgraded", "type": "string", "jsonPath": ".metadata.annotations.upgraded"}
        )
    path.write_text(yaml.safe_dump(crd))
    meta = yaml.safe_load((chart / "Chart.yaml").read_text())
    meta["version"] = "0.1.1"
    (chart / "Chart.yaml").write_text(yaml.safe_dump(meta))
    return chart


def test_helm_upgrade_with_a_changed_crd_upgrades_it_and_keeps_working_certificates(
    site: Site, tmp_path: Path
) -> None:
    cp, stack = site.cp, site.stack
    before = _ca_bundles(cp)
    cp.helm("upgrade", stack.release, str(_changed_chart(tmp_path)), "--namespace", stack.namespace,
            *stack.helm_values())  # fmt: skip
    crd = _get(cp, "crd", "pcideviceclaims.devices.harvesterhci.io")
    columns = [c["name"] for c in crd["spec"]["versions"][0]["additionalPrinterColumns"]]
    assert "Upgraded" in columns
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert _ca_bundles(cp) == before  # the patched caBundle survived the upgrade
    stack.wait_admitting(site.webhook, timeout=30)  # and the API server still trusts the webhook
    r = cp.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(_claim(NIC, "alice")), user=site.alice,
                   check=False)  # fmt: skip
    assert r.returncode == 0, r.stderr


def test_the_harvester_addon_is_pointed_at_our_chart_by_repo_version_and_values(site: Site) -> None:
    cp = site.cp
    addon = {
        "apiVersion": "harvesterhci.io/v1beta1",
        "kind": "Addon",
        "metadata": {"name": "pcidevices-controller", "namespace": "harvester-system"},
        "spec": {"repo": "http://harvester-cluster-repo.cattle-system.svc/charts", "version": "0.3.6",
                 "chart": "harvester-pcidevices-controller", "enabled": False, "valuesContent": "image: {}\n"},
    }  # fmt: skip
    cp.kubectl("apply", "-f", "-", input=json.dumps(addon))
    bindir = Path(tempfile.mkdtemp(prefix="kbin"))
    try:
        (bindir / "kubectl").symlink_to(cp.binaries.kubectl)
        env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}", "KUBECONFIG": str(cp.admin_kubeconfig)}
        script = str(REPO / "deploy" / "harvester" / "point-addon")
        repo = "https://charts.example.test/pcidevices"
        check = subprocess.run([script, "--repo", repo, "--check"], env=env, capture_output=True, text=True)
        assert check.returncode == 1, check.stdout + check.stderr
        done = subprocess.run([script, "--repo", repo, "--tag", "dev"], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        spec = _get(cp, "addon", "pcidevices-controller", "-n", "harvester-system")["spec"]
        assert spec["chart"] == "harvester-pcidevices-controller" and spec["repo"] == repo and spec["enabled"] is True
        assert spec["version"] == yaml.safe_load((CHART / "Chart.yaml").read_text())["version"]
        values = yaml.safe_load(spec["valuesContent"])
        assert values["image"]["tag"] == "dev" and values["certificates"]["mode"] == "selfSigned"
        rendered = subprocess.run(
            [str(cp.binaries.helm), "template", "x", str(CHART), "-f", "-"], input=spec["valuesContent"],
            capture_output=True, text=True,
        )  # fmt: skip
        assert rendered.returncode == 0, rendered.stderr  # the values pass the chart's schema
        again = subprocess.run([script, "--repo", repo, "--check"], env=env, capture_output=True, text=True)
        assert again.returncode == 0, again.stdout + again.stderr
    finally:
        shutil.rmtree(bindir, ignore_errors=True)


OURS = (
    "serviceaccounts", "secrets", "services", "roles", "rolebindings", "deployments", "daemonsets",
    "poddisruptionbudgets", "clusterroles", "clusterrolebindings",
    "validatingwebhookconfigurations", "mutatingwebhookconfigurations",
)  # fmt: skip


def test_helm_uninstall_leaves_only_the_crds_and_the_claims(site: Site) -> None:
    cp, stack = site.cp, site.stack
    claims_before = {c["metadata"]["name"] for c in _get(cp, "pcideviceclaims")["items"]}
    assert claims_before
    cp.helm("uninstall", stack.release, "--namespace", stack.namespace)
    left = _get(cp, ",".join(OURS), "-A", "-l", "app.kubernetes.io/instance=pcidevices")["items"]
    assert [f"{o['kind']}/{o['metadata']['name']}" for o in left] == []
    left_named = [
        name for kind, name in (("clusterrole", "pcidevices-admin"), ("clusterrole", "pcidevices-webhook"),
                                ("validatingwebhookconfiguration", "pcidevices-validating"),
                                ("secret", "pcidevices-webhook-certs"))
        if _get(cp, kind, name, "-n", stack.namespace) is not None
    ]  # fmt: skip
    assert left_named == []
    ours = {yaml.safe_load(p.read_text())["metadata"]["name"] for p in (REPO / "crds").glob("*.yaml")}
    assert len(ours) == 4 and ours <= {c["metadata"]["name"] for c in _get(cp, "crds")["items"]}
    assert {c["metadata"]["name"] for c in _get(cp, "pcideviceclaims")["items"]} == claims_before
