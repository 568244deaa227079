"""Fixtures of the node tier: one sandboxed control plane + real node per session, the chart installed on it.

Prerequisites come from `scripts/prepare-node` (scripts/test runs it before this tier): the binaries, the image
archive and the pause image. Without them the tier skips locally with the command to run; under CI=true the root
conftest turns that skip into a failure. The agent pod always runs in observe mode here: this machine is a VM whose
disk and network are PCI devices, and nothing of it may ever be bound, unbound or reset.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from nodeagent.settings import LABEL_OBSERVE_ONLY
from tests.support import guestcluster
from tests.support.controlplane import Binaries, BinariesMissing, ControlPlane
from tests.support.guestcluster import CHART, NS, REPO, TEST_CRDS
from tests.support.node import REPORT_KEY, Node, NodeBinaries, Sandbox

NODE = "node1"
CONTROLLERS = (
    "deployment-controller", "replicaset-controller", "daemonset-controller", "endpointslice-controller",
    "endpoints-controller", "garbage-collector-controller", "namespace-controller", "serviceaccount-controller",
    "root-ca-certificate-publisher-controller", "disruption-controller", "pod-garbage-collector-controller",
    "node-lifecycle-controller",  # removes the not-ready taint a new node registers with
)  # fmt: skip

_REPORT = REPORT_KEY  # one key: test modules import this file under another name than pytest's conftest


def report(config: pytest.Config, line: str) -> None:
    config.stash.setdefault(_REPORT, []).append(line)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    lines = config.stash.get(_REPORT, [])
    if lines:
        terminalreporter.section("node tier")
        for line in lines:
            terminalreporter.write_line(line)


@dataclass
class Installed:
    """The running node tier: control plane, node, and the chart release on it."""

    cp: ControlPlane
    node: Node
    sandbox: Sandbox
    values: list[str]
    install_ready_s: float

    def kubectl_json(self, *args: str) -> Any:
        return json.loads(self.cp.kubectl(*args, "-o", "json").stdout)

    def pods(self, app: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.kubectl_json(
            "get", "pods", "-n", NS, "-l", f"app.kubernetes.io/name={app}"
        )["items"]
        return items

    def helm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.cp.helm(*args, check=check, timeout=600)

    def wait_all_ready(self, timeout: float = 420) -> float:
        """Seconds until every pod of the release is Running and Ready (and none is terminating)."""
        started = time.monotonic()
        while True:
            pods = self.kubectl_json("get", "pods", "-n", NS)["items"]
            ready = [
                p
                for p in pods
                if p["status"].get("phase") == "Running"
                and not p["metadata"].get("deletionTimestamp")
                and all(c.get("ready") for c in p["status"].get("containerStatuses", []))
            ]
            if pods and len(ready) == len(pods) and len(pods) >= 4:
                return time.monotonic() - started
            if time.monotonic() - started > timeout:
                summary = [(p["metadata"]["name"], p["status"].get("phase"), p["status"].get("containerStatuses"))
                           for p in pods]  # fmt: skip
                raise AssertionError(f"pods not Ready after {timeout}s: {summary}")
            time.sleep(1)


def _prepared() -> dict[str, Path]:
    proc = subprocess.run([str(REPO / "scripts" / "prepare-node"), "--paths"], capture_output=True, text=True)
    paths = {k: Path(v) for k, v in (line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)}
    if proc.returncode != 0 or not {"archive", "pause"} <= set(paths):
        why = proc.stderr.strip()
        raise BinariesMissing(f"the image or the pause image is not built ({why}); run scripts/prepare-node")
    return paths


def chart_values(node: Node) -> list[str]:
    return [
        "image.pullPolicy=Never",
        "agent.observeOnly=true",  # always, on this machine (module docstring)
        f"agent.kubeletDir={node.kubelet_dir}",
    ]


@pytest.fixture(scope="session")
def installed(pytestconfig: pytest.Config, request: pytest.FixtureRequest) -> Iterator[Installed]:
    missing = [p for p in ("unshare", "nsenter", "ip", "iptables") if shutil.which(p) is None]
    try:
        if missing:
            raise BinariesMissing(f"missing programs: {', '.join(missing)}")
        binaries = Binaries.locate(REPO)
        node_binaries = NodeBinaries.locate(REPO)
        images = _prepared()
    except BinariesMissing as e:
        pytest.skip(f"node tier needs scripts/prepare-node: {e}")
    workdir = Path(tempfile.mkdtemp(prefix="pcdn-", dir="/tmp"))  # short: unix socket paths stay < 108 bytes
    with Sandbox(workdir / "sandbox") as sandbox, sandbox.entered():
        cp = ControlPlane(
            binaries, workdir / "cp", network=sandbox.network, controller_manager=True, controllers=CONTROLLERS
        )
        with cp:
            report(pytestconfig, f"control plane ready in {cp.startup_seconds:.1f}s ({workdir})")
            sandbox.route_apiserver(int(cp.server.rsplit(":", 1)[1]))
            started = time.monotonic()
            cp.start_scheduler(node_binaries.kube_scheduler)
            cp.install_crds(TEST_CRDS)
            node = Node(cp, node_binaries, sandbox, workdir / "node", name=NODE, labels={LABEL_OBSERVE_ONLY: "true"})
            with node:
                report(pytestconfig, f"scheduler, test CRDs, containerd and kubelet (node Ready) in "
                       f"{time.monotonic() - started:.1f}s")  # fmt: skip
                took = [node.import_image(images["pause"]), node.import_image(images["archive"])]
                report(pytestconfig, f"images imported into containerd in {sum(took):.1f}s")
                values = chart_values(node)
                sets = [a for v in values for a in ("--set", v)]
                started = time.monotonic()
                cp.helm("install", "pcidevices", str(CHART), "-n", NS, "--create-namespace", *sets, timeout=600)
                inst = Installed(cp, node, sandbox, values, 0.0)
                inst.install_ready_s = time.monotonic() - started + inst.wait_all_ready()
                report(pytestconfig, f"helm install -> every pod Running and Ready in {inst.install_ready_s:.1f}s")
                yield inst
    # The node's images and containers take ~1 GB: kept (with every log) only when a test failed.
    if request.session.testsfailed:
        report(pytestconfig, f"kept for inspection: {workdir} (logs in cp/, pod logs in node/pod-logs/)")
    else:
        shutil.rmtree(workdir, ignore_errors=True)


# -- the node in the kernel tier's qemu guest (tests/support/guestcluster.py): one boot per session -----------------


@pytest.fixture(scope="session")
def guest_cluster(pytestconfig: pytest.Config, request: pytest.FixtureRequest) -> Iterator[guestcluster.GuestCluster]:
    """A control plane here and its one node in the qemu guest (kubelet + containerd on a real kernel with an IOMMU
    and e1000e NICs), Ready; nothing of the product installed. Booted once for every module that asks."""
    try:
        prepared = guestcluster.Prepared.locate()
    except BinariesMissing as e:
        pytest.skip(f"the guest node needs scripts/prepare-node and scripts/prepare-kernel: {e}")
    # The kubelet posts its node's status every second, not every 10 s: what is measured here is how soon the node
    # shows a device after our agent acts, not the kubelet's default period (docs/node-tier.md).
    with guestcluster.running(prepared, kubelet_extra={"nodeStatusUpdateFrequency": "1s"}) as cluster:
        guestcluster.start_node(cluster)
        t = cluster.timings
        report(pytestconfig, f"guest node: control plane {t['control_plane_s']:.1f}s; from qemu's start: command "
               f"server {t['boot_to_commands_s']:.1f}s, kubelet serving {t['boot_to_kubelet_s']:.1f}s (images "
               f"unpacked {t.get('images_s', 0):.1f}s, containerd {t['containerd_s']:.1f}s, "
               f"kubelet {t['kubelet_s']:.1f}s), node Ready {t['boot_to_ready_s']:.1f}s "
               f"({cluster.workdir})")  # fmt: skip
        yield cluster
        if request.session.testsfailed:  # kept with the console, the guest's logs are gone with it: see the tests
            cluster.keep = True
            report(pytestconfig, f"guest node's work folder kept: {cluster.workdir} (console, webhook log, share)")


@pytest.fixture(scope="session")
def guest_installed(guest_cluster: guestcluster.GuestCluster, pytestconfig: pytest.Config) -> guestcluster.GuestCluster:
    """`guest_cluster` with the chart installed (the agent DaemonSet pod running in the guest and through its first
    reconcile pass, the webhook here)."""
    guestcluster.install_chart(guest_cluster)
    _, serving = guest_cluster.wait_agent_serving()
    guest_cluster.timings["agent_serving_s"] = serving
    report(pytestconfig, f"guest node: helm install + webhook admitting "
           f"{guest_cluster.timings['chart_and_webhook_s']:.1f}s, agent pod through its first pass in the guest "
           f"{serving:.1f}s later")
    return guest_cluster
