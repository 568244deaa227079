"""The production server (gunicorn + webhook.front, TLS) against clients that are slow, idle or never finish, as an
attacker inside the cluster would send them; after each, an ordinary review is still answered at once.

Deadlines are shortened to one second here (PCIDEVICES_WEBHOOK_*_TIMEOUT_S) so the tier stays fast; the production
defaults are the same code with larger numbers.
"""

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
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.unit.webhook.reviews import make_review
from webhook import certs

ROOT = Path(__file__).resolve().parents[3]
POLICY = certs.CertPolicy(dns_names=("localhost",), ip_addresses=("127.0.0.1",))
DEADLINE_S = 1.0
MAX_CONNECTIONS = 300
HEAD_500 = b"POST /validate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n"


@dataclass
class Server:
    port: int
    cert_dir: Path
    log: Path

    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert_dir / "ca.crt"))

    def review(self, timeout: float = 5.0) -> float:
        """Seconds for one review on a fresh connection (handshake included); fails if it is not answered."""
        started = time.monotonic()
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.context(), timeout=timeout)
        with contextlib.closing(conn):
            body = json.dumps(make_review(uid="ordinary", operation="DELETE"))
            conn.request("POST", "/validate", body=body, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            assert resp.status == 200
            assert json.loads(resp.read())["response"]["uid"] == "ordinary"
        return time.monotonic() - started

    def metric(self, name: str) -> dict[str, float]:
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.context(), timeout=5)
        with contextlib.closing(conn):
            conn.request("GET", "/metrics")
            text = conn.getresponse().read().decode()
        return {
            line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name)
        }

    def tls(self) -> ssl.SSLSocket:
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        return self.context().wrap_socket(raw, server_hostname="127.0.0.1")


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    tmp = Path(tempfile.mkdtemp(prefix="whhostile"))
    cert_dir = tmp / "certs"
    certs.write_files(certs.fresh(POLICY, datetime.datetime.now(datetime.UTC)), cert_dir)
    view = tmp / "view.json"
    view.write_text(json.dumps([{"kind": "Node", "apiVersion": "v1", "metadata": {"name": "node1"}}]))
    port = _free_port()
    (tmp / "metrics").mkdir()
    env = {
        **os.environ,
        "PCIDEVICES_WEBHOOK_BIND": f"127.0.0.1:{port}",
        "PCIDEVICES_WEBHOOK_CERT_DIR": str(cert_dir),
        "PCIDEVICES_WEBHOOK_MANAGE_CERTIFICATES": "false",
        "PCIDEVICES_WEBHOOK_VIEW_SOURCE": f"file:{view}",
        "PCIDEVICES_WEBHOOK_WORKERS": "1",
        "PCIDEVICES_WEBHOOK_THREADS": "2",
        "PCIDEVICES_WEBHOOK_HANDSHAKE_TIMEOUT_S": str(DEADLINE_S),
        "PCIDEVICES_WEBHOOK_HEADER_TIMEOUT_S": str(DEADLINE_S),
        "PCIDEVICES_WEBHOOK_BODY_TIMEOUT_S": str(DEADLINE_S),
        "PCIDEVICES_WEBHOOK_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
        "PROMETHEUS_MULTIPROC_DIR": str(tmp / "metrics"),
    }
    log = tmp / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "webhook", "serve"], cwd=ROOT, env=env, stdout=out, stderr=out)
    srv = Server(port=port, cert_dir=cert_dir, log=log)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                srv.review()
                break
            except (OSError, AssertionError, http.client.HTTPException):
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"webhook did not start:\n{log.read_text()[-3000:]}")
                time.sleep(0.2)
        yield srv
        assert proc.poll() is None, log.read_text()[-3000:]
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _closed_within(s: socket.socket, seconds: float) -> bytes | None:
    """What the server sent before closing, or None if it kept the connection open that long."""
    s.settimeout(seconds)
    data = b""
    try:
        while chunk := s.recv(4096):
            data += chunk
    except (ConnectionResetError, ssl.SSLError):
        return data
    except TimeoutError:
        return None
    return data


def test_eight_connections_that_send_headers_then_nothing_do_not_stall_reviews(server: Server) -> None:
    slow = [server.tls() for _ in range(8)]
    try:
        for s in slow:
            s.sendall(b"POST /validate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
        assert server.review() < 1.0  # the server has 2 threads; before the front, 2 such clients stalled it
        for s in slow:
            answer = _closed_within(s, DEADLINE_S + 2)
            assert answer is not None and answer.startswith(b"HTTP/1.1 408")
    finally:
        for s in slow:
            s.close()


def test_a_body_sent_a_byte_at_a_time_is_cut_after_the_body_deadline(server: Server) -> None:
    with contextlib.closing(server.tls()) as s:
        s.sendall(HEAD_500)
        started = time.monotonic()
        s.settimeout(0.1)
        answer = b""
        with contextlib.suppress(OSError):
            while not answer and time.monotonic() - started < DEADLINE_S + 3:
                s.sendall(b"{")
                with contextlib.suppress(TimeoutError):
                    answer = s.recv(4096)
        assert answer.startswith(b"HTTP/1.1 408")
        assert time.monotonic() - started < DEADLINE_S + 1.5
        assert server.review() < 1.0


def test_handshakes_that_never_complete_are_cut_and_reviews_go_on(server: Server) -> None:
    silent = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(50)]
    half = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(50)]
    try:
        for s in half:
            s.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # the start of a ClientHello
        assert server.review() < 1.0
        for s in silent + half:
            assert _closed_within(s, DEADLINE_S + 2) is not None
    finally:
        for s in silent + half:
            s.close()
    closed = server.metric("pcidevices_webhook_connections_closed_total")
    assert closed.get('pcidevices_webhook_connections_closed_total{reason="handshake"}', 0) >= 100


def test_connections_beyond_the_bound_are_closed_at_once_and_the_server_recovers(server: Server) -> None:
    held = []
    try:
        for _ in range(MAX_CONNECTIONS + 100):
            try:
                held.append(socket.create_connection(("127.0.0.1", server.port), timeout=5))
            except OSError:
                break
        refused = sum(_closed_within(s, 0.5) is not None for s in held[-50:])
        assert refused >= 40  # the newest ones, past the bound, were closed without waiting for a deadline
    finally:
        for s in held:
            s.close()
    time.sleep(0.3)
    assert server.review() < 1.0
    closed = server.metric("pcidevices_webhook_connections_closed_total")
    assert closed.get('pcidevices_webhook_connections_closed_total{reason="limit"}', 0) >= 40


def test_thousands_of_connections_opened_and_dropped_leave_the_server_serving(server: Server) -> None:
    linger_rst = (1).to_bytes(4, sys.byteorder) + (0).to_bytes(4, sys.byteorder)  # SO_LINGER 0 s: close resets
    for batch in range(10):
        opened = []
        for i in range(200):
            s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            if i % 2:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger_rst)
            opened.append(s)
        if batch % 2:
            with contextlib.suppress(OSError):
                opened[0] = server.context().wrap_socket(opened[0], server_hostname="127.0.0.1")
        for s in opened:
            s.close()
    assert server.review() < 1.0
    deadline = time.monotonic() + DEADLINE_S + 3
    while time.monotonic() < deadline:
        open_now = sum(server.metric("pcidevices_webhook_connections ").values())
        if open_now <= 2:
            break
        time.sleep(0.5)
    assert open_now <= 2  # every dropped connection was noticed and forgotten


def test_idle_keepalive_connections_stay_open_and_cost_no_thread(server: Server) -> None:
    idle = []
    try:
        for _ in range(100):
            conn = http.client.HTTPSConnection("127.0.0.1", server.port, context=server.context(), timeout=5)
            conn.request("GET", "/healthz")
            conn.getresponse().read()
            idle.append(conn)
        time.sleep(DEADLINE_S + 0.5)  # past every request deadline, far inside keep-alive
        assert server.review() < 1.0
        conn = idle[0]
        sock = conn.sock
        conn.request("GET", "/healthz")
        assert conn.getresponse().read() == b"ok" and conn.sock is sock
    finally:
        for c in idle:
            c.close()
