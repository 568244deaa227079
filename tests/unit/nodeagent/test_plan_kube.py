"""The agent's API adapter without a server: where it connects and with which credentials, and how it pages."""

from __future__ import annotations

import base64
import datetime
import json
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from nodeagent import kube
from nodeagent.errors import KubeError


def _self_signed() -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _kubeconfig(tmp_path: Path, user: dict[str, Any], cluster_extra: dict[str, Any] | None = None) -> Path:
    ca, _ = _self_signed()
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "c",
                "cluster": {
                    "server": "https://127.0.0.1:6443/",
                    "certificate-authority-data": base64.b64encode(ca).decode(),
                    **(cluster_extra or {}),
                },
            }
        ],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    }
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_a_kubeconfig_with_client_certificate_data_loads_without_the_kubernetes_package(tmp_path: Path) -> None:
    cert, key = _self_signed()
    user = {
        "client-certificate-data": base64.b64encode(cert).decode(),
        "client-key-data": base64.b64encode(key).decode(),
    }
    path = _kubeconfig(tmp_path, user)
    ep = kube.kubeconfig_endpoint(path)
    assert ep.server == "https://127.0.0.1:6443"
    assert ep.context.verify_mode == ssl.CERT_REQUIRED
    assert ep.bearer() is None
    probe = (
        "import sys, pathlib; from nodeagent import kube, wiring; "
        f"kube.ApiKube.connect(pathlib.Path({str(path)!r})); "
        "print(sorted(m for m in sys.modules if m.startswith('kubernetes')))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_token_file_is_read_again_on_every_request(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("one\n")
    ep = kube.kubeconfig_endpoint(_kubeconfig(tmp_path, {"tokenFile": "token"}))
    assert ep.bearer() == "one"
    (tmp_path / "token").write_text("two\n")
    assert ep.bearer() == "two"


def test_in_cluster_config_uses_the_service_account_and_the_service_address(tmp_path: Path) -> None:
    ca, _ = _self_signed()
    (tmp_path / "ca.crt").write_bytes(ca)
    (tmp_path / "token").write_text("sa-token")
    ep = kube.in_cluster_endpoint(tmp_path, {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"})
    assert ep.server == "https://[fd00::1]:443" and ep.bearer() == "sa-token"
    with pytest.raises(KubeError, match="not in a cluster"):
        kube.in_cluster_endpoint(tmp_path, {})


class _Resp:
    def __init__(self, status: int, doc: dict[str, Any]) -> None:
        self.status = status
        self.data = json.dumps(doc).encode()


class _Pool:
    def __init__(self, pages: list[dict[str, Any]]) -> None:
        self.pages = pages
        self.urls: list[str] = []

    def request(self, method: str, url: str, **kw: Any) -> _Resp:
        self.urls.append(url)
        return _Resp(200, self.pages.pop(0))


def test_lists_are_read_in_pages_and_lose_their_managed_fields(tmp_path: Path) -> None:
    ep = kube.kubeconfig_endpoint(_kubeconfig(tmp_path, {"token": "t"}))
    api = kube.ApiKube(ep, page=2)
    item = {"metadata": {"name": "a", "managedFields": [{"manager": "x"}]}}
    api._pool = _Pool(  # type: ignore[assignment]
        [
            {"metadata": {"resourceVersion": "5", "continue": "abc"}, "items": [item, item]},
            {"metadata": {"resourceVersion": "5"}, "items": [item]},
        ]
    )
    got = api.list(kube.PCIDEVICES, label_selector="nodename=n1")
    assert len(got.items) == 3 and got.resource_version == "5"
    assert all("managedFields" not in o["metadata"] for o in got.items)
    assert "continue=abc" in api._pool.urls[1] and "limit=2" in api._pool.urls[0]  # type: ignore[attr-defined]


@pytest.mark.parametrize(("status", "error"), [(404, kube.NotFound), (409, kube.Conflict), (410, kube.Expired)])
def test_http_errors_become_the_agents_error_tree(tmp_path: Path, status: int, error: type[KubeError]) -> None:
    ep = kube.kubeconfig_endpoint(_kubeconfig(tmp_path, {"token": "t"}))
    api = kube.ApiKube(ep)
    api._pool = _Pool([{"message": "nope"}])  # type: ignore[assignment]
    api._pool.request = lambda *a, **k: _Resp(status, {"message": "nope"})  # type: ignore[attr-defined,method-assign]
    with pytest.raises(error, match="nope") as e:
        api.get(kube.PCIDEVICES, "x")
    assert e.value.status == status
