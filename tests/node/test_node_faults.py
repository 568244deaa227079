"""Faults on the running chart, measured: admissions keep succeeding while a webhook pod is deleted and while
`helm upgrade` rolls the Deployment; a dead certificate keeper gets its pod restarted by the liveness probe; the
agent's replacement pod writes nothing while nothing changed; `helm uninstall` keeps CRDs and claims, and a
reinstall adopts them. Runs after test_node.py (file order): it changes the release."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.node.conftest import CHART, NS, Installed, report
from tests.node.test_admission import _publish, claim, ghost  # noqa: F401 - the module fixture is shared

LOAD_ADDRESS = "0000:51:00.0"


@dataclass
class Load:
    """Server-side dry-run creates of an admissible claim, one after another, each one a webhook call."""

    ok: int = 0
    failed: list[str] = field(default_factory=list)


@contextmanager
def admissions(installed: Installed, body: dict[str, Any]) -> Iterator[Load]:
    load = Load()
    stop = threading.Event()
    doc = json.dumps(body)

    def loop() -> None:
        while not stop.is_set():
            got = installed.cp.kubectl("create", "--dry-run=server", "-o", "name", "-f", "-", input=doc, check=False)
            if got.returncode == 0:
                load.ok += 1
            else:
                load.failed.append(got.stderr.strip())

    worker = threading.Thread(target=loop, name="admission load", daemon=True)
    worker.start()
    try:
        yield load
    finally:
        stop.set()
        worker.join(60)


@pytest.fixture(scope="module")
def load_claim(installed: Installed, ghost: dict[str, dict[str, Any]]) -> dict[str, Any]:  # noqa: F811
    return claim(_publish(installed, LOAD_ADDRESS))


def _ready_pods(installed: Installed, app: str) -> list[dict[str, Any]]:
    return [
        p
        for p in installed.pods(app)
        if not p["metadata"].get("deletionTimestamp")
        and p["status"].get("phase") == "Running"
        and all(c.get("ready") for c in p["status"].get("containerStatuses", []))
    ]


def _wait(what: str, predicate: Any, timeout: float = 300) -> float:
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.5)
    return time.monotonic() - started


def test_deleting_a_webhook_pod_under_load_fails_no_admission(
    installed: Installed, load_claim: dict[str, Any], pytestconfig: pytest.Config
) -> None:
    before = {p["metadata"]["name"] for p in installed.pods("pcidevices-webhook")}
    victim = sorted(before)[0]
    with admissions(installed, load_claim) as load:
        time.sleep(5)
        installed.cp.kubectl("delete", "pod", "-n", NS, victim, "--wait=false")
        seen: dict[str, float] = {}

        def replaced() -> bool:
            for p in installed.pods("pcidevices-webhook"):
                name = p["metadata"]["name"]
                if name not in before:
                    seen.setdefault(name, time.monotonic())
            ready = {p["metadata"]["name"] for p in _ready_pods(installed, "pcidevices-webhook")}
            return len(ready) == 2 and victim not in ready and bool(set(seen) & ready)

        _wait("a replacement webhook pod Ready", replaced)
        start_to_ready = time.monotonic() - min(seen.values())
        time.sleep(5)
    report(pytestconfig, f"webhook pod deleted under load: {load.ok} admissions, {len(load.failed)} failed; "
           f"replacement pod seen -> Ready in {start_to_ready:.1f}s")  # fmt: skip
    assert load.ok > 10 and load.failed == [], load.failed[:3]


def _keeper_pids(installed: Installed) -> list[int]:
    found = []
    for pid in installed.node.cgroups.pids():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"webhook" in cmdline and b"certs" in cmdline:
            found.append(pid)
    return found


def test_a_killed_certificate_keeper_gets_its_pod_restarted_by_the_liveness_probe(
    installed: Installed, pytestconfig: pytest.Config
) -> None:
    restarts = {p["metadata"]["name"]: p["status"]["containerStatuses"][0]["restartCount"]
                for p in installed.pods("pcidevices-webhook")}  # fmt: skip
    pids = _keeper_pids(installed)
    assert len(pids) == 2, pids  # one keeper per webhook pod
    os.kill(pids[0], signal.SIGKILL)

    def restarted() -> bool:
        return any(
            p["status"]["containerStatuses"][0]["restartCount"] > restarts.get(p["metadata"]["name"], 0)
            for p in installed.pods("pcidevices-webhook")
        )

    took = _wait("a webhook container restarted by its liveness probe", restarted, timeout=480)
    report(pytestconfig, f"certificate keeper killed -> container restarted by liveness after {took:.0f}s "
           "(keeper considered stale after 300s, then 3 failed probes 10s apart)")  # fmt: skip
    _wait("both webhook pods Ready again", lambda: len(_ready_pods(installed, "pcidevices-webhook")) == 2)
    assert len(_keeper_pids(installed)) == 2


def _agent_metrics(installed: Installed) -> dict[str, float]:
    pod = _ready_pods(installed, "pcidevices-agent")[0]["metadata"]["name"]
    text = installed.cp.kubectl("get", "--raw", f"/api/v1/namespaces/{NS}/pods/{pod}:8089/proxy/metrics").stdout
    out = {}
    for line in text.splitlines():
        m = re.match(r"(pcidevices_agent_(?:api_writes|host_writes|reconcile_passes_total)\S*) (\S+)$", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def test_the_agents_replacement_pod_writes_nothing_while_nothing_changed(installed: Installed) -> None:
    old = installed.pods("pcidevices-agent")[0]["metadata"]["name"]
    installed.cp.kubectl("delete", "pod", "-n", NS, old)
    _wait("a new agent pod Ready", lambda: [p["metadata"]["name"] for p in _ready_pods(installed, "pcidevices-agent")]
          not in ([], [old]))  # fmt: skip
    _wait("the new agent's first reconcile pass", lambda: any(
        k.startswith("pcidevices_agent_reconcile_passes_total") and v > 0 for k, v in _agent_metrics(installed).items()
    ))  # fmt: skip
    metrics = _agent_metrics(installed)
    writes = {k: v for k, v in metrics.items() if "writes" in k}
    assert writes and all(v == 0 for v in writes.values()), writes


def test_helm_upgrade_with_a_changed_value_rolls_without_failed_admissions(
    installed: Installed, load_claim: dict[str, Any], pytestconfig: pytest.Config
) -> None:
    before = {p["metadata"]["name"] for p in installed.pods("pcidevices-webhook")}
    sets = [a for v in [*installed.values, "webhook.logLevel=DEBUG"] for a in ("--set", v)]
    with admissions(installed, load_claim) as load:
        time.sleep(3)
        started = time.monotonic()
        installed.helm("upgrade", "pcidevices", str(CHART), "-n", NS, *sets)
        _wait("the webhook Deployment rolled", lambda: (
            len(ready := _ready_pods(installed, "pcidevices-webhook")) == 2
            and not ({p["metadata"]["name"] for p in ready} & before)
            and len(installed.pods("pcidevices-webhook")) == 2
        ))  # fmt: skip
        rolled = time.monotonic() - started
        time.sleep(3)
    report(pytestconfig, f"helm upgrade (webhook.logLevel) rolled in {rolled:.1f}s: {load.ok} admissions, "
           f"{len(load.failed)} failed")  # fmt: skip
    assert load.ok > 10 and load.failed == [], load.failed[:3]


def test_uninstall_keeps_crds_and_claims_and_a_reinstall_adopts_them(
    installed: Installed, ghost: dict[str, dict[str, Any]], pytestconfig: pytest.Config  # noqa: F811
) -> None:
    name = ghost["claimed"]["metadata"]["name"]
    installed.cp.kubectl("apply", "-f", "-", input=json.dumps(claim(ghost["claimed"])))
    installed.helm("uninstall", "pcidevices", "-n", NS)
    _wait("the release's pods gone", lambda: installed.kubectl_json("get", "pods", "-n", NS)["items"] == [])
    crds = installed.kubectl_json("get", "crd")["items"]
    assert {c["metadata"]["name"] for c in crds} >= {
        f"{p}.devices.harvesterhci.io" for p in ("pcidevices", "pcideviceclaims", "usbdevices", "usbdeviceclaims")
    }
    assert installed.cp.kubectl("get", "pcideviceclaim", name, check=False).returncode == 0

    sets = [a for v in installed.values for a in ("--set", v)]
    started = time.monotonic()
    installed.helm("install", "pcidevices", str(CHART), "-n", NS, *sets)
    ready = time.monotonic() - started + installed.wait_all_ready()
    report(pytestconfig, f"helm reinstall over the kept CRDs -> every pod Ready in {ready:.1f}s")
    assert installed.cp.kubectl("get", "pcideviceclaim", name, check=False).returncode == 0
    got = subprocess.run(
        [str(installed.cp.binaries.kubectl), f"--kubeconfig={installed.cp.admin_kubeconfig}", "get", "crd",
         "pcideviceclaims.devices.harvesterhci.io", "-o", "jsonpath={.metadata.annotations}"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert '"meta.helm.sh/release-name":"pcidevices"' in got
