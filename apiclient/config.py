"""Where the API server is and who we are to it: in-cluster service account, or a kubeconfig's current context.

Bound service-account tokens rotate (the kubelet rewrites the projected file well before expiry), so a token that
comes from a file is read again for every request. Kubeconfigs with certificates, CAs and tokens (inline or as
files, `tls-server-name`, `insecure-skip-tls-verify`) are read here. Kubeconfigs whose user runs an exec or
auth-provider plugin are handed to the `kubernetes` package's configuration loader, an optional extra
(`pip install pcidevices[kubeconfig-plugins]`) that only a command run by hand outside a cluster needs; its token
refresh hook is asked before every request, so expiring plugin tokens are renewed.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apiclient.errors import KubeError

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


@dataclass(frozen=True)
class Endpoint:
    """URL, TLS context (with the client certificate, if any) and where the bearer token comes from."""

    server: str
    context: ssl.SSLContext
    token: str | None = None
    token_file: str | None = None
    token_source: Callable[[], str | None] | None = None  # a plugin's token, renewed when it expires
    server_name: str | None = None  # the name the server's certificate is checked against (tls-server-name)

    def bearer(self) -> str | None:
        if self.token_source is not None:
            return self.token_source()
        if self.token_file is not None:
            try:
                return Path(self.token_file).read_text().strip()
            except OSError:
                return self.token
        return self.token


def _tls(ca_file: str | None, ca_data: bytes | None, insecure: bool) -> ssl.SSLContext:
    if insecure:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    return ssl.create_default_context(cafile=ca_file, cadata=ca_data.decode() if ca_data else None)


def _load_client_cert(ctx: ssl.SSLContext, cert: bytes, key: bytes) -> None:
    """ssl wants files: write both to a private temporary file that exists only while they are loaded."""
    fd, path = tempfile.mkstemp(prefix="kubecert")
    try:
        os.write(fd, cert + b"\n" + key)
        os.close(fd)
        ctx.load_cert_chain(path)
    finally:
        os.unlink(path)


def in_cluster(sa_dir: Path = SA_DIR, env: Mapping[str, str] | None = None) -> Endpoint:
    env = os.environ if env is None else env
    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT", "443")
    if not host:
        raise KubeError("not in a cluster: KUBERNETES_SERVICE_HOST is not set")
    if ":" in host:
        host = f"[{host}]"
    ctx = _tls(str(sa_dir / "ca.crt"), None, False)
    return Endpoint(f"https://{host}:{port}", ctx, token_file=str(sa_dir / "token"))


def from_kubeconfig(path: Path) -> Endpoint:
    """The current context of a kubeconfig file (YAML, or JSON, which is read without loading PyYAML)."""
    text = path.read_text()
    if text.lstrip().startswith("{"):
        doc = json.loads(text)
    else:
        import yaml  # only here: processes in a cluster never read a kubeconfig

        doc = yaml.safe_load(text) or {}
    ctx_name = doc.get("current-context")
    context = next((c["context"] for c in doc.get("contexts") or [] if c.get("name") == ctx_name), None)
    if context is None:
        raise KubeError(f"{path}: no current context")
    cluster = next((c["cluster"] for c in doc.get("clusters") or [] if c.get("name") == context.get("cluster")), None)
    if cluster is None:
        raise KubeError(f"{path}: the current context names no known cluster")
    user: dict[str, Any] = next((u["user"] for u in doc.get("users") or [] if u.get("name") == context.get("user")), {})
    if "exec" in user or "auth-provider" in user:
        return _plugin(path)
    base = path.parent

    def data(key: str) -> bytes | None:
        if user.get(f"{key}-data") or cluster.get(f"{key}-data"):
            return base64.b64decode(user.get(f"{key}-data") or cluster.get(f"{key}-data"))
        f = user.get(key) or cluster.get(key)
        return (base / f).read_bytes() if f else None

    ctx = _tls(None, data("certificate-authority"), bool(cluster.get("insecure-skip-tls-verify")))
    cert, key = data("client-certificate"), data("client-key")
    if cert and key:
        _load_client_cert(ctx, cert, key)
    token_file = user.get("tokenFile")
    return Endpoint(
        str(cluster["server"]).rstrip("/"),
        ctx,
        token=user.get("token"),
        token_file=str(base / token_file) if token_file else None,
        server_name=cluster.get("tls-server-name"),
    )


def _plugin(path: Path) -> Endpoint:
    """A kubeconfig whose user runs a plugin: the `kubernetes` package's loader runs it (the optional extra)."""
    try:
        from kubernetes import client as k8s_client
        from kubernetes import config as k8s_config
    except ImportError as e:
        raise KubeError(
            f"{path}: its user runs an exec or auth-provider plugin, which needs the optional extra: "
            "pip install 'pcidevices[kubeconfig-plugins]'"
        ) from e
    cfg = k8s_client.Configuration()
    k8s_config.load_kube_config(config_file=str(path), client_configuration=cfg)  # type: ignore[no-untyped-call]
    ctx = _tls(cfg.ssl_ca_cert, None, not cfg.verify_ssl)
    if cfg.cert_file and cfg.key_file:
        ctx.load_cert_chain(cfg.cert_file, cfg.key_file)

    def token() -> str | None:
        # runs the loader's refresh hook first (exec and OIDC tokens that expire); the key was "authorization" in
        # older versions of the package
        value = str(cfg.get_api_key_with_prefix("BearerToken", alias="authorization") or "")
        return value.removeprefix("Bearer ") or None

    return Endpoint(str(cfg.host).rstrip("/"), ctx, token_source=token, server_name=cfg.tls_server_name or None)
