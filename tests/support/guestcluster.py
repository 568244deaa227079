"""A cluster whose one node runs in the kernel tier's qemu guest: the control plane here, the kubelet there, and (on
request) the unmodified chart installed with helm, its agent DaemonSet pod running in the guest against real vfio.

Used by the node tier's `guest_cluster` and `guest_installed` fixtures (tests/node/conftest.py): one guest boot per
test session, shared by every module that asks for it (the passthrough handoff, DRA). Layout:

* a Sandbox (tests/support/node.py): the network namespace where the control plane listens (the API server with a
  node network: ServiceAccount admission and Node authorization; its Service range is qemu's virtual network, see
  tests/support/guestnode.py), kube-controller-manager, kube-scheduler, the webhook and qemu itself;
* the GuestNode: containerd + kubelet in the guest, the product image and the pause image in its containerd;
* with the chart: `helm install` of charts/harvester-pcidevices-controller with the values of `chart_values`. The
  webhook is the chart's webhook process, configured from the chart's own Deployment (its environment rendered by
  helm), but run here, as its ServiceAccount, behind `webhook.url`: a pod in the guest would be unreachable from
  the API server (its address lives inside the guest), and the guest's two emulated CPUs are better spent on the
  node. The chart's webhook Deployment therefore gets a node selector nothing matches (the chart's schema wants at
  least one replica); the cluster controller is not enabled. The agent is the chart's DaemonSet pod, in the guest,
  not in observe mode: there binding is real, and nothing of this machine is a PCI device of the guest.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.support import guestnode, qemu
from tests.support.controlplane import Binaries, BinariesMissing, ControlPlane, free_port
from tests.support.node import NodeBinaries, Sandbox, _die_with_parent

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "harvester-pcidevices-controller"
TEST_CRDS = REPO / "tests" / "fixtures" / "crds"
NS = "harvester-system"
NODE = "guest1"
CONTROLLERS = (
    "deployment-controller", "replicaset-controller", "daemonset-controller", "garbage-collector-controller",
    "namespace-controller", "serviceaccount-controller", "root-ca-certificate-publisher-controller",
    "pod-garbage-collector-controller", "node-lifecycle-controller",
    # DRA (issue 18): makes a pod's claims from templates, and releases a claim (reservedFor, allocation, finalizer)
    # once its pods are gone
    "resourceclaim-controller",
)  # fmt: skip
NOWHERE = "pcidevices.test/nowhere"
"""The node label of the webhook Deployment's node selector: no node has it (module docstring)."""


@dataclass
class Prepared:
    """What the guest cluster needs from the prepare steps (scripts/prepare-node, scripts/prepare-kernel)."""

    binaries: Binaries
    node_binaries: NodeBinaries
    image: qemu.GuestImage
    archive: Path
    pause: Path

    @classmethod
    def locate(cls) -> Prepared:
        """Everything built, or BinariesMissing naming the step to run (the tier skips locally, fails in CI)."""
        missing = [p for p in ("unshare", "nsenter", "ip", "tar", *qemu.missing_tools()) if shutil.which(p) is None]
        if missing:
            raise BinariesMissing(f"missing programs: {', '.join(missing)}")
        image = qemu.find_image(qemu.default_cache())
        if image is None:
            raise BinariesMissing(f"no guest image under {qemu.default_cache()}: run scripts/prepare-kernel")
        proc = subprocess.run([str(REPO / "scripts" / "prepare-node"), "--paths"], capture_output=True, text=True)
        paths = {k: Path(v) for k, v in (line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)}
        if proc.returncode != 0 or not {"archive", "pause"} <= set(paths):
            raise BinariesMissing(f"the image or the pause image is not built ({proc.stderr.strip()})")
        return cls(Binaries.locate(REPO), NodeBinaries.locate(REPO), image, paths["archive"], paths["pause"])


@dataclass
class GuestCluster:
    """The running cluster: control plane and sandbox here, the node in the guest; `timings` in seconds."""

    cp: ControlPlane
    sandbox: Sandbox
    node: guestnode.GuestNode
    workdir: Path
    timings: dict[str, float] = field(default_factory=dict)
    webhook: HostWebhook | None = None
    values: list[str] = field(default_factory=list)
    keep: bool = False
    """Keep the work folder after the cluster stops (a caller saw a failure)."""

    def entered(self) -> contextlib.AbstractContextManager[None]:
        """The calling thread in the sandbox's network namespace, where the API server, the webhook and the guest's
        command port listen (tests/support/node.py `Sandbox.entered`)."""
        return self.sandbox.entered()

    def kubectl_json(self, *args: str) -> Any:
        with self.entered():
            return json.loads(self.cp.kubectl(*args, "-o", "json").stdout)

    def apply(self, *objs: dict[str, Any]) -> None:
        with self.entered():
            self.cp.kubectl(
                "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objs)})
            )

    def agent_pod(self) -> dict[str, Any] | None:
        """The chart's agent pod on the guest node (None while there is none, or it is terminating)."""
        pods = self.kubectl_json("get", "pods", "-n", NS, "-l", "app.kubernetes.io/name=pcidevices-agent",
                                 "--field-selector", f"spec.nodeName={self.node.name}")["items"]  # fmt: skip
        live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
        return live[0] if live else None

    def wait_agent_serving(self, timeout: float = 600, other_than: str = "") -> tuple[dict[str, Any], float]:
        """The agent pod (not the one named `other_than`) Running with a successful reconcile pass behind it (its
        metrics say so); seconds waited. Not Ready: the agent is ready only once it traced the root filesystem to a
        device (docs/agent.md), and the guest runs from its initramfs, which is no device (`readyz()` says so)."""
        started = time.monotonic()
        while True:
            pod = self.agent_pod()
            if (
                pod is not None
                and pod["metadata"]["name"] != other_than
                and pod["status"].get("phase") == "Running"
                and all(c.get("started") for c in pod["status"].get("containerStatuses", []))
                and 'pcidevices_agent_reconcile_passes_total{result="ok"}' in self._metrics_or_empty()
            ):
                return pod, time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise AssertionError(f"agent pod not serving within {timeout}s: {json.dumps(pod)[-3000:]}")
            time.sleep(0.5)

    def _metrics_or_empty(self) -> str:
        try:
            return self.agent_metrics()
        except Exception:  # not listening yet
            return ""

    def readyz(self) -> str:
        """The agent's /readyz answer (status and body), read in the guest."""
        with self.entered():
            return self.node.exec("python3", "-c", _READYZ, timeout=60).stdout.strip()

    def agent_metrics(self) -> str:
        """The agent's /metrics, read in the guest (host network, the chart's health port)."""
        with self.entered():
            return self.node.exec("python3", "-c", _FETCH, "http://127.0.0.1:8089/metrics", timeout=60).stdout


_READYZ = """import urllib.request, urllib.error
try:
    r = urllib.request.urlopen("http://127.0.0.1:8089/readyz", timeout=10)
    print(r.status, r.read().decode().strip())
except urllib.error.HTTPError as e:
    print(e.code, e.read().decode().strip())
"""
_FETCH = "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())"


def chart_values(webhook_port: int) -> list[str]:
    return [
        "image.pullPolicy=Never",
        f"webhook.url=https://127.0.0.1:{webhook_port}",
        f"webhook.nodeSelector.{NOWHERE.replace('.', chr(92) + '.')}=nowhere",  # a string: no node has the label
        "controller.enabled=false",
    ]


@dataclass
class HostWebhook:
    """The chart's webhook process, run here (module docstring)."""

    proc: subprocess.Popen[bytes]
    port: int
    workdir: Path

    def log_tail(self, chars: int = 4000) -> str:
        return (self.workdir / "webhook.log").read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


def chart_webhook_env(cp: ControlPlane, values: list[str]) -> dict[str, str]:
    """The webhook container's environment as the chart renders it (field references resolved for NS)."""
    sets = [a for v in values for a in ("--set", v)]
    rendered = cp.helm("template", "pcidevices", str(CHART), "-n", NS, "--show-only", "templates/webhook.yaml",
                       *sets).stdout  # fmt: skip
    deployment = next(d for d in yaml.safe_load_all(rendered) if d and d.get("kind") == "Deployment")
    env: dict[str, str] = {}
    for item in deployment["spec"]["template"]["spec"]["containers"][0].get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
        elif item.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.namespace":
            env[item["name"]] = NS
    return env


def start_webhook(cp: ControlPlane, values: list[str], port: int, workdir: Path) -> HostWebhook:
    """The chart's webhook (its rendered environment) as its ServiceAccount, on 127.0.0.1:`port`; admitting."""
    workdir.mkdir(parents=True, exist_ok=True)
    token = cp.kubectl("create", "token", "pcidevices-webhook", "-n", NS, "--duration=6h").stdout.strip()
    kubeconfig = yaml.safe_load(cp.admin_kubeconfig.read_text())
    kubeconfig["users"][0]["user"] = {"token": token}
    (workdir / "webhook.kubeconfig").write_text(yaml.safe_dump(kubeconfig))
    env = {
        **os.environ,
        **chart_webhook_env(cp, values),
        # where this process differs from the pod: its address, its files, its credentials
        "PCIDEVICES_WEBHOOK_BIND": f"127.0.0.1:{port}",
        "PCIDEVICES_WEBHOOK_EXTRA_IP_ADDRESSES": "127.0.0.1",
        "PCIDEVICES_WEBHOOK_CERT_DIR": str(workdir / "certs"),
        "PCIDEVICES_WEBHOOK_KUBECONFIG": str(workdir / "webhook.kubeconfig"),
        "PROMETHEUS_MULTIPROC_DIR": str(workdir / "metrics"),
        "TMPDIR": str(workdir),
    }
    (workdir / "metrics").mkdir(exist_ok=True)
    with (workdir / "webhook.log").open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "webhook", "serve"], cwd=REPO, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=_die_with_parent)  # noqa: PLW1509  # fmt: skip
    wh = HostWebhook(proc, port, workdir)
    # Admitting: a claim for a device no node has is answered by our validator (a denial), not by the API server.
    probe = {
        "apiVersion": "devices.harvesterhci.io/v1beta1",
        "kind": "PCIDeviceClaim",
        "metadata": {"name": "probe-node-000001000"},
        "spec": {"address": "0000:00:01.0", "nodeName": "probe-node", "userName": "probe"},
    }
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"the webhook exited:\n{wh.log_tail()}")
        got = cp.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(probe), check=False)
        if 'admission webhook "' in got.stderr and "denied the request" in got.stderr:
            return wh
        if time.monotonic() > deadline:
            wh.stop()
            raise AssertionError(f"the API server never got an answer from the webhook: {got.stderr}\n{wh.log_tail()}")
        time.sleep(0.5)


def kubevirt_cr() -> dict[str, Any]:
    """The KubeVirt CR as Harvester has it (HostDevices gate on): the agent lists its claimed devices there."""
    return {
        "apiVersion": "kubevirt.io/v1",
        "kind": "KubeVirt",
        "metadata": {"name": "kubevirt", "namespace": NS},
        "spec": {"configuration": {"developerConfiguration": {"featureGates": ["HostDevices", "LiveMigration"]},
                                   "permittedHostDevices": {"pciHostDevices": []}}},
    }  # fmt: skip


@contextlib.contextmanager
def running(
    prepared: Prepared,
    *,
    workdir: Path | None = None,
    memory_mib: int = 3072,
    kubelet_extra: dict[str, Any] | None = None,
    extra_images: Sequence[Path] = (),
    keep: bool = False,
) -> Iterator[GuestCluster]:
    """Sandbox, control plane, scheduler and the test CRDs, and the guest node (not booted yet: `start_node`);
    stopped and removed on exit (the work folder is kept when `keep` is true or the block raised).

    The caller's thread is back in its own network namespace inside the block: talk to the control plane and the
    guest inside `cluster.entered()` (the functions and methods here do it themselves)."""
    workdir = workdir or Path(tempfile.mkdtemp(prefix="pcgn-", dir="/tmp"))  # short: unix sockets < 108 bytes
    began = time.monotonic()
    failed = True
    try:
        with Sandbox(workdir / "sandbox", service_cidr=guestnode.SERVICE_CIDR) as sandbox:
            with sandbox.entered():
                cp = ControlPlane(prepared.binaries, workdir / "cp", network=sandbox.network,
                                  controller_manager=True, controllers=CONTROLLERS)  # fmt: skip
                cp.start()
            cluster = GuestCluster(cp, sandbox, None, workdir)  # type: ignore[arg-type]  # the node comes next
            try:
                with sandbox.entered():
                    cp.start_scheduler(prepared.node_binaries.kube_scheduler)
                    cp.install_crds(TEST_CRDS)
                    cluster.timings["control_plane_s"] = time.monotonic() - began
                    cluster.node = guestnode.GuestNode(
                        cp, prepared.image, prepared.node_binaries, workdir / "guest", repo=REPO, name=NODE,
                        images=[prepared.pause, prepared.archive, *extra_images], memory_mib=memory_mib,
                        kubelet_extra=kubelet_extra,
                    )  # fmt: skip
                yield cluster
            finally:
                with sandbox.entered():
                    if cluster.node is not None:
                        cluster.node.stop()
                    if cluster.webhook is not None:
                        cluster.webhook.stop()
                    cp.stop()
        failed = False
        keep = keep or cluster.keep
    finally:
        if not (keep or failed):
            shutil.rmtree(workdir, ignore_errors=True)


def start_node(cluster: GuestCluster) -> None:
    """Boot the guest and wait until its node is Ready (separate from `running` so a chart can go in first)."""
    with cluster.entered():
        cluster.node.start()
    cluster.timings.update(cluster.node.timings)


def install_chart(cluster: GuestCluster) -> None:
    """`helm install` of the chart (values: `chart_values`), the webhook started here and admitting, a KubeVirt
    CR. Before the guest boots: the agent pod is created the moment its node registers."""
    with cluster.entered():
        _install_chart(cluster)


def _install_chart(cluster: GuestCluster) -> None:
    cp = cluster.cp
    started = time.monotonic()
    port = free_port()
    cluster.values = chart_values(port)
    sets = [a for v in cluster.values for a in ("--set", v)]
    cp.helm("install", "pcidevices", str(CHART), "-n", NS, "--create-namespace", *sets, timeout=600)
    cluster.webhook = start_webhook(cp, cluster.values, port, cluster.workdir / "webhook")
    cluster.apply(kubevirt_cr())
    cluster.timings["chart_and_webhook_s"] = time.monotonic() - started
