"""webhook.front on its own (plain HTTP on 127.0.0.1, its loop in a thread): limits, pipelining, the inline path and
the sweep that enforces deadlines."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import pytest

from webhook import front


def _app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    body = environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Type", "text/plain"), ("X-Path", environ["PATH_INFO"])])
    return [b"app:", body]


class Running:
    def __init__(self, limits: front.Limits, inline: front.Inline | None = None) -> None:
        self.executor = futures.ThreadPoolExecutor(max_workers=2)
        self.front = front.Front(_app, None, limits, self.executor, inline=inline)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.loop = asyncio.new_event_loop()
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(self.front.start([self.listener]))
            started.set()
            self.loop.run_forever()
            for server in self.front.servers:
                server.close()
            self.loop.run_until_complete(asyncio.sleep(0))
            self.loop.close()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        started.wait(5)

    def call(self, fn: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(_call(fn), self.loop).result(5)

    def close(self) -> None:
        self.call(self.front.abort_all)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.listener.close()
        self.executor.shutdown()


async def _call(fn: Any) -> Any:
    return fn()


@pytest.fixture
def running() -> Iterator[Running]:
    r = Running(front.Limits(header_timeout_s=1, body_timeout_s=1, max_header_bytes=2048, sweep_s=0.1))
    yield r
    r.close()


def _exchange(port: int, data: bytes, *, timeout: float = 5) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except ConnectionResetError:
            pass
        return out


def test_a_request_reaches_the_app_and_pipelined_ones_are_answered_in_order(running: Running) -> None:
    one = b"POST /a%20b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
    two = b"GET /second HTTP/1.1\r\nHost: x\r\n\r\n"
    out = _exchange(running.port, one + two)
    first, second = out.split(b"HTTP/1.1 200 OK")[1:]
    assert b"X-Path: /a b" in first and first.endswith(b"app:abc")
    assert b"X-Path: /second" in second and second.endswith(b"app:")


def test_a_head_over_the_limit_is_answered_431_and_a_malformed_one_400(running: Running) -> None:
    assert _exchange(running.port, b"GET / HTTP/1.1\r\nX: " + b"a" * 4000 + b"\r\n\r\n").startswith(b"HTTP/1.1 431")
    assert _exchange(running.port, b"NOT HTTP AT ALL\r\n\r\n").startswith(b"HTTP/1.1 400")


def test_a_declared_body_over_the_limit_is_refused_before_it_is_read() -> None:
    r = Running(front.Limits(max_body_bytes=100))
    try:
        out = _exchange(r.port, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 101\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 413")
    finally:
        r.close()


def test_bodies_past_the_workers_budget_are_answered_503_and_the_budget_is_given_back() -> None:
    r = Running(front.Limits(body_budget_bytes=1000, sweep_s=0.1))
    try:
        held = socket.create_connection(("127.0.0.1", r.port), timeout=5)
        held.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2000\r\n\r\n" + b"x" * 900)
        time.sleep(0.2)
        assert r.call(lambda: r.front.body_bytes) == 900
        out = _exchange(r.port, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 200\r\n\r\n" + b"y" * 200)
        assert out.startswith(b"HTTP/1.1 503")
        held.close()
        time.sleep(0.2)
        assert r.call(lambda: r.front.body_bytes) == 0
        assert b"app:" + b"y" * 200 in _exchange(r.port, b"POST / HTTP/1.1\r\nContent-Length: 200\r\n\r\n" + b"y" * 200)
    finally:
        r.close()


def test_the_inline_path_answers_what_it_can_and_the_app_the_rest() -> None:
    def inline(req: front.Request) -> tuple[int, bytes, bytes] | None:
        return (200, b"text/plain", b"inline") if req.url == b"/fast" else None

    r = Running(front.Limits(), inline=inline)
    try:
        assert _exchange(r.port, b"GET /fast HTTP/1.1\r\n\r\n").endswith(b"\r\n\r\ninline")
        assert _exchange(r.port, b"GET /slow HTTP/1.1\r\n\r\n").endswith(b"\r\n\r\napp:")
    finally:
        r.close()


def test_a_connection_that_fails_to_close_does_not_stop_the_deadlines_of_the_others(running: Running) -> None:
    socks = [socket.create_connection(("127.0.0.1", running.port), timeout=5) for _ in range(3)]
    try:
        time.sleep(0.1)
        first = running.call(lambda: next(iter(running.front.connections)))

        def broken() -> None:
            raise OSError("transport endpoint is not connected")

        first.expire = broken
        answers = []
        for s in socks:
            s.settimeout(3)
            try:
                answers.append(s.recv(4096))
            except OSError:
                answers.append(b"")
        assert sorted(a[:12] for a in answers) == [b"", b"HTTP/1.1 408", b"HTTP/1.1 408"]
    finally:
        for s in socks:
            s.close()


def test_slow_clients_found_by_one_sweep_are_cut_a_few_per_turn_of_the_loop(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sweep that finds tens of slow clients must not cut them all in one go: the API server's requests that
    arrive meanwhile would wait for every cut (408, close_notify, close) to finish."""
    turn = [0]
    cuts: list[int] = []

    def tick() -> None:
        turn[0] += 1
        running.loop.call_soon(tick)

    real_expire = front.Connection.expire

    def expire(self: front.Connection) -> None:
        cuts.append(turn[0])
        real_expire(self)

    monkeypatch.setattr(front.Connection, "expire", expire)
    socks = [socket.create_connection(("127.0.0.1", running.port), timeout=5) for _ in range(20)]
    try:
        for s in socks:
            s.sendall(b"POST /validate HTTP/1.1\r\nHost: x\r\n")  # a head that never ends
        running.call(tick)
        for s in socks:
            s.settimeout(3)
            assert s.recv(4096).startswith(b"HTTP/1.1 408")
        per_turn = {t: cuts.count(t) for t in cuts}
        assert len(cuts) == 20
        assert max(per_turn.values()) <= 2  # STEPS_PER_TURN: the other connections get the loop in between
    finally:
        for s in socks:
            s.close()


def test_a_stopping_worker_answers_on_idle_keep_alive_connections_and_then_closes_them(running: Running) -> None:
    """The API server may be writing its next request into an idle connection when the worker stops: closing it at
    once gave a broken pipe that a POST is not retried on. It gets its answer, with Connection: close."""
    ask = b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi"
    with socket.create_connection(("127.0.0.1", running.port), timeout=5) as s:
        s.sendall(ask)
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
        running.call(running.front.close_listeners)
        time.sleep(0.3)  # two sweeps: the idle connection is still open
        s.sendall(ask)
        out = b""
        while chunk := s.recv(4096):
            out += chunk
        assert out.startswith(b"HTTP/1.1 200") and b"connection: close" in out.lower()
