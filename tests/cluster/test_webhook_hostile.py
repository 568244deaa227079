"""The webhook behind a real kube-apiserver while hostile clients hold and churn connections to it: slow request
heads, slow bodies, TLS handshakes that never complete, thousands of connections opened and dropped, idle
keep-alive connections. Ordinary admissions through the API server keep being answered within its timeout.

Deadlines are two seconds here (production: 5/5/10 s) so the barrage turns over within the test.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import ssl
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from tests.cluster import test_webhook as base
from tests.support.controlplane import ControlPlane

DEADLINE_S = 2
HEAD_OF_BODY = b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"


@pytest.fixture(scope="module")
def webhook(control_plane: ControlPlane, installed_crds: str) -> Iterator[base.Webhook]:
    with base.serve_webhook(
        control_plane,
        PCIDEVICES_WEBHOOK_HANDSHAKE_TIMEOUT_S=str(DEADLINE_S),
        PCIDEVICES_WEBHOOK_HEADER_TIMEOUT_S=str(DEADLINE_S),
        PCIDEVICES_WEBHOOK_BODY_TIMEOUT_S=str(DEADLINE_S),
    ) as wh:
        yield wh


def _tls_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class Barrage:
    """Hostile clients in a thread of this process, renewed as the server cuts them, until stopped."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.stop = threading.Event()
        self.cut = 0
        self.threads = [threading.Thread(target=self._run, args=(kind,), daemon=True) for kind in range(4)]

    def __enter__(self) -> Barrage:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)

    def _open(self) -> socket.socket | None:
        try:
            return socket.create_connection(("127.0.0.1", self.port), timeout=5)
        except OSError:
            return None

    def _run(self, kind: int) -> None:
        held: list[socket.socket] = []
        slow: list[tuple[ssl.SSLSocket, bool]] = []
        ctx = _tls_context()
        try:
            while not self.stop.is_set():
                if kind == 0:  # slow heads and slow bodies, 40 at a time
                    while len(slow) < 40:
                        raw = self._open()
                        if raw is None:
                            break
                        body = len(slow) % 2 == 1
                        with contextlib.suppress(OSError):
                            s = ctx.wrap_socket(raw)
                            s.sendall(b"POST /validate HTTP/1.1\r\nHost: x\r\n" + (HEAD_OF_BODY if body else b""))
                            slow.append((s, body))
                    for s, body in list(slow):
                        try:
                            s.sendall(b"{" if body else b"X: y\r\n")
                        except OSError:
                            slow.remove((s, body))
                            s.close()
                            self.cut += 1
                elif kind == 1:  # handshakes that never complete, 100 at a time
                    while len(held) < 100:
                        raw = self._open()
                        if raw is None:
                            break
                        with contextlib.suppress(OSError):
                            raw.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
                        held.append(raw)
                    for s in list(held):
                        s.setblocking(False)
                        try:
                            if s.recv(1) == b"":
                                raise ConnectionResetError
                        except BlockingIOError:
                            continue
                        except OSError:
                            pass
                        held.remove(s)
                        s.close()
                        self.cut += 1
                elif kind == 2:  # opened and dropped, some with a reset
                    for i in range(200):
                        s = self._open()
                        if s is not None:
                            if i % 2:
                                s.setsockopt(
                                    socket.SOL_SOCKET,
                                    socket.SO_LINGER,
                                    (1).to_bytes(4, sys.byteorder) + (0).to_bytes(4, sys.byteorder),
                                )
                            s.close()
                else:  # idle keep-alive connections
                    while len(held) < 100:
                        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=ctx, timeout=5)
                        try:
                            conn.request("GET", "/healthz")
                            conn.getresponse().read()
                        except (OSError, http.client.HTTPException):
                            break
                        held.append(conn)  # type: ignore[arg-type]
                self.stop.wait(0.5)
        finally:
            for s in held:
                s.close()
            for s, _ in slow:
                s.close()


def _admission_seconds(wh: base.Webhook) -> float:
    probe = base._pci_claim("hostile-node", "0000:00:02.0", user_name="probe")
    started = time.monotonic()
    r = wh.cp.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(probe), check=False)
    elapsed = time.monotonic() - started
    assert base.DENIED in r.stderr, r.stderr  # the webhook answered (the device does not exist)
    return elapsed


def test_admissions_through_the_api_server_are_answered_while_hostile_clients_churn(webhook: base.Webhook) -> None:
    timeout_s = 10  # the chart's timeoutSeconds
    with Barrage(webhook.port) as barrage:
        time.sleep(DEADLINE_S + 1)  # every kind of hostile client is open and the first ones have been cut
        times = [_admission_seconds(webhook) for _ in range(5)]
        time.sleep(DEADLINE_S)
        times += [_admission_seconds(webhook) for _ in range(5)]
    assert max(times) < timeout_s / 2, times
    assert barrage.cut > 0  # the server cut the slow ones at their deadlines
    closed = webhook.metric("pcidevices_webhook_connections_closed_total", "")
    assert closed > 100
    # and after the barrage, as before
    assert _admission_seconds(webhook) < timeout_s / 2
