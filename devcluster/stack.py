"""Stack: the chart installed into a control plane (URL mode) and our processes run out of cluster with the chart's
identities (ServiceAccount tokens; the agents' tokens bound to a Pod on their node) and the chart's settings (the env
of its rendered Deployment and DaemonSet, with only addresses and paths changed for a single machine)."""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.support.controlplane import ControlPlane, KubeUser, write_kubeconfig

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "charts" / "harvester-pcidevices-controller"
RELEASE = "pcidevices"
NAMESPACE = "harvester-system"
PROBE_DENIED = 'admission webhook "validate.devices.harvesterhci.io" denied the request'


class StackError(RuntimeError):
    """A part of the local stack did not start or answer in time."""


def _die_with_parent() -> None:
    """preexec_fn: Linux sends the child SIGTERM when the local run dies, even by SIGKILL (no orphans)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def running(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def terminate(self) -> None:
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM to the process group (gunicorn's workers, the certificate keeper), then SIGKILL."""
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
            except ProcessLookupError:
                pass
        try:  # children that outlived their parent in the same group
            os.killpg(self.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@dataclass
class Stack:
    cp: ControlPlane
    workdir: Path
    chart: Path = CHART
    namespace: str = NAMESPACE
    release: str = RELEASE
    webhook_port: int = field(default_factory=free_port)
    processes: list[Process] = field(default_factory=list)

    # ---- the chart

    def helm_values(self, *sets: str) -> list[str]:
        base = [f"webhook.url=https://127.0.0.1:{self.webhook_port}", *sets]
        return [a for s in base for a in ("--set", s)]

    def install(self, *sets: str) -> None:
        """`helm install` (never --wait: no pods run here) with the webhook configurations pointing at our port."""
        self.cp.helm(
            "install", self.release, str(self.chart), "--namespace", self.namespace, "--create-namespace",
            *self.helm_values(*sets),
        )  # fmt: skip

    def manifest(self) -> list[dict[str, Any]]:
        out = self.cp.helm("get", "manifest", self.release, "--namespace", self.namespace).stdout
        return [d for d in yaml.safe_load_all(out) if d]

    def chart_env(self, kind: str, name: str, refs: Mapping[str, str]) -> dict[str, str]:
        """The env of the chart's `kind/name` first container, fieldRefs resolved from `refs` (fieldPath -> value)."""
        for doc in self.manifest():
            if doc["kind"] == kind and doc["metadata"]["name"] == name:
                env = {}
                for item in doc["spec"]["template"]["spec"]["containers"][0].get("env", []):
                    if "value" in item:
                        env[item["name"]] = str(item["value"])
                    else:
                        env[item["name"]] = refs[item["valueFrom"]["fieldRef"]["fieldPath"]]
                return env
        raise StackError(f"the chart has no {kind} {name}")

    def service_account_kubeconfig(self, service_account: str) -> Path:
        """A kubeconfig with a token of the chart's ServiceAccount (what its pods would mount)."""
        token = self.cp.kubectl(
            "create", "token", service_account, "-n", self.namespace, "--duration=24h"
        ).stdout.strip()
        path = self.workdir / "identities" / f"{service_account}.kubeconfig"
        path.parent.mkdir(parents=True, exist_ok=True)
        user = f"system:serviceaccount:{self.namespace}:{service_account}"
        write_kubeconfig(path, server=self.cp.server, ca_pem=self.cp.ca_pem, user=user, credentials={"token": token})
        return path

    # ---- processes

    def _spawn(self, name: str, argv: Sequence[str], env: Mapping[str, str]) -> Process:
        logs = self.workdir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        path = logs / f"{name}.log"
        base = {k: v for k, v in os.environ.items() if not k.startswith(("PCIDEVICES_", "KUBECONFIG"))}
        with path.open("ab") as out:
            popen = subprocess.Popen(
                list(argv), cwd=REPO, env={**base, **env}, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_die_with_parent,
            )  # fmt: skip
        proc = Process(name, popen, path)
        self.processes.append(proc)
        return proc

    def start_webhook(self, *, workers: int = 1, cert_dir: Path | None = None) -> Process:
        """The webhook with the chart's env and the token of its ServiceAccount. In selfSigned mode it generates its
        certificates and patches the chart's configurations; `cert_dir` stands for the Secret volume the chart mounts
        in the certManager and secret modes."""
        env = self.chart_env("Deployment", "pcidevices-webhook", {"metadata.namespace": self.namespace})
        home = self.workdir / "webhook"
        for sub in ("certs", "metrics", "tmp"):
            (home / sub).mkdir(parents=True, exist_ok=True)
        env.update(
            PCIDEVICES_WEBHOOK_BIND=f"127.0.0.1:{self.webhook_port}",
            PCIDEVICES_WEBHOOK_WORKERS=str(workers),
            PCIDEVICES_WEBHOOK_KUBECONFIG=str(self.service_account_kubeconfig("pcidevices-webhook")),
            PCIDEVICES_WEBHOOK_EXTRA_IP_ADDRESSES="127.0.0.1",
            PCIDEVICES_WEBHOOK_CERT_DIR=str(cert_dir or home / "certs"),
            PCIDEVICES_WEBHOOK_LOG_JSON="false",
            PROMETHEUS_MULTIPROC_DIR=str(home / "metrics"),
            TMPDIR=str(home / "tmp"),
        )
        return self._spawn("webhook", [sys.executable, "-m", "webhook", "serve"], env)

    def start_controller(self) -> Process | None:
        """The cluster controller with the chart's env and identity, when this checkout has one (else None)."""
        exe = Path(sys.executable).parent / "pcidevices-controller"
        if not exe.exists():
            return None
        refs = {"metadata.namespace": self.namespace, "metadata.name": "pcidevices-controller-local"}
        env = self.chart_env("Deployment", "pcidevices-controller", refs)
        env["PCIDEVICES_CONTROLLER_KUBECONFIG"] = str(self.service_account_kubeconfig("pcidevices-controller"))
        env["PCIDEVICES_CONTROLLER_LOG_JSON"] = "false"
        return self._spawn("controller", [str(exe)], env)

    def agent_identity(self, node: str) -> KubeUser:
        """A token of the chart's agent ServiceAccount bound to a Pod on `node` (creates the Node if needed)."""
        return self.cp.mint_node_token(node, namespace=self.namespace, service_account="pcidevices-agent")

    def start_node(self, node: str, *, simulated: bool) -> Process:
        refs = {"metadata.namespace": self.namespace, "spec.nodeName": node, "status.hostIP": "127.0.0.1"}
        env = self.chart_env("DaemonSet", "pcidevices-agent", refs)
        identity = self.agent_identity(node)
        env.update(
            KUBECONFIG=str(identity.kubeconfig),
            HEALTH_PORT=str(free_port()),
            KUBELET_DIR=str(self.workdir / "kubelet" / node),
        )
        argv = [sys.executable, "-m", "devcluster.nodes"]
        if simulated:
            tree = self.workdir / "nodes" / node
            if tree.exists():
                shutil.rmtree(tree)
            tree.mkdir(parents=True)
            env.update(HOST_ROOT=str(tree), HOST_PROC="")
            argv += ["sim", "--workdir", str(tree)]
        else:
            env.update(HOST_ROOT="/", HOST_PROC="")
            argv += ["local"]
        return self._spawn(f"agent-{node}", argv, env)

    # ---- waiting

    def wait_admitting(self, webhook: Process, timeout: float = 120.0) -> None:
        """Until the API server reaches the webhook through the chart's configuration (a probe is denied by it)."""
        probe = {
            "apiVersion": "devices.harvesterhci.io/v1beta1",
            "kind": "PCIDeviceClaim",
            "metadata": {"name": "probe-node-000001000"},
            "spec": {"address": "0000:00:01.0", "nodeName": "probe-node", "userName": "probe"},
        }
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if not webhook.running():
                raise StackError(f"the webhook exited:\n{webhook.log_tail()}")
            r = self.cp.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(probe), check=False)
            if PROBE_DENIED in r.stderr:
                return
            last = r.stderr.strip()
            time.sleep(0.5)
        raise StackError(f"the API server never got an answer from the webhook ({last}):\n{webhook.log_tail()}")

    def wait_devices(self, node: str, agent: Process, timeout: float = 120.0) -> list[str]:
        """Names of `node`'s PCIDevices once its agent has written at least one."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not agent.running():
                raise StackError(f"the agent of {node} exited:\n{agent.log_tail()}")
            out = self.cp.kubectl("get", "pcidevices", "-l", f"nodename={node}", "-o", "name", check=False).stdout
            names = [line.split("/", 1)[1] for line in out.split()]
            if names:
                return names
            time.sleep(0.5)
        raise StackError(f"no PCIDevice of {node} appeared:\n{agent.log_tail()}")

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM to every process group at once, then wait (SIGKILL after `timeout`). Safe to call more than once."""
        for proc in self.processes:
            proc.terminate()
        deadline = time.monotonic() + timeout
        while self.processes:
            self.processes.pop().stop(max(0.1, deadline - time.monotonic()))
