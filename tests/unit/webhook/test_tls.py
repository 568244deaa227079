"""The production server (gunicorn, gthread, TLS) on 127.0.0.1: protocol floor, keep-alive, certificate reload."""

from __future__ import annotations

import contextlib
import datetime
import http.client
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.unit.webhook.reviews import make_review
from webhook import certs

ROOT = Path(__file__).resolve().parents[3]
POLICY = certs.CertPolicy(dns_names=("localhost",), ip_addresses=("127.0.0.1",))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    port: int
    cert_dir: Path
    log: Path

    def context(self, cafile: Path | None = None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(cafile or self.cert_dir / "ca.crt"))
        return ctx

    def connect(self, cafile: Path | None = None) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection("127.0.0.1", self.port, context=self.context(cafile), timeout=10)


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    tmp = Path(tempfile.mkdtemp(prefix="whtls"))
    cert_dir = tmp / "certs"
    certs.write_files(certs.fresh(POLICY, datetime.datetime.now(datetime.UTC)), cert_dir)
    view = tmp / "view.json"
    view.write_text(json.dumps([{"kind": "Node", "apiVersion": "v1", "metadata": {"name": "node1"}}]))
    port = _free_port()
    env = {
        **os.environ,
        "PCIDEVICES_WEBHOOK_BIND": f"127.0.0.1:{port}",
        "PCIDEVICES_WEBHOOK_CERT_DIR": str(cert_dir),
        "PCIDEVICES_WEBHOOK_MANAGE_CERTIFICATES": "false",
        "PCIDEVICES_WEBHOOK_VIEW_SOURCE": f"file:{view}",
        "PCIDEVICES_WEBHOOK_WORKERS": "1",
        "PCIDEVICES_WEBHOOK_THREADS": "4",
    }
    log = tmp / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "webhook", "serve"], cwd=ROOT, env=env, stdout=out, stderr=out)
    srv = Server(port=port, cert_dir=cert_dir, log=log)
    try:
        deadline = time.monotonic() + 30
        while True:
            conn = srv.connect()
            try:
                conn.request("GET", "/readyz")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                pass
            finally:
                conn.close()
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"webhook did not become ready:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield srv
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)


def _tls11_client() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    ctx.minimum_version = ssl.TLSVersion.TLSv1_1
    ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    return ctx


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_tls_1_1_is_refused_by_the_server(server: Server) -> None:
    # Control: this client really speaks TLS 1.1 (a local server that allows it completes the handshake) ...
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(server.cert_dir / "tls.crt", server.cert_dir / "tls.key")
    sctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    sctx.minimum_version = ssl.TLSVersion.TLSv1_1
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        versions: list[str | None] = []

        def accept() -> None:
            conn, _ = listener.accept()
            with sctx.wrap_socket(conn, server_side=True) as s:
                versions.append(s.version())

        t = threading.Thread(target=accept)
        t.start()
        with _tls11_client().wrap_socket(socket.create_connection(listener.getsockname(), timeout=5)) as s:
            assert s.version() == "TLSv1.1"
        t.join(5)
    # ... and the webhook answers it with a protocol-version alert.
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw, pytest.raises(ssl.SSLError) as err:
        _tls11_client().wrap_socket(raw)
    assert "PROTOCOL_VERSION" in str(err.value) or "UNSUPPORTED_PROTOCOL" in str(err.value)


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_tls_1_2_and_1_3_are_accepted_with_a_certificate_valid_for_the_address(
    server: Server, version: ssl.TLSVersion
) -> None:
    ctx = server.context()
    ctx.minimum_version = ctx.maximum_version = version
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
        assert s.version() == {ssl.TLSVersion.TLSv1_2: "TLSv1.2", ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[version]


def test_a_review_over_tls_is_answered_with_its_uid(server: Server) -> None:
    with contextlib.closing(server.connect()) as conn:
        body = json.dumps(make_review(uid="over-tls", operation="DELETE"))
        conn.request("POST", "/validate", body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200
        assert json.loads(resp.read())["response"]["uid"] == "over-tls"


def test_an_idle_connection_is_kept_longer_than_gunicorns_default_keepalive(server: Server) -> None:
    with contextlib.closing(server.connect()) as conn:
        conn.request("GET", "/healthz")
        conn.getresponse().read()
        sock = conn.sock
        time.sleep(3.5)  # gunicorn's default keep-alive is 2 s; ours is 120 s (the API server idles up to 90 s)
        conn.request("GET", "/healthz")
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 200
        assert conn.sock is sock  # the same connection, not a silent reconnect


def test_a_chunked_body_over_7_mib_is_answered_413(server: Server) -> None:
    conn = server.connect()
    request_closer = contextlib.closing(conn)

    def chunks() -> Iterator[bytes]:
        yield b'{"apiVersion": "admission.k8s.io/v1", "pad": "'
        for _ in range(8):
            yield b"x" * (1024 * 1024)
        yield b'"}'

    with request_closer:
        try:
            conn.request(
                "POST", "/validate", body=chunks(), headers={"Content-Type": "application/json"}, encode_chunked=True
            )
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may answer and close before the whole body is sent
        resp = conn.getresponse()
        assert resp.status == 413
        assert json.loads(resp.read())["response"]["status"]["code"] == 413


def test_a_replaced_certificate_is_served_to_new_connections_while_open_ones_keep_working(server: Server) -> None:
    old_ca = server.cert_dir.parent / "old-ca.crt"
    shutil.copy(server.cert_dir / "ca.crt", old_ca)
    with contextlib.ExitStack() as stack:
        open_conn = stack.enter_context(contextlib.closing(server.connect(old_ca)))
        open_conn.request("GET", "/healthz")
        open_conn.getresponse().read()

        certs.write_files(certs.fresh(POLICY, datetime.datetime.now(datetime.UTC)), server.cert_dir)

        fresh = stack.enter_context(contextlib.closing(server.connect()))  # trusts only the new CA
        fresh.request("GET", "/healthz")
        resp = fresh.getresponse()
        resp.read()
        assert resp.status == 200
        stale = stack.enter_context(contextlib.closing(server.connect(old_ca)))
        with pytest.raises(ssl.SSLCertVerificationError):
            stale.request("GET", "/healthz")
        open_conn.request("GET", "/healthz")  # the connection made before the switch is not dropped
        resp = open_conn.getresponse()
        resp.read()
        assert resp.status == 200
