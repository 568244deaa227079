"""A real Kubernetes node for tests: containerd 2.x + runc + CNI bridge + kubelet, registered with a ControlPlane.

The node tier (DESIGN §5) runs the product as users install it: the image built from Containerfile is imported into
containerd and the unmodified chart is installed with helm, so its pods really start. Everything runs in a sandbox
this harness creates and removes:

* a network namespace of its own: loopback plus a bridge `cni0` (the node's address, pods' gateway) on which the
  CNI bridge plugin attaches pods; a Service range whose first address (the `kubernetes` Service) is DNATed to the
  API server, so pods reach it without kube-proxy; the API server reaches webhooks through their Service's endpoints
  (`--enable-aggregator-routing`). No route leads out: nothing can talk to another host. The test process joins this
  namespace for its sockets (`Sandbox.enter()`), so ControlPlane, kubectl and helm work unchanged on 127.0.0.1;
* a mount namespace of its own for containerd and the kubelet (a private /run; every mount they make for pods dies
  with the namespace);
* cgroup v1 trees `/<name>` in every hierarchy: the kubelet's cgroupRoot, and (pids) the runtime's own tree, so that
  stopping kills every process the node started, shims and containers included, and removes the trees.

This machine is cgroup v1 (hybrid: every controller is bound to a v1 hierarchy, the cgroup2 mount has none), and a
1.36 kubelet refuses cgroup v1 unless `failCgroupV1: false`, which it still honours: that is what runs here.

Typical use (the `node` fixture in tests/node/conftest.py)::

    with Sandbox(workdir) as sandbox, sandbox.entered():
        cp = ControlPlane(binaries, workdir / "cp", network=sandbox.network, controller_manager=True, controllers=...)
        with cp, Node(cp, node_binaries, sandbox, workdir / "node", name="node1") as node:
            node.import_image(archive)
            ...

Parametrised by paths and names only, so that it can run where the kernel tier's guest boots a kubelet too.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import shutil
import signal
import ssl
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.controlplane import (
    BinariesMissing,
    ControlPlane,
    ControlPlaneError,
    NodeNetwork,
    free_port,
    write_kubeconfig,
)

log = logging.getLogger(__name__)

REPORT_KEY = pytest.StashKey[list[str]]()
"""Where the node tier collects the figures it prints at the end (in this module: it is imported only once)."""

CLONE_NEWNET = 0x40000000
CGROUP_V1 = Path("/sys/fs/cgroup")


class NodeError(ControlPlaneError):
    """The sandbox, containerd or the kubelet failed to start, or a command on the node failed."""


@dataclass(frozen=True)
class NodeBinaries:
    """The node's programs: kube-scheduler, kubelet, containerd, its runc shim and ctr (built by
    `scripts/cluster-binaries --node`), and runc and the CNI plugins from Debian."""

    kube_scheduler: Path
    kubelet: Path
    containerd: Path
    shim: Path
    ctr: Path
    runc: Path = Path("/usr/sbin/runc")
    cni_bin: Path = Path("/usr/lib/cni")

    @classmethod
    def locate(cls, repo_root: Path) -> NodeBinaries:
        script = repo_root / "scripts" / "cluster-binaries"
        proc = subprocess.run([str(script), "--paths", "--node"], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise BinariesMissing(f"node binaries are not built ({proc.stderr.strip()}); run scripts/prepare-node")
        paths = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
        found = cls(
            kube_scheduler=Path(paths["kube-scheduler"]),
            kubelet=Path(paths["kubelet"]),
            containerd=Path(paths["containerd"]),
            shim=Path(paths["containerd-shim-runc-v2"]),
            ctr=Path(paths["ctr"]),
        )
        for p in (found.runc, found.cni_bin / "bridge", found.cni_bin / "host-local", found.cni_bin / "loopback"):
            if not p.exists():
                raise BinariesMissing(f"{p} is missing: run scripts/prepare-node (runc, containernetworking-plugins)")
        return found


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _setns(fd: int, nstype: int) -> None:
    if _libc().setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def _die_with_parent() -> None:
    with contextlib.suppress(Exception):
        _libc().prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Sandbox:
    """The node's own network and mount namespaces, held open by a sleeping process (see the module docstring).

    `network` gives the addresses; `run()` runs a command inside both namespaces; `entered()` moves the calling
    thread's sockets into the network namespace (and back), which is how the test process talks to the API server.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        bridge: str = "cni0",
        node_cidr: str = "10.88.0.0/24",
        node_ip: str = "10.88.0.1",
        service_cidr: str = "10.96.0.0/24",
    ) -> None:
        self.workdir = workdir
        self.bridge = bridge
        self.node_cidr = node_cidr
        self.network = NodeNetwork(node_ip=node_ip, service_cidr=service_cidr)
        self._holder: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Sandbox:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        if self._holder is None:
            raise NodeError("sandbox not started")
        return self._holder.pid

    def ns(self, kind: str) -> str:
        return f"/proc/{self.pid}/ns/{kind}"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._holder = subprocess.Popen(
            ["unshare", "--net", "--mount", "--propagation", "private", "--", "sleep", "infinity"],
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - the holder must die with the test process
        )
        own = os.stat("/proc/self/ns/net").st_ino
        deadline = time.monotonic() + 10
        while os.stat(self.ns("net")).st_ino == own or os.stat(self.ns("mnt")).st_ino == os.stat(
            "/proc/self/ns/mnt"
        ).st_ino:
            if time.monotonic() > deadline or self._holder.poll() is not None:
                raise NodeError("unshare did not make the sandbox's namespaces")
            time.sleep(0.02)
        net = self.network
        self.run("ip", "link", "set", "lo", "up")
        self.run("ip", "link", "add", self.bridge, "type", "bridge")
        prefix = self.node_cidr.split("/")[1]
        self.run("ip", "addr", "add", f"{net.node_ip}/{prefix}", "dev", self.bridge)
        self.run("ip", "link", "set", self.bridge, "up")
        self.run("ip", "route", "add", net.service_cidr, "dev", self.bridge)  # so Service addresses can be DNATed
        self.run("mount", "-t", "tmpfs", "-o", "mode=755", "tmpfs", "/run")  # private runtime state

    def route_apiserver(self, port: int) -> None:
        """Send the `kubernetes` Service (first Service address, port 443) to the API server on the node's address,
        from pods (PREROUTING) and from host-network pods and the node itself (OUTPUT)."""
        target = f"{self.network.node_ip}:{port}"
        for chain in ("PREROUTING", "OUTPUT"):
            self.run(
                "iptables", "-t", "nat", "-A", chain, "-d", self.network.apiserver_service_ip, "-p", "tcp",
                "--dport", "443", "-j", "DNAT", "--to-destination", target,
            )  # fmt: skip

    def argv(self, *args: str) -> list[str]:
        """A command line that runs `args` in the sandbox's network and mount namespaces."""
        return ["nsenter", f"--net={self.ns('net')}", f"--mount={self.ns('mnt')}", "--", *args]

    def run(self, *args: str, timeout: float = 60) -> str:
        proc = subprocess.run(self.argv(*args), capture_output=True, text=True, timeout=timeout, check=False)
        if proc.returncode != 0:
            raise NodeError(f"{' '.join(args)} failed in the sandbox: {proc.stderr.strip()}")
        return proc.stdout

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """Move the calling thread (and threads and processes it starts) into the sandbox's network namespace."""
        with open("/proc/thread-self/ns/net") as own, open(self.ns("net")) as theirs:
            _setns(theirs.fileno(), CLONE_NEWNET)
            try:
                yield
            finally:
                _setns(own.fileno(), CLONE_NEWNET)

    def stop(self) -> None:
        if self._holder is not None and self._holder.poll() is None:
            self._holder.kill()
            self._holder.wait(10)
        self._holder = None


class CgroupTree:
    """`/<name>` in every cgroup v1 hierarchy: created for the node, emptied (SIGKILL) and removed at the end."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.hierarchies = sorted(
            p for p in CGROUP_V1.iterdir() if p.is_dir() and not p.is_symlink() and (p / "cgroup.procs").exists()
        )
        self.hierarchies = [p for p in self.hierarchies if p.name != "unified"]

    def create(self) -> None:
        for h in self.hierarchies:
            d = h / self.name
            d.mkdir(exist_ok=True)
            if (h / "cpuset.cpus").exists():  # a new cpuset is empty until given its parent's cpus and mems
                for attr in ("cpuset.cpus", "cpuset.mems"):
                    (d / attr).write_text((h / attr).read_text())
        (CGROUP_V1 / "pids" / self.name / "runtime").mkdir(exist_ok=True)

    def join_runtime(self) -> None:
        """preexec_fn: this process (containerd, and so its shims) into the tracking tree."""
        _die_with_parent()
        with open(CGROUP_V1 / "pids" / self.name / "runtime" / "cgroup.procs", "w") as f:
            f.write(str(os.getpid()))

    def pids(self) -> set[int]:
        out: set[int] = set()
        for h in self.hierarchies:
            root = h / self.name
            if not root.exists():
                continue
            for procs in root.rglob("cgroup.procs"):
                with contextlib.suppress(OSError, ValueError):
                    out.update(int(x) for x in procs.read_text().split())
        return out

    def destroy(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while (pids := self.pids()) and time.monotonic() < deadline:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)
        for h in self.hierarchies:
            root = h / self.name
            if not root.exists():
                continue
            for d in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
                with contextlib.suppress(OSError):
                    d.rmdir()
            with contextlib.suppress(OSError):
                root.rmdir()


class Node:
    """containerd + kubelet in `sandbox`, registered with `cp` as node `name`; stopped (pods, shims, cgroups, mounts)
    on exit, failure or interrupt."""

    def __init__(
        self,
        cp: ControlPlane,
        binaries: NodeBinaries,
        sandbox: Sandbox,
        workdir: Path,
        *,
        name: str = "node1",
        labels: dict[str, str] | None = None,
        startup_timeout: float = 180,
    ) -> None:
        self.cp = cp
        self.binaries = binaries
        self.sandbox = sandbox
        self.workdir = workdir
        self.name = name
        self.labels = dict(labels or {})
        self.cgroups = CgroupTree(f"pcidevices-node-{os.getpid()}")
        self._timeout = startup_timeout
        self._made_modules_dir = False
        self.kubelet_dir = workdir / "kubelet"
        self.socket = workdir / "containerd.sock"

    def __enter__(self) -> Node:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- start

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.cgroups.create()
        # The chart's agent mounts /lib/modules (type Directory); this machine's kernel has none. An empty folder is
        # what a node without loadable modules shows; it is removed again if it was made here.
        modules = Path("/lib/modules")
        if not modules.exists():
            modules.mkdir()
            self._made_modules_dir = True
        self._start_containerd()
        self._start_kubelet()

    def _containerd_config(self) -> Path:
        cni = self.workdir / "cni"
        cni.mkdir(exist_ok=True)
        conflist = cni_conflist(
            bridge=self.sandbox.bridge,
            subnet=self.sandbox.node_cidr,
            gateway=self.sandbox.network.node_ip,
            routes=(self.sandbox.network.service_cidr,),  # the Service range through the node; no default route
            data_dir=self.workdir / "cni-ipam",
        )
        (cni / "10-pcidevices.conflist").write_text(json.dumps(conflist, indent=2))
        # No lower oom_score_adj than containerd's own: the kubelet asks -998 for pod sandboxes, which needs
        # CAP_SYS_RESOURCE, and this machine's root lacks it (runc then fails with "can't get final child's PID").
        config = containerd_config(
            root=self.workdir / "containerd",
            state=Path("/run/containerd"),
            address=self.socket,
            pause_image=self.pause_image,
            runc=self.binaries.runc,
            cni_bin=self.binaries.cni_bin,
            cni_conf=cni,
            restrict_oom_score_adj=True,
        )
        path = self.workdir / "containerd.toml"
        path.write_text(config)
        return path

    pause_image = "localhost/pcidevices/pause:3.10"
    """The pod sandbox image: upstream's pause.c built here (scripts/prepare-node); no registry is reachable."""

    def _start_containerd(self) -> None:
        config = self._containerd_config()
        env = dict(os.environ)
        env["PATH"] = f"{self.binaries.shim.parent}:{self.binaries.runc.parent}:{env.get('PATH', '/usr/bin:/bin')}"
        log_path = self.cp.workdir / "containerd.log"
        with log_path.open("ab") as out:
            popen = subprocess.Popen(
                self.sandbox.argv(str(self.binaries.containerd), f"--config={config}"),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                preexec_fn=self.cgroups.join_runtime,  # noqa: PLW1509 - single-threaded start
            )
        self._containerd = popen
        deadline = time.monotonic() + self._timeout
        while not self.socket.exists() or self.ctr("version", check=False).returncode != 0:
            if popen.poll() is not None or time.monotonic() > deadline:
                raise NodeError(f"containerd did not start; log tail:\n{_tail(log_path)}")
            time.sleep(0.2)

    def ctr(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(self.binaries.ctr), f"--address={self.socket}", "--namespace=k8s.io", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise NodeError(f"ctr {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc

    def import_image(self, archive: Path) -> float:
        """`ctr images import` an archive (docker-archive or OCI) into the CRI's namespace; return seconds taken."""
        started = time.monotonic()
        self.ctr("images", "import", "--no-unpack=false", str(archive))
        return time.monotonic() - started

    def _start_kubelet(self) -> None:
        cp, net = self.cp, self.sandbox.network
        pki = self.workdir / "pki"
        pki.mkdir(exist_ok=True)
        serving = cp.ca.issue(self.name, dns_names=(self.name,), ip_addresses=(net.node_ip,), server=True)
        (pki / "kubelet.crt").write_bytes(serving.cert_pem)
        (pki / "kubelet.key").write_bytes(serving.key_pem)
        (pki / "ca.crt").write_bytes(cp.ca_pem)
        client = cp.ca.issue(f"system:node:{self.name}", organizations=("system:nodes",), client=True)
        kubeconfig = write_kubeconfig(
            self.workdir / "kubelet.kubeconfig",
            server=cp.server,
            ca_pem=cp.ca_pem,
            user=f"system:node:{self.name}",
            credentials={
                "client-certificate-data": _b64(client.cert_pem),
                "client-key-data": _b64(client.key_pem),
            },
        )
        resolv = self.workdir / "resolv.conf"
        resolv.write_text("# no name servers: pods of the node tier talk only to addresses inside the sandbox\n")
        self.healthz_port = free_port()
        config = kubelet_config(
            runtime_socket=self.socket,
            address=net.node_ip,
            port=free_port(),
            healthz_port=self.healthz_port,
            pki=pki,
            resolv_conf=resolv,
            pod_logs=self.workdir / "pod-logs",
            volume_plugins=self.workdir / "volume-plugins",
            cgroup_root=f"/{self.cgroups.name}",
            cgroup_v1=True,  # this machine is cgroup v1 (module docstring)
        )
        config_path = self.workdir / "kubelet.yaml"
        config_path.write_text(yaml.safe_dump(config))
        labels = ",".join(f"{k}={v}" for k, v in self.labels.items())
        argv = self.sandbox.argv(
            str(self.binaries.kubelet),
            f"--config={config_path}",
            f"--kubeconfig={kubeconfig}",
            f"--root-dir={self.kubelet_dir}",
            f"--cert-dir={pki}",
            f"--node-ip={net.node_ip}",
            f"--hostname-override={self.name}",
            *([f"--node-labels={labels}"] if labels else []),
            "--v=2",
        )
        self._kubelet = self.cp.spawn("kubelet", argv)
        self.cp.wait_ready("kubelet", f"http://127.0.0.1:{self.healthz_port}/healthz")
        deadline = time.monotonic() + self._timeout
        while True:
            got = cp.kubectl("get", "node", self.name, "-o", "json", check=False)
            if got.returncode == 0:
                conditions = json.loads(got.stdout).get("status", {}).get("conditions", [])
                if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
                    return
            if time.monotonic() > deadline:
                raise NodeError(f"node {self.name} not Ready: {got.stdout[-2000:]}{got.stderr}")
            time.sleep(1)

    # ---- stop

    def stop(self) -> None:
        """Stop the kubelet, then containerd, then kill whatever is left in the node's cgroups (shims and
        containers) and remove them; the sandbox's mount namespace takes the pods' mounts along when it goes."""
        kubelet = getattr(self, "_kubelet", None)
        if kubelet is not None and kubelet.poll() is None:
            kubelet.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                kubelet.wait(15)
        containerd = getattr(self, "_containerd", None)
        if containerd is not None and containerd.poll() is None:
            containerd.terminate()
            try:
                containerd.wait(15)
            except subprocess.TimeoutExpired:
                containerd.kill()
                containerd.wait(5)
        self.cgroups.destroy()
        if self._made_modules_dir:
            with contextlib.suppress(OSError):
                Path("/lib/modules").rmdir()
            self._made_modules_dir = False

    # ---- helpers for tests

    def kubelet_ssl(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cadata=self.cp.ca_pem.decode())
        return ctx


# ---- configuration shared by the node here and the node in the kernel tier's guest (tests/support/guestnode.py)


def cni_conflist(*, bridge: str, subnet: str, gateway: str, routes: Sequence[str], data_dir: Path) -> dict[str, Any]:
    """The CNI bridge network pods join: `bridge` is their gateway at `gateway`, addresses from `subnet`, and routes
    only to `routes` through it (no default route: nothing leads out)."""
    return {
        "cniVersion": "1.0.0",
        "name": "pcidevices-node",
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": subnet, "gateway": gateway}]],
                    "routes": [{"dst": r} for r in routes],
                    "dataDir": str(data_dir),
                },
            }
        ],
    }


def containerd_config(
    *,
    root: Path,
    state: Path,
    address: Path,
    pause_image: str,
    runc: Path,
    cni_bin: Path,
    cni_conf: Path,
    restrict_oom_score_adj: bool,
    no_pivot_root: bool = False,
) -> str:
    """containerd 2.x's configuration (version 3) for a kubelet node: the CRI with runc (cgroupfs), the CNI bridge,
    the pause image pinned (no registry is reachable: images are imported), no NRI and no tracing. `no_pivot_root`:
    runc enters a container's root with chroot in its mount namespace instead of pivot_root, which a root file
    system that is the kernel's initramfs (the kernel tier's guest) does not allow."""
    return f"""version = 3
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.nri.v1.nri", "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = "{address}"

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "{pause_image}"

[plugins.'io.containerd.cri.v1.runtime']
  netns_mounts_under_state_dir = true
  restrict_oom_score_adj = {str(restrict_oom_score_adj).lower()}
  [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
      BinaryName = "{runc}"
      SystemdCgroup = false
      NoPivotRoot = {str(no_pivot_root).lower()}
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["{cni_bin}"]
    conf_dir = "{cni_conf}"

[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = "127.0.0.1"
"""


def kubelet_config(
    *,
    runtime_socket: Path,
    address: str,
    port: int,
    healthz_port: int,
    pki: Path,
    resolv_conf: Path,
    pod_logs: Path,
    volume_plugins: Path,
    cgroup_root: str | None,
    cgroup_v1: bool,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The KubeletConfiguration of a test node: cgroupfs driver, x509 client authentication against the control
    plane's CA, no image garbage collection (no registry to pull images back from), eviction only at the very
    end; on cgroup v1 `failCgroupV1: false`. `extra` overrides or adds fields."""
    config: dict[str, Any] = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "cgroupDriver": "cgroupfs",
        "containerRuntimeEndpoint": f"unix://{runtime_socket}",
        "address": address,
        "port": port,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": healthz_port,
        "tlsCertFile": str(pki / "kubelet.crt"),
        "tlsPrivateKeyFile": str(pki / "kubelet.key"),
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": False},
            "x509": {"clientCAFile": str(pki / "ca.crt")},
        },
        "authorization": {"mode": "AlwaysAllow"},
        "failSwapOn": False,
        "resolvConf": str(resolv_conf),
        "podLogsDir": str(pod_logs),
        "volumePluginDir": str(volume_plugins),
        "imageGCHighThresholdPercent": 100,  # never collect the imported images (no registry to pull them back)
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {"memory.available": "1Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
        "registerNode": True,
        "maxPods": 30,
        "serializeImagePulls": False,
    }
    if cgroup_v1:
        config["failCgroupV1"] = False
    if cgroup_root is not None:
        config["cgroupRoot"] = cgroup_root
    config.update(extra or {})
    return config


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def which(*names: str) -> Sequence[str]:
    """The programs among `names` that are missing on this machine."""
    return [n for n in names if shutil.which(n) is None]
