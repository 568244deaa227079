"""The agent's health/metrics port against slow, idle and oversized clients (a real server on 127.0.0.1)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

from nodeagent.health import HealthServer, HealthState


@pytest.fixture
def server() -> Iterator[HealthServer]:
    state = HealthState(time.monotonic, stale_after_s=60)
    state.passed(True, root_traced=True)
    srv = HealthServer(
        state, CollectorRegistry(), host="127.0.0.1", port=0, request_timeout_s=0.5, max_connections=50
    ).start()
    try:
        yield srv
    finally:
        srv.stop()


def _probe(port: int, path: bytes = b"/readyz") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
        return data


def _wait_closed(s: socket.socket, within_s: float) -> float:
    s.settimeout(within_s)
    started = time.monotonic()
    try:
        while s.recv(4096):
            pass
    except ConnectionResetError:
        pass
    return time.monotonic() - started


def test_a_probe_is_answered_and_the_connection_closed(server: HealthServer) -> None:
    answer = _probe(server.port)
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(b"\r\n\r\nok\n")
    assert _probe(server.port, b"/nothing").startswith(b"HTTP/1.1 404")


def test_a_client_that_sends_its_request_a_byte_at_a_time_is_cut_at_the_deadline(server: HealthServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        started = time.monotonic()
        with pytest.raises(OSError):
            for byte in b"GET /readyz HTTP/1.1\r\nHost: x\r\n":
                s.send(bytes([byte]))
                time.sleep(0.1)
        assert time.monotonic() - started < 3


def test_idle_connections_beyond_the_bound_are_closed_and_probes_still_answered(server: HealthServer) -> None:
    idle = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(80)]
    try:
        time.sleep(0.1)
        assert server.open_connections <= 50
        assert server.refused >= 30
        time.sleep(0.6)  # every idle one is past its deadline now
        assert _probe(server.port).startswith(b"HTTP/1.1 200")
        assert all(_wait_closed(s, 2) < 2 for s in idle)
    finally:
        for s in idle:
            s.close()


def test_a_request_head_over_the_limit_gets_no_answer(server: HealthServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        try:
            s.sendall(b"GET /readyz HTTP/1.1\r\nX-Pad: " + b"a" * 20000 + b"\r\n\r\n")
            answer = s.recv(4096)
        except ConnectionResetError:
            answer = b""
        assert answer == b""
