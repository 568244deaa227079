"""The client without a server: where it connects and with which credentials, how it pages, how errors read."""

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

import apiclient
import apiclient.client
import apiclient.config


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
    ep = apiclient.config.from_kubeconfig(path)
    assert ep.server == "https://127.0.0.1:6443"
    assert ep.context.verify_mode == ssl.CERT_REQUIRED
    assert ep.bearer() is None
    probe = (
        "import sys, pathlib, apiclient.client; from nodeagent import wiring; "
        f"apiclient.client.Client.connect(pathlib.Path({str(path)!r})); "
        "print(sorted(m for m in sys.modules if m.startswith('kubernetes')))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_token_file_is_read_again_on_every_request(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("one\n")
    ep = apiclient.config.from_kubeconfig(_kubeconfig(tmp_path, {"tokenFile": "token"}))
    assert ep.bearer() == "one"
    (tmp_path / "token").write_text("two\n")
    assert ep.bearer() == "two"


def test_in_cluster_config_uses_the_service_account_and_the_service_address(tmp_path: Path) -> None:
    ca, _ = _self_signed()
    (tmp_path / "ca.crt").write_bytes(ca)
    (tmp_path / "token").write_text("sa-token")
    ep = apiclient.config.in_cluster(tmp_path, {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"})
    assert ep.server == "https://[fd00::1]:443" and ep.bearer() == "sa-token"
    with pytest.raises(apiclient.KubeError, match="not in a cluster"):
        apiclient.config.in_cluster(tmp_path, {})


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
    ep = apiclient.config.from_kubeconfig(_kubeconfig(tmp_path, {"token": "t"}))
    api = apiclient.client.Client(ep, page=2)
    item = {"metadata": {"name": "a", "managedFields": [{"manager": "x"}]}}
    api._pool = _Pool(  # type: ignore[assignment]
        [
            {"metadata": {"resourceVersion": "5", "continue": "abc"}, "items": [item, item]},
            {"metadata": {"resourceVersion": "5"}, "items": [item]},
        ]
    )
    got = api.list(apiclient.PCIDEVICES, label_selector="nodename=n1")
    assert len(got.items) == 3 and got.resource_version == "5"
    assert all("managedFields" not in o["metadata"] for o in got.items)
    assert "continue=abc" in api._pool.urls[1] and "limit=2" in api._pool.urls[0]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("status", "error"), [(404, apiclient.NotFound), (409, apiclient.Conflict), (410, apiclient.Expired)]
)
def test_http_errors_become_the_agents_error_tree(
    tmp_path: Path, status: int, error: type[apiclient.KubeError]
) -> None:
    ep = apiclient.config.from_kubeconfig(_kubeconfig(tmp_path, {"token": "t"}))
    api = apiclient.client.Client(ep)
    api._pool = _Pool([{"message": "nope"}])  # type: ignore[assignment]
    api._pool.request = lambda *a, **k: _Resp(status, {"message": "nope"})  # type: ignore[attr-defined,method-assign]
    with pytest.raises(error, match="nope") as e:
        api.get(apiclient.PCIDEVICES, "x")
    assert e.value.status == status


def _exec_kubeconfig(tmp_path: Path, token: str) -> Path:
    credential = {
        "apiVersion": "client.authentication.k8s.io/v1beta1",
        "kind": "ExecCredential",
        "status": {"token": token},
    }
    plugin = {
        "apiVersion": "client.authentication.k8s.io/v1beta1",
        "command": sys.executable,
        "args": ["-c", f"print({json.dumps(json.dumps(credential))})"],
    }
    return _kubeconfig(tmp_path, {"exec": plugin})


def test_an_exec_plugin_kubeconfig_is_run_by_the_optional_extra(tmp_path: Path) -> None:
    ep = apiclient.config.from_kubeconfig(_exec_kubeconfig(tmp_path, "from-the-plugin"))
    assert ep.server == "https://127.0.0.1:6443"
    assert ep.bearer() == "from-the-plugin"


def test_without_the_extra_an_exec_plugin_kubeconfig_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "kubernetes", None)  # as if the extra were not installed
    with pytest.raises(apiclient.KubeError, match=r"pcidevices\[kubeconfig-plugins\]"):
        apiclient.config.from_kubeconfig(_exec_kubeconfig(tmp_path, "t"))


def test_a_json_kubeconfig_is_read_without_pyyaml(tmp_path: Path) -> None:
    path = _kubeconfig(tmp_path, {"token": "t"})
    path.write_text(json.dumps(yaml.safe_load(path.read_text())))
    probe = (
        "import sys, pathlib, apiclient.config; "
        f"e = apiclient.config.from_kubeconfig(pathlib.Path({str(path)!r})); "
        "print(e.server, sorted(m for m in sys.modules if m.split('.')[0] == 'yaml'))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "https://127.0.0.1:6443 []"
