"""The product as it ships: the unmodified chart installed with helm on a real kubelet + containerd node, every pod
of it Running and Ready, the webhook reached through its Service, the agent in observe mode writing nothing."""

from __future__ import annotations

import base64
import json
import re
import subprocess
from typing import Any

from tests.node.conftest import NODE, NS, Installed

GROUP = "devices.harvesterhci.io"


def _ready(pod: dict[str, Any]) -> bool:
    return pod["status"].get("phase") == "Running" and all(
        c.get("ready") for c in pod["status"].get("containerStatuses", [])
    )


def test_every_pod_of_the_chart_is_running_and_ready(installed: Installed) -> None:
    webhook = installed.pods("pcidevices-webhook")
    assert len(webhook) == 2 and all(_ready(p) for p in webhook)
    controller = installed.pods("pcidevices-controller")
    assert len(controller) == 1 and _ready(controller[0])
    agent = installed.pods("pcidevices-agent")
    assert len(agent) == 1 and _ready(agent[0]) and agent[0]["spec"]["nodeName"] == NODE
    spec = agent[0]["spec"]
    assert spec["hostNetwork"] is True and spec["containers"][0]["securityContext"]["privileged"] is True


def test_self_signed_certificates_are_made_and_the_ca_bundle_patched(installed: Installed) -> None:
    secret = installed.kubectl_json("get", "secret", "-n", NS, "pcidevices-webhook-certs")
    assert set(secret["data"]) >= {"tls.crt", "tls.key"}
    for kind in ("validatingwebhookconfiguration", "mutatingwebhookconfiguration"):
        for conf in installed.kubectl_json("get", kind)["items"]:
            if not conf["metadata"]["name"].startswith("pcidevices"):
                continue
            for hook in conf["webhooks"]:
                bundle = base64.b64decode(hook["clientConfig"].get("caBundle", ""))
                assert b"BEGIN CERTIFICATE" in bundle, (conf["metadata"]["name"], hook["name"])
                assert hook["clientConfig"]["service"]["name"] == "pcidevices-webhook"  # not URL mode


def test_the_cluster_controller_holds_its_lease(installed: Installed) -> None:
    lease = installed.kubectl_json("get", "lease", "-n", NS, "pcidevices-controller")
    holder = lease["spec"].get("holderIdentity", "")
    assert holder.startswith("pcidevices-controller"), holder


def _lspci() -> dict[str, tuple[str, str]]:
    """lspci's functions of this machine without bridges (class 06 04), as the agent lists them: address -> ids."""
    out = subprocess.run(["lspci", "-D", "-n"], capture_output=True, text=True, check=True).stdout
    found = {}
    for line in out.splitlines():
        m = re.match(r"(\S+) ([0-9a-f]{4}): ([0-9a-f]{4}):([0-9a-f]{4})", line)
        if m and not m.group(2).startswith("0604"):
            found[m.group(1)] = (m.group(3), m.group(4))
    return found


def test_the_agent_publishes_this_machines_pci_devices_as_lspci_shows_them(installed: Installed) -> None:
    devices = installed.kubectl_json("get", "pcidevices", "-l", f"nodename={NODE}")["items"]
    published = {d["status"]["address"]: (d["status"]["vendorId"], d["status"]["deviceId"]) for d in devices}
    assert published == _lspci()
    assert all(d["status"].get("observeOnly") is True for d in devices)


def _claim(device: dict[str, Any]) -> dict[str, Any]:
    st = device["status"]
    return {
        "apiVersion": f"{GROUP}/v1beta1",
        "kind": "PCIDeviceClaim",
        "metadata": {"name": device["metadata"]["name"]},
        "spec": {"address": st["address"], "nodeName": st["nodeName"], "userName": "admin"},
    }


def test_a_claim_for_a_device_of_this_node_is_rejected_through_the_service_with_its_message(
    installed: Installed,
) -> None:
    devices = installed.kubectl_json("get", "pcidevices", "-l", f"nodename={NODE}")["items"]
    target = devices[0]
    got = installed.cp.kubectl("apply", "-f", "-", input=json.dumps(_claim(target)), check=False)
    assert got.returncode != 0
    assert 'admission webhook "' in got.stderr and "denied the request" in got.stderr
    assert f'pcideviceclaim "{target["metadata"]["name"]}"' in got.stderr


def test_the_idle_observing_agent_wrote_nothing_to_the_host(installed: Installed) -> None:
    pod = installed.pods("pcidevices-agent")[0]["metadata"]["name"]
    port = 8089
    metrics = installed.cp.kubectl(
        "get", "--raw", f"/api/v1/namespaces/{NS}/pods/{pod}:{port}/proxy/metrics"
    ).stdout
    written = re.findall(r'pcidevices_agent_host_writes\{kind="(\w+)",result="(\w+)"\} (\S+)', metrics)
    assert written and all(float(v) == 0.0 for _, _, v in written), written
    assert "pcidevices_agent_observe_only 1.0" in metrics
