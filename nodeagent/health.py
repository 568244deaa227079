"""/healthz, /readyz and /metrics on a small HTTP port.

Live while the reconcile loop keeps finishing passes (or keeps trying); ready once a pass succeeded and the root
filesystem was traced to a device (otherwise the agent cannot know which disk controller the host needs, and says
so in the body). /metrics serves the agent's Prometheus registry (device plugins and API writes included).
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str


class HealthState:
    """Updated by the runner after each pass; read by the HTTP handler."""

    def __init__(self, clock: Callable[[], float], *, stale_after_s: float) -> None:
        self._clock = clock
        self._stale_after_s = stale_after_s
        self._lock = threading.Lock()
        self._last_pass: float | None = None
        self._last_ok: float | None = None
        self._root_traced = False
        self._started = clock()

    def passed(self, ok: bool, *, root_traced: bool | None = None) -> None:
        with self._lock:
            now = self._clock()
            self._last_pass = now
            if ok:
                self._last_ok = now
            if root_traced is not None:
                self._root_traced = root_traced

    def live(self) -> Verdict:
        with self._lock:
            last = self._last_pass if self._last_pass is not None else self._started
            if self._clock() - last > self._stale_after_s:
                return Verdict(False, f"no reconcile pass for {self._clock() - last:.0f}s")
            return Verdict(True, "ok")

    def ready(self) -> Verdict:
        with self._lock:
            if self._last_ok is None:
                return Verdict(False, "no successful reconcile pass yet")
            if not self._root_traced:
                return Verdict(False, "the root filesystem could not be traced to a device")
            if self._clock() - self._last_ok > self._stale_after_s:
                return Verdict(False, f"last successful reconcile pass {self._clock() - self._last_ok:.0f}s ago")
            return Verdict(True, "ok")


class HealthServer:
    """The probes' and Prometheus' port, on the host network, so anything on the node can reach it.

    One asyncio loop in its own thread instead of a thread per connection: a client that connects and sends nothing,
    or sends its request a byte at a time, is cut after `request_timeout_s` (the whole request and its answer), at
    most `max_connections` are open at once (one more is closed at accept), and a request head may not exceed
    `max_request_bytes`. Each connection then costs a few kilobytes, so a flood cannot grow the agent's memory or
    its thread count, and the kubelet's probe is answered as soon as a slot is free.
    """

    def __init__(
        self,
        state: HealthState,
        registry: CollectorRegistry,
        *,
        host: str,
        port: int,
        request_timeout_s: float = 5.0,
        max_connections: int = 512,
        max_request_bytes: int = 8192,
    ) -> None:
        self._state = state
        self._registry = registry
        self._timeout = request_timeout_s
        self._max_connections = max_connections
        self._max_request_bytes = max_request_bytes
        self.open_connections = 0
        self.refused = 0
        self._sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self._sock.listen(128)
        self._sock.setblocking(False)
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._run, name="health", daemon=True)

    @property
    def port(self) -> int:
        return int(self._sock.getsockname()[1])

    def start(self) -> HealthServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
        self._sock.close()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, sock=self._sock, limit=self._max_request_bytes)
        )
        try:
            self._loop.run_forever()
        finally:
            self._server.close()
            self._loop.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.open_connections >= self._max_connections:
            self.refused += 1
            writer.transport.abort()
            return
        self.open_connections += 1
        try:
            async with asyncio.timeout(self._timeout):
                head = await reader.readuntil(b"\r\n\r\n")
                writer.write(self._answer(head))
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass  # too slow, too long or gone: nothing to answer
        finally:
            self.open_connections -= 1
            writer.transport.abort()

    def _answer(self, head: bytes) -> bytes:
        parts = head.split(b"\r\n", 1)[0].split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            return _response(400, b"bad request\n", "text/plain")
        method, path = parts[0], parts[1].split(b"?", 1)[0]
        if method != b"GET":
            return _response(405, b"only GET\n", "text/plain")
        if path == b"/metrics":
            return _response(200, generate_latest(self._registry), CONTENT_TYPE_LATEST)
        check = {b"/healthz": self._state.live, b"/readyz": self._state.ready}.get(path)
        if check is None:
            return _response(404, b"not found\n", "text/plain")
        v = check()
        return _response(200 if v.ok else 503, (v.reason + "\n").encode(), "text/plain")


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


def _response(code: int, body: bytes, content_type: str) -> bytes:
    head = (
        f"HTTP/1.1 {code} {_REASONS[code]}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body
