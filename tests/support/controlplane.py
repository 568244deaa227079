"""A real Kubernetes control plane (etcd + kube-apiserver, optionally kube-controller-manager) for tests and local runs.

Fakes cannot show what the API server does with our objects (schema pruning, validation, CEL, RBAC, garbage
collection), so the cluster tier starts the real binaries that `scripts/cluster-binaries` builds and caches. The
recipe is envtest's (docs/realcluster.md): free loopback ports, a throw-away CA, client-certificate users, RBAC,
service-account token signing.

Typical use::

    binaries = Binaries.locate(repo_root)                # raises BinariesMissing when not built yet
    with ControlPlane(binaries, workdir) as cp:          # started; stopped on exit, error or interrupt
        cp.kubectl("apply", "-f", "crds/")
        tenant = cp.mint_user("tenant-a", groups=("tenants",))
        result = cp.kubectl("get", "pd", user=tenant, check=False)
        agent = cp.mint_node_token("node1")             # userInfo.extra carries the node name
        api = cp.api_client(user=agent)                 # an apiclient.client.Client

Everything listens on 127.0.0.1 only. Child processes die with the test process (PR_SET_PDEATHSIG), and are also
stopped by `stop()`, the context manager and an atexit hook, so an interrupted run leaves nothing behind. Linux
delivers that signal when the *thread* that started a child exits, so start the control plane from a thread that
outlives it (the main thread, as pytest fixtures do).
"""

from __future__ import annotations

import atexit
import base64
import concurrent.futures
import contextlib
import ctypes
import datetime
import ipaddress
import json
import logging
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

log = logging.getLogger(__name__)

NODE_NAME_EXTRA = "authentication.kubernetes.io/node-name"
"""userInfo.extra key the API server sets for service-account tokens bound to a Pod scheduled on a node."""


@dataclass(frozen=True)
class NodeNetwork:
    """Addresses of the node tier's private network (tests/support/node.py): the node's address on its pod bridge,
    and the Service range whose first address is the `kubernetes` Service."""

    node_ip: str
    service_cidr: str

    @property
    def apiserver_service_ip(self) -> str:
        return str(next(ipaddress.ip_network(self.service_cidr).hosts()))


class ControlPlaneError(RuntimeError):
    """A component failed to start or a command against the control plane failed."""


class BinariesMissing(ControlPlaneError):
    """The control-plane binaries have not been built yet (run scripts/cluster-binaries)."""


# --------------------------------------------------------------------------------------------------------------------
# Binaries


@dataclass(frozen=True)
class Binaries:
    """Absolute paths of the control-plane binaries (the ones on PATH are never used: versions must match)."""

    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path
    kubectl: Path
    helm: Path

    @classmethod
    def locate(cls, repo_root: Path, *, env: dict[str, str] | None = None) -> Binaries:
        """Ask `scripts/cluster-binaries --paths` where the cached binaries are; build nothing."""
        return cls._from_script(repo_root, "--paths", env=env)

    @classmethod
    def obtain(cls, repo_root: Path, *, env: dict[str, str] | None = None) -> Binaries:
        """Build whatever is missing (minutes when cold; progress goes to this process's stderr), then locate."""
        return cls._from_script(repo_root, env=env, show_progress=True)

    @classmethod
    def _from_script(
        cls, repo_root: Path, *args: str, env: dict[str, str] | None = None, show_progress: bool = False
    ) -> Binaries:
        script = repo_root / "scripts" / "cluster-binaries"
        proc = subprocess.run(
            [str(script), *args],
            stdout=subprocess.PIPE,
            stderr=None if show_progress else subprocess.PIPE,
            text=True,
            env=env,
            check=False,
        )
        if proc.returncode != 0:
            raise BinariesMissing(
                f"control-plane binaries are not available ({(proc.stderr or '').strip()}); "
                f"run {script} (a cold build takes 10-20+ minutes)"
            )
        paths = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
        try:
            return cls(
                etcd=Path(paths["etcd"]),
                kube_apiserver=Path(paths["kube-apiserver"]),
                kube_controller_manager=Path(paths["kube-controller-manager"]),
                kubectl=Path(paths["kubectl"]),
                helm=Path(paths["helm"]),
            )
        except KeyError as e:
            raise BinariesMissing(f"{script} did not report {e}") from e


# --------------------------------------------------------------------------------------------------------------------
# Certificates


@dataclass(frozen=True)
class KeyPair:
    """A PEM certificate and its PEM private key."""

    cert_pem: bytes
    key_pem: bytes


class CertificateAuthority:
    """A throw-away CA; the API server trusts it for client certificates and serves with a certificate from it."""

    def __init__(self, common_name: str = "pcidevices-test-ca", *, validity: datetime.timedelta | None = None) -> None:
        self._validity = validity or datetime.timedelta(days=2)
        self._key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = datetime.datetime.now(datetime.UTC)
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + self._validity)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self._key, hashes.SHA256())
        )

    @property
    def cert_pem(self) -> bytes:
        return self._cert.public_bytes(serialization.Encoding.PEM)

    def issue(
        self,
        common_name: str,
        *,
        organizations: Sequence[str] = (),
        dns_names: Sequence[str] = (),
        ip_addresses: Sequence[str] = (),
        server: bool = False,
        client: bool = False,
    ) -> KeyPair:
        """Issue a leaf certificate. For Kubernetes client certificates CN is the user name and O the groups."""
        key = ec.generate_private_key(ec.SECP256R1())
        attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
        attrs += [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
        now = datetime.datetime.now(datetime.UTC)
        usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + (
            [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
        )
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(attrs))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + self._validity)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        )
        sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns_names]
        sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ip_addresses]
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        return KeyPair(cert_pem=cert.public_bytes(serialization.Encoding.PEM), key_pem=_key_pem(key))


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )


# --------------------------------------------------------------------------------------------------------------------
# Users


@dataclass(frozen=True)
class KubeUser:
    """An identity the API server authenticates, with a kubeconfig that uses it."""

    name: str
    groups: tuple[str, ...]
    kubeconfig: Path
    token: str | None = None
    """Set for service-account tokens; None for client-certificate users."""
    extra: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """userInfo.extra the API server reports for this user (node-name for node-bound tokens)."""


def write_kubeconfig(path: Path, *, server: str, ca_pem: bytes, user: str, credentials: dict[str, str]) -> Path:
    """Write a one-cluster, one-user kubeconfig that both kubectl and the Python client load."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "pcidevices-test",
                "cluster": {"server": server, "certificate-authority-data": _b64(ca_pem)},
            }
        ],
        "users": [{"name": user, "user": credentials}],
        "contexts": [{"name": user, "context": {"cluster": "pcidevices-test", "user": user}}],
        "current-context": user,
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# --------------------------------------------------------------------------------------------------------------------
# Processes


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (the kernel picks it; a tiny race with other processes remains)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """preexec_fn: ask Linux to SIGTERM the child when the test process dies, even by SIGKILL."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


@dataclass
class _Process:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen.poll() is not None:
            return
        self.popen.terminate()
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(timeout)


# --------------------------------------------------------------------------------------------------------------------
# The control plane


class ControlPlane:
    """etcd + kube-apiserver (+ kube-controller-manager on request) on free loopback ports, in `workdir`.

    Start with `start()` or a `with` block; `startup_seconds` says how long the start took. Use `kubectl()`, `helm()`
    and `api_client()` as the admin (group system:masters) or as a user from `mint_user()` / `mint_node_token()`.
    """

    def __init__(
        self,
        binaries: Binaries,
        workdir: Path,
        *,
        controller_manager: bool = False,
        controllers: Sequence[str] = ("garbagecollector", "namespace"),
        startup_timeout: float = 180.0,
        network: NodeNetwork | None = None,
    ) -> None:
        self.binaries = binaries
        self.workdir = workdir
        self.network = network
        """With a node network (the node tier), pods reach the API server and the API server reaches pods: it also
        listens on the node's address, is advertised there, mints service-account tokens for pods and routes webhook
        calls to Service endpoints. None: loopback only, as the cluster tier needs."""
        self._want_kcm = controller_manager
        self._controllers = tuple(controllers)
        self._startup_timeout = startup_timeout
        self._processes: list[_Process] = []
        self._ca: CertificateAuthority | None = None
        self._port = 0
        self.startup_seconds: float | None = None
        self._atexit_registered = False

    # ---- lifecycle

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def server(self) -> str:
        """The API server URL, https://127.0.0.1:<port>."""
        return f"https://127.0.0.1:{self._port}"

    @property
    def ca(self) -> CertificateAuthority:
        if self._ca is None:
            raise ControlPlaneError("control plane not started")
        return self._ca

    @property
    def ca_pem(self) -> bytes:
        """The CA that signed the API server's serving certificate and that it trusts for client certificates."""
        return self.ca.cert_pem

    @property
    def admin_kubeconfig(self) -> Path:
        return self.workdir / "admin.kubeconfig"

    @property
    def controller_manager_running(self) -> bool:
        return any(p.name == "kube-controller-manager" and p.popen.poll() is None for p in self._processes)

    def start(self) -> None:
        """Start etcd and kube-apiserver (and kube-controller-manager if asked) and wait until they are ready."""
        started = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self._atexit_registered:
            atexit.register(self.stop)
            self._atexit_registered = True
        try:
            self._write_pki()
            self._start_etcd()
            self._start_apiserver()
            write_kubeconfig(
                self.admin_kubeconfig,
                server=self.server,
                ca_pem=self.ca_pem,
                user="admin",
                credentials=self._client_credentials("admin", ("system:masters",)),
            )
            if self._want_kcm:
                self.start_controller_manager()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        log.info("control plane ready", extra={"server": self.server, "seconds": round(self.startup_seconds, 1)})

    def stop(self) -> None:
        """Stop every process this control plane started, newest first. Safe to call more than once."""
        while self._processes:
            proc = self._processes.pop()
            proc.stop()
        if self._atexit_registered:
            atexit.unregister(self.stop)
            self._atexit_registered = False

    def _write_pki(self) -> None:
        self._ca = CertificateAuthority()
        pki = self.workdir / "pki"
        pki.mkdir(exist_ok=True)
        (pki / "ca.crt").write_bytes(self._ca.cert_pem)
        extra_ips = (self.network.node_ip, self.network.apiserver_service_ip) if self.network else ()
        serving = self._ca.issue(
            "kube-apiserver",
            dns_names=("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"),
            ip_addresses=("127.0.0.1", "::1", *extra_ips),
            server=True,
        )
        (pki / "apiserver.crt").write_bytes(serving.cert_pem)
        (pki / "apiserver.key").write_bytes(serving.key_pem)
        sa_key = ec.generate_private_key(ec.SECP256R1())
        (pki / "sa.key").write_bytes(_key_pem(sa_key))
        (pki / "sa.pub").write_bytes(
            sa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    def _spawn(self, name: str, argv: Sequence[str], *, env: dict[str, str] | None = None) -> _Process:
        log_path = self.workdir / f"{name}.log"
        with log_path.open("ab") as out:
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=env,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - single-threaded start; needed for cleanup on kill
            )
        proc = _Process(name=name, popen=popen, log_path=log_path)
        self._processes.append(proc)
        return proc

    def _wait(self, proc: _Process, url: str, *, context: ssl.SSLContext | None = None) -> None:
        deadline = time.monotonic() + self._startup_timeout
        last = ""
        while time.monotonic() < deadline:
            if proc.popen.poll() is not None:
                raise ControlPlaneError(
                    f"{proc.name} exited with {proc.popen.returncode} during start-up; log tail:\n{proc.log_tail()}"
                )
            try:
                with urllib.request.urlopen(url, timeout=5, context=context) as resp:  # noqa: S310 - loopback only
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError) as e:
                last = str(e)
            time.sleep(0.25)
        raise ControlPlaneError(
            f"{proc.name} not ready after {self._startup_timeout:.0f}s ({last}); log tail:\n{proc.log_tail()}"
        )

    def _start_etcd(self) -> None:
        client, peer = free_port(), free_port()
        self._etcd_url = f"http://127.0.0.1:{client}"
        proc = self._spawn(
            "etcd",
            [
                str(self.binaries.etcd),
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={self._etcd_url}",
                f"--advertise-client-urls={self._etcd_url}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=default=http://127.0.0.1:{peer}",
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ],
        )
        self._wait(proc, f"{self._etcd_url}/health")

    def restart_apiserver(self) -> None:
        """Stop kube-apiserver and start it again on the same port: etcd keeps the data, clients keep their URL.

        For tests of clients that must survive an API-server restart (watches break, requests fail for a while).
        """
        proc = next(p for p in self._processes if p.name == "kube-apiserver")
        proc.stop()
        self._processes.remove(proc)
        self._start_apiserver(port=self._port)

    def _start_apiserver(self, *, port: int | None = None) -> None:
        self._port = port or free_port()
        pki = self.workdir / "pki"
        net = self.network
        node_args = [
            "--enable-aggregator-routing=true",  # webhook calls go to the Service's endpoints (no kube-proxy)
            f"--service-cluster-ip-range={net.service_cidr}",
        ] if net else [
            "--disable-admission-plugins=ServiceAccount",
            "--service-cluster-ip-range=10.0.0.0/24",
        ]  # fmt: skip
        proc = self._spawn(
            "kube-apiserver",
            [
                str(self.binaries.kube_apiserver),
                f"--etcd-servers={self._etcd_url}",
                f"--bind-address={'0.0.0.0' if net else '127.0.0.1'}",  # 0.0.0.0 only inside the node's own netns
                f"--advertise-address={net.node_ip if net else '127.0.0.1'}",
                f"--secure-port={self._port}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                f"--service-account-issuer={self.server}/",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                *node_args,
                f"--authorization-mode={'Node,RBAC' if net else 'RBAC'}",  # Node: the kubelet's own identity
                "--allow-privileged=true",
                "--endpoint-reconciler-type=none",
                "--enable-priority-and-fairness=false",
                "--profiling=false",
                f"--cert-dir={self.workdir / 'apiserver-certs'}",
            ],
        )
        ctx = ssl.create_default_context(cadata=self.ca_pem.decode())
        self._wait(proc, f"{self.server}/readyz", context=ctx)

    def start_controller_manager(self) -> None:
        """Start kube-controller-manager (by default only the garbage collector and namespace controllers)."""
        if self.controller_manager_running:
            return
        port = free_port()
        kubeconfig = write_kubeconfig(
            self.workdir / "controller-manager.kubeconfig",
            server=self.server,
            ca_pem=self.ca_pem,
            user="system:kube-controller-manager",
            # system:masters: with one shared identity (no per-controller service accounts) the bootstrap role
            # system:kube-controller-manager is too narrow for the garbage collector to delete dependents.
            credentials=self._client_credentials("system:kube-controller-manager", ("system:masters",)),
        )
        proc = self._spawn(
            "kube-controller-manager",
            [
                str(self.binaries.kube_controller_manager),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={port}",
                f"--cert-dir={self.workdir / 'controller-manager-certs'}",
                "--leader-elect=false",
                "--use-service-account-credentials=false",
                f"--controllers={','.join(self._controllers)}",
                f"--root-ca-file={self.workdir / 'pki' / 'ca.crt'}",  # published to pods as kube-root-ca.crt
                f"--service-account-private-key-file={self.workdir / 'pki' / 'sa.key'}",
            ],
        )
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # its serving certificate is self-signed; only /healthz is read
        self._wait(proc, f"https://127.0.0.1:{port}/healthz", context=ctx)

    def start_scheduler(self, kube_scheduler: Path) -> None:
        """Start kube-scheduler (the node tier's pods need one), as system:kube-scheduler."""
        port = free_port()
        kubeconfig = write_kubeconfig(
            self.workdir / "scheduler.kubeconfig",
            server=self.server,
            ca_pem=self.ca_pem,
            user="system:kube-scheduler",
            credentials=self._client_credentials("system:kube-scheduler", ()),
        )
        proc = self._spawn(
            "kube-scheduler",
            [
                str(kube_scheduler),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={port}",
                "--leader-elect=false",
            ],
        )
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # self-signed serving certificate; only /healthz is read
        self._wait(proc, f"https://127.0.0.1:{port}/healthz", context=ctx)

    def spawn(self, name: str, argv: Sequence[str], *, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start another process stopped with the control plane (newest first), logging to workdir/<name>.log."""
        return self._spawn(name, argv, env=env).popen

    def wait_ready(self, name: str, url: str, *, context: ssl.SSLContext | None = None) -> None:
        """Wait until `url` answers 200, failing early with the log tail when process `name` exits."""
        self._wait(next(p for p in self._processes if p.name == name), url, context=context)

    # ---- identities

    def _client_credentials(self, name: str, groups: Sequence[str]) -> dict[str, str]:
        pair = self.ca.issue(name, organizations=groups, client=True)
        return {"client-certificate-data": _b64(pair.cert_pem), "client-key-data": _b64(pair.key_pem)}

    def mint_user(self, name: str, groups: Sequence[str] = ()) -> KubeUser:
        """A client-certificate user (CN=name, O=groups) and a kubeconfig for it. It has no rights until RBAC grants
        some (`system:authenticated` only gives discovery and self-reviews)."""
        path = self.workdir / "users" / f"{_file_safe(name)}.kubeconfig"
        path.parent.mkdir(exist_ok=True)
        write_kubeconfig(
            path, server=self.server, ca_pem=self.ca_pem, user=name, credentials=self._client_credentials(name, groups)
        )
        return KubeUser(name=name, groups=tuple(groups), kubeconfig=path)

    def mint_node_token(
        self,
        node: str,
        *,
        namespace: str = "pcidevices-system",
        service_account: str = "pcidevices-agent",
        pod: str | None = None,
        duration: str = "2h",
    ) -> KubeUser:
        """A service-account token bound to a Pod scheduled on `node`, the identity a node agent has in a cluster.

        Creates (idempotently) the namespace, the ServiceAccount, the Node and a Pod with spec.nodeName (it stays
        Pending: there is no kubelet), then asks TokenRequest for a token bound to that Pod. The API server then
        reports `authentication.kubernetes.io/node-name: [node]` in the user's extra. Deleting the Pod revokes the
        token.
        """
        pod = pod or f"{service_account}-{node}"[:63]
        objects = [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": service_account, "namespace": namespace},
            },
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": node, "labels": {"kubernetes.io/hostname": node}},
            },
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": pod, "namespace": namespace, "labels": {"app": service_account}},
                "spec": {
                    "nodeName": node,
                    "serviceAccountName": service_account,
                    "automountServiceAccountToken": False,
                    "containers": [{"name": "agent", "image": "pcidevices.invalid/agent:test"}],
                },
            },
        ]
        for obj in objects:
            self.kubectl("apply", "-f", "-", input=json.dumps(obj))
        uid = self.kubectl("get", "pod", pod, "-n", namespace, "-o", "jsonpath={.metadata.uid}").stdout.strip()
        token = self.kubectl(
            "create", "token", service_account, "-n", namespace,
            "--bound-object-kind=Pod", f"--bound-object-name={pod}", f"--bound-object-uid={uid}",
            f"--duration={duration}",
        ).stdout.strip()  # fmt: skip
        name = f"system:serviceaccount:{namespace}:{service_account}"
        path = self.workdir / "users" / f"node-{_file_safe(node)}-{_file_safe(pod)}.kubeconfig"
        path.parent.mkdir(exist_ok=True)
        write_kubeconfig(path, server=self.server, ca_pem=self.ca_pem, user=name, credentials={"token": token})
        return KubeUser(
            name=name,
            groups=("system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"),
            kubeconfig=path,
            token=token,
            extra={NODE_NAME_EXTRA: (node,)},
        )

    # ---- clients

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBE", "HELM_"))}
        env["HOME"] = str(self.workdir)
        env["KUBECACHEDIR"] = str(self.workdir / "kubectl-cache")
        env["HELM_CACHE_HOME"] = str(self.workdir / "helm" / "cache")
        env["HELM_CONFIG_HOME"] = str(self.workdir / "helm" / "config")
        env["HELM_DATA_HOME"] = str(self.workdir / "helm" / "data")
        return env

    def kubeconfig_for(self, user: KubeUser | None) -> Path:
        return user.kubeconfig if user is not None else self.admin_kubeconfig

    def kubectl(
        self,
        *args: str,
        user: KubeUser | None = None,
        input: str | None = None,
        check: bool = True,
        timeout: float = 120.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run the built kubectl against this control plane (as admin unless `user` is given).

        With check=True a non-zero exit raises ControlPlaneError carrying stderr; with check=False the caller asserts
        on returncode and stderr itself.
        """
        argv = [str(self.binaries.kubectl), f"--kubeconfig={self.kubeconfig_for(user)}", *args]
        return self._run(argv, input=input, check=check, timeout=timeout)

    def helm(
        self, *args: str, user: KubeUser | None = None, check: bool = True, timeout: float = 300.0
    ) -> subprocess.CompletedProcess[str]:
        """Run the built helm against this control plane (never pass --wait: nothing here runs pods)."""
        argv = [str(self.binaries.helm), f"--kubeconfig={self.kubeconfig_for(user)}", *args]
        return self._run(argv, input=None, check=check, timeout=timeout)

    def _run(
        self, argv: list[str], *, input: str | None, check: bool, timeout: float
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            argv, input=input, capture_output=True, text=True, env=self._env(), timeout=timeout, check=False
        )
        if check and proc.returncode != 0:
            shown = " ".join(argv[2:])
            raise ControlPlaneError(f"{Path(argv[0]).name} {shown} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc

    def api_client(self, user: KubeUser | None = None) -> Any:
        """The project's `apiclient.client.Client` for the admin or `user`, from the same kubeconfig kubectl uses."""
        import apiclient.client  # imported here: only tests that need a client pay for it

        return apiclient.client.Client.connect(self.kubeconfig_for(user))

    def install_crds(self, *paths: Path, timeout: float = 90.0) -> str:
        """`kubectl apply -f` CRD files or folders, wait until every CRD in them is usable; return kubectl's output.

        Usable means more than Established: the OpenAPI document (`kubectl explain`, field validation) is rebuilt
        asynchronously, and a watch sent before the resource's watch cache has initialised is answered with 429
        "storage is (re)initializing", which clients without retries (our agent's adapter) see as an error.
        """
        out = "".join(self.kubectl("apply", "-f", str(p)).stdout for p in paths)
        crds = [
            doc
            for p in paths
            for f in (sorted(p.glob("*.yaml")) if p.is_dir() else [p])
            for doc in yaml.safe_load_all(f.read_text())
            if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition"
        ]
        names = [f"crd/{c['metadata']['name']}" for c in crds]
        self.wait_for("--for=condition=Established", *names, timeout=f"{int(timeout)}s")
        self.forget_discovery()
        deadline = time.monotonic() + timeout

        def usable(crd: dict[str, Any]) -> None:
            spec = crd["spec"]
            version = next(v["name"] for v in spec["versions"] if v.get("storage"))
            api = f"/apis/{spec['group']}/{version}/{spec['names']['plural']}"
            checks = [
                ("get", "--raw", f"{api}?watch=true&timeoutSeconds=1"),
                ("explain", spec["names"]["plural"], f"--api-version={spec['group']}/{version}"),
            ]
            for args in checks:
                while (result := self.kubectl(*args, check=False)).returncode != 0:
                    if time.monotonic() > deadline:
                        raise ControlPlaneError(f"{crd['metadata']['name']} not usable: {result.stderr.strip()}")
                    time.sleep(0.25)

        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            for future in [pool.submit(usable, c) for c in crds]:
                future.result()
        return out

    def forget_discovery(self) -> None:
        """Drop kubectl's discovery cache, e.g. after installing CRDs (kubectl reads categories from it)."""
        shutil.rmtree(self.workdir / "kubectl-cache", ignore_errors=True)

    def wait_for(self, *args: str, timeout: str = "60s") -> None:
        """`kubectl wait ...` as admin, e.g. wait_for("--for=condition=Established", "crd/x")."""
        self.kubectl("wait", f"--timeout={timeout}", *args)


def _file_safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
