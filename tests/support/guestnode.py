"""A real Kubernetes node inside the kernel tier's qemu guest: kubelet + containerd + runc + CNI on a real kernel with
an emulated Intel IOMMU and real PCI devices, registered with a ControlPlane on this machine.

The guest is the kernel tier's (scripts/prepare-kernel, tests/support/qemu.py: q35 + intel-iommu under TCG, two
e1000e NICs on their own root ports, two e1000 behind a bridge, NVMe, xhci). Its only network is qemu's user-mode
network (`-netdev user,restrict=on`), which reaches nothing but two forwards:

* `guestfwd`: the guest's connections to the `kubernetes` Service address (SERVICE_IP:443, inside qemu's virtual
  network 10.0.2.0/24, which is therefore also the control plane's Service range) are handed by qemu to
  tests/support/relay.py, one process per connection, which connects to the API server on this machine's loopback.
  The kubelet uses that address, and so does every pod's in-cluster configuration (KUBERNETES_SERVICE_HOST): no
  kube-proxy, no other route;
* `hostfwd`: 127.0.0.1:<command port> here goes to the guest's command server (tests/node/guest/node.py), through
  which the host runs commands, starts processes and restarts the kubelet in the guest.

qemu, the API server and the command port all live in the network namespace of the caller: start the GuestNode
from inside `Sandbox.entered()` (tests/support/node.py), where the control plane with a node network listens.

A work folder is shared read-write at /node in the guest (virtio-9p, tag `node`): the binaries (hard links to the
cached kubelet and containerd, Debian's runc and CNI plugins), the image archives, the configurations and
certificates written here, and whatever a test adds later (`put()`). The guest's own state (containerd's content
and snapshots, /var/lib/kubelet, pod logs) lives on a tmpfs in the guest's memory.

Typical use (the `guest_cluster` fixture in tests/node/conftest.py)::

    with Sandbox(workdir / "sandbox", service_cidr=SERVICE_CIDR) as sandbox, sandbox.entered():
        with ControlPlane(binaries, workdir / "cp", network=sandbox.network, controller_manager=True, ...) as cp:
            cp.start_scheduler(node_binaries.kube_scheduler)
            with GuestNode(cp, image, node_binaries, workdir / "guest", repo=REPO, images=[pause, product]) as g:
                g.exec("cat", "/proc/cmdline")
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.support import qemu
from tests.support.controlplane import ControlPlane, ControlPlaneError, free_port, write_kubeconfig
from tests.support.node import (
    NodeBinaries,
    NodeError,
    _die_with_parent,
    cni_conflist,
    containerd_config,
    kubelet_config,
)

SLIRP_NET = "10.0.2.0/24"
SERVICE_CIDR = SLIRP_NET
"""The control plane's Service range: qemu's virtual network, so that the `kubernetes` Service address is one qemu
can forward (a guestfwd address must lie inside it)."""
SERVICE_IP = "10.0.2.1"
GUEST_IP = "10.0.2.15"
GATEWAY = "10.0.2.2"
MAC = "52:54:00:12:34:56"
COMMAND_PORT = 7000
GUEST_SCRIPT = "tests/node/guest/node.py"
SHARE = "/node"
"""Where the work folder appears in the guest."""
POD_CIDR = "10.88.0.0/24"
POD_GATEWAY = "10.88.0.1"
PAUSE_IMAGE = "localhost/pcidevices/pause:3.10"


class GuestError(NodeError):
    """The guest did not boot, its node did not come up, or a command in it failed."""


@dataclass(frozen=True)
class Exec:
    """A command's outcome in the guest."""

    rc: int | None
    stdout: str
    stderr: str
    seconds: float


def images_key(archives: Sequence[Path], binaries: NodeBinaries) -> str:
    """What a prepared containerd root depends on: the archives (their names carry their inputs' hash; size and
    modification time guard against a rebuild under the same name) and the containerd that unpacked them."""
    h = hashlib.sha256(str(binaries.containerd).encode())
    for a in archives:
        st = a.stat()
        h.update(f"{a.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def prepare_images(archives: Sequence[Path], binaries: NodeBinaries, cache: Path) -> Path:
    """containerd's root directory with `archives` imported and unpacked (overlayfs snapshots), made on this machine
    and packed as a tar (xattrs kept: overlay whiteouts) that the guest unpacks into its /var/lib/containerd before
    its containerd starts; cached in `cache` under a key of the archives and containerd.

    Why: under TCG, `ctr images import` of the product image (350 MB) takes 2.5-3.5 minutes in the guest (containerd
    ingests and hashes the blobs through its API, then unpacks), GNU tar unpacking the prepared root about 15 s.
    The images are the same bytes, imported by the same containerd; only where it ran differs.
    """
    cache.mkdir(parents=True, exist_ok=True)
    key = images_key(archives, binaries)
    out = cache / f"guest-containerd-{key}.tar"
    if out.is_file():
        return out
    tmp = Path(tempfile.mkdtemp(prefix="guest-containerd-", dir=cache))
    try:
        sock = tmp / "c.sock"
        (tmp / "cni").mkdir()
        config = tmp / "containerd.toml"
        config.write_text(
            containerd_config(
                root=tmp / "root",
                state=tmp / "state",
                address=sock,
                pause_image=PAUSE_IMAGE,
                runc=binaries.runc,
                cni_bin=binaries.cni_bin,
                cni_conf=tmp / "cni",
                restrict_oom_score_adj=True,
            )
        )
        env = {**os.environ, "PATH": f"{binaries.shim.parent}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
        with (tmp / "containerd.log").open("wb") as log:
            # its own mount namespace: the snapshotter's mounts while unpacking stay out of this machine's
            proc = subprocess.Popen(
                ["unshare", "--mount", "--propagation", "private", "--", str(binaries.containerd),
                 f"--config={config}"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                preexec_fn=_die_with_parent,  # noqa: PLW1509
            )  # fmt: skip
        ctr = [str(binaries.ctr), f"--address={sock}", "--namespace=k8s.io"]
        try:
            deadline = time.monotonic() + 60
            while subprocess.run([*ctr, "version"], capture_output=True, check=False).returncode != 0:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise GuestError(f"containerd did not start: {(tmp / 'containerd.log').read_text()[-2000:]}")
                time.sleep(0.2)
            for archive in archives:
                subprocess.run([*ctr, "images", "import", "--no-unpack=false", str(archive)], check=True,
                               capture_output=True, timeout=600)  # fmt: skip
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        partial = out.with_suffix(".tmp")
        subprocess.run(
            ["tar", "--xattrs", "--xattrs-include=*", "--numeric-owner", "-C", str(tmp / "root"), "-cf",
             str(partial), "."],
            check=True, capture_output=True,
        )  # fmt: skip
        partial.rename(out)
        for old in cache.glob("guest-containerd-*.tar"):
            if old != out:
                old.unlink(missing_ok=True)
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class GuestNode:
    """The guest booted with a kubelet node named `name` on `cp`; powered off (and killed if need be) on exit."""

    def __init__(
        self,
        cp: ControlPlane,
        image: qemu.GuestImage,
        binaries: NodeBinaries,
        workdir: Path,
        *,
        repo: Path,
        name: str = "guest1",
        images: Sequence[Path] = (),
        image_cache: Path | None = None,
        labels: Mapping[str, str] | None = None,
        taints: Sequence[Mapping[str, str]] = (),
        memory_mib: int = 3072,
        kubelet_extra: Mapping[str, Any] | None = None,
        devices: qemu.DeviceSet | None = None,
        startup_timeout: float = 900,
    ) -> None:
        self.cp = cp
        self.image = image
        self.binaries = binaries
        self.workdir = workdir
        self.repo = repo
        self.name = name
        self.images = list(images)
        self.image_cache = image_cache or qemu.default_cache().parent / "image"
        self.labels = dict(labels or {})
        self.taints = [dict(t) for t in taints]
        self.memory_mib = memory_mib
        self.kubelet_extra = dict(kubelet_extra or {})
        self.devices = devices or qemu.standard_devices()
        self.startup_timeout = startup_timeout
        self.share = workdir / "share"
        self.console_log = workdir / "console.log"
        self.kubelet_dir = "/var/lib/kubelet"
        self.plugin_dir = f"{self.kubelet_dir}/device-plugins"
        self.timings: dict[str, float] = {}
        self.port = 0
        self._qemu: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> GuestNode:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- paths

    def guest_path(self, host_path: Path) -> str:
        """Where a file under the share (this machine) is in the guest."""
        return f"{SHARE}/{host_path.relative_to(self.share)}"

    def put(self, source: Path, relative: str) -> str:
        """Make `source` available in the guest (a hard link, else a copy, into the share); return its guest path."""
        target = self.share / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            target.unlink()
        try:
            os.link(source, target)
        except OSError:
            shutil.copy2(source, target)
        return self.guest_path(target)

    # ---- start

    def start(self) -> None:
        began = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.share.mkdir(exist_ok=True)
        config = self._write_share()
        (self.share / "guest.json").write_text(json.dumps(config, indent=2))
        self._boot()
        self._wait_commands()
        self.timings["boot_to_commands_s"] = time.monotonic() - began
        self._wait_running()
        self.timings["boot_to_kubelet_s"] = time.monotonic() - began
        self._wait_ready()
        self.timings["boot_to_ready_s"] = time.monotonic() - began

    def _write_share(self) -> dict[str, Any]:
        b = self.binaries
        bins = {
            "kubelet": self.put(b.kubelet, "bin/kubelet"),
            "containerd": self.put(b.containerd, "bin/containerd"),
            "shim": self.put(b.shim, "bin/containerd-shim-runc-v2"),
            "ctr": self.put(b.ctr, "bin/ctr"),
            "runc": self.put(b.runc, "bin/runc"),
        }
        for plugin in ("bridge", "host-local", "loopback"):
            self.put(b.cni_bin / plugin, f"cni-bin/{plugin}")
        prepared = None
        if self.images:
            began = time.monotonic()
            prepared = self.put(prepare_images(self.images, b, self.image_cache), "images/containerd-root.tar")
            self.timings["prepare_images_s"] = time.monotonic() - began
        cni = self.share / "cni"
        cni.mkdir(exist_ok=True)
        conflist = cni_conflist(
            bridge="cni0", subnet=POD_CIDR, gateway=POD_GATEWAY, routes=(), data_dir=Path("/var/lib/cni-ipam")
        )
        (cni / "10-pcidevices.conflist").write_text(json.dumps(conflist, indent=2))
        socket_path = Path("/run/containerd/containerd.sock")
        (self.share / "containerd.toml").write_text(
            containerd_config(
                root=Path("/var/lib/containerd"),
                state=Path("/run/containerd"),
                address=socket_path,
                pause_image=PAUSE_IMAGE,
                runc=Path(bins["runc"]),
                cni_bin=Path(f"{SHARE}/cni-bin"),
                cni_conf=Path(f"{SHARE}/cni"),
                restrict_oom_score_adj=False,  # root in the guest has every capability
                no_pivot_root=True,  # the guest's root is its initramfs
            )
        )
        kubeconfig = self._write_pki()
        (self.share / "resolv.conf").write_text("# no name servers: the guest reaches only the API server\n")
        config = kubelet_config(
            runtime_socket=socket_path,
            address=GUEST_IP,
            port=10250,
            healthz_port=10248,
            pki=Path(f"{SHARE}/pki"),
            resolv_conf=Path(f"{SHARE}/resolv.conf"),
            pod_logs=Path("/var/log/pods"),
            volume_plugins=Path(f"{self.kubelet_dir}/volume-plugins"),
            cgroup_root=None,
            cgroup_v1=False,  # the guest mounts only cgroup2
            extra={"registerWithTaints": self.taints, **self.kubelet_extra},
        )
        (self.share / "kubelet.yaml").write_text(yaml.safe_dump(config))
        labels = ",".join(f"{k}={v}" for k, v in self.labels.items())
        kubelet_argv = [
            bins["kubelet"],
            f"--config={SHARE}/kubelet.yaml",
            f"--kubeconfig={kubeconfig}",
            f"--root-dir={self.kubelet_dir}",
            f"--cert-dir={SHARE}/pki",
            f"--node-ip={GUEST_IP}",
            f"--hostname-override={self.name}",
            *([f"--node-labels={labels}"] if labels else []),
            "--v=2",
        ]
        path = f"{SHARE}/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        return {
            "name": self.name,
            "ip": GUEST_IP,
            "port": COMMAND_PORT,
            "network": {"mac": MAC, "prefix": 24, "gateway": GATEWAY},
            "modules": ["overlay", "bridge", "veth"],
            "make_dirs": ["/var/lib/containerd", self.kubelet_dir, "/var/log/pods"],
            "containerd": {
                "argv": [bins["containerd"], f"--config={SHARE}/containerd.toml"],
                "env": {"PATH": path},
                "ctr": [bins["ctr"], f"--address={socket_path}"],
                "root": "/var/lib/containerd",
                "prepared_root": prepared,
            },
            "images": [],
            "kubelet": {
                "argv": kubelet_argv,
                "env": {"PATH": path},
                "plugin_socket": f"{self.plugin_dir}/kubelet.sock",
            },
        }

    def _write_pki(self) -> str:
        cp = self.cp
        pki = self.share / "pki"
        pki.mkdir(exist_ok=True)
        serving = cp.ca.issue(self.name, dns_names=(self.name,), ip_addresses=(GUEST_IP,), server=True)
        (pki / "kubelet.crt").write_bytes(serving.cert_pem)
        (pki / "kubelet.key").write_bytes(serving.key_pem)
        (pki / "ca.crt").write_bytes(cp.ca_pem)
        client = cp.ca.issue(f"system:node:{self.name}", organizations=("system:nodes",), client=True)
        write_kubeconfig(
            self.share / "kubelet.kubeconfig",
            server=f"https://{SERVICE_IP}:443",
            ca_pem=cp.ca_pem,
            user=f"system:node:{self.name}",
            credentials={
                "client-certificate-data": base64.b64encode(client.cert_pem).decode(),
                "client-key-data": base64.b64encode(client.key_pem).decode(),
            },
        )
        return f"{SHARE}/kubelet.kubeconfig"

    def qemu_command(self) -> list[str]:
        api_port = int(self.cp.server.rsplit(":", 1)[1])
        relay = self.repo / "tests" / "support" / "relay.py"
        netdev = ",".join(
            [
                "user",
                "id=net0",
                "restrict=on",  # nothing but the forwards below
                f"net={SLIRP_NET}",
                f"hostfwd=tcp:127.0.0.1:{self.port}-{GUEST_IP}:{COMMAND_PORT}",
                f"guestfwd=tcp:{SERVICE_IP}:443-cmd:{sys.executable} -S {relay} {api_port}",
            ]
        )
        extra = [
            "-fsdev", f"local,id=node,path={self.share},security_model=none",
            "-device", "virtio-9p-pci,fsdev=node,mount_tag=node,bus=pcie.0",
            "-netdev", netdev,
            "-device", f"virtio-net-pci,netdev=net0,mac={MAC},bus=pcie.0",
        ]  # fmt: skip
        return qemu.command(
            self.image,
            self.repo,
            self.devices,
            GUEST_SCRIPT,
            self.workdir,
            guest_timeout=24 * 3600,
            memory_mib=self.memory_mib,
            extra=extra,
        )

    def _boot(self) -> None:
        for disk in self.devices.disks:
            with open(self.workdir / f"{disk.id}.img", "wb") as f:
                f.truncate(disk.size_mib << 20)
        self.port = free_port()
        with self.console_log.open("ab") as out:
            self._qemu = subprocess.Popen(
                self.qemu_command(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "LC_ALL": "C"},
                start_new_session=True,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - an interrupted run leaves no guest behind
            )

    def _deadline_check(self, deadline: float, what: str) -> None:
        if self._qemu is not None and self._qemu.poll() is not None:
            raise GuestError(f"qemu exited ({self._qemu.returncode}) while {what}; console:\n{self.console()}")
        if time.monotonic() > deadline:
            raise GuestError(f"timed out while {what}; console:\n{self.console()}")

    def _wait_commands(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while True:
            with contextlib.suppress(OSError, GuestError, ValueError):
                self.call("ping", wait=5)
                return
            self._deadline_check(deadline, "waiting for the guest's command server")
            time.sleep(1)

    def _wait_running(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while True:
            st = self.call("ping")["state"]
            if st["phase"] == "running":
                self.timings.update({f"{k}_s": v for k, v in st["seconds"].items()})  # in the guest: images, ...
                self.timings.update({f"import_{k}_s": v for k, v in st["images"].items()})
                return
            if st["phase"] == "failed":
                raise GuestError("the guest node failed to come up:\n" + "\n".join(st["errors"]) + self.logs())
            self._deadline_check(deadline, f"bringing up containerd and the kubelet ({st})")
            time.sleep(1)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while True:
            got = self.cp.kubectl("get", "node", self.name, "-o", "json", check=False)
            if got.returncode == 0:
                conditions = json.loads(got.stdout).get("status", {}).get("conditions", [])
                if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
                    return
            self._deadline_check(deadline, f"waiting for node {self.name} to be Ready ({got.stdout[-500:]})")
            time.sleep(1)

    # ---- commands

    def call(self, op: str, *, wait: float = 600, **args: Any) -> dict[str, Any]:
        """One command to the guest's command server (tests/node/guest/node.py `handle`), waiting at most `wait`
        seconds for its answer."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=wait) as s:
            s.sendall((json.dumps({"op": op, **args}) + "\n").encode())
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(1 << 16)
                if not chunk:
                    break
                data += chunk
        if not data:
            raise GuestError(f"no answer to {op}")
        answer: dict[str, Any] = json.loads(data)
        if not answer.get("ok"):
            raise GuestError(f"{op} failed in the guest: {answer.get('trace') or answer.get('error')}")
        return answer

    def exec(self, *argv: str, input: str = "", timeout: float = 120, check: bool = True) -> Exec:
        got = self.call("exec", argv=list(argv), input=input, timeout=timeout, wait=timeout + 30)
        result = Exec(got["rc"], got["stdout"], got["stderr"], got["seconds"])
        if check and result.rc != 0:
            raise GuestError(f"{' '.join(argv)} failed in the guest ({result.rc}): {result.stderr.strip()}")
        return result

    def read(self, path: str) -> str:
        return self.exec("cat", path).stdout

    def restart_kubelet(self, *, sockets: Sequence[str] = (), registered: str = "", until: str = "") -> dict[str, Any]:
        """Restart the kubelet in the guest; guest-clock timings of what follows (tests/node/guest/node.py)."""
        return self.call("restart-kubelet", sockets=list(sockets), registered=registered, until=until)

    def console(self, lines: int = 80) -> str:
        try:
            text = self.console_log.read_text(errors="replace")
        except OSError:
            return "(no console)"
        return "\n".join(text.replace("\r", "").splitlines()[-lines:])

    def logs(self, lines: int = 40) -> str:
        """The tails of containerd's and the kubelet's logs in the guest (for failure messages)."""
        out = []
        for name in ("containerd", "kubelet"):
            with contextlib.suppress(Exception):
                got = self.exec("tail", f"-n{lines}", f"/var/log/pcidevices/{name}.log", check=False, timeout=20)
                out.append(f"--- {name}.log\n{got.stdout}")
        return "\n" + "\n".join(out)

    # ---- stop

    def stop(self) -> None:
        proc = self._qemu
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(OSError, GuestError, ValueError, ControlPlaneError):
                self.call("shutdown", wait=10)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        self._qemu = None


def main(argv: Sequence[str]) -> int:
    """`python -m tests.support.guestnode prepare-images ARCHIVE...` (scripts/prepare-node): containerd's root with
    these images for the guest node, made now if it is not cached; prints guest-images=<path>."""
    if len(argv) < 2 or argv[0] != "prepare-images":
        print("usage: python -m tests.support.guestnode prepare-images ARCHIVE...", file=sys.stderr)
        return 2
    repo = Path(__file__).resolve().parents[2]
    out = prepare_images([Path(a) for a in argv[1:]], NodeBinaries.locate(repo), qemu.default_cache().parent / "image")
    print(f"guest-images={out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
